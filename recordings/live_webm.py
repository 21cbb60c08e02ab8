"""Builds a seekable WebM from a browser's live WebM while its chunks arrive, element by element
(or a seekable Matroska from Chrome's H.264 in Matroska, which the processing run copies into MP4).

MediaRecorder's WebM is written for streaming: the Segment and every Cluster have an unknown size,
and there is no Duration and no Cues, so a browser cannot seek it. Remuxing it with ffmpeg after
Stop costs time in proportion to its length. Here the output grows with the input instead: whole
EBML elements are copied as they arrive (only element and block headers are parsed, never frames),
each Cluster's size is written when the next one starts, and `finish` writes what only the end
knows into space reserved at the front: Cues (so a browser seeks without fetching the tail),
Duration and the Segment's size. Its cost after the last chunk does not grow with the length.

H.264 (V_MPEG4/ISO/AVC) is copied the same way (keyframes are the blocks' flag, CodecPrivate is
copied as it came); WebM does not allow it, so the output's DocType is then "matroska", else
"webm". What it does not handle raises NotLive, and the recording goes through the full pipeline
(recordings/processing.py), which is the reference: PCM in Matroska, H.264 with Vorbis (MP4 does
not hold Vorbis), encoded tracks, a restarted recorder's second header, timestamps that go
backwards (H.264's B-frames among them), more than one video or audio track. The state between
calls is a small JSON-safe dict plus two files (the output and its cue list); the caller keeps
them, so any process can continue the work.

Spec: https://www.matroska.org/technical/elements.html (and RFC 8794 for EBML).
"""

import io
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

EBML_HEADER = 0x1A45DFA3
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
TRACKS = 0x1654AE6B
CUES = 0x1C53BB6B
CLUSTER = 0x1F43B675
TIMECODE_SCALE = 0x2AD7B1
DURATION = 0x4489
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CONTENT_ENCODINGS = 0x6D80
CODEC_PRIVATE = 0x63A2
CLUSTER_TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
REFERENCE_BLOCK = 0xFB
BLOCK_DURATION = 0x9B
VOID = 0xEC
DEFAULT_DURATION = 0x23E383
CRC32 = 0xBF
TAGS = 0x1254C367

# The level-1 elements a Segment may hold: one of them inside an unknown-size Cluster ends it.
_LEVEL_1 = frozenset({SEEK_HEAD, INFO, TRACKS, CUES, CLUSTER, TAGS, 0x1043A770, 0x1941A469})
# Elements kept from the source's Info; ffmpeg's remux keeps these too (and writes its own Duration).
_INFO_KEPT = frozenset({TIMECODE_SCALE, 0x4D80, 0x5741, 0x7BA9})  # TimecodeScale, MuxingApp, WritingApp, Title
_LIVE_CODECS = {"V_VP8": "vp8", "V_VP9": "vp9", "V_MPEG4/ISO/AVC": "h264", "A_OPUS": "opus", "A_VORBIS": "vorbis"}
# Video the WebM DocType does not allow: the output says "matroska" (and is served as MP4).
_MATROSKA_VIDEO = frozenset({"h264"})
_VIDEO, _AUDIO = 1, 2

# What a hostile stream can make one call hold in memory: the largest element it reads whole
# (a browser's largest keyframe is a few hundred kilobytes) and the header before the first Cluster.
MAX_ELEMENT_BYTES = 32 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
# Browsers start a Cluster about every second and at each keyframe: 4 h is ~15,000-30,000. Each one
# costs an index record; past this the full pipeline, with its own bounds, takes the recording.
MAX_CLUSTERS = 100_000
# Block times in timecode-scale units (ms by default): far past any recording, and far from the
# 64-bit limits of the index and of DefaultDuration.
_MAX_TIME = 2**40
# Room for the Cues at the front: ~20 bytes a cue point, so ~1,600 keyframes (2.2 h of a camera's
# one keyframe every 5 s). A longer list is thinned to fit: a seek then lands a little earlier and
# the player decodes forward from there.
CUES_RESERVED_BYTES = 32 * 1024
_DEFAULT_DURATION_BYTES = 3 + 1 + 8  # its id, a 1-byte size, 8 bytes of nanoseconds
# The index file beside the output: one record per Cluster (track 0: its Timecode and position, for
# the audio pieces' decoding to start from) and one per cue point (its track).
_INDEX_RECORD = struct.Struct("<QQQ")  # time (timecode-scale units), Cluster position in the Segment, track
INDEX_RECORD_BYTES = _INDEX_RECORD.size
_UNKNOWN = -1
_SEGMENT_SIZE_UNKNOWN = b"\x01\xff\xff\xff\xff\xff\xff\xff"


class NotLive(ValueError):
    """The stream holds something the live path does not build; the full pipeline must."""


class NeedMore(Exception):
    """The element at the read position is not wholly in the available bytes yet."""


@dataclass(frozen=True)
class Finished:
    duration_seconds: float
    size: int


def new_state() -> dict:
    """The state before the first byte: fed to `advance` with the output and cue files empty."""
    return {"phase": "header", "source_offset": 0, "output_size": 0, "records": 0}


# --- Reading the source ----------------------------------------------------------------------------


class ChunkStream:
    """The available chunks as one byte stream from `offset` on, read in blocks as the parser
    needs them; `NeedMore` where the available bytes end. `files` opens each chunk in order."""

    # Below glibc's mmap threshold: blocks come from and go back to the heap, which a long catch-up
    # would otherwise leave fragmented across the server's threads.
    BLOCK_BYTES = 64 * 1024

    def __init__(self, opened: Iterable[IO[bytes]], offset: int):
        self._files = iter(opened)
        self._current: IO[bytes] | None = None
        self._buffer = bytearray()
        self._start = offset  # the source offset of self._buffer[0]
        self._position = 0  # index into self._buffer
        self._exhausted = False

    @property
    def offset(self) -> int:
        return self._start + self._position

    def peek_available(self, size: int) -> bool:
        """Whether `size` bytes from the read position are available (reading them in if need be)."""
        while len(self._buffer) - self._position < size and not self._exhausted:
            self._fill()
        return len(self._buffer) - self._position >= size

    def read(self, size: int) -> bytes:
        if not self.peek_available(size):
            raise NeedMore
        with memoryview(self._buffer) as view:
            data = bytes(view[self._position : self._position + size])  # one copy, not two
        self._position += size
        return data

    def rewind_to(self, offset: int) -> None:
        """Back to `offset`, which must still be buffered (the start of the element being read)."""
        self._position = offset - self._start

    def discard_read(self) -> None:
        """Forget what was read before the position (the caller will not rewind past it)."""
        if self._position > self.BLOCK_BYTES:
            del self._buffer[: self._position]
            self._start += self._position
            self._position = 0

    def at_end(self) -> bool:
        return not self.peek_available(1)

    def _fill(self) -> None:
        while True:
            if self._current is None:
                self._current = next(self._files, None)
                if self._current is None:
                    self._exhausted = True
                    return
            block = self._current.read(self.BLOCK_BYTES)
            if block:
                self._buffer += block
                return
            self._current.close()
            self._current = None


def _vint(stream: ChunkStream, *, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer and its width; _UNKNOWN for a size of all ones."""
    first = stream.read(1)[0]
    width = 9 - first.bit_length()
    if not 1 <= width <= 8:
        raise NotLive("an invalid variable-length integer")
    value = first if keep_marker else first & (0xFF >> width)
    rest = stream.read(width - 1)
    for byte in rest:
        value = (value << 8) | byte
    if not keep_marker and value == (1 << (7 * width)) - 1:
        return _UNKNOWN, width
    return value, width


def _element_header(stream: ChunkStream) -> tuple[int, int, int]:
    """(id, size or _UNKNOWN, header width) of the element at the read position."""
    element_id, id_width = _vint(stream, keep_marker=True)
    size, size_width = _vint(stream, keep_marker=False)
    if size != _UNKNOWN and size > MAX_ELEMENT_BYTES:
        raise NotLive(f"an element of {size} bytes (at most {MAX_ELEMENT_BYTES} are read whole)")
    return element_id, size, id_width + size_width


def _children(payload: bytes) -> list[tuple[int, bytes]]:
    """The child elements of a master element held whole in memory."""
    stream = ChunkStream([io.BytesIO(payload)], 0)
    found = []
    while not stream.at_end():
        try:
            element_id, size, _ = _element_header(stream)
            if size == _UNKNOWN:
                raise NotLive(f"element {element_id:#x} of unknown size inside a header element")
            found.append((element_id, stream.read(size)))
        except NeedMore as error:
            raise NotLive("an element overruns its parent") from error
    return found


# --- Writing EBML --------------------------------------------------------------------------------


def _id_bytes(element_id: int) -> bytes:
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def _size_bytes(size: int, width: int | None = None) -> bytes:
    if width is None:
        width = next(w for w in range(1, 9) if size < (1 << (7 * w)) - 1)
    return ((1 << (7 * width)) | size).to_bytes(width, "big")


def _element(element_id: int, payload: bytes, size_width: int | None = None) -> bytes:
    return _id_bytes(element_id) + _size_bytes(len(payload), size_width) + payload


def _uint(element_id: int, value: int, width: int | None = None) -> bytes:
    width = width or max(1, (value.bit_length() + 7) // 8)
    return _element(element_id, value.to_bytes(width, "big"))


def _void(total_bytes: int) -> bytes:
    """A Void element of exactly `total_bytes` (at least 9: its id and an 8-byte size)."""
    return _element(VOID, bytes(total_bytes - 9), size_width=8)


def _ebml_header(doc_type: bytes) -> bytes:
    return _element(
        EBML_HEADER,
        _uint(0x4286, 1)  # EBMLVersion
        + _uint(0x42F7, 1)  # EBMLReadVersion
        + _uint(0x42F2, 4)  # EBMLMaxIDLength
        + _uint(0x42F3, 8)  # EBMLMaxSizeLength
        + _element(0x4282, doc_type)  # DocType
        + _uint(0x4287, 4)  # DocTypeVersion
        + _uint(0x4285, 2),  # DocTypeReadVersion
    )


def output_doc_type(state: dict) -> str:
    """The output's DocType: "webm", or "matroska" for video WebM does not allow (H.264)."""
    video = state.get("video")
    return "matroska" if video is not None and video["codec"] in _MATROSKA_VIDEO else "webm"


_SEEK_ENTRY_BYTES = 2 + 1 + (2 + 1 + 4) + (2 + 1 + 8)  # Seek(SeekID, SeekPosition with 8 bytes)


def _seek_head(positions: dict[int, int]) -> bytes:
    entries = b"".join(
        _element(0x4DBB, _element(0x53AB, _id_bytes(element_id)) + _uint(0x53AC, position, width=8))
        for element_id, position in positions.items()
    )
    return _element(SEEK_HEAD, entries)


# --- The appender --------------------------------------------------------------------------------


def advance(state: dict, source: ChunkStream, output: BinaryIO, index: BinaryIO) -> dict:
    """Copy every whole element from `source` (positioned at state["source_offset"]) to `output`
    (positioned at its end, state["output_size"]) and return the new state. Stops where the
    available bytes end mid-element; the next call starts there. NotLive for what it cannot build."""
    state = dict(state)
    try:
        if state["phase"] == "header":
            _read_header(state, source, output)
        while True:
            element_start = source.offset
            try:
                _copy_element(state, source, output, index)
            except NeedMore:
                source.rewind_to(element_start)
                break
            state["source_offset"] = source.offset
            state.pop("needed_until", None)
            source.discard_read()
    except NeedMore:
        pass  # the header is not wholly here yet: nothing was written
    return state


def _read_header(state: dict, source: ChunkStream, output: BinaryIO) -> None:
    """The EBML header, the Segment and its elements before the first Cluster: once all are here,
    write the output's own header, with room for what `finish` writes."""
    element_id, size, _ = _element_header(source)
    if element_id != EBML_HEADER or size == _UNKNOWN:
        raise NotLive("the stream does not start with an EBML header")
    doc_type = dict(_children(_read_header_element(state, source, size))).get(0x4282, b"")
    if doc_type not in (b"webm", b"matroska"):
        raise NotLive(f"DocType {doc_type[:16]!r}")
    element_id, _, _ = _element_header(source)
    if element_id != SEGMENT:
        raise NotLive("no Segment after the EBML header")
    info = tracks = None
    while True:
        header_start = source.offset
        if header_start > MAX_HEADER_BYTES:
            raise NotLive(f"more than {MAX_HEADER_BYTES} bytes before the first Cluster")
        element_id, size, _ = _element_header(source)
        if element_id == CLUSTER:
            source.rewind_to(header_start)
            break
        if size == _UNKNOWN:
            raise NotLive(f"element {element_id:#x} before the first Cluster has an unknown size")
        payload = _read_header_element(state, source, size)
        if element_id == INFO:
            info = payload
        elif element_id == TRACKS:
            tracks = payload
        elif element_id not in (VOID, TAGS, CRC32, SEEK_HEAD):  # ours replaces any SeekHead
            raise NotLive(f"element {element_id:#x} before the first Cluster")
    if info is None or tracks is None:
        raise NotLive("no Info or Tracks before the first Cluster")
    entries = _track_entries(tracks)
    state.update(_tracks_state(entries))
    first_of_each: dict[int, bytes] = {}  # a repeated child: the first, as a demuxer reads it
    for child_id, payload in _children(info):
        if child_id in _INFO_KEPT:
            first_of_each.setdefault(child_id, payload)
    scale = first_of_each.get(TIMECODE_SCALE)
    state["timecode_scale"] = int.from_bytes(scale, "big") if scale else 1_000_000
    if not 0 < state["timecode_scale"] <= 10**9:
        raise NotLive("an impossible TimecodeScale")
    info_kept = b"".join(_element(child_id, payload) for child_id, payload in first_of_each.items())
    info_element = _element(INFO, info_kept + _element(DURATION, struct.pack(">d", 0.0)), size_width=8)
    # Video first, as ffmpeg's remux orders them (the full pipeline's output): stream 0 is the video.
    # Its entry gets room for a DefaultDuration (the frame length), known once frames have come.
    tracks_payload = b""
    default_duration_at = None
    for kind, raw in sorted(entries, key=lambda entry: entry[0] != _VIDEO):
        if kind == _VIDEO:
            children = _children(raw)
            kept = b"".join(_element(child_id, data) for child_id, data in children if child_id != DEFAULT_DURATION)
            entry = _element(TRACK_ENTRY, kept + _void(_DEFAULT_DURATION_BYTES), size_width=8)
            default_duration_at = len(tracks_payload) + len(entry) - _DEFAULT_DURATION_BYTES
        else:
            entry = _element(TRACK_ENTRY, raw)
        tracks_payload += entry
    tracks_element = _element(TRACKS, tracks_payload, size_width=8)
    seek_head_bytes = 4 + 1 + 3 * _SEEK_ENTRY_BYTES
    # Positions are relative to the start of the Segment's payload.
    info_position = seek_head_bytes
    tracks_position = info_position + len(info_element)
    cues_position = tracks_position + len(tracks_element)
    seek_head = _seek_head({INFO: info_position, TRACKS: tracks_position, CUES: cues_position})
    assert len(seek_head) == seek_head_bytes
    ebml_header = _ebml_header(output_doc_type(state).encode("ascii"))
    segment_data_start = len(ebml_header) + 4 + 8
    header = (
        ebml_header
        + _id_bytes(SEGMENT)
        + _SEGMENT_SIZE_UNKNOWN
        + seek_head
        + info_element
        + tracks_element
        + _void(CUES_RESERVED_BYTES)
    )
    output.write(header)
    state.update(
        phase="clusters",
        source_offset=source.offset,
        output_size=len(header),
        segment_data_start=segment_data_start,
        duration_offset=segment_data_start + info_position + len(info_element) - 8,
        default_duration_offset=(
            None if default_duration_at is None else segment_data_start + tracks_position + 12 + default_duration_at
        ),
        cues_offset=segment_data_start + cues_position,
        cluster_offset=None,  # the open Cluster's position in the output
        cluster_time=None,
        track_times={},  # each track's latest block time, for the order check
        end_time=0,  # the end of the latest block, in timecode-scale units: the Duration
        last_video_time=None,
        video_frame_gaps=[],  # between the first video frames: the frame length the last one is given
    )


def _read_header_element(state: dict, source: ChunkStream, size: int) -> bytes:
    """An element of the header, which all of it must fit in MAX_HEADER_BYTES: refused from its size
    alone, and not read again until the bytes it claims have all arrived."""
    if source.offset + size > MAX_HEADER_BYTES:
        raise NotLive(f"more than {MAX_HEADER_BYTES} bytes before the first Cluster")
    if not source.peek_available(size):
        state["needed_until"] = source.offset + size
        raise NeedMore
    return source.read(size)


def _track_entries(tracks: bytes) -> list[tuple[int, bytes]]:
    """Each TrackEntry's type and bytes."""
    entries = []
    for element_id, entry in _children(tracks):
        if element_id == TRACK_ENTRY:
            entries.append((int.from_bytes(dict(_children(entry)).get(TRACK_TYPE, b"")[:8], "big"), entry))
    return entries


def _tracks_state(entries: list[tuple[int, bytes]]) -> dict:
    video = audio = None
    for _, entry in entries:
        fields = dict(_children(entry))
        if CONTENT_ENCODINGS in fields:
            raise NotLive("a track with a ContentEncoding")
        number = int.from_bytes(fields.get(TRACK_NUMBER, b""), "big")
        kind = int.from_bytes(fields.get(TRACK_TYPE, b""), "big")
        codec_id = fields.get(CODEC_ID, b"").decode("ascii", "replace")
        codec = _LIVE_CODECS.get(codec_id)
        # a codec of the other kind (a "video" track of Opus) would be taken for what it is not
        kind_fits = kind in (_VIDEO, _AUDIO) and (kind == _VIDEO) == codec_id.startswith("V_")
        if codec is None or not kind_fits or not 0 < number < 128:
            raise NotLive(f"track {number}: codec {fields.get(CODEC_ID, b'')[:32]!r} of type {kind}")
        if kind == _VIDEO:
            if video is not None:
                raise NotLive("more than one video track")
            video = {"number": number, "codec": codec}
        else:
            if audio is not None:
                raise NotLive("more than one audio track")
            private = fields.get(CODEC_PRIVATE, b"")
            # OpusHead's pre-skip: the samples a decoder drops at the start of the stream (RFC 7845)
            preskip = int.from_bytes(private[10:12], "little") if private.startswith(b"OpusHead") else 0
            audio = {"number": number, "codec": codec, "preskip": preskip}
    if video is None and audio is None:
        raise NotLive("no video or audio track")
    if video is not None and video["codec"] in _MATROSKA_VIDEO and audio is not None and audio["codec"] != "opus":
        # served as MP4, which holds Opus but not Vorbis: the full pipeline re-encodes that audio
        raise NotLive(f"{video['codec']} video with {audio['codec']} audio")
    return {"video": video, "audio": audio}


def _copy_element(state: dict, source: ChunkStream, output: BinaryIO, index: BinaryIO) -> None:
    element_start = source.offset
    element_id, size, _ = _element_header(source)
    cluster_end = state.get("cluster_end")
    if cluster_end is not None and element_id != CLUSTER and element_start >= cluster_end:
        raise NotLive("an element after its Cluster's end")  # a demuxer would skip it, or resync
    if element_id == CLUSTER:
        _close_cluster(state, output)
        state["clusters"] = state.get("clusters", 0) + 1
        if state["clusters"] > MAX_CLUSTERS:
            raise NotLive(f"more than {MAX_CLUSTERS} Clusters")
        state["cluster_offset"] = state["output_size"]
        state["cluster_time"] = None
        state["cluster_blocks"] = 0
        state["cluster_end"] = None if size == _UNKNOWN else source.offset + size
        _write(state, output, _id_bytes(CLUSTER) + _SEGMENT_SIZE_UNKNOWN)
        return
    if element_id in _LEVEL_1 or element_id == EBML_HEADER:
        raise NotLive(f"element {element_id:#x} after the first Cluster (a restarted recorder, or not MediaRecorder's)")
    if state["cluster_offset"] is None:
        raise NotLive(f"element {element_id:#x} outside a Cluster")
    if size == _UNKNOWN:
        raise NotLive(f"element {element_id:#x} of unknown size inside a Cluster")
    if cluster_end is not None and source.offset + size > cluster_end:
        raise NotLive("an element overruns its Cluster")
    if not source.peek_available(size):
        # Where the available bytes must reach before this element is read again: until then an
        # advance costs nothing (an element claiming megabytes is not read again with every chunk).
        state["needed_until"] = source.offset + size
        raise NeedMore
    payload = source.read(size)
    if element_id == CLUSTER_TIMECODE:
        if state["cluster_time"] is not None:
            raise NotLive("a second Timecode in one Cluster")
        state["cluster_time"] = int.from_bytes(payload[:8], "big")
        # a Cluster's record holds the audio samples before it: where a decode starting there begins
        position = state["cluster_offset"] - state["segment_data_start"]
        _add_record(state, index, state.get("audio_samples", 0), position, 0)
    elif element_id == SIMPLE_BLOCK:
        _note_block(state, index, payload, is_keyframe=bool(payload[3] & 0x80) if len(payload) > 3 else False)
    elif element_id == BLOCK_GROUP:
        fields = _children(payload)
        block = next((data for child_id, data in fields if child_id == BLOCK), None)
        if block is None:
            raise NotLive("a BlockGroup without a Block")
        duration = next((data for child_id, data in fields if child_id == BLOCK_DURATION), None)
        is_keyframe = all(child_id != REFERENCE_BLOCK for child_id, _ in fields)
        _note_block(state, index, block, is_keyframe=is_keyframe, duration=duration)
    _write(state, output, _id_bytes(element_id) + _size_bytes(size) + payload)


def _note_block(
    state: dict, index: BinaryIO, block: bytes, *, is_keyframe: bool, duration: bytes | None = None
) -> None:
    """Read a block's header (track, timestamp, keyframe flag): for the order check, the cue list
    and the Duration. The frames themselves are copied, never read."""
    if state["cluster_time"] is None:
        raise NotLive("a block before its Cluster's Timecode")
    if len(block) < 4 or not block[0] & 0x80:
        raise NotLive("a block with a track number wider than one byte")
    track = block[0] & 0x7F
    time = state["cluster_time"] + struct.unpack(">h", block[1:3])[0]
    if not 0 <= time < _MAX_TIME:
        raise NotLive(f"a block at time {time}")
    state["cluster_blocks"] += 1
    video, audio = state["video"], state["audio"]
    if track not in {t["number"] for t in (video, audio) if t}:
        raise NotLive(f"a block of track {track}, which Tracks does not declare")
    # ffmpeg's remux counts a packet earlier than the one before it in its track as out of order
    # (the `timestamps_out_of_order` warning): the full pipeline says so, so it makes those.
    track_times = state["track_times"]
    if time < track_times.get(str(track), time):
        raise NotLive(f"timestamps of track {track} go backwards")
    state["track_times"] = {**track_times, str(track): time}
    if duration is not None:
        length = int.from_bytes(duration[:8], "big")
    elif audio and track == audio["number"] and audio["codec"] == "opus":
        length = _opus_samples(block[4:]) * 1_000_000_000 // 48_000 // state["timecode_scale"]
    else:
        length = 0  # a video frame: its length is only known at the end (see _end_time)
    if video and track == video["number"]:
        if state["last_video_time"] is not None and len(state["video_frame_gaps"]) < _FRAME_GAPS_KEPT:
            state["video_frame_gaps"] = [*state["video_frame_gaps"], time - state["last_video_time"]]
        state["last_video_time"] = time
    state["end_time"] = max(state["end_time"], time + length)
    if audio and track == audio["number"]:
        if state.get("audio_first_time") is None:
            state["audio_first_time"] = time
        if audio["codec"] == "opus":
            # What a decoder gives counts samples, not timestamps (a browser's jitter by milliseconds)
            state["audio_samples"] = state.get("audio_samples", 0) + _opus_samples(block[4:])
    cue_track = video["number"] if video else audio["number"]
    if track == cue_track and is_keyframe and state.get("cued_cluster") != state["cluster_offset"]:
        # One cue per Cluster, at its first keyframe: where a seek can start decoding.
        _add_record(state, index, time, state["cluster_offset"] - state["segment_data_start"], track)
        state["cued_cluster"] = state["cluster_offset"]


def _add_record(state: dict, index: BinaryIO, time: int, cluster_position: int, track: int) -> None:
    index.seek(state["records"] * _INDEX_RECORD.size)
    index.write(_INDEX_RECORD.pack(time, cluster_position, track))
    state["records"] += 1


def cluster_starts(state: dict, index: BinaryIO) -> list[tuple[int, int]]:
    """(Opus samples before it, output position) of every Cluster so far, from the index file."""
    index.seek(0)
    records = _records(index.read(state["records"] * _INDEX_RECORD.size))
    return [
        (time, position + state["segment_data_start"])
        for time, position, track in map(_INDEX_RECORD.unpack, records)
        if track == 0
    ]


# Video blocks carry no duration; like ffmpeg, which gives a frame 1 / the frame rate it measured
# from the first frames, the last frame lasts that long.
_FRAME_GAPS_KEPT = 32


def _frame_length_ns(state: dict) -> int:
    """A video frame's length in nanoseconds, as ffmpeg measures it from the first frames: their
    gaps' mean (the middle half of them: a dropped frame or a stall does not count), as a whole
    frame rate when it is within 1.5 % of one (millisecond timestamps make 30 fps 33, 33, 34 ms).
    0 when unknown."""
    gaps = sorted(gap for gap in state["video_frame_gaps"] if gap > 0)
    if not gaps:
        return 0
    middle = gaps[len(gaps) // 4 : len(gaps) - len(gaps) // 4] or gaps
    mean_ns = sum(middle) * state["timecode_scale"] / len(middle)
    rate = 1e9 / mean_ns
    whole_rate = round(rate)
    if whole_rate >= 1 and abs(rate - whole_rate) <= 0.015 * whole_rate:
        return round(1e9 / whole_rate)
    return round(mean_ns)


def _end_time(state: dict) -> float:
    """The Duration in timecode-scale units: the end of the last audio packet or video frame."""
    end = float(state["end_time"])
    if state["last_video_time"] is not None:
        end = max(end, state["last_video_time"] + _frame_length_ns(state) / state["timecode_scale"])
    return end


# Samples per Opus frame for each of the 32 configurations of the TOC byte (RFC 6716, 3.1).
_OPUS_FRAME_SAMPLES = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def _opus_samples(packet: bytes) -> int:
    """The samples (at 48 kHz) an Opus packet decodes to, from its TOC byte and frame count."""
    if not packet:
        return 0
    toc = packet[0]
    frames = {0: 1, 1: 2, 2: 2}.get(toc & 0x3)
    if frames is None:
        frames = packet[1] & 0x3F if len(packet) > 1 else 0
    return _OPUS_FRAME_SAMPLES[toc >> 3] * frames


def _close_cluster(state: dict, output: BinaryIO) -> None:
    if state["cluster_offset"] is None:
        return
    if not state.get("cluster_blocks"):
        raise NotLive("a Cluster without a block")  # browsers never write one; each costs 12 bytes here
    size = state["output_size"] - state["cluster_offset"] - 12
    output.seek(state["cluster_offset"] + 4)
    output.write(_size_bytes(size, width=8))
    output.seek(state["output_size"])
    state["cluster_offset"] = None


def _write(state: dict, output: BinaryIO, data: bytes) -> None:
    output.write(data)
    state["output_size"] += len(data)


# --- The end -----------------------------------------------------------------------------------------


def finish(state: dict, output: BinaryIO, index: BinaryIO) -> Finished:
    """Close the last Cluster and write the Cues, the Duration and the Segment's size: the output
    is then a complete, seekable WebM. Its cost is the cue list's, not the recording's."""
    if state["phase"] != "clusters" or state.get("cued_cluster") is None:
        raise NotLive("the stream ended before its first keyframe")
    state = dict(state)
    _close_cluster(state, output)
    index.seek(0)
    records = [_INDEX_RECORD.unpack(record) for record in _records(index.read(state["records"] * _INDEX_RECORD.size))]
    points = [record for record in records if record[2] != 0]
    cues_element = _cues_element(points, room=CUES_RESERVED_BYTES)
    output.seek(state["cues_offset"])
    output.write(cues_element + _void(CUES_RESERVED_BYTES - len(cues_element)))
    output.seek(state["duration_offset"])
    end_time = _end_time(state)
    output.write(struct.pack(">d", float(end_time)))
    frame_length_ns = _frame_length_ns(state)
    if state["default_duration_offset"] is not None and 0 < frame_length_ns < 2**56:
        output.seek(state["default_duration_offset"])
        output.write(_uint(DEFAULT_DURATION, frame_length_ns, width=8))
    output.seek(state["segment_data_start"] - 8)
    output.write(_size_bytes(state["output_size"] - state["segment_data_start"], width=8))
    output.flush()
    os.fsync(output.fileno())
    return Finished(duration_seconds=end_time * state["timecode_scale"] / 1_000_000_000, size=state["output_size"])


def _records(data: bytes) -> list[bytes]:
    return [data[start : start + _INDEX_RECORD.size] for start in range(0, len(data), _INDEX_RECORD.size)]


def _cues_element(points: list[tuple[int, int, int]], *, room: int) -> bytes:
    """Every cue point if they fit in `room` (with a Void of at least 9 bytes after them), else every
    second one, and so on."""
    step = 1
    while True:
        payload = b"".join(
            _element(
                0xBB,  # CuePoint
                _uint(0xB3, time)  # CueTime
                + _element(0xB7, _uint(0xF7, track) + _uint(0xF1, position)),  # CueTrackPositions
            )
            for time, position, track in points[::step]
        )
        cues_element = _element(CUES, payload, size_width=4)
        if len(cues_element) + 9 <= room:
            return cues_element
        step *= 2


def truncate_to(state: dict, output_path: Path, index_path: Path) -> None:
    """Cut the files back to what `state` covers: a run that died after writing, before its state
    was saved, left bytes past it; the next run writes them again."""
    with open(output_path, "r+b") as output:
        output.truncate(state["output_size"])
    with open(index_path, "r+b") as index:
        index.truncate(state["records"] * _INDEX_RECORD.size)
