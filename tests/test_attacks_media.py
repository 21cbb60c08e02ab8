"""Hostile media (issue 12): what one upload may cost processing is bounded, and the attacks found
from outside fail with a code instead of costing gigabytes. Real ffmpeg, real files."""

import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recordings import costs, utils
from recordings.models import RecordingSession
from tests import hostile_media
from tests.conftest import generate_media, load_chrome_set, skip_or_fail, split_bytes
from tests.recorder_client import finalize, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024


def files_under(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_size for path in root.rglob("*") if path.is_file()}


def chrome_recording_with_mkvmerge(directory: Path) -> Path:
    """The 8-second Chrome recording as one file, for mkvmerge (mkvtoolnix) to rewrite."""
    if shutil.which("mkvmerge") is None:
        skip_or_fail("mkvmerge is not installed (apt-get install mkvtoolnix)")
    source = directory / "source.webm"
    source.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    return source


def zlib_bomb(directory: Path, *, frames: int = 10, frame_bytes: int = 9 * MiB) -> Path:
    """A real VP8 keyframe padded with zeros to 9 MB, `frames` times, each frame zlib-compressed by
    mkvmerge: about 100 KB that ffmpeg inflates back into `frames` x 9 MB while it stream-copies,
    and that still decodes (the attack of issue 12, a tenth of its length)."""
    source = chrome_recording_with_mkvmerge(directory)
    keyframe_ivf = directory / "keyframe.ivf"
    subprocess.run(
        [utils.ffmpeg_executable(), "-v", "error", "-i", str(source), "-map", "0:v", "-c:v", "copy"]
        + ["-frames:v", "1", "-f", "ivf", str(keyframe_ivf)],
        check=True,
        timeout=60,
    )
    ivf = keyframe_ivf.read_bytes()
    (keyframe_bytes,) = struct.unpack("<I", ivf[32:36])
    padded_frame = ivf[44 : 44 + keyframe_bytes].ljust(frame_bytes, b"\0")
    bomb_ivf = directory / "zeros.ivf"
    with open(bomb_ivf, "wb") as stream:
        stream.write(ivf[:24] + struct.pack("<II", frames, 0))  # the keyframe's header, with the frame count
        for number in range(frames):
            stream.write(struct.pack("<IQ", frame_bytes, number) + padded_frame)
    bomb = directory / "bomb.mkv"
    subprocess.run(["mkvmerge", "-q", "-o", str(bomb), "--compression", "0:zlib", str(bomb_ivf)], check=True)
    bomb_ivf.unlink()
    return bomb


def test_a_zlib_compressed_track_is_refused_instead_of_inflating_into_a_huge_video(api, media_root, tmp_path):
    bomb = zlib_bomb(tmp_path)
    uploaded = bomb.read_bytes()
    started = start(api)
    upload_all(api, started, split_bytes(uploaded, 3))
    body = finalize(api, started).json()
    assert (body["status"], body["error"]["code"]) == ("failed", "unsupported_media")
    assert "ContentEncoding" in body["error"]["detail"]
    assert body["size"] is None
    # nothing written is larger than what was uploaded (before: a 94 MB video from 0.1 MB)
    assert max(files_under(media_root).values()) < len(uploaded)


def test_an_output_is_cut_off_by_the_kernel_at_its_bound_while_ffmpeg_writes(tmp_path):
    source = tmp_path / "source.webm"
    source.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    plan = utils.plan_remux("webm", utils.probe(source))
    output = tmp_path / "video.webm"
    with pytest.raises(utils.MediaError) as failure:
        utils.remux(source, output, plan, limits=utils.Limits(timeout_seconds=60, output_bytes=50_000))
    assert failure.value.code == "output_too_large"
    assert output.stat().st_size <= 50_000  # RLIMIT_FSIZE stopped the write itself, not a check afterwards


def test_a_recording_whose_video_outgrows_its_bound_fails_and_leaves_no_partial_file(api, media_root, monkeypatch):
    monkeypatch.setattr(costs, "VIDEO_GROWTH", 0.5)  # a stream copy is about 1x its input
    monkeypatch.setattr(costs, "OUTPUT_SLACK_BYTES", 0)
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    body = finalize(api, started).json()
    assert (body["status"], body["error"]["code"]) == ("failed", "output_too_large")
    stored = files_under(media_root)
    assert sorted(stored) == sorted(f"recordings/{started.session_id}/chunks/{i}" for i in range(8))


def test_a_frame_larger_than_the_limit_is_refused_before_it_is_decoded(api, tmp_path):
    # one 8192x8192 MJPEG frame (67 megapixels, past 8K UHD's 33): before, it went to the x264
    # re-encode and ffmpeg used gigabytes; the 16000x16000 frame took 2.7 GiB for 38 s
    huge = tmp_path / "huge.mkv"
    subprocess.run(
        [utils.ffmpeg_executable(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:size=8192x8192"]
        + ["-frames:v", "1", "-c:v", "mjpeg", "-f", "matroska", str(huge)],
        check=True,
        timeout=120,
    )
    started = start(api)
    upload_all(api, started, split_bytes(huge.read_bytes(), 2))
    body = finalize(api, started).json()
    assert (body["status"], body["error"]["code"]) == ("failed", "frame_too_large")
    assert "8192x8192" in body["error"]["detail"]


def test_the_frame_limit_is_a_setting(api, settings):
    settings.RECORDER_MAX_FRAME_PIXELS = 320 * 240 - 1
    recording = load_chrome_set("vp8_opus")  # 640x360
    started = start(api)
    upload_all(api, started, recording.chunks)
    assert finalize(api, started).json()["error"]["code"] == "frame_too_large"


def test_every_decoder_refuses_pictures_past_the_frame_limit_not_only_the_probe(tmp_path):
    clip = tmp_path / "clip.mkv"
    generate_media(clip, seconds=1, output_args=["-c:v", "mjpeg", "-an", "-f", "matroska"], size="640x480")
    with pytest.raises(utils.MediaError) as failure:
        utils.make_thumbnail(
            clip, tmp_path / "t.jpg", at_seconds=0, limits=utils.Limits(timeout_seconds=60, max_frame_pixels=1000)
        )
    assert failure.value.code == "frame_too_large"
    assert not (tmp_path / "t.jpg").exists() or (tmp_path / "t.jpg").stat().st_size == 0


def test_ffmpeg_past_its_memory_limit_fails_with_its_own_code(tmp_path):
    source = tmp_path / "source.webm"
    source.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    with pytest.raises(utils.MediaError) as failure:
        utils.run_ffmpeg(
            ["-i", str(source), "-c:v", "libx264", "-f", "mp4", str(tmp_path / "out.mp4")],
            limits=utils.Limits(timeout_seconds=60, memory_bytes=64 * MiB),
        )
    assert failure.value.code == "memory_limit_exceeded"
    # and the same command passes with room
    utils.run_ffmpeg(
        ["-i", str(source), "-c:v", "libx264", "-preset", "ultrafast", "-f", "mp4", str(tmp_path / "out.mp4")],
        limits=utils.Limits(timeout_seconds=60, memory_bytes=1024 * MiB),
    )


def test_ffmpeg_past_its_cpu_time_is_stopped_by_the_kernel_with_a_timeout_code(tmp_path):
    with pytest.raises(utils.MediaError) as failure:
        utils.run_ffmpeg(  # an endless encode, as fast as it can: only RLIMIT_CPU ends it, not the 60 s
            ["-f", "lavfi", "-i", "testsrc2=size=1280x720", "-c:v", "libx264", "-f", "null", "-"],
            limits=utils.Limits(timeout_seconds=60, cpu_seconds=2),
        )
    assert failure.value.code == "processing_timeout"
    assert "2 s of CPU time" in failure.value.detail


def test_ffmpeg_past_its_wall_clock_time_is_stopped_with_a_timeout_code(tmp_path):
    with pytest.raises(utils.MediaError) as failure:
        utils.run_ffmpeg(  # reads its input in real time: idle, so only the wall clock ends it
            ["-re", "-f", "lavfi", "-i", "testsrc2=size=320x240", "-c:v", "libx264", "-f", "null", "-"],
            limits=utils.Limits(timeout_seconds=1),
        )
    assert failure.value.code == "processing_timeout"
    assert "longer than 1 s" in failure.value.detail


def test_a_step_may_take_time_in_proportion_to_what_was_uploaded(settings):
    settings.RECORDER_FFMPEG_TIMEOUT_SECONDS = 3600
    settings.RECORDER_FFMPEG_SECONDS_PER_MIB = 10
    assert costs.step_limits(0, output_bytes=None).timeout_seconds == 20
    assert costs.step_limits(6 * MiB, output_bytes=None).timeout_seconds == 80
    assert costs.step_limits(10_000 * MiB, output_bytes=None).timeout_seconds == 3600


def test_a_matroska_header_built_to_be_expensive_to_read_is_refused_at_once(api, tmp_path):
    from recordings import ebml

    # a Tracks element of 2 MiB made of 2-byte children: before, 38 s of CPU and 650 MB to walk
    children = b"\xec\x80" * (1024 * 1024)
    tracks = ebml.TRACKS.to_bytes(4, "big") + b"\x01" + len(children).to_bytes(7, "big") + children
    first = load_chrome_set("vp8_opus").chunks[0]
    ebml_header = first[: 5 + (first[4] & 0x7F)]  # its ID, a one-byte size, and its payload
    segment = ebml.SEGMENT.to_bytes(4, "big") + b"\x01" + b"\xff" * 7  # of unknown size, as browsers write it
    started = start(api)
    upload_all(api, started, [ebml_header + segment + tracks])
    body = finalize(api, started).json()
    assert (body["status"], body["error"]["code"]) == ("failed", "media_undecodable")
    assert "a Tracks element of 2097152 bytes" in body["error"]["detail"]  # refused by its size, unwalked


def test_a_timed_out_recording_is_not_processed_again_by_calling_finalize(api, settings):
    settings.RECORDER_FFMPEG_TIMEOUT_SECONDS = 0  # every step times out at once
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    assert finalize(api, started).json()["error"]["code"] == "processing_timeout"
    settings.RECORDER_FFMPEG_TIMEOUT_SECONDS = 3600  # a rerun would now pass: none may happen
    for _ in range(3):
        body = finalize(api, started, total_chunks=len(recording.chunks)).json()
        assert (body["status"], body["error"]["code"]) == ("failed", "processing_timeout")
    assert RecordingSession.objects.get(pk=started.session_id).processing_runs_total == 1


def test_finalize_retries_a_transient_failure_a_bounded_number_of_times(api, settings, media_root):
    # the full pipeline reads the chunks at Stop (the live build read them as they came: tests/test_live.py)
    settings.RECORDER_LIVE_BUILD = False
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    chunk_file = media_root / "recordings" / started.session_id / "chunks" / "3"
    moved_away = chunk_file.with_name("moved")
    chunk_file.rename(moved_away)  # a storage hiccup: processing_error, which may pass on a rerun
    for _ in range(settings.RECORDER_PROCESSING_MAX_ATTEMPTS + 2):
        body = finalize(api, started).json()
        assert (body["status"], body["error"]["code"]) == ("failed", "processing_error")
    runs = RecordingSession.objects.get(pk=started.session_id).processing_runs_total
    assert runs == settings.RECORDER_PROCESSING_MAX_ATTEMPTS
    moved_away.rename(chunk_file)
    assert status_of(api, started.session_id)["status"] == "failed"  # no more runs from clients


# --- Found by attacking the fixes (a second tester, the same day) ------------------------------------


def stored_files(media_root: Path, session_id: str) -> dict[str, int]:
    return {name: size for name, size in files_under(media_root).items() if session_id in name}


def process_upload(api, data: bytes, parts: int = 1) -> tuple[dict, str]:
    started = start(api)
    upload_all(api, started, split_bytes(data, parts))
    return finalize(api, started).json(), started.session_id


def test_compressed_tracks_hidden_behind_damage_are_refused_as_well(api, media_root, tmp_path):
    source = chrome_recording_with_mkvmerge(tmp_path)
    compressed = tmp_path / "compressed.mkv"
    subprocess.run(
        ["mkvmerge", "-q", "-o", str(compressed), "--compression", "0:zlib", "--compression", "1:zlib", str(source)],
        check=True,
    )
    # before: the structure walk saw only the decoy, ffmpeg used the hidden tracks: 274 KB -> 15.6 MB, ready
    hostile = hostile_media.hidden_compressed_tracks(compressed, tmp_path / "hidden.mkv", padding_bytes=100_000)
    body, session_id = process_upload(api, hostile.read_bytes(), parts=3)
    assert (body["status"], body["error"]["code"]) == ("failed", "unsupported_media")
    assert "second Tracks element" in body["error"]["detail"]
    assert max(stored_files(media_root, session_id).values()) < hostile.stat().st_size


def test_a_damaged_matroska_structure_is_refused_whatever_it_hides(api, tmp_path):
    damaged = hostile_media.with_damaged_info(b"".join(load_chrome_set("vp8_opus").chunks))
    body, _ = process_upload(api, damaged, parts=3)
    # ffmpeg reports the damage, resyncs and reads on: what it reads then is not what was checked
    assert (body["status"], body["error"]["code"]) == ("failed", "media_undecodable")
    assert "Invalid length" in body["error"]["detail"]


def test_audio_claiming_a_sampling_rate_of_one_hertz_is_refused_before_it_is_resampled(api, media_root, tmp_path):
    hostile = hostile_media.pcm_at_one_hertz(tmp_path / "pcm.webm")  # 2,301 bytes, 2,190 s
    body, session_id = process_upload(api, hostile.read_bytes())
    # before: ready, with a 16.4 MB MP3 and a 0.9 MB video (the outputs' flat 16 MiB of slack);
    # with the slack cut, still 4 s of Opus encoding per upload for the first resampled block
    assert (body["status"], body["error"]["code"]) == ("failed", "unsupported_media")
    assert "1 Hz" in body["error"]["detail"]
    assert sum(stored_files(media_root, session_id).values()) == hostile.stat().st_size  # the chunk alone


def test_four_kilobytes_of_empty_opus_packets_do_not_become_megabytes_of_mp3(api, media_root, tmp_path):
    hostile = hostile_media.opus_of_empty_packets(tmp_path / "opus.webm")  # 4 KB, 4 minutes of silence
    body, session_id = process_upload(api, hostile.read_bytes())
    # the audio step is cut off by the kernel at 24 x the upload + 256 KiB (before: a 3.7 MB MP3)
    assert (body["status"], body["error"]["code"]) == ("failed", "output_too_large")
    assert sum(stored_files(media_root, session_id).values()) == hostile.stat().st_size


def test_an_mp4_claiming_millions_of_samples_costs_little(api, tmp_path):
    hostile = hostile_media.mp4_claiming_samples(tmp_path / "claims.mp4", samples=25_000_000)  # 1,042 bytes
    body, _ = process_upload(api, hostile.read_bytes())
    # before: the re-encode and the audio ffmpegs reached 3.4 GiB together (each under its 2 GiB
    # limit); the re-encode is now refused for its size before ffmpeg starts (and each ffmpeg has
    # 1 GiB, its probe 512 MiB)
    assert (body["status"], body["error"]["code"]) == ("failed", "unsupported_media")
    assert "re-encoding" in body["error"]["detail"]


def test_metadata_moviepy_cannot_parse_is_undecodable_not_a_retryable_error(api, tmp_path):
    hostile = hostile_media.mp4_claiming_samples(tmp_path / "no-rate.mp4", samples=1000, video_sample_delta=0)
    started = start(api)
    upload_all(api, started, [hostile.read_bytes()])
    for _ in range(3):  # before: processing_error, which every finalize ran again
        body = finalize(api, started).json()
        assert (body["status"], body["error"]["code"]) == ("failed", "media_undecodable")
    assert RecordingSession.objects.get(pk=started.session_id).processing_runs_total == 1


def test_a_re_encode_far_out_of_proportion_to_the_upload_is_refused(api, tmp_path):
    hostile = tmp_path / "static.mov"
    subprocess.run(  # a minute of one frame: QuickTime RLE codes a repeated frame in a few bytes
        [utils.ffmpeg_executable(), "-v", "error", "-f", "lavfi", "-i", "color=black:s=1280x720:r=30", "-t", "60"]
        + ["-c:v", "qtrle", "-g", "100000", "-f", "mov", str(hostile)],
        check=True,
        timeout=120,
    )
    body, _ = process_upload(api, hostile.read_bytes())
    # before: a minute of a processing slot spent on x264 for a few dozen KB, then processing_timeout
    assert (body["status"], body["error"]["code"]) == ("failed", "unsupported_media")
    assert "qtrle" in body["error"]["detail"]


# --- Found by a third attack (issue 13's features): formats ffmpeg would guess otherwise, mismatched restarts ---


def dash_manifest_disguised_as_mp4(media_path: Path) -> bytes:
    """An MPEG-DASH manifest whose first bytes read `<!--ftypjp2 -->`: `ftyp` at byte 4, so it was
    taken for MP4, while ffmpeg's own guess reads it as DASH and opens the file it names."""
    return (
        '<!--ftypjp2 -->\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT3S" '
        'minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period>'
        '<AdaptationSet mimeType="video/webm"><Representation id="1" bandwidth="300000">'
        f"<BaseURL>file://{media_path}</BaseURL></Representation></AdaptationSet></Period></MPD>"
    ).encode()


def test_a_dash_manifest_sent_as_mp4_never_makes_a_recording_of_a_file_on_the_server(api, tmp_path):
    elsewhere = tmp_path / "not-uploaded.webm"  # a media file on the server that nobody uploaded
    elsewhere.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    body, _ = process_upload(api, dash_manifest_disguised_as_mp4(elsewhere))
    assert (body["status"], body["error"]["code"]) == ("failed", "media_undecodable")  # before: ready, 86 KB of it


def test_a_dash_manifest_after_a_real_mp4_stream_is_left_out_of_the_join(api, tmp_path):
    elsewhere = tmp_path / "not-uploaded.webm"
    elsewhere.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    recording = load_chrome_set("mp4_avc1_opus")
    started = start(api)
    upload_all(api, started, [*recording.chunks, dash_manifest_disguised_as_mp4(elsewhere)])
    body = finalize(api, started).json()
    assert body["status"] == "ready", body["error"]
    assert [warning["code"] for warning in body["warnings"]] == ["streams_left_out"]
    assert body["duration"] == pytest.approx(recording.duration_seconds, abs=0.3)  # before: the other file joined in


def matroska_hiding_another_format(inner: bytes) -> bytes:
    """EBML magic and a `webm` DocType within the first bytes, but outside the EBML header (in a Void
    element): taken for WebM, while ffmpeg's guess scores Matroska low and reads `inner` as what it is."""

    def element(element_id: bytes, payload: bytes) -> bytes:
        return element_id + b"\x01" + len(payload).to_bytes(7, "big") + payload

    header = b"\x1a\x45\xdf\xa3\x84\x42\x86\x81\x01"  # EBMLVersion 1, no DocType
    segment = b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff"
    track = element(b"\xae", element(b"\xd7", b"\x01") + element(b"\x83", b"\x01") + element(b"\x86", b"V_VP8"))
    return header + segment + element(b"\xec", b"\x42\x82\x84webm" + inner) + element(b"\x16\x54\xae\x6b", track)


def test_mpeg_ts_hidden_in_a_webm_look_alike_is_not_read_as_mpeg_ts(api, tmp_path):
    ts_path = tmp_path / "inner.ts"
    subprocess.run(
        [
            utils.ffmpeg_executable(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10:duration=2",
            "-c:v",
            "libx264",
            "-f",
            "mpegts",
            str(ts_path),
        ],
        check=True,
    )
    body, _ = process_upload(api, matroska_hiding_another_format(ts_path.read_bytes()))
    assert body["status"] == "failed"  # before: ready, h264 from the MPEG-TS inside, no warning
    assert body["error"]["code"] in ("media_undecodable", "unsupported_media")


@pytest.mark.parametrize(
    ("first", "second"),
    [("vp8_opus", "vp9_opus"), ("video_only_vp8", "vp8_opus"), ("audio_opus_webm", "vp8_opus")],
)
def test_a_restart_with_other_tracks_or_codecs_is_left_out_not_scrambled_in(api, first, second):
    """Chrome restarted with the camera or microphone added or dropped, or another codec: a stream copy
    join would put one stream's packets in the other's tracks (before: `ready`, hundreds of decode errors)."""
    recordings = load_chrome_set(first), load_chrome_set(second)
    started = start(api)
    upload_all(api, started, [*recordings[0].chunks, *recordings[1].chunks])
    body = finalize(api, started).json()
    assert body["status"] == "ready", body["error"]
    assert [(warning["code"], warning["count"]) for warning in body["warnings"]] == [("streams_left_out", 1)]
    assert body["duration"] == pytest.approx(recordings[0].duration_seconds, abs=0.3)
    assert (body["has_video"], body["has_audio"]) == (recordings[0].has_video, recordings[0].has_audio)


@pytest.fixture(params=["exec wrappers", "fork"])
def spawn_way(request, monkeypatch):
    """How a child is started: util-linux's setpriv and prlimit (a vfork, the default where they
    exist), or fork with the limits set before exec (elsewhere)."""
    if request.param == "exec wrappers":
        if utils.limit_wrappers() is None:
            skip_or_fail("util-linux's setpriv (2.33+) and prlimit are not installed")
    else:
        monkeypatch.setattr(utils, "limit_wrappers", lambda: None)
    return request.param


LIMITS_REPORT = "cat /proc/self/limits >&2"


def test_every_child_starts_under_its_limits_however_it_is_spawned(spawn_way):
    limits = utils.Limits(timeout_seconds=30, memory_bytes=300 * MiB, output_bytes=5 * MiB, cpu_seconds=7)
    report = utils._run(["sh", "-c", LIMITS_REPORT], limits=limits, what="Reading limits").report
    limit_values = {line[:26].strip(): line[26:].split()[:2] for line in report.splitlines()[1:] if line[:1] == "M"}
    assert limit_values["Max cpu time"] == ["7", "7"]
    assert limit_values["Max data size"] == [str(300 * MiB)] * 2
    assert limit_values["Max file size"] == [str(5 * MiB)] * 2
    assert limit_values["Max core file size"] == ["0", "0"]


def test_a_killed_parent_takes_its_child_along_however_it_is_spawned(spawn_way, tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from recordings import utils; "
            + ("utils.limit_wrappers = lambda: None; " if spawn_way == "fork" else "")
            + f"utils._run(['sh', '-c', 'echo $$ > {pid_file}; exec sleep 60'], "
            "limits=utils.Limits(timeout_seconds=60), what='sleeping')",
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while _is_running(child_pid):
        assert time.monotonic() < deadline, f"the child {child_pid} outlived its killed parent"
        time.sleep(0.05)


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
