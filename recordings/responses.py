"""Serving stored files over HTTP: streamed with single byte ranges (RFC 9110 §14), validators and
304s, or handed off (a redirect to a presigned object-storage URL, or the front proxy's
X-Accel-Redirect / X-Sendfile), as RECORDER_MEDIA_DELIVERY says.

No maintained library fits: django-ranged-response is unmaintained since 2017 and Django's
FileResponse has no Range support. The response streams from storage in blocks; under gunicorn
a local file is sent with sendfile, bounded by Content-Length. django-sendfile2 wants absolute
paths under one root and answers conditionals its own way; the two offload headers are a few lines.
"""

import re
from typing import Protocol
from urllib.parse import quote

from django.conf import settings
from django.core.files.storage import Storage, default_storage
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.cache import get_conditional_response
from django.utils.http import content_disposition_header, http_date, parse_http_date_safe

from .errors import RecorderError

_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
BLOCK_BYTES = 64 * 1024
# Positions past any file: longer digit strings are read as this, not handed to int() (whose
# 4,300-digit limit raises, and whose cost grows with the length).
_FAR_BEYOND = 10**18


class StoredFile(Protocol):
    """What is needed to serve a stored file (services.MediaFile is one)."""

    @property
    def storage_name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def content_type(self) -> str: ...
    @property
    def etag(self) -> str: ...
    @property
    def last_modified(self) -> int: ...  # seconds since the epoch
    @property
    def download_name(self) -> str: ...


class ByteRange:
    """Parse a Range header against a file size: (start, end) inclusive, None to ignore, or unsatisfiable."""

    UNSATISFIABLE = object()

    @staticmethod
    def parse(header: str, size: int):
        match = _SINGLE_RANGE.match(header.replace(" ", ""))
        if match is None:
            return None  # malformed or several ranges: RFC 9110 lets us ignore Range and send it all
        first, last = match.groups()
        if not first and not last:
            return None
        if not first:  # suffix: the last N bytes
            suffix_length = _position(last)
            if suffix_length == 0 or size == 0:
                return ByteRange.UNSATISFIABLE
            return max(0, size - suffix_length), size - 1
        start = _position(first)
        if last and _position(last) < start:
            return None  # syntactically invalid: ignored
        if start >= size:
            return ByteRange.UNSATISFIABLE
        end = _position(last) if last else size - 1
        return start, min(end, size - 1)


def _position(digits: str) -> int:
    stripped = digits.lstrip("0") or "0"
    return int(stripped) if len(stripped) <= 18 else _FAR_BEYOND


class _FileSlice:
    """A read-only view of `length` bytes from `start`; exposes fileno() so sendfile can be used."""

    def __init__(self, file, start: int, length: int):
        self._file = file
        self._remaining = length
        file.seek(start)

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        block = self._file.read(size)
        self._remaining -= len(block)
        return block

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


def _if_range_allows(request: HttpRequest, stored: StoredFile) -> bool:
    if_range = request.headers.get("If-Range")
    if not if_range:
        return True
    if if_range.startswith(('"', 'W/"')):
        return if_range == stored.etag  # strong comparison: weak tags never match
    if_range_date = parse_http_date_safe(if_range)
    return if_range_date is not None and if_range_date == stored.last_modified


def deliver_stored_file(
    request: HttpRequest, stored: StoredFile, *, as_attachment: bool, storage: Storage = default_storage
) -> HttpResponse | FileResponse:
    """The response for GET/HEAD of `stored`, by RECORDER_MEDIA_DELIVERY (see the settings)."""
    delivery = settings.RECORDER_MEDIA_DELIVERY
    if delivery == "redirect":
        return redirect_to_stored_file(stored, as_attachment=as_attachment, storage=storage)
    if delivery in ("x-accel-redirect", "x-sendfile"):
        return offload_stored_file(request, stored, as_attachment=as_attachment, storage=storage, header=delivery)
    return serve_stored_file(request, stored, as_attachment=as_attachment, storage=storage)


def redirect_to_stored_file(stored: StoredFile, *, as_attachment: bool, storage: Storage) -> HttpResponse:
    """302 to a short-lived presigned URL; the object store answers Range and conditionals itself."""
    disposition = content_disposition_header(as_attachment, stored.download_name)
    url = storage.url(  # type: ignore[call-arg]  # django-storages' S3Storage takes the response parameters
        stored.storage_name,
        parameters={"ResponseContentType": stored.content_type, "ResponseContentDisposition": disposition},
    )
    response = HttpResponseRedirect(url)
    response["Cache-Control"] = "no-store"  # the URL expires; a cached redirect would outlive it
    return response


def offload_stored_file(
    request: HttpRequest, stored: StoredFile, *, as_attachment: bool, storage: Storage, header: str
) -> HttpResponse | FileResponse:
    """An empty response naming the file for the front proxy to send (it answers Range itself)."""
    validators, decided = _check_conditionals(request, stored)
    if decided is not None:
        return decided
    response = HttpResponse(content_type=stored.content_type)
    if header == "x-accel-redirect":
        response["X-Accel-Redirect"] = settings.RECORDER_MEDIA_ACCEL_PREFIX + quote(stored.storage_name)
    else:
        response["X-Sendfile"] = str(storage.path(stored.storage_name))
    response["Content-Disposition"] = str(content_disposition_header(as_attachment, stored.download_name))
    for name in ("ETag", "Last-Modified", "Cache-Control"):
        response[name] = str(validators[name])
    return response


def _check_conditionals(request: HttpRequest, stored: StoredFile) -> tuple[HttpResponse, HttpResponse | None]:
    """The validator headers of `stored`, and the 304/412 answer when the request's conditionals decide."""
    validators = HttpResponse(status=200)
    validators["ETag"] = stored.etag
    validators["Last-Modified"] = http_date(stored.last_modified)
    validators["Accept-Ranges"] = "bytes"
    validators["Cache-Control"] = "no-cache"
    conditional = get_conditional_response(
        request, etag=stored.etag, last_modified=stored.last_modified, response=validators
    )
    return validators, (None if conditional is validators else conditional)


def _open_or_gone(storage: Storage, stored: StoredFile):
    """The stored file, open; a 404 when it went between the lookup and now (a DELETE racing this read)."""
    try:
        return storage.open(stored.storage_name, "rb")
    except FileNotFoundError as error:
        raise RecorderError(code="session_not_found", detail="This recording was deleted.", status=404) from error


def serve_stored_file(
    request: HttpRequest, stored: StoredFile, *, as_attachment: bool, storage: Storage = default_storage
) -> HttpResponse | FileResponse:
    """200, 206, 304, 412 or 416 for GET/HEAD of `stored`, streamed from storage, never read whole."""
    validators, decided = _check_conditionals(request, stored)
    if decided is not None:
        return decided

    byte_range = None
    range_header = request.headers.get("Range")
    if range_header and _if_range_allows(request, stored):
        byte_range = ByteRange.parse(range_header, stored.size)
    if byte_range is ByteRange.UNSATISFIABLE:
        unsatisfiable = HttpResponse(status=416)
        unsatisfiable["Content-Range"] = f"bytes */{stored.size}"
        unsatisfiable["Accept-Ranges"] = "bytes"
        return unsatisfiable

    start, end = byte_range if byte_range else (0, stored.size - 1)
    length = end - start + 1 if stored.size else 0
    response: HttpResponse | FileResponse
    if request.method == "HEAD":
        response = HttpResponse(status=206 if byte_range else 200, content_type=stored.content_type)
    else:
        body = _FileSlice(_open_or_gone(storage, stored), start, length)
        response = FileResponse(
            body,
            status=206 if byte_range else 200,
            content_type=stored.content_type,
            as_attachment=as_attachment,
            filename=stored.download_name,
        )
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{stored.size}"
    response["Content-Length"] = str(length)
    if request.method == "HEAD":
        response["Content-Disposition"] = str(content_disposition_header(as_attachment, stored.download_name))
    for header in ("ETag", "Last-Modified", "Accept-Ranges", "Cache-Control"):
        response[header] = str(validators[header])
    return response
