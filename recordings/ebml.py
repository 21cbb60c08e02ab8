"""Reads the layout of a Matroska/WebM file from its element headers, never its frames.

Only what processing must decide before ffmpeg reads a file: which tracks declare a
ContentEncoding (zlib, bzlib, lzo, header stripping or encryption of every frame). ffmpeg undoes
those encodings while it reads, so a few kilobytes of zlib become gigabytes in a stream copy.
Browsers never write them. Spec: https://www.matroska.org/technical/elements.html
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

EBML_HEADER = 0x1A45DFA3
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
SEEK = 0x4DBB
SEEK_ID = 0x53AB
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
CONTENT_ENCODINGS = 0x6D80
CLUSTER = 0x1F43B675

# A real header (EBML, SeekHead, Info, Tracks, Tags) is a few kilobytes; these bound what a hostile
# file can make the walk read before its first Cluster, and what the Tracks element may hold.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_HEADER_ELEMENTS = 10_000
MAX_TRACKS_BYTES = 1024 * 1024
MAX_CHILDREN = 256
_UNKNOWN_SIZE = -1


class NotMatroska(ValueError):
    """The bytes do not hold the Matroska structure this module reads."""


@dataclass(frozen=True)
class MatroskaLayout:
    has_tracks: bool  # a Tracks element came before the first Cluster (always so in browser files)
    encoded_tracks: list[int] = field(default_factory=list)  # TrackNumbers with a ContentEncodings
    # How often the Tracks ID's four bytes occur before the first Cluster besides the Tracks element
    # walked and the SeekHead's pointers to it: another Tracks hidden inside some element's payload,
    # where a demuxer that resyncs after a damaged element (ffmpeg does) would find and use it.
    stray_tracks_ids: int = 0


def read_layout(stream: BinaryIO) -> MatroskaLayout:
    """Walk the EBML header and the Segment's elements up to the first Cluster."""
    reader = _Reader(stream)
    element_id, size = reader.element_header()
    if element_id != EBML_HEADER or size == _UNKNOWN_SIZE:
        raise NotMatroska("no EBML header")
    reader.skip(size)
    element_id, segment_size = reader.element_header()
    if element_id != SEGMENT:
        raise NotMatroska(f"expected a Segment, found element {element_id:#x}")
    segment_start = reader.position
    segment_end = None if segment_size == _UNKNOWN_SIZE else reader.position + segment_size
    has_tracks = False
    encoded_tracks: list[int] = []
    expected_tracks_ids = 0
    for _ in range(MAX_HEADER_ELEMENTS):
        header_end = reader.position  # where the header ends, once the loop stops
        if segment_end is not None and reader.position >= segment_end:
            break
        header = reader.element_header_or_end()
        if header is None or header[0] == CLUSTER:
            break
        element_id, size = header
        if size == _UNKNOWN_SIZE:
            raise NotMatroska(f"element {element_id:#x} before the first Cluster has an unknown size")
        if element_id in (TRACKS, SEEK_HEAD) and size > MAX_TRACKS_BYTES:
            raise NotMatroska(f"a {_NAMES[element_id]} element of {size} bytes (browsers write a few kilobytes)")
        if element_id == TRACKS:
            has_tracks = True
            encoded_tracks += _encoded_tracks(reader.read(size))
            expected_tracks_ids += 1
        elif element_id == SEEK_HEAD:
            expected_tracks_ids += _pointers_to_tracks(reader.read(size))
        else:
            reader.skip(size)
    else:
        raise NotMatroska(f"more than {MAX_HEADER_ELEMENTS} elements before the first Cluster")
    occurrences = _count_occurrences(stream, TRACKS.to_bytes(4, "big"), segment_start, header_end)
    return MatroskaLayout(
        has_tracks=has_tracks, encoded_tracks=encoded_tracks, stray_tracks_ids=occurrences - expected_tracks_ids
    )


_NAMES = {TRACKS: "Tracks", SEEK_HEAD: "SeekHead"}


def _pointers_to_tracks(seek_head: bytes) -> int:
    """How many of a SeekHead's entries name the Tracks element (their SeekID holds its ID's bytes)."""
    tracks_id = TRACKS.to_bytes(4, "big")
    return sum(
        1
        for element_id, seek in _children(seek_head)
        if element_id == SEEK
        for child_id, payload in _children(seek)
        if child_id == SEEK_ID and payload == tracks_id
    )


def _count_occurrences(stream: BinaryIO, needle: bytes, start: int, end: int) -> int:
    """How often `needle` occurs in the stream's bytes [start, end), read in blocks."""
    stream.seek(start)
    count, carried, remaining = 0, b"", end - start
    while remaining > 0:
        block = stream.read(min(remaining, 1024 * 1024))
        if not block:
            break
        remaining -= len(block)
        window = carried + block
        count += window.count(needle)
        carried = window[-(len(needle) - 1) :]  # shorter than the needle: nothing is counted twice
    return count


def _encoded_tracks(tracks: bytes) -> list[int]:
    encoded = []
    for element_id, entry in _children(tracks):
        if element_id != TRACK_ENTRY:
            continue
        track_number, has_encodings = 0, False
        for child_id, payload in _children(entry):
            if child_id == TRACK_NUMBER:
                track_number = int.from_bytes(payload[:8], "big")
            has_encodings = has_encodings or child_id == CONTENT_ENCODINGS
        if has_encodings:
            encoded.append(track_number)
    return encoded


def _children(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """The child elements of a parent's payload, one at a time, at most MAX_CHILDREN of them."""
    reader = _Reader(_BytesSource(payload))
    for _ in range(MAX_CHILDREN):
        if reader.position >= len(payload):
            return
        element_id, size = reader.element_header()
        if size == _UNKNOWN_SIZE or reader.position + size > len(payload):
            raise NotMatroska(f"element {element_id:#x} overruns its parent")
        yield element_id, reader.read(size)
    raise NotMatroska(f"an element with more than {MAX_CHILDREN} children")


class _BytesSource:
    def __init__(self, payload: bytes):
        self._payload = payload
        self._position = 0

    def read(self, size: int) -> bytes:
        block = self._payload[self._position : self._position + size]
        self._position += len(block)
        return block

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = offset if whence == 0 else self._position + offset
        return self._position


class _Reader:
    def __init__(self, stream):
        self._stream = stream
        self.position = 0

    def read(self, size: int) -> bytes:
        if self.position + size > MAX_HEADER_BYTES:
            raise NotMatroska(f"the header runs past {MAX_HEADER_BYTES} bytes")
        data = self._stream.read(size)
        if len(data) != size:
            raise NotMatroska("the file ends inside an element")
        self.position += size
        return data

    def skip(self, size: int) -> None:
        if self.position + size > MAX_HEADER_BYTES:
            raise NotMatroska(f"the header runs past {MAX_HEADER_BYTES} bytes")
        self._stream.seek(size, 1)
        self.position += size

    def element_header(self) -> tuple[int, int]:
        header = self.element_header_or_end()
        if header is None:
            raise NotMatroska("the file ends before an element")
        return header

    def element_header_or_end(self) -> tuple[int, int] | None:
        """The next element's id and size, or None where the file ends."""
        first = self._stream.read(1)
        if not first:
            return None
        self.position += 1
        element_id = self._vint(first[0], keep_marker=True)
        size_first = self.read(1)[0]
        size = self._vint(size_first, keep_marker=False)
        return element_id, size

    def _vint(self, first_byte: int, *, keep_marker: bool) -> int:
        """An EBML variable-length integer: the count of leading zero bits says how many bytes follow."""
        width = 8 - first_byte.bit_length() + 1
        if not 1 <= width <= 8:
            raise NotMatroska("an invalid variable-length integer")
        value = first_byte if keep_marker else first_byte & (0xFF >> width)
        all_ones = value == (0xFF >> width)
        for byte in self.read(width - 1):
            value = (value << 8) | byte
            all_ones = all_ones and byte == 0xFF
        if not keep_marker and all_ones:
            return _UNKNOWN_SIZE
        return value
