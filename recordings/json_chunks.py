"""Reads a JSON chunk upload as a stream: the small fields parsed, the base64 chunk decoded block by
block into a temporary file, hashed on the way. Memory stays at a few blocks whatever the chunk's
size, and time grows with the body's length at C speed: runs of bytes are found with `re` and
`bytes.find`, never walked byte by byte (a body of whitespace or of escapes must not cost seconds).

What browser clients send is `JSON.stringify({session_id, chunk_index, video_chunk: "<base64>"})`,
the chunk often a `data:` URL from `FileReader.readAsDataURL`. `json.load` would hold such a body
about four times over (the bytes, the text, the string, the decoded chunk) and keep the memory.
"""

import binascii
import json
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from django.core.files.uploadedfile import UploadedFile

from .errors import RecorderError

READ_BYTES = 256 * 1024
# Everything but the chunk (ids, index, checksum, token) is small: bounded in bytes (names
# included), in members and in depth.
MAX_FIELD_BYTES = 64 * 1024
MAX_MEMBERS = 64
MAX_DEPTH = 32
_DATA_URL_PREFIX = re.compile(rb"^data:[^\s;]*(?:;[^\s;]*)*?;base64,", re.IGNORECASE)
_DATA_URL_SCAN_BYTES = 1024  # how far into the string the `;base64,` of a data: URL may be
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRING_STOP = re.compile(rb'["\\]')


class ChunkSink(Protocol):
    """Where the decoded chunk goes: Django's upload-handler protocol, e.g. the hashing
    temporary-file handler that multipart uploads use."""

    def new_file(self, *args, **kwargs) -> None: ...
    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None: ...
    def file_complete(self, file_size: int) -> UploadedFile | None: ...


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
        self._chunk_file: UploadedFile | None = None

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
        while True:
            whitespace = _WHITESPACE.match(self._buffer, self._position)
            assert whitespace is not None  # the pattern matches the empty string too
            self._position = whitespace.end()
            if self._position < len(self._buffer) or not self._fill():
                return

    def _expect(self, wanted: bytes) -> None:
        self._skip_whitespace()
        found = self._take()
        if found != wanted:
            raise malformed(f"expected {wanted.decode()!r}, found {found.decode('latin-1') or 'the end'!r}")

    def _count(self, field_bytes: int) -> None:
        self._field_bytes += field_bytes
        if self._field_bytes > MAX_FIELD_BYTES:
            raise malformed(f"the members besides the chunk hold more than {MAX_FIELD_BYTES} bytes")

    # --- the object -------------------------------------------------------------------------------

    def parse_object(self) -> JsonChunkBody:
        try:
            return self._parse_object()
        except BaseException:
            if self._chunk_file is not None:
                self._chunk_file.close()  # decoded already, but the rest of the body is bad: delete it
            raise

    def _parse_object(self) -> JsonChunkBody:
        fields: dict = {}
        self._skip_whitespace()
        if self._take() != b"{":
            raise RecorderError(code="malformed_body", detail="A JSON body must be an object.")
        self._skip_whitespace()
        if self._peek() == b"}":
            self._take()
        else:
            for _ in range(MAX_MEMBERS + 1):
                self._skip_whitespace()
                if self._peek() != b'"':
                    raise malformed("expected a member name")
                key = _loads(self._raw_string())
                self._expect(b":")
                self._skip_whitespace()
                if key in self._chunk_field_names:
                    if self._chunk_file is not None:
                        raise malformed("the body holds more than one chunk field")
                    self._chunk_file = self._chunk(key)
                else:
                    if key in fields:  # json.loads keeps the last silently; a client meant one of them
                        raise malformed(f"the member {key[:64]!r} appears twice")
                    fields[key] = _loads(self._raw_value())
                self._skip_whitespace()
                separator = self._take()
                if separator == b"}":
                    break
                if separator != b",":
                    raise malformed("expected ',' or '}' after a member")
            else:
                raise malformed(f"the body holds more than {MAX_MEMBERS} members")
        self._skip_whitespace()
        if self._peek():
            raise malformed("extra data after the object")
        return JsonChunkBody(fields=fields, chunk=self._chunk_file)

    def _raw_string(self) -> bytes:
        """A whole JSON string token, quotes and escapes included, as bytes; it counts as fields."""
        raw = bytearray(self._take())  # the opening quote
        while True:
            if self._position >= len(self._buffer) and not self._fill():
                raise malformed("a string is not terminated")
            stop = _STRING_STOP.search(self._buffer, self._position)
            end = stop.end() if stop else len(self._buffer)
            raw += self._buffer[self._position : end]
            self._position = end
            if stop is not None and stop.group() == b"\\":
                raw += self._take()  # the escaped character: json.loads judges the escape
            elif stop is not None:
                break
            if self._field_bytes + len(raw) > MAX_FIELD_BYTES:
                break  # counted below, which refuses it: a long string is not read to its end
        self._count(len(raw))
        return bytes(raw)

    def _raw_value(self) -> bytes:
        """The bytes of one JSON value other than the chunk, bounded in size and in depth."""
        raw = bytearray()
        depth = 0
        while byte := self._peek():
            if byte == b'"':
                raw += self._raw_string()
                if depth == 0:
                    break
                continue
            if byte in b"[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise malformed(f"values are nested deeper than {MAX_DEPTH} levels")
            elif byte in b"]}":
                if depth == 0:
                    break  # the end of the enclosing object
                depth -= 1
            elif byte == b"," and depth == 0:
                break
            raw += self._take()
            self._count(1)
            if depth == 0 and byte in b"]}":
                break
        if not raw.strip():
            raise malformed("a member has no value")
        return bytes(raw)

    # --- the chunk --------------------------------------------------------------------------------

    def _chunk(self, field_name: str) -> UploadedFile:
        if self._peek() != b'"':
            value = _loads(self._raw_value())
            raise RecorderError(
                code="invalid_base64",
                detail=f"{field_name!r} must be a base64 string (optionally a data: URL), not {type(value).__name__}.",
            )
        self._take()
        decoder = _Base64Decoder(field_name, self._new_sink(), self._too_large, self._max_chunk_bytes)
        try:
            text = self._chunk_text(field_name)
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

    def _chunk_text(self, field_name: str) -> Iterator[bytes]:
        """The chunk string's content in pieces (its closing quote consumed). Base64 needs no escape;
        `\\/` is allowed because some encoders escape every slash, any other escape is refused."""
        carried = b""  # a backslash that ended the previous block: its escaped character is in the next
        while True:
            if self._position >= len(self._buffer) and not self._fill():
                raise malformed("the chunk string is not terminated")
            end = self._buffer.find(b'"', self._position)
            piece = carried + self._buffer[self._position : end if end >= 0 else len(self._buffer)]
            self._position = end + 1 if end >= 0 else len(self._buffer)
            carried = b""
            if end >= 0 and _ends_with_an_odd_run_of_backslashes(piece):
                raise invalid_base64(field_name, 'an escaped quote (\\")')
            if end < 0 and _ends_with_an_odd_run_of_backslashes(piece):
                piece, carried = piece[:-1], b"\\"
            if b"\\" in piece:
                piece = piece.replace(b"\\/", b"/")
                if b"\\" in piece:
                    raise invalid_base64(field_name, "an escape other than \\/")
            if piece:
                yield piece
            if end >= 0:
                return


def _ends_with_an_odd_run_of_backslashes(piece: bytes) -> bool:
    return (len(piece) - len(piece.rstrip(b"\\"))) % 2 == 1


def _loads(raw: bytes):
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise malformed(str(error)) from error


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
        completed = self._sink.file_complete(self._size)
        assert completed is not None  # the hashing handler always completes its file
        self._file = completed
        return completed

    def discard(self) -> None:
        """Delete what was spooled so far (a failed parse leaves nothing on disk)."""
        uploaded = self._file or getattr(self._sink, "file", None)
        if uploaded is not None:
            uploaded.close()
