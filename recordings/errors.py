"""The one error type of the service and the one handler that turns errors into JSON responses."""

import errno
import logging

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import JsonResponse, UnreadablePostError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

logger = logging.getLogger("recordings.errors")


class RecorderError(Exception):
    """A failure a client can act on: a stable machine `code`, a human `detail`, an HTTP status."""

    def __init__(
        self,
        *,
        code: str,
        detail: str,
        status: int = 400,
        extra: dict | None = None,
        retry_after_seconds: int | None = None,
    ):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.extra = extra or {}
        self.retry_after_seconds = retry_after_seconds

    def as_dict(self) -> dict:
        return {"code": self.code, "detail": self.detail, **self.extra}


# DRF's own exceptions, given codes of ours so every error body has the same shape.
_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ParseError: "malformed_body",
    exceptions.UnsupportedMediaType: "unsupported_content_type",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.NotFound: "not_found",
    exceptions.Throttled: "throttled",
    exceptions.NotAuthenticated: "token_required",
    exceptions.PermissionDenied: "forbidden",
}


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_STORAGE_DOWN = frozenset({errno.EROFS, errno.EIO, errno.ENXIO})


def storage_error(exc: BaseException) -> RecorderError | None:
    """A storage failure the client can retry later, or None when `exc` is not one.

    No space → 507 `storage_full`; a read-only or failing disk, or an object store that does not
    answer → 503 `storage_unavailable`. Whatever failed, nothing was stored.
    """
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return RecorderError(
            code="storage_full",
            detail="The server has no room to store this upload right now; nothing was stored. Retry later.",
            status=status.HTTP_507_INSUFFICIENT_STORAGE,
            retry_after_seconds=30,
        )
    is_object_store_error = type(exc).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer")
    if (isinstance(exc, OSError) and exc.errno in _STORAGE_DOWN) or is_object_store_error:
        return RecorderError(
            code="storage_unavailable",
            detail="The storage is not answering; nothing was stored. Retry later.",
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            retry_after_seconds=10,
        )
    return None


def _translate(exc: Exception) -> RecorderError | None:
    if isinstance(exc, RecorderError):
        return exc
    if (failure := storage_error(exc)) is not None:
        logger.error("storage failure: %r", exc)
        return failure
    if isinstance(exc, RequestDataTooBig):
        return RecorderError(
            code="request_too_large",
            detail="The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE allows for JSON and "
            "form bodies; send large chunks as multipart/form-data or as a raw body.",
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, UnreadablePostError):
        return RecorderError(
            code="upload_interrupted",
            detail="The request body could not be read to its end; nothing was stored. Send the chunk again.",
        )
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return RecorderError(code="malformed_body", detail=str(exc))
    if isinstance(exc, exceptions.ValidationError):
        return RecorderError(
            code="invalid_request",
            detail="Some fields are missing or invalid; see `fields`.",
            extra={"fields": exc.detail},
        )
    if isinstance(exc, exceptions.APIException):
        code = next((code for drf_type, code in _DRF_CODES.items() if isinstance(exc, drf_type)), "request_error")
        return RecorderError(code=code, detail=str(exc.detail), status=exc.status_code)
    return None


def handle_api_exception(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every expected error becomes `{"code", "detail"}` with its status."""
    error = _translate(exc)
    if error is None:
        return None  # a bug: Django logs it and answers with the JSON 500 below
    headers = {}
    if error.status == status.HTTP_401_UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="recorder"'
    wait = getattr(exc, "wait", None) if isinstance(exc, exceptions.Throttled) else None
    if wait:
        headers["Retry-After"] = str(int(wait))
    if error.retry_after_seconds:
        headers["Retry-After"] = str(error.retry_after_seconds)
    set_rollback()
    return Response(error.as_dict(), status=error.status, headers=headers)


def not_found_view(request, exception=None) -> JsonResponse:
    """handler404: unknown URLs answer JSON like the rest of the API."""
    return JsonResponse(
        {"code": "not_found", "detail": f"No endpoint at {request.path}."}, status=status.HTTP_404_NOT_FOUND
    )


def server_error_view(request) -> JsonResponse:
    """handler500: the last resort, still JSON; the traceback is in the server log."""
    return JsonResponse(
        {"code": "internal_error", "detail": "The server failed unexpectedly; the error has been logged."},
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def bad_request_view(request, exception=None) -> JsonResponse:
    """handler400: requests Django itself rejects (bad Host header, suspicious input)."""
    return JsonResponse(
        {"code": "bad_request", "detail": "The request was rejected as malformed."},
        status=status.HTTP_400_BAD_REQUEST,
    )
