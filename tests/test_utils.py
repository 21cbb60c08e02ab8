"""ffmpeg/moviepy steps on real media: probe, remux, audio, thumbnail."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recordings import utils
from tests.conftest import decode_errors, generate_media, load_chrome_set

CUES_ID = b"\x1c\x53\xbb\x6b"


@pytest.fixture
def raw_webm(tmp_path) -> Path:
    path = tmp_path / "raw.webm"
    path.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    return path


def test_probe_reads_a_raw_mediarecorder_file_without_duration(raw_webm):
    info = utils.probe(raw_webm)
    assert info.duration_seconds is None  # MediaRecorder writes no Duration element
    assert (info.video_codec, info.audio_codec) == ("vp8", "opus")
    assert (info.width, info.height, info.fps) == (640, 360, 20.0)
    assert info.format_name.startswith("matroska")


def test_remux_to_webm_adds_duration_and_cues_at_the_front(raw_webm, tmp_path):
    info = utils.probe(raw_webm)
    plan = utils.plan_remux("webm", info)
    assert plan.copies_everything
    output = tmp_path / "video.webm"
    utils.remux(raw_webm, output, plan, limits=utils.Limits(timeout_seconds=60))
    remuxed = utils.probe(output)
    assert remuxed.duration_seconds == pytest.approx(8.003, rel=0.1)
    assert CUES_ID in output.read_bytes()[:8192]
    assert decode_errors(output) == (0, "")


def test_remux_of_fragmented_mp4_puts_moov_first(tmp_path):
    source = tmp_path / "raw.mp4"
    source.write_bytes(b"".join(load_chrome_set("mp4_avc1_opus").chunks))
    plan = utils.plan_remux("mp4", utils.probe(source))
    output = tmp_path / "video.mp4"
    utils.remux(source, output, plan, limits=utils.Limits(timeout_seconds=60))
    data = output.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    assert utils.probe(output).duration_seconds == pytest.approx(8.007, rel=0.1)


def info(video: str = "", audio: str = "") -> utils.MediaInfo:
    return utils.MediaInfo("x", None, bool(video), bool(audio), video, audio, None, None, None)


@pytest.mark.parametrize(
    ("container", "media", "extension", "content_type", "copies"),
    [
        ("webm", info("vp8", "opus"), "webm", "video/webm", True),
        ("webm", info("vp9", ""), "webm", "video/webm", True),
        ("matroska", info("h264", "opus"), "mp4", "video/mp4", True),  # Chrome's video/webm;codecs=h264
        ("mp4", info("h264", "opus"), "mp4", "video/mp4", True),
        ("mp4", info("vp9", "opus"), "mp4", "video/mp4", True),
        ("webm", info("", "opus"), "webm", "audio/webm", True),
        ("mp4", info("", "aac"), "mp4", "audio/mp4", True),
        ("matroska", info("vp8", "pcm_f32le"), "webm", "video/webm", False),  # PCM → Opus
        ("matroska", info("h264", "pcm_s16le"), "mp4", "video/mp4", False),  # PCM → AAC
        ("matroska", info("mjpeg", "opus"), "mp4", "video/mp4", False),  # last resort: H.264
    ],
)
def test_remux_plan_prefers_stream_copy_into_a_browser_container(container, media, extension, content_type, copies):
    plan = utils.plan_remux(container, media)
    assert (plan.output.extension, plan.output.content_type, plan.copies_everything) == (
        extension,
        content_type,
        copies,
    )


def test_extract_audio_writes_audio_only(raw_webm, tmp_path):
    output = tmp_path / "audio.mp3"
    result = utils.extract_audio(raw_webm, output, "mp3", limits=utils.Limits(timeout_seconds=60))
    assert result.content_type == "audio/mpeg"
    audio = utils.probe(output)
    assert (audio.has_audio, audio.has_video, audio.audio_codec) == (True, False, "mp3")
    assert audio.duration_seconds == pytest.approx(8.1, abs=0.2)


@pytest.mark.parametrize("audio_format", sorted(utils.AUDIO_FORMATS))
def test_every_audio_format_drops_the_video(raw_webm, tmp_path, audio_format):
    output = tmp_path / f"audio.{audio_format}"
    utils.extract_audio(raw_webm, output, audio_format, limits=utils.Limits(timeout_seconds=60))
    audio = utils.probe(output)
    assert audio.has_audio and not audio.has_video


@pytest.mark.parametrize(("duration", "expected"), [(None, 0.0), (0.4, 0.2), (1.5, 0.75), (2.0, 1.0), (600, 1.0)])
def test_thumbnail_time_is_one_second_or_the_middle(duration, expected):
    assert utils.thumbnail_time(duration) == expected


@pytest.mark.parametrize("seconds", [0.5, 1.5, 5])
def test_thumbnail_of_short_and_long_clips(tmp_path, seconds):
    clip = tmp_path / "clip.webm"
    generate_media(clip, seconds=seconds, output_args=["-c:v", "libvpx", "-deadline", "realtime", "-an", "-f", "webm"])
    duration = utils.probe(clip).duration_seconds
    thumbnail = tmp_path / "thumbnail.jpg"
    utils.make_thumbnail(
        clip, thumbnail, at_seconds=utils.thumbnail_time(duration), limits=utils.Limits(timeout_seconds=60)
    )
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"


def test_probe_of_junk_is_media_undecodable(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(2000))
    with pytest.raises(utils.MediaError) as raised:
        utils.probe(junk)
    assert raised.value.code == "media_undecodable"


def test_moviepy_import_does_not_load_a_dotenv_file(tmp_path):
    """moviepy calls load_dotenv() on import; a .env in the working directory must not reach settings."""
    (tmp_path / ".env").write_text("RECORDER_DOTENV_PROBE=leaked\nDJANGO_DEBUG=1\n")
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHON_DOTENV_DISABLED", "DJANGO_DEBUG", "RECORDER_DOTENV_PROBE")
    }
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    probe = "import os, {module}; print(os.environ.get('RECORDER_DOTENV_PROBE', 'absent'))"
    results = {
        module: subprocess.run(
            [sys.executable, "-c", probe.format(module=module)],
            capture_output=True,
            text=True,
            env=environment,
            cwd=tmp_path,
            check=True,
            timeout=60,
        ).stdout.strip()
        for module in ("moviepy.config", "recordings.utils")
    }
    assert results == {"moviepy.config": "leaked", "recordings.utils": "absent"}


def test_processing_the_same_source_twice_gives_the_same_bytes(tmp_path):
    recording = load_chrome_set("vp8_opus")
    source_path = tmp_path / "source"
    source_path.write_bytes(b"".join(recording.chunks))
    info = utils.probe(source_path)
    plan = utils.plan_remux("webm", info)
    digests = set()
    for run in range(2):
        video_path = tmp_path / f"video-{run}.{plan.output.extension}"
        audio_path = tmp_path / f"audio-{run}.mp3"
        thumbnail_path = tmp_path / f"thumbnail-{run}.jpg"
        utils.remux(source_path, video_path, plan, limits=utils.Limits(timeout_seconds=60))
        utils.extract_audio(source_path, audio_path, "mp3", limits=utils.Limits(timeout_seconds=60))
        utils.make_thumbnail(video_path, thumbnail_path, at_seconds=1.0, limits=utils.Limits(timeout_seconds=60))
        digests.add(
            tuple(hashlib.sha256(path.read_bytes()).hexdigest() for path in (video_path, audio_path, thumbnail_path))
        )
    assert len(digests) == 1
