"""Recordings holding more than one stream (cumulative Blobs, restarted recorders), chunks counted
from 1, and the warnings a recording keeps when it is ready but damaged."""

import hashlib
import io
import itertools
import os
import random
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from recordings import chunks, costs, runs, streams, utils
from recordings.models import Chunk, RecordingSession, Status, chunk_storage_name
from tests.conftest import CHROME_SETS, load_chrome_set
from tests.recorder_client import finalize, start, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cumulative(chunk_list: list[bytes]) -> list[bytes]:
    """What a client sending `new Blob(allChunksSoFar)` at every `dataavailable` uploads."""
    return [b"".join(chunk_list[: count + 1]) for count in range(len(chunk_list))]


def processed(chunk_list: list[bytes], *, first_chunk_index: int = 0, indices: list[int] | None = None):
    """Store `chunk_list` as a finalized recording's chunks (durably, through the storage API) and
    process it; the recording as processing left it."""
    indices = indices if indices is not None else [first_chunk_index + offset for offset in range(len(chunk_list))]
    session = RecordingSession.objects.create(
        upload_token_hash="0" * 64,
        status=Status.PROCESSING,
        first_chunk_index=first_chunk_index,
        expected_chunks=first_chunk_index + len(chunk_list),
        received_chunks=len(chunk_list),
        received_bytes=sum(map(len, chunk_list)),
        highest_chunk_index=max(indices),
        finalized_at=timezone.now(),
        processing_requested_at=timezone.now(),
    )
    for index, data in zip(indices, chunk_list, strict=True):
        staged = chunks.stage_upload(io.BytesIO(data), max_bytes=len(data), staging_dir=settings.RECORDER_TEMP_DIR)
        try:
            chunks.store_chunk(staged, chunk_storage_name(session.id, index))
        finally:
            staged.discard()
        Chunk.objects.create(session=session, index=index, size=staged.size, sha256=staged.sha256)
    runs.process_recording(session.id)
    session.refresh_from_db()
    return session


def warning_codes(session: RecordingSession) -> dict[str, int]:
    return {warning["code"]: warning["count"] for warning in session.warnings}


def measured_duration(data: bytes, work: Path) -> float:
    """The duration of one stream alone, measured as the pipeline measures a recording."""
    work.mkdir(parents=True, exist_ok=True)
    source, output = work / "alone.bin", work / "alone.webm"
    source.write_bytes(data)
    utils.remux(source, output, utils.plan_remux("webm", utils.probe(source)), limits=utils.Limits(timeout_seconds=60))
    return utils.probe(output).duration_seconds


def packet_times(path: Path) -> dict[int, list[float]]:
    """Every packet's decoding time in seconds, per stream, in file order (ffmpeg's framecrc)."""
    completed = subprocess.run(
        [utils.ffmpeg_executable(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0", "-c", "copy"]
        + ["-f", "framecrc", "-"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    time_bases: dict[int, float] = {}
    times: dict[int, list[float]] = {}
    for line in completed.stdout.decode().splitlines():
        if line.startswith("#tb "):
            stream, fraction = line[4:].split(":")
            numerator, denominator = fraction.strip().split("/")
            time_bases[int(stream)] = int(numerator) / int(denominator)
        elif line and not line.startswith("#"):
            stream, dts = (int(field) for field in line.split(",")[:2])
            times.setdefault(stream, []).append(dts * time_bases[stream])
    return times


def stored_video(session: RecordingSession) -> Path:
    return Path(default_storage.path(session.video_name))


# --- Cumulative clients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", ["vp8_opus", "mp4_avc1_opus"])
def test_a_cumulative_client_is_processed_as_its_last_blob(api, set_name):
    recording = load_chrome_set(set_name)
    started = start(api)
    upload_all(api, started, cumulative(recording.chunks))
    body = finalize(api, started).json()
    session = RecordingSession.objects.get(pk=started.session_id)
    assert (body["status"], session.status) == ("ready", "ready")
    # the last Blob is the whole recording: byte-identical to what an ordinary client joins
    assert session.source_sha256 == recording.joined_sha256
    assert session.source_bytes == sum(map(len, recording.chunks))
    assert session.duration_seconds == pytest.approx(recording.duration_seconds, abs=0.2)
    assert session.warnings == []
    ordinary = processed(recording.chunks)
    assert stored_video(session).read_bytes() == stored_video(ordinary).read_bytes()


def test_cumulative_blobs_that_overtook_each_other_are_processed_as_the_longest(api):
    """Index-less uploads of a cumulative client, one overtaking another: Blob 2 lands after Blob 3."""
    recording = load_chrome_set("vp8_opus")
    blobs = cumulative(recording.chunks)
    session = processed([blobs[position] for position in (0, 1, 3, 2, 4, 5, 6, 7)])
    assert session.status == "ready", session.error_detail
    assert session.source_sha256 == recording.joined_sha256  # before: blob 3 and blob 2 both kept, joined
    assert session.duration_seconds == pytest.approx(recording.duration_seconds, abs=0.2)
    assert session.warnings == []


# --- Restarted recorders --------------------------------------------------------------------------------


def test_a_restarted_recorder_is_joined_end_to_end(tmp_path):
    first = load_chrome_set("vp8_opus").chunks
    second = load_chrome_set("vp8_opus_60s").chunks[:10]  # the same codecs, a second header
    first_bytes, second_bytes = b"".join(first), b"".join(second)
    session = processed(first + second)
    assert session.status == "ready", session.error_detail
    assert session.source_sha256 == sha256(first_bytes + second_bytes)
    assert session.source_bytes == len(first_bytes) + len(second_bytes)
    expected_seconds = measured_duration(first_bytes, tmp_path / "1") + measured_duration(second_bytes, tmp_path / "2")
    assert session.duration_seconds == pytest.approx(expected_seconds, abs=0.3)
    assert warning_codes(session) == {"streams_joined": 2}
    assert "concat" in session.processing_steps
    # the second stream's timestamps continue where the first ended: no step back, no gap
    for stream, seconds in packet_times(stored_video(session)).items():
        steps = [later - earlier for earlier, later in itertools.pairwise(seconds)]
        assert min(steps) > 0, f"stream {stream} steps back"
        assert max(steps) < 0.2, f"stream {stream} has a gap of {max(steps):.3f} s"
        assert seconds[-1] == pytest.approx(expected_seconds, abs=0.3)


def test_a_resent_stream_that_differs_in_its_last_byte_is_not_taken_for_a_replacement(tmp_path):
    recording = load_chrome_set("vp8_opus")
    almost_a_prefix = bytearray(b"".join(recording.chunks[:4]))
    almost_a_prefix[-1] ^= 0x01
    whole = b"".join(recording.chunks)
    session = processed([bytes(almost_a_prefix), whole])
    assert session.status == "ready", session.error_detail
    assert session.source_sha256 == sha256(bytes(almost_a_prefix) + whole)
    assert warning_codes(session)["streams_joined"] == 2
    expected_seconds = measured_duration(bytes(almost_a_prefix), tmp_path / "1") + measured_duration(
        whole, tmp_path / "2"
    )
    assert session.duration_seconds == pytest.approx(expected_seconds, abs=0.3)


def test_a_header_in_every_chunk_is_refused_before_ffmpeg_runs():
    header = load_chrome_set("vp8_opus").chunks[0][:40]  # an EBML header, then nothing playable
    hostile = [header + index.to_bytes(2, "big") for index in range(200)]  # no stream extends another
    started = time.perf_counter()
    session = processed(hostile)
    assert (session.status, session.error_code) == ("failed", "too_many_streams")
    assert str(costs.MAX_JOINED_STREAMS) in session.error_detail
    assert set(session.processing_steps) == {"join"}  # refused while joining: no ffmpeg ran
    assert time.perf_counter() - started < 10


def test_streams_of_different_containers_are_not_joined():
    webm = b"".join(load_chrome_set("vp8_opus").chunks)
    mp4 = b"".join(load_chrome_set("mp4_avc1_opus").chunks)
    session = processed([webm, mp4])
    assert (session.status, session.error_code) == ("failed", "unsupported_media")
    assert "stream 2 is mp4" in session.error_detail


# --- Which chunks begin a stream, which streams are kept -------------------------------------------------

H1 = b"\x1a\x45\xdf\xa3" + b"\x9f\x42\x82\x84webm" + b"one"  # EBML magic: a new stream
H2 = b"\x1a\x45\xdf\xa3" + b"\x9f\x42\x82\x84webm" + b"two"
MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 12


@pytest.mark.parametrize(
    ("chunk_list", "kept"),
    [
        ([H1, b"x", b"y"], [H1 + b"xy"]),  # an ordinary recording
        ([H1, H1 + b"x", H1 + b"xy"], [H1 + b"xy"]),  # cumulative Blobs: the last one holds all
        ([H1 + b"x", H1 + b"x"], [H1 + b"x"]),  # the same Blob twice
        ([H1, b"x", H2, b"y"], [H1 + b"x", H2 + b"y"]),  # a restarted recorder
        ([H1, H1 + b"x", H2, H2 + b"y"], [H1 + b"x", H2 + b"y"]),  # cumulative, restarted
        ([H1 + b"xy", H1 + b"x"], [H1 + b"xy"]),  # an older copy that arrived late adds nothing
        ([H1, H1 + b"xy", H1 + b"x", H1 + b"xyz"], [H1 + b"xyz"]),  # ... and the next still extends
        ([H1 + b"xy", H1 + b"xz"], [H1 + b"xy", H1 + b"xz"]),  # the same length, not the same bytes
        ([H1 + b"x", H1 + b"y"], [H1 + b"x", H1 + b"y"]),  # one byte differs: not a replacement
        ([b"", H1, b"", b"x", b""], [H1 + b"x"]),  # empty Blobs hold nothing
        ([MP4, b"moof", MP4 + b"moof" + b"mdat"], [MP4 + b"moof" + b"mdat"]),
        ([b"OggS\x00a", b"OggS\x00b"], [b"OggS\x00aOggS\x00b"]),  # every Ogg page starts so: one stream
        ([b"no header", H1], [b"no header", H1]),
        ([], [b""]),
    ],
)
def test_streams_are_split_at_headers_and_dropped_when_the_next_extends_them(tmp_path, chunk_list, kept):
    names = [default_storage.save(f"streams-test/{index}", ContentFile(data)) for index, data in enumerate(chunk_list)]
    work = tmp_path / "work"
    work.mkdir()
    joined = streams.join_streams(names, work / "source", max_segments=10)
    assert [segment.path.read_bytes() for segment in joined.segments] == kept
    assert [segment.size for segment in joined.segments] == [len(data) for data in kept]
    assert (joined.size, joined.sha256) == (sum(map(len, kept)), sha256(b"".join(kept)))
    assert sorted(work.iterdir()) == sorted(segment.path for segment in joined.segments)  # dropped: deleted


def test_a_stream_head_is_read_across_chunks(tmp_path):
    names = [
        default_storage.save("head-test/0", ContentFile(H1[:5])),
        default_storage.save("head-test/1", ContentFile(H1[5:])),
    ]
    joined = streams.join_streams(names, tmp_path / "source", max_segments=1)
    assert [segment.container for segment in joined.segments] == ["webm"]


@pytest.mark.parametrize(("stream_count", "is_refused"), [(3, False), (4, True)])
def test_the_kept_streams_are_capped(tmp_path, stream_count, is_refused):
    headers = [H1[:-3] + bytes([ord("a") + number]) * 3 for number in range(stream_count)]
    names = [default_storage.save(f"cap-test/{index}", ContentFile(data)) for index, data in enumerate(headers)]
    if is_refused:
        with pytest.raises(utils.MediaError) as raised:
            streams.join_streams(names, tmp_path / "source", max_segments=3)
        assert raised.value.code == "too_many_streams"
    else:
        assert len(streams.join_streams(names, tmp_path / "source", max_segments=3).segments) == 3


def test_join_streams_compares_and_hashes_in_blocks(media_root, tmp_path):
    """Cumulative Blobs of 4, 8 and 12 MiB, then a restart: nothing near a chunk's size in memory."""
    data = os.urandom(12 * chunks.BLOCK_BYTES)
    blobs = [H1 + data[: count * 4 * chunks.BLOCK_BYTES] for count in (1, 2, 3)] + [H2 + data[:5]]
    names = [default_storage.save(f"big-streams/{index}", ContentFile(blob)) for index, blob in enumerate(blobs)]
    tracemalloc.start()
    joined = streams.join_streams(names, tmp_path / "source", max_segments=10)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [segment.size for segment in joined.segments] == [len(blobs[2]), len(blobs[3])]
    assert joined.sha256 == sha256(blobs[2] + blobs[3])
    assert peak_bytes < 6 * chunks.BLOCK_BYTES  # a few blocks in flight, not 24 MiB


# --- Chunks counted from 1 ---------------------------------------------------------------------------------


def test_chunks_counted_from_one_make_the_same_recording():
    recording = load_chrome_set("vp8_opus")
    session = processed(recording.chunks, first_chunk_index=1)
    assert session.status == "ready", session.error_detail
    assert session.source_sha256 == recording.joined_sha256
    assert session.warnings == []


@pytest.mark.parametrize(
    ("first_chunk_index", "indices"),
    [
        (1, list(range(2, 10))),  # chunk 1, the one with the header, is missing
        (1, list(range(0, 8))),  # a chunk 0 in a recording counted from 1
        (0, list(range(1, 9))),
    ],
)
def test_chunks_outside_the_counted_range_are_missing_chunks(first_chunk_index, indices):
    recording = load_chrome_set("vp8_opus")
    session = processed(recording.chunks, first_chunk_index=first_chunk_index, indices=indices)
    assert (session.status, session.error_code) == ("failed", "chunks_missing")


# --- Warnings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", CHROME_SETS)
def test_a_clean_recording_is_ready_without_warnings(set_name):
    session = processed(load_chrome_set(set_name).chunks)
    assert session.status == "ready", session.error_detail
    assert session.warnings == []


def test_chunks_stored_out_of_order_are_ready_with_a_timestamp_warning():
    recording = load_chrome_set("vp8_opus")
    raced = list(recording.chunks)
    raced[3], raced[5] = raced[5], raced[3]  # index-less uploads that overtook each other
    session = processed(raced)
    assert session.status == "ready", session.error_detail
    assert session.source_sha256 == sha256(b"".join(raced))
    counts = warning_codes(session)
    assert set(counts) == {"timestamps_out_of_order"}
    assert counts["timestamps_out_of_order"] > 0
    assert "out of order" in session.warnings[0]["detail"]


def matroska_blocks(data: bytes) -> tuple[dict[str, int], list[tuple[int, int, int]]]:
    """The track numbers by codec, and every SimpleBlock as (track, payload offset, payload size),
    of a MediaRecorder WebM: its Segment and Clusters are entered, every other element skipped."""

    def number(position: int, *, keep_marker: bool = False) -> tuple[int, int]:
        width = 9 - data[position].bit_length()
        value = data[position] if keep_marker else data[position] & (0xFF >> width)
        for byte in data[position + 1 : position + width]:
            value = (value << 8) | byte
        return value, width

    tracks: dict[str, int] = {}
    blocks = []
    track_number = None
    position = 0
    while position < len(data):
        element_id, width = number(position, keep_marker=True)
        size, size_width = number(position + width)
        position += width + size_width
        if element_id in (0x18538067, 0x1F43B675, 0x1654AE6B, 0xAE):  # Segment, Cluster, Tracks, TrackEntry
            continue
        if element_id == 0xD7:  # TrackNumber
            track_number = int.from_bytes(data[position : position + size], "big")
        elif element_id == 0x86:  # CodecID
            tracks[data[position : position + size].decode()] = track_number
        elif element_id == 0xA3:  # SimpleBlock: track number, 2 bytes of time, 1 of flags, frame
            track, track_width = number(position)
            blocks.append((track, position + track_width + 3, size - track_width - 3))
        position += size
    return tracks, blocks


def test_undecodable_audio_packets_are_counted_as_decode_errors():
    recording = load_chrome_set("vp8_opus")
    damaged = bytearray(b"".join(recording.chunks))
    tracks, blocks = matroska_blocks(bytes(damaged))
    audio_blocks = [block for block in blocks if block[0] == tracks["A_OPUS"]]
    for _, offset, size in random.Random(7).sample(audio_blocks, 10):
        # an Opus packet of code 3 with 0 frames: no decoder can read it; the structure is intact
        damaged[offset : offset + size] = b"\x03\x00" + b"\xff" * (size - 2)
    session = processed([bytes(damaged[:100_000]), bytes(damaged[100_000:])])
    assert session.status == "ready", session.error_detail
    assert session.source_sha256 == sha256(damaged)
    assert warning_codes(session) == {"decode_errors": 10}


# --- Counting a report -------------------------------------------------------------------------------------


def test_a_counted_report_counts_phrases_cut_by_blocks_and_keeps_its_size():
    line = b"[vost#0:0/copy @ 0x1] [warning] Non-monotonic DTS; previous: 2, current: 1; changing to 2.\n"
    flood = line * 400_000 + b"[fatal] the reason it stopped\n"  # 36 MiB of report
    report = utils._CountedReport((b"Non-monotonic DTS", b"[fatal] "))
    for offset in range(0, len(flood), 65_531):  # block edges fall inside the phrases
        report.feed(flood[offset : offset + 65_531])
    assert report.counts == {b"Non-monotonic DTS": 400_000, b"[fatal] ": 1}
    assert len(report.text) < utils._REPORT_BYTES + utils._REPORT_TAIL_BYTES + 100
    assert utils._failure_line(report.text) == "the reason it stopped"
