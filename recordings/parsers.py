"""A DRF parser that hands raw chunk bodies to the view as a stream, unread."""

from dataclasses import dataclass
from typing import BinaryIO

from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.parsers import BaseParser

RAW_MEDIA_TYPES = ("application/octet-stream", "video/*", "audio/*")


@dataclass(frozen=True)
class RawBody:
    stream: BinaryIO


class RawChunkParser(BaseParser):
    """Matches `application/octet-stream`, `video/*` and `audio/*` bodies.

    Returns the request stream itself so the chunk is read in blocks by the service, never
    buffered whole (DRF's other parsers read the entire body into memory).
    """

    media_type = "*/*"  # DRF matches one type per parser; the three families are checked below

    def parse(self, stream, media_type=None, parser_context=None) -> RawBody:
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
