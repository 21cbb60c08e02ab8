"""The live build: a WebM recording's video made while its chunks arrive (recordings/live.py).

Its output is compared with the full pipeline's, which stays the reference: the same packets
(ffmpeg's framemd5: timestamps, durations, sizes, hashes), the same Duration, Cues at the front.
H.264 is built in Matroska and served, as the full pipeline serves it, copied into MP4: the MP4s
of both paths are compared.
"""

import io
import random
import re
import struct
import subprocess
import time
from pathlib import Path

import numpy
import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from recordings import live, live_audio, live_webm, services, utils
from recordings.chunks import sniff_container
from recordings.models import LiveBuild, RecordingSession
from tests.conftest import (
    decode_errors,
    generate_media,
    generate_recording,
    load_chrome_set,
    output_path,
    split_bytes,
)
from tests.recorder_client import finalize, post_chunk, start, upload_all

pytestmark = pytest.mark.django_db(transaction=True)

LIVE_SETS = ["vp8_opus", "vp8_opus_60s", "vp9_opus", "video_only_vp8", "audio_opus_webm", "h264_opus_webm"]


def build_offline(chunks: list[bytes], directory: Path, *, advance_every: int = 1) -> tuple[Path, live_webm.Finished]:
    """Run the appender over `chunks` as they would arrive, `advance_every` chunks at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    output_file, cues_file = directory / "video.webm", directory / "cues.bin"
    output_file.write_bytes(b"")
    cues_file.write_bytes(b"")
    state = live_webm.new_state()
    for arrived in range(advance_every, len(chunks) + advance_every, advance_every):
        available = b"".join(chunks[: min(arrived, len(chunks))])
        state = advance_from(state, available, output_file, cues_file)
    with open(output_file, "r+b") as output, open(cues_file, "rb") as cues:
        finished = live_webm.finish(state, output, cues)
    return output_file, finished


def advance_from(state: dict, available: bytes, output_file: Path, cues_file: Path) -> dict:
    stream = live_webm.ChunkStream([_Bytes(available[state["source_offset"] :])], state["source_offset"])
    with open(output_file, "r+b") as output, open(cues_file, "r+b") as cues:
        output.seek(state["output_size"])
        return live_webm.advance(state, stream, output, cues)


class _Bytes:
    def __init__(self, data: bytes):
        self._data = data

    def read(self, size: int) -> bytes:
        block, self._data = self._data[:size], self._data[size:]
        return block

    def close(self) -> None:
        pass


def framemd5(path: Path) -> list[str]:
    report = subprocess.run(
        [utils.ffmpeg_executable(), "-v", "error", "-i", str(path), "-map", "0", "-c", "copy", "-f", "framemd5", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in report.stdout.splitlines() if not line.startswith("#")]


def ffmpeg_remux(chunks: list[bytes], directory: Path) -> Path:
    """The full pipeline's video of one stream: its remux as `utils.plan_remux` says (WebM, or MP4
    for H.264)."""
    container = sniff_container(chunks[0][:64])
    source = directory / f"source.{container}"
    source.write_bytes(b"".join(chunks))
    info = utils.probe(source, container=container)
    plan = utils.plan_remux(container, info)
    remuxed = directory / f"remuxed.{plan.output.extension}"
    utils.remux(source, remuxed, plan, container=container, limits=utils.Limits())
    return remuxed


def served_video(built: Path, directory: Path) -> Path:
    """What the processing run serves of a built video, as processing._outputs_of_live_build does:
    a WebM as it is, H.264 (in Matroska) copied into MP4."""
    container = sniff_container(built.read_bytes()[:64])
    info = utils.probe(built, container=container)
    plan = utils.plan_remux(container, info)
    if plan.output.extension == container:
        return built
    served = directory / f"served.{plan.output.extension}"
    utils.remux(built, served, plan, container=container, limits=utils.Limits())
    return served


def segment_layout(path: Path) -> dict[str, int]:
    """Where the Cues and the first Cluster are, read from the file's own SeekHead and elements."""
    data = path.read_bytes()
    position = data.index(b"\x1a\x45\xdf\xa3")
    segment_data_start = data.index(b"\x18\x53\x80\x67") + 12
    seek_cues = data.index(b"\x53\xab\x84\x1c\x53\xbb\x6b")  # SeekID = Cues
    cues_position = int.from_bytes(data[seek_cues + 7 + 3 : seek_cues + 7 + 3 + 8], "big")
    del position
    return {
        "cues": segment_data_start + cues_position,
        "first_cluster": data.index(b"\x1f\x43\xb6\x75"),
        "cue_points": data.count(b"\xbb", segment_data_start + cues_position, data.index(b"\x1f\x43\xb6\x75")),
    }


# --- The appender against ffmpeg's remux ---------------------------------------------------------


@pytest.mark.parametrize("name", LIVE_SETS)
def test_the_live_video_has_the_remuxs_packets_duration_and_cues_at_the_front(name, tmp_path):
    recording = load_chrome_set(name)
    live_video, finished = build_offline(recording.chunks, tmp_path / "live")
    # the source's DocType: webm, or matroska for H.264 (which WebM does not allow)
    assert sniff_container(live_video.read_bytes()[:64]) == sniff_container(recording.chunks[0][:64])
    remuxed = ffmpeg_remux(recording.chunks, tmp_path)
    served = served_video(live_video, tmp_path)
    assert served.suffix == remuxed.suffix == (".mp4" if name.startswith("h264") else ".webm")
    assert framemd5(served) == framemd5(remuxed)  # every packet: stream, pts, dts, duration, size, md5
    container = remuxed.suffix[1:]
    live_info, remuxed_info = utils.probe(served, container=container), utils.probe(remuxed, container=container)
    assert live_info.duration_seconds == remuxed_info.duration_seconds
    assert round(finished.duration_seconds, 3) == round(_declared_duration(remuxed), 3)
    assert live_info.stream_layout == remuxed_info.stream_layout
    layout = segment_layout(live_video)
    assert layout["cues"] < layout["first_cluster"]  # a browser reads them without fetching the tail
    assert live_video.read_bytes()[layout["cues"] : layout["cues"] + 4] == b"\x1c\x53\xbb\x6b"
    assert finished.size == live_video.stat().st_size
    if container == "mp4":  # +faststart: the index before the packets
        assert served.read_bytes().index(b"moov") < served.read_bytes().index(b"mdat")


def _declared_duration(path: Path) -> float:
    """The Duration element's value in seconds (TimecodeScale 1 ms in every file here), or an MP4's
    movie duration (its mvhd box)."""
    data = path.read_bytes()
    if path.suffix == ".mp4":
        at = data.index(b"mvhd") + 4
        assert data[at] == 0  # version 0: 32-bit times
        timescale, duration = struct.unpack(">II", data[at + 12 : at + 20])
        return duration / timescale
    at = data.index(b"\x44\x89")
    size = data[at + 2] & 0x7F
    value = data[at + 3 : at + 3 + size]
    return (struct.unpack(">d", value)[0] if size == 8 else struct.unpack(">f", value)[0]) / 1000


def track_codecs(data: bytes) -> dict[bytes, bytes | None]:
    """Each track's CodecID and CodecPrivate, read from the file's Tracks element."""
    at = data.index(b"\x16\x54\xae\x6b")
    while data[at - 3 : at] == b"\x53\xab\x84":  # a SeekHead's SeekID, not the element
        at = data.index(b"\x16\x54\xae\x6b", at + 1)
    stream = live_webm.ChunkStream([io.BytesIO(data[at:])], 0)
    _, size, _ = live_webm._element_header(stream)
    entries = [dict(live_webm._children(entry)) for _, entry in live_webm._track_entries(stream.read(size))]
    return {fields[live_webm.CODEC_ID]: fields.get(live_webm.CODEC_PRIVATE) for fields in entries}


def test_h264_is_built_in_matroska_with_its_avcc_as_it_came(tmp_path, generated_dir):
    """WebM does not allow H.264: the output's DocType says matroska, and each track's CodecPrivate
    is the source's, byte for byte: ffmpeg's avcC (profile, level, SPS, PPS), or none at all as
    Chrome writes it (its SPS and PPS come in band, in the first keyframe). A VP8 recording's
    output stays webm."""
    for name, chunks in [
        ("chrome", load_chrome_set("h264_opus_webm").chunks),
        ("ffmpeg", generate_recording("h264_opus_matroska", generated_dir).chunks),
    ]:
        source = b"".join(chunks)
        live_video, _ = build_offline(chunks, tmp_path / name)
        built = live_video.read_bytes()
        assert built.startswith(b"\x1a\x45\xdf\xa3") and b"\x42\x82\x88matroska" in built[:64]
        codecs = track_codecs(built)
        assert codecs == track_codecs(source) and set(codecs) == {b"V_MPEG4/ISO/AVC", b"A_OPUS"}
        avcc = codecs[b"V_MPEG4/ISO/AVC"]
        if name == "chrome":
            assert avcc is None
        else:
            assert avcc[0] == 1 and len(avcc) > 10  # configurationVersion 1, then the parameter sets
    vp8_video, _ = build_offline(load_chrome_set("vp8_opus").chunks, tmp_path / "vp8")
    assert b"\x42\x82\x84webm" in vp8_video.read_bytes()[:64]


def _track(number: int, kind: int, codec_id: bytes) -> tuple[int, bytes]:
    return kind, (
        live_webm._uint(live_webm.TRACK_NUMBER, number)
        + live_webm._uint(live_webm.TRACK_TYPE, kind)
        + live_webm._element(live_webm.CODEC_ID, codec_id)
    )


@pytest.mark.parametrize(
    ("tracks", "reason"),
    [
        # MP4 holds Opus, not Vorbis: the full pipeline re-encodes that audio
        ([_track(1, 1, b"V_MPEG4/ISO/AVC"), _track(2, 2, b"A_VORBIS")], "h264 video with vorbis audio"),
        # a codec in a track of the other kind: its DocType and its audio would be decided wrongly
        ([_track(1, 2, b"V_MPEG4/ISO/AVC")], "codec b'V_MPEG4/ISO/AVC' of type 2"),
        ([_track(1, 1, b"A_OPUS")], "codec b'A_OPUS' of type 1"),
        ([_track(1, 1, b"V_MPEGH/ISO/HEVC")], "codec"),
    ],
)
def test_tracks_the_live_path_does_not_build(tracks, reason):
    with pytest.raises(live_webm.NotLive, match=re.escape(reason)):
        live_webm._tracks_state(tracks)


def test_thirty_frames_a_second_get_the_remuxs_frame_rate_and_duration(tmp_path):
    """Millisecond timestamps make 30 fps gaps of 33 and 34 ms: the frame length is the remux's
    33,333,333 ns, so `fps` and Duration are the same whichever path made the video."""
    from bench.media import generate_base

    source = generate_base(tmp_path / "thirty.webm", seconds=5, fps=30, video_bitrate="300k")
    data = source.read_bytes()
    live_video, finished = build_offline(split_bytes(data, 7), tmp_path / "live")
    remuxed = ffmpeg_remux([data], tmp_path)
    assert framemd5(live_video) == framemd5(remuxed)
    live_info, remuxed_info = utils.probe(live_video, container="webm"), utils.probe(remuxed, container="webm")
    assert (live_info.fps, live_info.duration_seconds) == (remuxed_info.fps, remuxed_info.duration_seconds)
    assert live_info.fps == 30
    assert round(finished.duration_seconds, 3) == round(_declared_duration(remuxed), 3)


def test_the_output_is_the_same_whatever_the_chunks_and_advances(tmp_path):
    """Elements cut anywhere, one advance per byte-range or one for all: the same bytes."""
    data = b"".join(load_chrome_set("vp8_opus").chunks)
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(data)), 300)) + [len(data)]
    pieces = [data[start:end] for start, end in zip([0, *cuts[:-1]], cuts, strict=True)]
    one_go, _ = build_offline([data], tmp_path / "one")
    piece_by_piece, _ = build_offline(pieces, tmp_path / "pieces")
    three_at_a_time, _ = build_offline(pieces, tmp_path / "three", advance_every=3)
    assert one_go.read_bytes() == piece_by_piece.read_bytes() == three_at_a_time.read_bytes()


def test_an_advance_written_but_not_saved_is_written_again_the_same(tmp_path):
    """A process killed after writing, before its state was saved: the next one starts from the
    saved state, cuts what is past it and writes it again."""
    chunks = load_chrome_set("vp8_opus").chunks
    directory = tmp_path / "build"
    directory.mkdir()
    output_file, cues_file = directory / "video.webm", directory / "cues.bin"
    output_file.write_bytes(b"")
    cues_file.write_bytes(b"")
    saved = advance_from(live_webm.new_state(), b"".join(chunks[:4]), output_file, cues_file)
    advance_from(saved, b"".join(chunks[:6]), output_file, cues_file)  # its state is lost
    live_webm.truncate_to(saved, output_file, cues_file)
    state = advance_from(saved, b"".join(chunks), output_file, cues_file)
    with open(output_file, "r+b") as output, open(cues_file, "rb") as cues:
        live_webm.finish(state, output, cues)
    expected, _ = build_offline(chunks, tmp_path / "clean")
    assert output_file.read_bytes() == expected.read_bytes()


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda data: data.replace(b"V_VP8", b"V_XYZ", 1), "codec"),
        (lambda data: data + data, "after the first Cluster"),  # a restarted recorder's second header
        # a SimpleBlock claiming 4 GiB: refused from its header, nothing read or held
        (lambda data: data + b"\xa3\x01\x00\x00\x01\x00\x00\x00\x00" + b"\x81\x00\x00\x80", "element of"),
        # a second Timecode in a Cluster: each would cost an index record (found by a review)
        (lambda data: data + b"\xe7\x81\x00" * 1000, "second Timecode"),
        # Clusters with nothing in them: 5 bytes in, 12 out each (found by a review)
        (lambda data: data + b"\x1f\x43\xb6\x75\x80" * 1000, "without a block"),
        # a block before time 0 (a Cluster at 0, a block at -1)
        (
            lambda data: (
                data + b"\x1f\x43\xb6\x75\x01\xff\xff\xff\xff\xff\xff\xff\xe7\x81\x00\xa3\x85\x82\xff\xff\x80\x00"
            ),
            "at time -1",
        ),
        # a Tracks element claiming 40 MiB before any Cluster
        (lambda data: data[:48] + b"\x16\x54\xae\x6b\x01\x00\x00\x00\x02\x80\x00\x00" + data[48:], "element of"),
    ],
)
def test_what_the_live_path_does_not_build_is_said_and_bounded(mangle, reason, tmp_path):
    data = mangle(b"".join(load_chrome_set("vp8_opus").chunks))
    with pytest.raises(live_webm.NotLive, match=reason):
        build_offline([data], tmp_path / "build")


def test_an_element_still_arriving_is_not_read_again_with_every_chunk(tmp_path):
    """A block claiming 20 MB after a valid header: each advance until those bytes are there costs
    a comparison of sizes, not a read of what came so far."""
    data = b"".join(load_chrome_set("vp8_opus").chunks)
    directory = tmp_path / "build"
    directory.mkdir()
    output_file, cues_file = directory / "video.webm", directory / "cues.bin"
    output_file.write_bytes(b"")
    cues_file.write_bytes(b"")
    claim = data + b"\xa3\x01\x00\x00\x00\x01\x40\x00\x00" + b"\x81\x00\x00\x80"  # 20 MiB promised
    state = advance_from(live_webm.new_state(), claim, output_file, cues_file)
    assert state["needed_until"] == len(data) + 9 + 20 * 1024 * 1024
    assert state["source_offset"] == len(data)  # the block's start: read again once it is all there


def test_a_block_timestamp_going_back_is_left_to_the_full_pipeline(tmp_path):
    data = b"".join(load_chrome_set("vp8_opus").chunks)
    starts = [at for at in range(len(data)) if data.startswith(b"\x1f\x43\xb6\x75", at)]
    clusters = [data[start:end] for start, end in zip(starts, [*starts[1:], len(data)], strict=True)]
    swapped = data[: starts[0]] + b"".join([clusters[0], clusters[2], clusters[1], *clusters[3:]])
    with pytest.raises(live_webm.NotLive, match="go backwards"):
        build_offline([swapped], tmp_path / "build")


# --- Through the service -------------------------------------------------------------------------------


def build_of(session_id: str) -> LiveBuild | None:
    """The recording's build as committed. The tests' in-memory SQLite shares one cache between
    connections, where a read of a table another thread is writing fails at once ("database table
    is locked") instead of waiting as a file database does: such a read is tried again."""
    for _ in range(200):
        try:
            return LiveBuild.objects.filter(session_id=session_id).first()
        except OperationalError as error:
            if "is locked" not in str(error):
                raise
            time.sleep(0.01)
    return LiveBuild.objects.filter(session_id=session_id).first()


def test_the_build_advances_over_the_chunks_in_a_row_only(api, media_root):
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    for index in (0, 1, 3, 4):
        assert post_chunk(api, started, chunks[index], index=index).status_code == 201
    build = build_of(started.session_id)
    assert build.next_chunk_index in (1, 2)  # chunk 2 is missing: nothing after it is read yet
    assert len(chunks[0]) < build.state["source_offset"] <= len(chunks[0]) + len(chunks[1])
    assert post_chunk(api, started, chunks[2], index=2).status_code == 201
    build.refresh_from_db()
    assert build.next_chunk_index >= 4
    assert build.state["source_offset"] > sum(len(chunk) for chunk in chunks[:4])
    video = media_root / ".live" / RecordingSession.objects.get(pk=started.session_id).view_id.hex / "video.webm"
    assert video.stat().st_size >= build.state["output_size"] > 0
    for index in range(5, len(chunks)):
        post_chunk(api, started, chunks[index], index=index)
    body = finalize(api, started, total_chunks=len(chunks)).json()
    assert body["status"] == "ready"
    session = RecordingSession.objects.get(pk=started.session_id)
    assert "live_finish" in session.processing_steps and "remux" not in session.processing_steps
    assert not video.parent.exists() and build_of(started.session_id) is None


# ffmpeg's H.264 without audio, as a camera-only recording in Matroska
H264_VIDEO_ONLY_ARGS = [
    *("-an", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
    *("-f", "matroska", "-live", "1"),
]


def h264_video_only(generated_dir: Path) -> list[bytes]:
    path = generated_dir / "h264_video_only.mkv"
    if not path.exists():
        generate_media(path, seconds=4, output_args=H264_VIDEO_ONLY_ARGS)
    return split_bytes(path.read_bytes(), 5)


@pytest.mark.parametrize("name", ["vp8_opus", "audio_opus_webm", "h264_opus_webm", "h264_video_only"])
def test_a_full_pipeline_rerun_gives_the_same_packets(api, media_root, settings, tmp_path, generated_dir, name):
    """The live path's outputs are the full pipeline's: the same video container and content type
    (MP4 for H.264), the same packets, duration and metadata."""
    settings.RECORDER_KEEP_CHUNKS = True
    chunks = h264_video_only(generated_dir) if name == "h264_video_only" else load_chrome_set(name).chunks
    started = start(api)
    upload_all(api, started, chunks)
    body = finalize(api, started, total_chunks=len(chunks)).json()
    assert body["status"] == "ready"
    session = RecordingSession.objects.get(pk=started.session_id)
    assert "live_finish" in session.processing_steps and "join" not in session.processing_steps
    # H.264 costs a stream copy of the built Matroska into MP4 at Stop; a WebM is served as built
    assert ("remux" in session.processing_steps) is name.startswith("h264")
    video_name = Path(session.video_name).name
    assert video_name == ("video.mp4" if name.startswith("h264") else "video.webm")
    live_video = tmp_path / f"live{Path(video_name).suffix}"
    live_video.write_bytes(output_path(media_root, started.session_id, video_name).read_bytes())
    rerun = services.reprocess_recording(session_id=started.session_id)  # no build: the full pipeline
    assert rerun.status == "ready" and "join" in rerun.processing_steps and "live_finish" not in rerun.processing_steps
    assert (rerun.video_name, rerun.video_content_type) == (session.video_name, session.video_content_type)
    assert (rerun.audio_content_type, rerun.container, rerun.warnings) == (
        session.audio_content_type,
        session.container,
        session.warnings,
    )
    assert framemd5(live_video) == framemd5(output_path(media_root, started.session_id, video_name))
    assert rerun.duration_seconds == session.duration_seconds
    assert rerun.fps == session.fps
    assert (rerun.width, rerun.height, rerun.video_codec, rerun.audio_codec) == (
        session.width,
        session.height,
        session.video_codec,
        session.audio_codec,
    )


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        (lambda: load_chrome_set("vp8_pcm_webm").chunks, "A_PCM"),  # PCM: WebM cannot hold it
        # `new Blob(allChunksSoFar)` every time: each chunk starts the stream again
        (
            lambda: [b"".join(load_chrome_set("vp8_opus").chunks[: n + 1]) for n in range(3)],
            "after the first Cluster|an element of",  # its header read as part of an element cut short
        ),
    ],
)
def test_what_the_live_path_leaves_goes_through_the_full_pipeline(api, media_root, chunks, reason):
    chunk_list = chunks()
    started = start(api)
    upload_all(api, started, chunk_list)
    assert re.search(reason, build_of(started.session_id).abandoned_reason)
    assert RecordingSession.objects.get(pk=started.session_id).live_abandoned  # its chunks ask no more
    body = finalize(api, started, total_chunks=len(chunk_list)).json()
    assert body["status"] == "ready"
    steps = RecordingSession.objects.get(pk=started.session_id).processing_steps
    assert "join" in steps and "remux" in steps and "live_finish" not in steps


def test_a_build_whose_files_went_missing_is_made_again(api, media_root):
    """Another machine, or a lost disk: the state says more than the files hold."""
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    upload_all(api, started, chunks[:5])
    view_id = RecordingSession.objects.get(pk=started.session_id).view_id
    (media_root / ".live" / view_id.hex / "video.webm").write_bytes(b"")
    for index in range(5, len(chunks)):
        post_chunk(api, started, chunks[index], index=index)
    assert finalize(api, started, total_chunks=len(chunks)).json()["status"] == "ready"
    session = RecordingSession.objects.get(pk=started.session_id)
    assert "live_finish" in session.processing_steps
    assert session.duration_seconds == pytest.approx(8.1, abs=0.01)


def test_a_dead_processs_lease_expires_and_the_run_takes_the_build(api, media_root):
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    upload_all(api, started, chunks)
    from django.utils import timezone

    LiveBuild.objects.filter(session_id=started.session_id).update(
        lease_owner="a-killed-process", lease_expires_at=timezone.now() - timezone.timedelta(seconds=1)
    )
    assert finalize(api, started, total_chunks=len(chunks)).json()["status"] == "ready"
    assert "live_finish" in RecordingSession.objects.get(pk=started.session_id).processing_steps


def test_a_client_counting_from_one_gets_the_live_video(api, media_root):
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    for index, chunk in enumerate(chunks, start=1):
        assert post_chunk(api, started, chunk, index=index).status_code == 201
    body = finalize(api, started, total_chunks=len(chunks)).json()
    assert body["status"] == "ready"
    session = RecordingSession.objects.get(pk=started.session_id)
    assert session.first_chunk_index == 1 and "live_finish" in session.processing_steps


def test_generated_matroska_with_h264_is_built_live(api, media_root, generated_dir):
    recording = generate_recording("h264_opus_matroska", generated_dir)
    started = start(api)
    upload_all(api, started, recording.chunks)
    build = build_of(started.session_id)
    assert build.abandoned_reason == "" and build.state["video"]["codec"] == "h264"
    assert finalize(api, started, total_chunks=len(recording.chunks)).json()["status"] == "ready"
    session = RecordingSession.objects.get(pk=started.session_id)
    assert session.video_content_type == "video/mp4" and session.audio_content_type == "audio/mpeg"
    # the build's Matroska copied into MP4: the only step at Stop that reads the whole video
    assert {"live_finish", "remux"} <= session.processing_steps.keys() and "join" not in session.processing_steps
    assert session.video_codec == "h264" and session.container == "matroska"


# libx264's B-frames: blocks in decode order, each with its presentation time, which goes back
H264_B_FRAMES_ARGS = [
    *("-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-pix_fmt", "yuv420p", "-c:a", "libopus"),
    *("-f", "matroska", "-live", "1"),
]


def test_h264_with_b_frames_is_left_to_the_full_pipeline(api, media_root, generated_dir, tmp_path):
    """Block timestamps that go backwards (B-frames) are refused live, as from any codec; the full
    pipeline makes the MP4: every frame there, decodable, in its presentation order."""
    source = generated_dir / "h264_b_frames.mkv"
    if not source.exists():
        generate_media(source, seconds=4, output_args=H264_B_FRAMES_ARGS)
    data = source.read_bytes()
    with pytest.raises(live_webm.NotLive, match="timestamps of track 1 go backwards"):
        build_offline([data], tmp_path / "build")
    chunk_list = split_bytes(data, 5)
    started = start(api)
    upload_all(api, started, chunk_list)
    assert "go backwards" in build_of(started.session_id).abandoned_reason
    body = finalize(api, started, total_chunks=len(chunk_list)).json()
    assert body["status"] == "ready" and body["warnings"] == []
    session = RecordingSession.objects.get(pk=started.session_id)
    assert "join" in session.processing_steps and "live_finish" not in session.processing_steps
    assert session.video_content_type == "video/mp4" and session.video_codec == "h264"
    assert session.duration_seconds == pytest.approx(4.0, abs=0.1)
    served = output_path(media_root, started.session_id, "video.mp4")
    assert decode_errors(served) == (0, "")
    served_video_packets = [line for line in framemd5(served) if line.startswith("0,")]
    source_video_packets = [line for line in framemd5(source) if line.startswith("0,")]
    assert len(served_video_packets) == 60  # 4 s at 15 fps
    # the same frames in the same (decode) order; their presentation times are not in that order
    assert [line.split(",")[-1] for line in served_video_packets] == [
        line.split(",")[-1] for line in source_video_packets
    ]
    presentation_times = [int(line.split(",")[2]) for line in served_video_packets]
    assert presentation_times != sorted(presentation_times)


# --- The audio, in pieces ---------------------------------------------------------------------------


def decode_pcm(path: Path) -> numpy.ndarray:
    report = subprocess.run(
        [utils.ffmpeg_executable(), "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-"],
        capture_output=True,
        check=True,
    )
    return numpy.frombuffer(report.stdout, dtype="<i2").astype(float)


def test_the_mp3_made_in_pieces_is_a_continuous_encode(api, media_root, settings, tmp_path):
    """Eight pieces of ~8 s joined: the frames of one encode of the whole audio with the same
    settings, the same samples where the full pipeline's continuous MP3 has them (no gap, no drift,
    no click at a joint), and as close to the recording's own audio."""
    settings.RECORDER_KEEP_CHUNKS = True
    recording = load_chrome_set("vp8_opus_60s")
    started = start(api)
    upload_all(api, started, recording.chunks)
    session = RecordingSession.objects.get(pk=started.session_id)
    assert finalize(api, started, total_chunks=len(recording.chunks)).json()["status"] == "ready"
    session.refresh_from_db()
    assert "live_finish" in session.processing_steps and "audio" not in session.processing_steps
    live_mp3 = tmp_path / "live.mp3"
    live_mp3.write_bytes(output_path(media_root, started.session_id, "audio.mp3").read_bytes())
    video = output_path(media_root, started.session_id, "video.webm")

    # one encode of all of it, by the same function and settings
    whole_frames = whole_encode_frames(video, tmp_path / "whole.mp3")
    live_bytes = live_mp3.read_bytes()
    live_frames = [live_bytes[at : at + n] for at, n in live_audio.mp3_frames(live_mp3)]
    assert len(live_frames) == len(whole_frames) == 2498
    equal = sum(piece == frame for piece, frame in zip(live_frames, whole_frames, strict=True))
    assert equal >= len(live_frames) - 3  # measured: 2,497 of 2,498

    # against the full pipeline's MP3 (libmp3lame in one go) and the recording's own audio
    source = tmp_path / "source.webm"
    source.write_bytes(b"".join(recording.chunks))
    utils.extract_audio(source, tmp_path / "today.mp3", "mp3", container="webm", limits=utils.Limits())
    live, today, original = decode_pcm(live_mp3), decode_pcm(tmp_path / "today.mp3"), decode_pcm(source)
    assert abs(len(live) - len(original)) <= 2 * live_audio.FRAME_SAMPLES  # no drift: the end padding only
    length = min(len(live), len(today), len(original))

    def snr(signal):
        return 10 * numpy.log10((original[:length] ** 2).sum() / ((original[:length] - signal[:length]) ** 2).sum())

    assert snr(live) >= snr(today) - 1.0  # measured: 23.1 vs 22.6 dB
    for joint in range(live_audio.PIECE_FRAMES, len(live_frames), live_audio.PIECE_FRAMES):
        around = slice(joint * live_audio.FRAME_SAMPLES - 2400, joint * live_audio.FRAME_SAMPLES + 2400)
        # at every joint as close to the original as elsewhere: no gap, no offset, no click
        error_at_joint = numpy.abs(live[around] - original[around]).max()
        assert error_at_joint <= numpy.abs(today[around] - original[around]).max() * 1.5 + 200


def test_a_chunk_lost_after_the_build_read_it_leaves_a_ready_recording_without_a_hash(api, media_root):
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    upload_all(api, started, chunks)
    (media_root / "recordings" / started.session_id / "chunks" / "3").unlink()
    body = finalize(api, started, total_chunks=len(chunks)).json()
    assert body["status"] == "ready" and body["source_sha256"] is None
    assert body["duration"] == pytest.approx(8.1, abs=0.01)


def build_offline_with_audio(chunks: list[bytes], directory: Path) -> tuple[Path, Path]:
    """The live build as the service runs it, offline: each chunk appended, then every whole audio
    piece encoded; at the end the last piece and the WebM's finish. (video, MP3)."""
    directory.mkdir(parents=True, exist_ok=True)
    video, index, audio = directory / "video.webm", directory / "index.bin", directory / "audio.mp3"
    for path in (video, index, audio):
        path.write_bytes(b"")
    state, available = live_webm.new_state(), b""

    def encode(final: bool) -> None:
        while (piece := live_audio.next_piece(state, state["audio_mp3"], final=final)) is not None:
            state["audio_mp3"] = live_audio.encode_piece(
                piece,
                state,
                state["audio_mp3"],
                video_path=video,
                index_path=index,
                audio_path=audio,
                work_dir=directory,
                limits=utils.Limits(),
            )
            if final:
                return

    for chunk in chunks:
        available += chunk
        state = advance_from(state, available, video, index)
        state.setdefault("audio_mp3", live_audio.new_state(state))
        encode(final=False)
    encode(final=True)
    with open(video, "r+b") as output, open(index, "rb") as index_file:
        live_webm.finish(state, output, index_file)
    return video, audio


def whole_encode_frames(video: Path, destination: Path) -> list[bytes]:
    """The frames of one encode of all the audio with the pieces' settings (their warm-up dropped)."""
    utils.encode_mp3_piece(
        video,
        destination,
        start_sample=0,
        end_sample=None,
        lead_silence_samples=live_audio.WARM_UP_FRAMES * live_audio.FRAME_SAMPLES - live_audio.ENCODER_DELAY_SAMPLES,
        limits=utils.Limits(),
    )
    data = destination.read_bytes()
    return [data[at : at + n] for at, n in live_audio.mp3_frames(destination)[live_audio.WARM_UP_FRAMES :]]


@pytest.mark.parametrize("preskip", [0, 312])
def test_pieces_match_one_encode_whatever_the_opus_pre_skip(tmp_path, preskip):
    """Chrome writes a pre-skip of 0, Firefox 312: a decoder drops it at the start of every clip a
    piece is decoded from, so the pieces must count from there (found by a review: every piece
    after the first was 312 samples late)."""
    chunks = load_chrome_set("vp8_opus_60s").chunks[:26]
    header = bytearray(chunks[0])
    at = header.index(b"OpusHead") + 10
    header[at : at + 2] = preskip.to_bytes(2, "little")
    chunks = [bytes(header), *chunks[1:]]
    video, audio = build_offline_with_audio(chunks, tmp_path / "build")
    whole = whole_encode_frames(video, tmp_path / "whole.mp3")
    data = audio.read_bytes()
    pieces = [data[at : at + n] for at, n in live_audio.mp3_frames(audio)]
    assert len(pieces) == len(whole) > 3 * live_audio.PIECE_FRAMES  # four pieces or more
    assert sum(piece == frame for piece, frame in zip(pieces, whole, strict=True)) >= len(whole) - 2


def test_a_clip_for_a_piece_holds_that_piece_however_far_the_build_is(tmp_path):
    """A build that catches up (chunk 1 came last) encodes many pieces at once: each one's clip is
    that piece's Clusters, not everything after them (found by a review: 8.7 MB of clips for 2 MB)."""
    video, index = tmp_path / "video.webm", tmp_path / "index.bin"
    video.write_bytes(b"")
    index.write_bytes(b"")
    state = advance_from(live_webm.new_state(), b"".join(load_chrome_set("vp8_opus_60s").chunks[:30]), video, index)
    clip = tmp_path / "clip.webm"
    until = live_audio._input_end(live_audio.PIECE_FRAMES)  # the first piece: ~8 s of ~30
    live_audio._write_clip(state, video, index, clip, before=0, until=until)
    assert clip.stat().st_size < 0.45 * state["output_size"]


def test_a_build_far_behind_catches_up_in_steps(api, media_root, monkeypatch):
    monkeypatch.setattr(live, "CHUNKS_PER_STEP", 2)
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    for index in [0, *range(2, len(chunks))]:
        post_chunk(api, started, chunks[index], index=index)
    assert build_of(started.session_id).next_chunk_index <= 1  # chunk 1 is missing
    post_chunk(api, started, chunks[1], index=1)  # one advance, four steps of two chunks
    build = build_of(started.session_id)
    assert build.next_chunk_index >= len(chunks) - 1 and not build.abandoned_reason


def test_a_process_that_lost_the_lease_saves_nothing(api, media_root):
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    upload_all(api, started, chunks[:3])
    session = RecordingSession.objects.get(pk=started.session_id)
    stalled = live._take_lease(session, wait=False)
    LiveBuild.objects.filter(session_id=session.pk).update(lease_owner="another-process")  # it took over
    build = build_of(started.session_id)
    saved_state = dict(build.state)
    build.state = {**build.state, "output_size": 1}
    stalled.save(build, ["state"])  # written with the next renewal or the release
    with pytest.raises(live._LeaseLost):
        stalled.flush()
    stalled.save(build, ["state"])
    stalled.release()  # logged, nothing written
    assert build_of(started.session_id).state == saved_state
    assert LiveBuild.objects.get(session_id=session.pk).lease_owner == "another-process"


def test_a_client_counting_from_one_is_built_while_it_records(api, media_root):
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    for index, chunk in enumerate(chunks[:5], start=1):
        post_chunk(api, started, chunk, index=index)
    build = build_of(started.session_id)
    assert build.first_chunk_index == 1 and build.next_chunk_index >= 4  # not all of it left for Stop


def test_chunks_within_the_delay_make_one_advance_off_the_request(api, media_root, settings, monkeypatch):
    """With RECORDER_LIVE_BUILD_DELAY_SECONDS the chunk's request only asks; the advance runs later,
    on another thread, once for all the chunks of those seconds."""
    settings.RECORDER_LIVE_BUILD_DELAY_SECONDS = 0.5
    advances = []
    real_advance = live.advance
    monkeypatch.setattr(live, "advance", lambda session: (advances.append(session.pk), real_advance(session)))
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    for index in range(4):
        assert post_chunk(api, started, chunks[index], index=index).status_code == 201
    assert advances == [] and build_of(started.session_id) is None  # nothing done in the requests
    deadline = time.monotonic() + 10
    while (build_of(started.session_id) is None or build_of(started.session_id).next_chunk_index < 3) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)
    assert len(advances) == 1  # one advance for the four chunks
    assert build_of(started.session_id).next_chunk_index >= 3
    assert RecordingSession.objects.get(pk=started.session_id).live_requested_at is None  # nothing pending


def test_an_advance_writes_the_database_three_times(api, media_root, settings):
    """Beside the uploads every write waits for SQLite's one writer: an advance takes the lease,
    saves its state as it lets go, and clears the request; nothing else."""
    settings.RECORDER_LIVE_BUILD_DELAY_SECONDS = 60  # the requested advance waits; this test runs it
    chunks = load_chrome_set("vp8_opus_60s").chunks
    started = start(api)

    def advance_counting_writes() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            live.advance_while_requested(started.session_id, schedule_again=lambda session_id, delay_seconds: None)
        return [query["sql"].split()[0] for query in queries.captured_queries if not query["sql"].startswith("SELECT")]

    upload_all(api, started, chunks[:2])
    advance_counting_writes()  # the build starts: its row is made
    for index in range(2, 30):
        post_chunk(api, started, chunks[index], index=index)
    assert RecordingSession.objects.get(pk=started.session_id).live_requested_at is not None
    assert advance_counting_writes() == ["UPDATE", "UPDATE", "UPDATE"]
    build = build_of(started.session_id)
    assert build.next_chunk_index >= 29 and build.lease_owner == "" and build.state["audio_mp3"]["next_frame"] > 0
    assert RecordingSession.objects.get(pk=started.session_id).live_requested_at is None
    for index in range(30, len(chunks)):
        post_chunk(api, started, chunks[index], index=index)
    assert finalize(api, started, total_chunks=len(chunks)).json()["status"] == "ready"


def test_a_free_lease_is_taken_by_one_statement_and_a_held_one_is_left_after_a_read(api, media_root):
    chunks = load_chrome_set("vp8_opus_60s").chunks
    started = start(api)
    upload_all(api, started, chunks[:3])  # the build's row exists, and its lease is free
    session = RecordingSession.objects.get(pk=started.session_id)
    with CaptureQueriesContext(connection) as queries:
        lease = live._take_lease(session, wait=False)
    assert lease is not None
    assert [query["sql"].split()[0] for query in queries.captured_queries] == ["UPDATE"]
    with CaptureQueriesContext(connection) as queries:
        assert live._take_lease(session, wait=False) is None  # held: this one does not wait
    assert [query["sql"].split()[0] for query in queries.captured_queries] == ["UPDATE", "SELECT"]
    lease.release()
    assert build_of(started.session_id).lease_owner == ""


def test_a_saved_state_is_written_as_it_was_when_saved(api, media_root):
    """The build's state dict goes on changing after a save; the write that follows with the next
    renewal or the release holds what was saved."""
    chunks = load_chrome_set("vp8_opus_60s").chunks
    started = start(api)
    upload_all(api, started, chunks[:3])
    session = RecordingSession.objects.get(pk=started.session_id)
    lease = live._take_lease(session, wait=False)
    assert lease is not None
    build = build_of(started.session_id)
    saved_bytes = build.state["audio_mp3"]["bytes"]
    lease.save(build, ["state"])
    build.state["output_size"] += 1000  # changed in place after the save, at the top and deeper down
    build.state["audio_mp3"]["bytes"] += 1000
    lease.release()
    written = build_of(started.session_id).state
    assert written["output_size"] == build.state["output_size"] - 1000
    assert written["audio_mp3"]["bytes"] == saved_bytes


def test_a_piece_is_not_written_by_a_process_that_lost_the_lease(api, media_root, tmp_path):
    """An encode at idle priority on a busy machine can outlast the lease: its MP3 frames are
    appended only once the lease is known to be held (`before_writing`, the lease's renewal)."""
    chunks = load_chrome_set("vp8_opus_60s").chunks
    started = start(api)
    upload_all(api, started, chunks[:20])
    session = RecordingSession.objects.get(pk=started.session_id)
    build_dir = media_root / ".live" / session.view_id.hex
    written = (build_dir / "audio.mp3").read_bytes()
    state = build_of(started.session_id).state
    assert state["audio_mp3"]["next_frame"] > 0 and written
    state["audio_mp3"] = live_audio.new_state(state)  # the first piece again, which would cut the MP3 to 0
    piece = live_audio.next_piece(state, state["audio_mp3"], final=False)

    def lease_lost() -> None:
        raise live._LeaseLost(session.pk)

    with pytest.raises(live._LeaseLost):
        live_audio.encode_piece(
            piece,
            state,
            state["audio_mp3"],
            video_path=build_dir / "video.webm",
            index_path=build_dir / "index.bin",
            audio_path=build_dir / "audio.mp3",
            work_dir=tmp_path,
            limits=utils.Limits(),
            before_writing=lease_lost,
        )
    assert (build_dir / "audio.mp3").read_bytes() == written


@pytest.mark.parametrize("advance_seconds, next_delay", [(0.0, 0.3), (0.4, 0)])
def test_the_next_advance_waits_the_delay_unless_this_one_took_longer(
    api, media_root, settings, monkeypatch, advance_seconds, next_delay
):
    """Chunks that came during an advance ask for the next one after the delay, which gathers the
    chunks of those seconds; an advance that took longer (a build catching up) has no reason to
    wait: the next is queued at once, else a fast upload leaves its build to Stop."""
    settings.RECORDER_LIVE_BUILD_DELAY_SECONDS = 60  # the chunks' own requests wait; this test runs them
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    upload_all(api, started, chunks[:3])
    real_advance = live.advance

    def advance_while_a_chunk_comes(session):
        real_advance(session)
        post_chunk(api, started, chunks[3], index=3)
        time.sleep(advance_seconds)

    monkeypatch.setattr(live, "advance", advance_while_a_chunk_comes)
    settings.RECORDER_LIVE_BUILD_DELAY_SECONDS = 0.3
    delays = []
    live.advance_while_requested(
        started.session_id, schedule_again=lambda session_id, delay_seconds: delays.append(delay_seconds)
    )
    assert delays == [next_delay]
    assert RecordingSession.objects.get(pk=started.session_id).live_requested_at is not None
