"""Reads a JSON chunk upload as a stream: the small fields parsed, the base64 chunk decoded block by
block into a temporary file, hashed on the way. Memory stays at a few blocks whatever the chunk's size.

What browser clients send is `JSON.stringify({session_id, chunk_index, video_chunk: "<base64>"})`,
the chunk often a `data:` URL from `FileReader.readAsDataURL`. `json.load` would hold such a body
about four times over (the bytes, the text, the string, the decoded chunk) and keep the memory.
"""

import binascii
import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import BinaryIO

from django.core.files.uploadedfile import UploadedFile

from .errors import RecorderError

READ_BYTES = 256 * 1024
# Everything but the chunk (ids, index, checksum, token) is small: bounded, and nested at most so deep.
MAX_FIELD_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_KEY_BYTES = 1024
_DATA_URL_PREFIX = re.compile(rb"^data:[^\s;]*(?:;[^\s;]*)*?;base64,", re.IGNORECASE)
_DATA_URL_SCAN_BYTES = 1024  # how far into the string the `;base64,` of a data: URL may be
_STRING_STOP = re.compile(rb'["\\]')
_WHITESPACE = b" \t\r\n"
_ESCAPES = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


class ChunkSink:
    """Where the decoded chunk goes: Django's upload-handler protocol (new_file, receive_data_chunk,
    file_complete), e.g. the hashing temporary-file handler multipart uploads use."""

    def new_file(self, *args, **kwargs) -> None: ...
    def receive_data_chunk(self, raw_data: bytes, start: int) -> None: ...
    def file_complete(self, file_size: int) -> UploadedFile: ...


@dataclass
class JsonChunkBody:
    fields: dict  # every member but the chunk, as json.loads gives them
    chunk: UploadedFile | None  # the decoded chunk, spooled to a temporary file; None when absent


def malformed(detail: str) -> RecorderError:
    return RecorderError(code="malformed_body", detail=f"JSON parse error - {detail}")


def invalid_base64(field_name: str, detail: str) -> RecorderError:
    return RecorderError(code="invalid_base64", detail=f"{field_name!r} is not valid base64: {detail}.")


def read_json_chunk_upload(
    stream: BinaryIO,
    *,
    chunk_field_names: Collection[str],
    new_sink: Callable[[], ChunkSink],
    too_large: Callable[[], RecorderError],
    max_chunk_bytes: int,
) -> JsonChunkBody:
    """Parse a JSON object from `stream`. The member named one of `chunk_field_names` (the first
    one only) must be a base64 string; it is decoded into a sink from `new_sink`."""
    return _Parser(stream, chunk_field_names, new_sink, too_large, max_chunk_bytes).parse_object()


class _Parser:
    def __init__(self, stream, chunk_field_names, new_sink, too_large, max_chunk_bytes):
        self._stream = stream
        self._buffer = b""
        self._position = 0
        self._at_end = False
        self._chunk_field_names = frozenset(chunk_field_names)
        self._new_sink = new_sink
        self._too_large = too_large
        self._max_chunk_bytes = max_chunk_bytes
        self._field_bytes = 0

    # --- bytes in ---------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Read the next block; False at the end of the body."""
        if self._at_end:
            return False
        block = self._stream.read(READ_BYTES)
        if not block:
            self._at_end = True
            return False
        self._buffer = self._buffer[self._position :] + block
        self._position = 0
        return True

    def _peek(self) -> bytes:
        """The next byte, without taking it (b"" at the end)."""
        if self._position >= len(self._buffer) and not self._fill():
            return b""
        return self._buffer[self._position : self._position + 1]

    def _take(self) -> bytes:
        byte = self._peek()
        self._position += len(byte)
        return byte

    def _skip_whitespace(self) -> None:
        while (byte := self._peek()) and byte in _WHITESPACE:
            self._position += 1

    def _expect(self, wanted: bytes) -> None:
        self._skip_whitespace()
        found = self._take()
        if found != wanted:
            raise malformed(f"expected {wanted.decode()!r}, found {found.decode('latin-1') or 'the end'!r}")

    # --- the object -------------------------------------------------------------------------------

    def parse_object(self) -> JsonChunkBody:
        self._chunk_file: UploadedFile | None = None
        try:
            return self._parse_object()
        except BaseException:
            if self._chunk_file is not None:
                self._chunk_file.close()  # decoded already, but the rest of the body is bad: delete it
            raise

    def _parse_object(self) -> JsonChunkBody:
        fields: dict = {}
        chunk = None
        self._skip_whitespace()
        if self._take() != b"{":
            raise RecorderError(code="malformed_body", detail="A JSON body must be an object.")
        self._skip_whitespace()
        if self._peek() == b"}":
            self._take()
        else:
            while True:
                self._skip_whitespace()
                if self._peek() != b'"':
                    raise malformed("expected a member name")
                key = json.loads(self._raw_string(MAX_KEY_BYTES))
                self._expect(b":")
                self._skip_whitespace()
                if key in self._chunk_field_names:
                    if chunk is not None:
                        raise malformed("the body holds more than one chunk field")
                    chunk = self._chunk_file = self._chunk(key)
                else:
                    fields[key] = self._value()
                self._skip_whitespace()
                separator = self._take()
                if separator == b"}":
                    break
                if separator != b",":
                    raise malformed("expected ',' or '}' after a member")
        self._skip_whitespace()
        if self._peek():
            raise malformed("extra data after the object")
        return JsonChunkBody(fields=fields, chunk=chunk)

    def _value(self):
        raw = self._raw_value()
        try:
            return json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            raise malformed(str(error)) from error

    def _raw_string(self, limit: int) -> bytes:
        """A whole JSON string token, quotes included, as bytes (at most `limit` of them)."""
        raw = bytearray(self._take())  # the opening quote
        while True:
            byte = self._take()
            if not byte:
                raise malformed("a string is not terminated")
            raw += byte
            if byte == b"\\":
                raw += self._take()
            elif byte == b'"':
                break
            if len(raw) > limit:
                raise malformed(f"a string is longer than {limit} bytes")
        return bytes(raw)

    def _raw_value(self) -> bytes:
        """The bytes of one JSON value other than the chunk, bounded in size and in depth;
        json.loads judges them."""
        raw = bytearray()
        depth = 0
        while byte := self._peek():
            if byte == b'"':
                raw += self._raw_string(MAX_FIELD_BYTES)
                if depth == 0:
                    break
            elif byte in b"[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise malformed(f"values are nested deeper than {MAX_DEPTH} levels")
                raw += self._take()
            elif byte in b"]}":
                if depth == 0:
                    break  # the end of the enclosing object
                depth -= 1
                raw += self._take()
                if depth == 0:
                    break
            elif byte == b"," and depth == 0:
                break
            else:
                raw += self._take()
            if self._field_bytes + len(raw) > MAX_FIELD_BYTES:
                raise malformed(f"the members besides the chunk hold more than {MAX_FIELD_BYTES} bytes")
        self._field_bytes += len(raw)
        if not raw.strip():
            raise malformed("a member has no value")
        return bytes(raw)

    # --- the chunk --------------------------------------------------------------------------------

    def _chunk(self, field_name: str) -> UploadedFile:
        if self._peek() != b'"':
            value = self._value()
            raise RecorderError(
                code="invalid_base64",
                detail=f"{field_name!r} must be a base64 string (optionally a data: URL), not {type(value).__name__}.",
            )
        self._take()
        decoder = _Base64Decoder(field_name, self._new_sink(), self._too_large, self._max_chunk_bytes)
        try:
            text = self._string_text()
            head = next(text, b"")
            while len(head) < _DATA_URL_SCAN_BYTES and (more := next(text, None)) is not None:
                head += more
            if head[:5].lower() == b"data:":
                prefix = _DATA_URL_PREFIX.match(head[:_DATA_URL_SCAN_BYTES])
                if prefix is None:
                    raise invalid_base64(field_name, "a data: URL without ';base64,'")
                head = head[prefix.end() :]
            decoder.feed(head)
            for piece in text:
                decoder.feed(piece)
            return decoder.finish()
        except BaseException:
            decoder.discard()
            raise

    def _string_text(self):
        """The content of the string being read, in pieces, escapes undone; the quote is consumed."""
        while True:
            if self._position >= len(self._buffer) and not self._fill():
                raise malformed("the chunk string is not terminated")
            stop = _STRING_STOP.search(self._buffer, self._position)
            if stop is None:
                piece, self._position = self._buffer[self._position :], len(self._buffer)
                yield piece
                continue
            if stop.start() > self._position:
                yield self._buffer[self._position : stop.start()]
            self._position = stop.end()
            if stop.group() == b'"':
                return
            yield self._escape()

    def _escape(self) -> bytes:
        code = self._take()
        if code == b"u":
            digits = b"".join(self._take() for _ in range(4))
            try:
                return chr(int(digits, 16)).encode("utf-8")
            except ValueError as error:
                raise malformed("a bad \\u escape") from error
        if code not in _ESCAPES:
            raise malformed("a bad escape")
        return _ESCAPES[code]


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class _Base64Decoder:
    """Strict base64 (the standard alphabet, padding only at the end), decoded in whole quads."""

    def __init__(self, field_name: str, sink: ChunkSink, too_large, max_bytes: int):
        self._field_name = field_name
        self._sink = sink
        self._too_large = too_large
        self._max_bytes = max_bytes
        self._pending = b""
        self._size = 0
        self._padded = False
        self._file: UploadedFile | None = None
        sink.new_file(field_name, "blob", "application/octet-stream", None)

    def feed(self, text: bytes) -> None:
        if not text:
            return
        if self._padded:
            raise invalid_base64(self._field_name, "data after the padding")
        self._pending += text
        whole = len(self._pending) - len(self._pending) % 4
        if whole:
            self._decode(self._pending[:whole])
            self._pending = self._pending[whole:]

    def _decode(self, quads: bytes) -> None:
        try:
            data = binascii.a2b_base64(quads, strict_mode=True)
        except binascii.Error as error:
            raise invalid_base64(self._field_name, str(error)) from error
        self._padded = quads.endswith(b"=")
        if self._size + len(data) > self._max_bytes:
            raise self._too_large()
        self._sink.receive_data_chunk(data, self._size)
        self._size += len(data)

    def finish(self) -> UploadedFile:
        if self._pending:
            raise invalid_base64(self._field_name, "Incorrect padding")
        self._file = self._sink.file_complete(self._size)
        return self._file

    def discard(self) -> None:
        """Delete what was spooled so far (a failed parse leaves nothing on disk)."""
        uploaded = self._file or getattr(self._sink, "file", None)
        if uploaded is not None:
            uploaded.close()
