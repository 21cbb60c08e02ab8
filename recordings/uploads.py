"""Reads one chunk upload from any of its three request forms: multipart, JSON + base64, raw body."""

import io
from dataclasses import dataclass
from typing import BinaryIO, cast

from django.conf import settings
from rest_framework import serializers
from rest_framework.request import Request

from .chunks import chunk_too_large
from .errors import RecorderError
from .field_names import FIELD_ALIASES
from .json_chunks import JsonChunkBody
from .parsers import CHUNK_FIELD_NAMES, RawBody, is_raw_media_type
from .serializers import FinalizeInput


@dataclass(frozen=True)
class ChunkUpload:
    """Use it as a context manager: a chunk spooled to a temporary file is removed when the request
    is refused before the chunk is stored (storing it takes the file over)."""

    fields: dict  # validated scalars: session_id, chunk_index, checksum, checksum_header (is_final, total_chunks)
    upload_token: str | None
    stream: BinaryIO | None  # None when the request carries no chunk

    def __enter__(self) -> "ChunkUpload":
        return self

    def __exit__(self, *exc_info) -> None:
        _close(self.stream)


def _close(stream: BinaryIO | None) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


# Room for multipart boundaries and the scalar fields around the chunk itself.
_ENVELOPE_BYTES = 64 * 1024


def read_chunk_upload(
    request: Request,
    input_serializer: type[serializers.Serializer],
    *,
    empty_body_is_a_chunk: bool = True,
    path_session_id: str | None = None,
) -> ChunkUpload:
    """Validate the scalars with `input_serializer` and find the chunk, whatever the transport.

    An empty raw body is an empty chunk (Chrome's MP4 recordings end with one), unless
    `empty_body_is_a_chunk` is off and the call is final with no `chunk_index`: a finalize
    without a last chunk.
    """
    refuse_chunked_body(request)
    _refuse_oversized_body(request)
    data = request.data
    stream: BinaryIO | None
    if isinstance(data, RawBody) or is_raw_media_type(request.content_type or ""):
        body_fields: dict = {}
        stream = _raw_body_stream(request, data)
    elif hasattr(data, "getlist"):  # multipart or urlencoded form: a field may be given twice
        body_fields = {key: data.getlist(key) for key in data if key not in CHUNK_FIELD_NAMES}
        stream = _chunk_from_form(data)
    elif isinstance(data, JsonChunkBody):  # JSON, the chunk already decoded to a temporary file
        body_fields = {key: [value] for key, value in data.fields.items()}
        stream = cast(BinaryIO | None, data.chunk)  # an UploadedFile
    elif isinstance(data, dict):  # an empty body with a JSON content type
        body_fields = {key: [value] for key, value in data.items()}
        stream = None
    else:
        raise RecorderError(code="malformed_body", detail="A JSON body must be an object.")

    # The token is taken from headers or the body only: query strings end up in access logs.
    upload_token = _upload_token(request, (body_fields.pop("upload_token", None) or [None])[0])
    query_fields = {key: request.query_params.getlist(key) for key in request.query_params if key != "upload_token"}
    try:
        values = _canonical_fields(
            [("the URL path", {"session_id": [path_session_id]} if path_session_id is not None else {})]
            + [("the query string", query_fields), ("the body", body_fields)],
            read_as=dict(_UPLOAD_FIELDS),
        )
        values["checksum_header"] = request.headers.get("X-Chunk-SHA256")
        validated = input_serializer(data=values)
        validated.is_valid(raise_exception=True)
    except BaseException:
        _close(stream)
        raise
    fields = dict(validated.validated_data)
    is_empty_raw_body = is_raw_media_type(request.content_type or "") and not isinstance(data, RawBody)
    if (
        is_empty_raw_body
        and not empty_body_is_a_chunk
        and fields.get("is_final") is not False
        and (fields["chunk_index"] is None)
    ):
        stream = None
    if "is_final" in fields and fields["is_final"] is None:
        fields["is_final"] = stream is None  # no flag: a call with no chunk can only mean the end
    return ChunkUpload(fields=fields, upload_token=upload_token, stream=stream)


_FIELD_OF_NAME = {alias: field_name for field_name, aliases in FIELD_ALIASES.items() for alias in aliases}


def _canonical_fields(sources: list[tuple[str, dict[str, list]]], *, read_as: dict) -> dict:
    """One value per field from every place a request may name it (path, query string, body; each
    field under any of its names, each name possibly repeated): all of them must agree, as the
    serializer field in `read_as` reads them, else 400 `conflicting_fields`. The first place wins:
    a request never says two things about one field."""
    given: dict[str, list[tuple[str, object]]] = {}
    for where, fields in sources:
        for name, values in fields.items():
            field_name = _FIELD_OF_NAME.get(name, name)
            given.setdefault(field_name, []).extend((f"{name} in {where}", value) for value in values)
    canonical: dict[str, object] = {}
    for field_name, named in given.items():
        (first_name, first_value), *others = named
        for other_name, other_value in others:
            field = read_as.get(field_name)
            if _read(field, other_value) != _read(field, first_value):
                raise RecorderError(
                    code="conflicting_fields",
                    detail=f"{first_name} says {str(first_value)[:64]!r} but {other_name} says "
                    f"{str(other_value)[:64]!r}; both name the field {field_name!r}.",
                )
        canonical[field_name] = first_value
    return canonical


# Every field an upload call may carry (a finalize's are a superset of a chunk's), as the API reads it.
_UPLOAD_FIELDS = FinalizeInput().fields


def _read(field: serializers.Field | None, value):
    """A value as its field reads it (`1` and `true`, a UUID with or without dashes, are the same),
    or as plain text when the field refuses it (the serializer reports that afterwards)."""
    try:
        return field.to_internal_value(value) if field is not None else value
    except (serializers.ValidationError, TypeError, ValueError):
        return str(value).strip().lower()


def refuse_chunked_body(request: Request) -> None:
    """Django reads a body without Content-Length as empty: say so rather than report missing fields."""
    if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise RecorderError(
            code="length_required",
            detail="Send the body with a Content-Length (a Blob, file or FormData body), not chunked transfer "
            "encoding.",
            status=411,
        )


def _refuse_oversized_body(request: Request) -> None:
    """Answer 413 from the Content-Length alone, before Django spools a huge multipart body to disk."""
    try:
        declared_bytes = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    max_chunk_bytes = settings.RECORDER_MAX_CHUNK_BYTES
    # base64 in JSON is 4/3 of the bytes it carries: the largest request of all
    allowed_bytes = (
        settings.RECORDER_MAX_REQUEST_BYTES
        if "json" in (request.content_type or "")
        else (max_chunk_bytes + _ENVELOPE_BYTES)
    )
    if declared_bytes > allowed_bytes:
        raise chunk_too_large(max_chunk_bytes)


class DeclaredLengthStream:
    """A raw request body that fails when it ends before its Content-Length.

    Without this, a client that drops mid-upload would leave a short chunk stored under its index,
    and its retry with the full bytes would then be refused as a conflict.
    """

    def __init__(self, stream: BinaryIO, declared_bytes: int):
        self._stream = stream
        self._declared_bytes = declared_bytes
        self._received_bytes = 0

    def read(self, size: int = -1) -> bytes:
        block = self._stream.read(size)
        self._received_bytes += len(block)
        if not block and self._received_bytes < self._declared_bytes:
            raise RecorderError(
                code="upload_interrupted",
                detail=f"The body ended after {self._received_bytes} of its {self._declared_bytes} declared bytes; "
                "nothing was stored. Send the chunk again.",
            )
        return block


def _raw_body_stream(request: Request, data) -> BinaryIO:
    if not isinstance(data, RawBody):
        return io.BytesIO(b"")  # Content-Length: 0 is an empty chunk, which is valid
    # duck-typed: reading is all that is done with a chunk's stream
    return cast(BinaryIO, DeclaredLengthStream(data.stream, int(request.META.get("CONTENT_LENGTH") or 0)))


def read_upload_token(request: Request) -> str | None:
    """The upload token of a request without a body (DELETE): from the headers only."""
    return _upload_token(request, None)


def _upload_token(request: Request, field_value) -> str | None:
    authorization = request.headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    header_token = request.headers.get("X-Upload-Token", "").strip()
    if header_token:
        return header_token
    return str(field_value).strip() if field_value else None


def _chunk_from_form(data) -> BinaryIO | None:
    for name in CHUNK_FIELD_NAMES:
        if name in data:
            value = data.get(name)
            if hasattr(value, "read"):
                return value
            raise RecorderError(
                code="chunk_not_a_file",
                detail=f"The form field {name!r} holds text ({str(value)[:32]!r}), not a file: append the "
                "Blob itself, e.g. formData.append('video_chunk', event.data).",
            )
    return None


def require_chunk(upload: ChunkUpload) -> BinaryIO:
    if upload.stream is None:
        raise RecorderError(
            code="chunk_missing",
            detail="No chunk in the request: send the file field `video_chunk` (multipart), "
            "`video_chunk` as base64 (JSON), or the bytes as a raw body.",
        )
    return upload.stream
