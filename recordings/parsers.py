"""DRF parsers that never hold more of a body than they must: raw chunks as a stream, JSON chunks
decoded block by block to disk, and small JSON bodies bounded in size and depth."""

from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.utils import json

from . import memory_budget
from .chunks import chunk_too_large
from .errors import RecorderError
from .json_chunks import READ_BYTES, JsonChunkBody, read_json_chunk_upload
from .upload_handlers import HashingTemporaryFileUploadHandler

RAW_MEDIA_TYPES = ("application/octet-stream", "video/*", "audio/*")
# `video_chunk` is ours; the others are what real recorder clients name the field.
CHUNK_FIELD_NAMES = ("video_chunk", "chunk", "blob", "file", "videoChunk", "videoDataChunk", "blob_object")
# What a small JSON body may cost while parsed: the bytes, the text and the objects made of them.
_JSON_MEMORY_FACTOR = 4


@dataclass(frozen=True)
class RawBody:
    stream: BinaryIO


class RawChunkParser(BaseParser):
    """Matches `application/octet-stream`, `video/*` and `audio/*` bodies.

    Returns the request stream itself so the chunk is read in blocks by the service, never
    buffered whole (DRF's other parsers read the entire body into memory).
    """

    media_type = "*/*"  # DRF matches one type per parser; the three families are checked below

    # DRF's stubs say a parser returns a mapping; request.data is what it returns, these objects here
    def parse(self, stream, media_type=None, parser_context=None) -> RawBody:  # type: ignore[override]
        if not is_raw_media_type(media_type or ""):
            raise UnsupportedMediaType(
                media_type,
                detail=f"Unsupported content type {media_type!r}: send multipart/form-data, "
                "application/json, or a raw application/octet-stream, video/* or audio/* body.",
            )
        return RawBody(stream=stream)


def is_raw_media_type(content_type: str) -> bool:
    main_type = content_type.split(";", 1)[0].strip().lower()
    return main_type == "application/octet-stream" or main_type.startswith(("video/", "audio/"))


class JsonChunkParser(BaseParser):
    """A chunk upload as JSON: the fields parsed, the base64 chunk streamed into a temporary file."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> JsonChunkBody:  # type: ignore[override]
        if stream is None:  # no body at all
            return JsonChunkBody(fields={}, chunk=None)
        with memory_budget.reserve(2 * READ_BYTES):
            return read_json_chunk_upload(
                stream,
                chunk_field_names=CHUNK_FIELD_NAMES,
                new_sink=HashingTemporaryFileUploadHandler,
                too_large=lambda: chunk_too_large(settings.RECORDER_MAX_CHUNK_BYTES),
                max_chunk_bytes=settings.RECORDER_MAX_CHUNK_BYTES,
            )


class IgnoredBodyParser(BaseParser):
    """Any body that is not JSON or a form, where the body is optional (start-recording): clients
    of this protocol post `fetch(url, {body: {}})`, i.e. the text `[object Object]`. It is read and
    dropped (a server that leaves a body unread may reset the connection), within the small-body
    limit; a JSON object sent as text/plain is read as JSON."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> dict:
        limit_bytes = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        declared_bytes = _declared_length((parser_context or {}).get("request"))
        if declared_bytes > limit_bytes:
            raise _json_too_large(limit_bytes)
        if (media_type or "").split(";", 1)[0].strip().lower() == "text/plain":
            return _json_object_or_nothing(stream, media_type, parser_context)
        read_bytes = 0
        while stream is not None and (block := stream.read(READ_BYTES)):
            read_bytes += len(block)
            if read_bytes > limit_bytes:
                raise _json_too_large(limit_bytes)
        return {}


def _json_object_or_nothing(stream, media_type, parser_context) -> dict:
    """`fetch(url, {body: JSON.stringify(fields)})` without a Content-Type sends JSON as text/plain:
    its fields are taken when it is a JSON object, and the body is ignored otherwise."""
    try:
        parsed = BoundedJSONParser().parse(stream, media_type, parser_context)
    except ParseError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser for small bodies (start-recording): at most DATA_UPLOAD_MAX_MEMORY_SIZE
    bytes are read, within the process's JSON memory budget, and nesting too deep for Python's
    parser is a 400, not a RecursionError."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit_bytes = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared_bytes = _declared_length(request)
        if declared_bytes > limit_bytes:
            raise _json_too_large(limit_bytes)
        with memory_budget.reserve(_JSON_MEMORY_FACTOR * max(declared_bytes, 1)):
            body = stream.read(limit_bytes + 1)
            if len(body) > limit_bytes:
                raise _json_too_large(limit_bytes)
            try:
                return json.loads(body)  # DRF's: NaN and Infinity are refused
            except (ValueError, RecursionError) as error:
                raise ParseError(f"JSON parse error - {error}") from error


def _declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
    except ValueError:
        return 0


def _json_too_large(limit_bytes: int) -> RecorderError:
    return RecorderError(
        code="request_too_large",
        detail=f"This body may hold at most {limit_bytes} bytes (DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE).",
        status=413,
    )
