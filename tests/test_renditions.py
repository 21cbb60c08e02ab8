"""The MP4 rendition (recordings/renditions.py): every real Chrome fixture set and generated media
through the real pipeline, checked with Debian's ffprobe (an ffmpeg other than the one that made
it): H.264 in a profile and level iPhones decode, yuv420p, even frame size, AAC-LC, `moov` before
`mdat`; and what a hostile or unlucky recording makes it cost."""

import datetime
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from recordings import rendition_runs, renditions, tasks, utils
from recordings.models import RecordingSession, Rendition
from tests import hostile_media
from tests.conftest import (
    CHROME_SETS,
    Recording,
    generate_media,
    generate_recording,
    load_chrome_set,
    skip_or_fail,
    split_bytes,
)
from tests.recorder_client import finalize, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)

IPHONE_PROFILES = {"Constrained Baseline", "Baseline", "Main", "High"}
# The sets whose video is H.264 already: copied, never re-encoded.
H264_SETS = {"h264_opus_webm", "mp4_avc1_opus"}


@pytest.fixture
def renditions_on(settings):
    settings.RECORDER_RENDITIONS = True
    return settings


@pytest.fixture(scope="session")
def ffprobe() -> str:
    path = shutil.which("ffprobe")
    if path is None:
        skip_or_fail("Debian's ffprobe is not installed (apt install ffmpeg): the rendition is checked with it")
    return path


def probe_json(ffprobe: str, path: Path) -> dict:
    completed = subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(completed.stdout)


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types, in file order."""
    boxes = []
    with path.open("rb") as stream:
        while header := stream.read(8):
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            boxes.append(kind)
            if size == 1:
                size = int.from_bytes(stream.read(8), "big") - 8
            elif size == 0:
                break
            stream.seek(size - 8, 1)
    return boxes


def record(api, recording: Recording) -> str:
    started = start(api, mime_type=recording.mime_type)
    upload_all(api, started, recording.chunks)
    response = finalize(api, started, is_final=True, total_chunks=len(recording.chunks))
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "ready", response.json()
    return started.session_id


def rendition_entry(body: dict, name: str = "mp4") -> dict | None:
    return next((entry for entry in body["renditions"] if entry["name"] == name), None)


def served_bytes(api, url: str, **headers) -> tuple[int, bytes, object]:
    response = api.get(url, headers=headers)
    body = b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content
    return response.status_code, body, response


def check_plays_everywhere(ffprobe: str, path: Path, *, has_video: bool, has_audio: bool) -> dict:
    """ffprobe's view of the file, after asserting everything an iPhone needs of it."""
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    probed = probe_json(ffprobe, path)
    streams = {stream["codec_type"]: stream for stream in probed["streams"]}
    assert set(streams) == {kind for kind, present in (("video", has_video), ("audio", has_audio)) if present}
    if has_video:
        video = streams["video"]
        assert video["codec_name"] == "h264" and video["codec_tag_string"] == "avc1", video
        assert video["profile"] in IPHONE_PROFILES, video["profile"]
        assert 10 <= video["level"] <= renditions.MAX_LEVEL_IDC, video["level"]
        assert video["pix_fmt"] == "yuv420p", video["pix_fmt"]
        assert video["width"] % 2 == 0 and video["height"] % 2 == 0, (video["width"], video["height"])
    if has_audio:
        audio = streams["audio"]
        assert audio["codec_name"] == "aac" and audio["profile"] == "LC", audio
    return probed


@pytest.mark.parametrize("set_name", CHROME_SETS)
def test_every_fixture_set_gets_an_mp4_that_iphones_play(api, renditions_on, ffprobe, media_root, set_name):
    recording = load_chrome_set(set_name)
    session_id = record(api, recording)
    body = status_of(api, session_id)
    entry = rendition_entry(body)
    assert entry is not None and entry["status"] == "ready", body["renditions"]
    # the MP4 first, then the recorded video: a browser takes the first it can play
    assert [item["name"] for item in body["renditions"]] == ["mp4", "original"]
    assert body["renditions"][1]["url"] == body["video_url"]

    rendition = Rendition.objects.get(session_id=session_id)
    path = Path(media_root) / rendition.storage_name
    assert entry["size"] == path.stat().st_size == rendition.size
    probed = check_plays_everywhere(ffprobe, path, has_video=recording.has_video, has_audio=recording.has_audio)
    assert abs(float(probed["format"]["duration"]) - body["duration"]) < 0.3, (probed["format"], body["duration"])
    streams = {stream["codec_type"]: stream for stream in probed["streams"]}
    if recording.has_video:
        video = streams["video"]
        assert (video["width"], video["height"]) == (body["width"], body["height"])
        assert entry["content_type"] == "video/mp4"
        # the codecs the API names are the file's: avc1.PPCCLL, PP the profile, LL the level
        avc1, *rest = entry["codecs"].split(", ")
        assert (
            int(avc1[5:7], 16)
            == {"Constrained Baseline": 66, "Baseline": 66, "Main": 77, "High": 100}[video["profile"]]
        )
        assert int(avc1[9:11], 16) == video["level"]
        assert rest == (["mp4a.40.2"] if recording.has_audio else [])
        assert rendition.video_copied is (set_name in H264_SETS)
        if set_name not in H264_SETS:
            assert video["profile"] == "High" and video["level"] <= 40
    else:
        assert entry["content_type"] == "audio/mp4" and entry["codecs"] == "mp4a.40.2"
    assert entry["type"] == f'{entry["content_type"]}; codecs="{entry["codecs"]}"'


def video_packets(path: Path) -> list[str]:
    """The video stream's packets (timestamps, sizes, hashes) as ffmpeg's framemd5 lists them."""
    report = path.with_suffix(".framemd5")
    utils.run_ffmpeg(
        ["-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framemd5", str(report)],
        limits=utils.Limits(timeout_seconds=60),
    )
    lines = [line for line in report.read_text().splitlines() if not line.startswith("#")]
    return [line.split(",")[-1].strip() for line in lines]  # the hash: timestamps change with the container


@pytest.mark.parametrize("set_name", sorted(H264_SETS))
def test_h264_video_is_copied_bit_for_bit(api, renditions_on, media_root, set_name):
    session_id = record(api, load_chrome_set(set_name))
    session = RecordingSession.objects.get(pk=session_id)
    rendition = Rendition.objects.get(session=session)
    original = video_packets(Path(media_root) / session.video_name)
    copied = video_packets(Path(media_root) / rendition.storage_name)
    assert copied == original and len(copied) > 100


def test_an_mp4_that_plays_everywhere_needs_none(api, renditions_on, generated_dir):
    """Safari's own recording (H.264 + AAC in fragmented MP4): its video already plays everywhere."""
    path = generated_dir / "h264_aac.mp4"
    generate_media(
        path,
        seconds=3,
        output_args=[
            *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"),
            *("-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4"),
        ],
    )
    recording = Recording("h264_aac", split_bytes(path.read_bytes(), 3), "video/mp4", 3.0, True, True)
    session_id = record(api, recording)
    body = status_of(api, session_id)
    assert [item["name"] for item in body["renditions"]] == ["original"]
    assert Rendition.objects.get(session_id=session_id).status == Rendition.Status.NONE
    response = api.get(f"/api/recordings/{body['view_id']}/mp4/")
    assert response.status_code == 404 and response.json()["code"] == "rendition_not_ready"
    assert "plays everywhere" in response.json()["detail"]


@pytest.mark.parametrize(
    ("size", "fps", "expected_size"),
    [
        ("321x241", 15, (320, 240)),  # odd sides: 4:2:0 needs even ones
        ("2560x1600", 15, (1728, 1080)),  # a laptop's screen: fitted in 1920x1080
        ("720x1280", 15, (720, 1280)),  # upright: fits 1080x1920 as it is
        ("640x360", 60, (640, 360)),  # 60 frames a second: at most 30 kept
    ],
)
def test_frame_size_and_rate_are_what_iphones_decode(
    api, renditions_on, ffprobe, media_root, generated_dir, size, fps, expected_size
):
    path = generated_dir / f"vp8-{size}-{fps}.webm"
    if not path.exists():
        generate_media(
            path,
            seconds=2,
            size=size,
            fps=fps,
            output_args=["-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus", "-f", "webm"],
        )
    recording = Recording(path.name, split_bytes(path.read_bytes(), 3), "video/webm", 2.0, True, True)
    session_id = record(api, recording)
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == Rendition.Status.READY, (rendition.error_code, rendition.error_detail)
    probed = check_plays_everywhere(ffprobe, Path(media_root) / rendition.storage_name, has_video=True, has_audio=True)
    video = next(stream for stream in probed["streams"] if stream["codec_type"] == "video")
    assert (video["width"], video["height"]) == expected_size
    frames = int(video["nb_frames"])
    assert frames <= 30 * 2 + 1, frames
    assert frames >= min(fps, 30) * 2 - 3, frames  # no frame of a slower recording is dropped


@pytest.mark.parametrize(
    ("name", "x264_args"),
    [
        # High 4:4:4 Predictive: a browser can record it; iPhones do not decode it
        ("444", ["-pix_fmt", "yuv444p"]),
        # 10 bits
        ("10bit", ["-pix_fmt", "yuv420p10le"]),
        # interlaced (fields), as a capture card may send
        ("interlaced", ["-pix_fmt", "yuv420p", "-flags", "+ildct+ilme"]),
        # a level that its frame size belies: 1280x720 cannot be level 2.0 (at most 396 macroblocks)
        ("level_lie", ["-pix_fmt", "yuv420p", "-level:v", "2.0", "-s", "1280x720"]),
    ],
)
def test_h264_iphones_cannot_decode_is_encoded_again(
    api, renditions_on, ffprobe, media_root, generated_dir, name, x264_args
):
    path = generated_dir / f"h264_{name}.mkv"
    if not path.exists():
        generate_media(
            path,
            seconds=2,
            output_args=["-c:v", "libx264", "-preset", "ultrafast", *x264_args, "-c:a", "libopus"]
            + ["-f", "matroska", "-live", "1"],
        )
    recording = Recording(f"h264_{name}", split_bytes(path.read_bytes(), 3), "video/x-matroska", 2.0, True, True)
    session_id = record(api, recording)
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == Rendition.Status.READY and rendition.video_copied is False, rendition.error_detail
    check_plays_everywhere(ffprobe, Path(media_root) / rendition.storage_name, has_video=True, has_audio=True)


def test_h264_whose_header_belies_its_stream_is_encoded_again(api, renditions_on, ffprobe, media_root, tmp_path):
    """4:4:4 10-bit frames (their SPS in the stream) behind an MP4 header whose avcC says High 4:2:0
    8-bit: judged by every parameter set, the header's and the stream's, it is not copied."""
    frames, header = tmp_path / "frames.mp4", tmp_path / "header.mp4"
    generate_media(
        frames,
        seconds=2,
        output_args=[
            *("-pix_fmt", "yuv444p10le", "-c:v", "libx264", "-profile:v", "high444", "-preset", "ultrafast"),
            *("-x264-params", "repeat-headers=1", "-c:a", "libopus", "-f", "mp4"),
        ],
    )
    generate_media(
        header, seconds=1, output_args=["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-an"]
    )
    disguised = hostile_media.with_avcc_of(frames, header, tmp_path / "disguised.mp4")
    recording = Recording("disguised", split_bytes(disguised.read_bytes(), 3), "video/mp4", 2.0, True, True)
    session_id = record(api, recording)
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == Rendition.Status.READY and rendition.video_copied is False, rendition.error_detail
    check_plays_everywhere(ffprobe, Path(media_root) / rendition.storage_name, has_video=True, has_audio=True)


def test_a_recorders_jittery_frame_times_keep_the_level_and_the_frames(
    api, renditions_on, ffprobe, media_root, tmp_path
):
    """Chrome's frame times jitter by milliseconds around 33 ms, in 1 ms timecodes, with no
    DefaultDuration: ffmpeg then guesses 1000 frames a second, which x264 sized the level by (6.0)."""
    if not shutil.which("mkvpropedit"):
        skip_or_fail("mkvtoolnix is not installed (mkvpropedit)")
    webm = hostile_media.jittery_vp8(tmp_path, frames=150, mean_gap_ms=33.33, jitter_ms=4.0)
    recording = Recording("jittery", split_bytes(webm.read_bytes(), 3), "video/webm", 5.0, False, True)
    session_id = record(api, recording)
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == Rendition.Status.READY, rendition.error_detail
    probed = check_plays_everywhere(ffprobe, Path(media_root) / rendition.storage_name, has_video=True, has_audio=False)
    [video] = probed["streams"]
    assert video["level"] == 40 and rendition.codecs == "avc1.640028"
    assert int(video["nb_frames"]) >= 150 * 0.95  # a 30 fps recorder's frames are all kept


def test_served_like_the_other_media(api, renditions_on, media_root):
    session_id = record(api, load_chrome_set("vp8_opus"))
    entry = rendition_entry(status_of(api, session_id))
    whole = (Path(media_root) / Rendition.objects.get(session_id=session_id).storage_name).read_bytes()

    status, body, response = served_bytes(api, entry["url"])
    assert status == 200 and body == whole
    assert response["Content-Type"] == "video/mp4" and response["Accept-Ranges"] == "bytes"
    status, body, response = served_bytes(api, entry["url"], Range="bytes=100-1099")
    assert status == 206 and body == whole[100:1100]
    assert response["Content-Range"] == f"bytes 100-1099/{len(whole)}"
    status, _, _ = served_bytes(api, entry["url"], **{"If-None-Match": response["ETag"]})
    assert status == 304
    status, _, response = served_bytes(api, entry["url"] + "?download=1")
    assert status == 200 and response["Content-Disposition"].startswith("attachment;")
    assert response["Content-Disposition"].endswith('-mp4.mp4"')


def test_off_means_only_the_recorded_video(api, settings):
    settings.RECORDER_RENDITIONS = False
    session_id = record(api, load_chrome_set("vp8_opus"))
    body = status_of(api, session_id)
    assert [item["name"] for item in body["renditions"]] == ["original"]
    original = body["renditions"][0]
    assert original["type"] == 'video/webm; codecs="vp8, opus"' and original["size"] == body["size"]
    assert not Rendition.objects.exists()
    response = api.get(f"/api/recordings/{body['view_id']}/mp4/")
    assert response.status_code == 404 and response.json()["code"] == "rendition_not_ready"


def test_not_listed_before_ready(api, renditions_on):
    started = start(api, mime_type="video/webm")
    upload_all(api, started, load_chrome_set("vp8_opus").chunks[:2])
    assert status_of(api, started.session_id)["renditions"] == []


# --- What it may cost ----------------------------------------------------------------------------


def test_an_encode_past_its_time_fails_and_stores_nothing(api, renditions_on, media_root, monkeypatch):
    monkeypatch.setattr(renditions, "BASE_SECONDS", 0)
    monkeypatch.setattr(renditions, "SECONDS_PER_RECORDED_SECOND", 0.002)  # 16 ms for the 8 s recording
    session_id = record(api, load_chrome_set("vp8_opus"))
    rendition = Rendition.objects.get(session_id=session_id)
    assert (rendition.status, rendition.error_code) == (Rendition.Status.FAILED, "processing_timeout")
    assert rendition.storage_name == ""
    body = status_of(api, session_id)
    assert [(item["name"], item["status"], item["url"]) for item in body["renditions"]] == [
        ("original", "ready", body["video_url"]),
        ("mp4", "failed", None),
    ]
    assert not list((Path(media_root) / "outputs").rglob("video-*.mp4"))


@pytest.fixture(scope="module")
def noise_recording(tmp_path_factory) -> Recording:
    """Two seconds of 1280x720 noise at 30 fps: the costliest picture there is for an encoder."""
    path = tmp_path_factory.mktemp("noise") / "noise.webm"
    utils.run_ffmpeg(
        [
            *("-f", "lavfi", "-i", "nullsrc=size=1280x720:rate=30,geq=random(1)*255:128:128"),
            *("-f", "lavfi", "-i", "anoisesrc=sample_rate=48000", "-t", "2", "-map", "0:v", "-map", "1:a"),
            *("-c:v", "libvpx", "-deadline", "realtime", "-b:v", "20M", "-c:a", "libopus", "-f", "webm", str(path)),
        ],
        limits=utils.Limits(timeout_seconds=300),
    )
    return Recording("noise", split_bytes(path.read_bytes(), 3), "video/webm", 2.0, True, True)


def test_noise_makes_no_larger_file_than_the_rate_cap_allows(api, renditions_on, ffprobe, media_root, noise_recording):
    session_id = record(api, noise_recording)
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == "ready", rendition.error_detail
    probed = check_plays_everywhere(ffprobe, Path(media_root) / rendition.storage_name, has_video=True, has_audio=True)
    seconds = float(probed["format"]["duration"])
    # the encoder's cap (4 Mb/s, a buffer of two seconds' worth) and the audio's 128 kb/s
    assert rendition.size <= (4_000_000 * seconds + 2 * 4_000_000 + 128_000 * seconds) / 8, (rendition.size, seconds)
    assert rendition.size < sum(len(chunk) for chunk in noise_recording.chunks) / 2


def encoding(*, copy_video: bool) -> utils.RenditionEncoding:
    return utils.RenditionEncoding(
        copy_video=copy_video,
        width=1280,
        height=720,
        preset="veryfast",
        crf=23,
        max_video_bits_per_second=4_000_000,
        threads=1,
    )


def test_what_one_encode_may_cost_grows_with_the_duration_and_the_bytes():
    mib = 1024 * 1024
    slack = renditions.OUTPUT_SLACK_BYTES

    def audio_bytes(seconds: float) -> int:
        return int(1.25 * 128_000 / 8 * seconds)

    # 10 minutes of camera video, 150 MiB: the duration binds
    limits = renditions.encode_limits(600, encoding(copy_video=False), video_bytes=150 * mib)
    assert limits.timeout_seconds == renditions.BASE_SECONDS + 4 * 600
    assert limits.output_bytes == int(1.25 * 4_000_000 / 8 * 600) + audio_bytes(600) + slack
    # 4 hours of skipped frames in 2 MiB: the bytes bind the time and the video
    hostile = renditions.encode_limits(4 * 3600, encoding(copy_video=False), video_bytes=2 * mib)
    assert hostile.timeout_seconds == renditions.BASE_SECONDS + 60 * 2
    assert hostile.output_bytes == 8 * 2 * mib + audio_bytes(4 * 3600) + slack
    # 2 hours of a voice at 6 kb/s (5.4 MB): its AAC at 128 kb/s (115 MB) fits, as its MP3 does
    voice = renditions.encode_limits(7200, encoding(copy_video=False), video_bytes=5_400_000)
    assert voice.output_bytes > 128_000 / 8 * 7200 + 2**20
    # H.264 copied: the video's bytes and the audio's rate
    copied = renditions.encode_limits(600, encoding(copy_video=True), video_bytes=50_000_000)
    assert copied.output_bytes == 50_000_000 + audio_bytes(600) + slack


def test_an_encode_that_is_no_longer_wanted_stops_at_once(tmp_path):
    """The heartbeat sets the event when the recording is deleted or processed again mid-encode."""
    source = tmp_path / "source.webm"
    (tmp_path / "source.webm").write_bytes(b"".join(load_chrome_set("vp8_opus_60s").chunks))
    unwanted = threading.Event()
    threading.Timer(0.5, unwanted.set).start()
    began = time.monotonic()
    with pytest.raises(utils.MediaError) as stopped:
        utils.encode_rendition(
            source,
            tmp_path / "out.mp4",
            encoding(copy_video=False),
            container="webm",
            has_video=True,
            has_audio=True,
            limits=utils.Limits(timeout_seconds=300),
            cancel=unwanted,
        )
    assert stopped.value.code == "cancelled"
    assert time.monotonic() - began < 0.5 + 1.5  # the encode alone takes several seconds


def test_a_lost_task_is_asked_again_then_fails(api, settings):
    settings.RECORDER_RENDITIONS = True
    settings.RECORDER_TASKS_BACKEND = "dummy"
    session_id = record(api, load_chrome_set("vp8_opus"))
    rendition = Rendition.objects.get(session_id=session_id)
    # A worker took it and was killed: its heartbeat stopped two minutes ago.
    long_ago = timezone.now() - datetime.timedelta(seconds=rendition_runs.STALE_SECONDS * 2)
    Rendition.objects.filter(pk=rendition.pk).update(status="pending", heartbeat_at=long_ago, attempts=1)
    assert rendition_runs.stale_requests() == [rendition.session_id]
    assert rendition_runs.stale_requests() == []  # asked again just now: not stale again at once
    Rendition.objects.filter(pk=rendition.pk).update(heartbeat_at=long_ago, attempts=rendition_runs.MAX_ATTEMPTS)
    assert rendition_runs.stale_requests() == []
    rendition.refresh_from_db()
    assert (rendition.status, rendition.error_code) == ("failed", "rendition_interrupted")


def test_a_second_run_while_one_beats_does_nothing(api, renditions_on):
    session_id = record(api, load_chrome_set("vp8_opus"))
    Rendition.objects.filter(session_id=session_id).update(status="pending", heartbeat_at=timezone.now())
    assert rendition_runs.make(session_id, retry_later=None) == rendition_runs.SKIPPED
    assert Rendition.objects.get(session_id=session_id).status == "pending"


def test_processed_again_it_is_made_again_and_the_old_file_goes(api, renditions_on, media_root):
    renditions_on.RECORDER_KEEP_CHUNKS = True
    session_id = record(api, load_chrome_set("vp8_opus"))
    first = Rendition.objects.get(session_id=session_id).storage_name
    assert (Path(media_root) / first).is_file()
    call_command("process_recording", session_id)
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == "ready" and rendition.storage_name != first
    assert (Path(media_root) / rendition.storage_name).is_file()
    assert not (Path(media_root) / first).exists()


def test_deleting_the_recording_deletes_its_rendition(api, renditions_on, media_root):
    started = start(api, mime_type="video/webm")
    upload_all(api, started, load_chrome_set("vp8_opus").chunks)
    finalize(api, started, is_final=True, total_chunks=8)
    stored = Path(media_root) / Rendition.objects.get(session_id=started.session_id).storage_name
    assert stored.is_file()
    response = api.delete(
        f"/api/recordings/{started.session_id}/", headers={"Authorization": f"Bearer {started.upload_token}"}
    )
    assert response.status_code in (202, 204), response.content
    assert not stored.exists()


def test_frame_size_rule():
    assert renditions.frame_size(1920, 1080) == (1920, 1080)
    assert renditions.frame_size(3840, 2160) == (1920, 1080)
    assert renditions.frame_size(1080, 1920) == (1080, 1920)
    assert renditions.frame_size(2880, 1800) == (1728, 1080)
    assert renditions.frame_size(1365, 767) == (1364, 766)
    assert renditions.frame_size(1, 1) == (2, 2)


def test_generated_h264_matroska_is_copied(api, renditions_on, generated_dir):
    session_id = record(api, generate_recording("h264_opus_matroska", generated_dir))
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == "ready" and rendition.video_copied is True


def test_a_second_processing_task_leaves_a_ready_rendition_alone(api, renditions_on):
    """A duplicate or late processing task of a ready recording ("safe to run twice") must not make
    its MP4 again, nor hide it meanwhile."""
    session_id = record(api, load_chrome_set("vp8_opus"))
    before = Rendition.objects.get(session_id=session_id)
    assert before.status == "ready"
    tasks.process_recording_task.enqueue(session_id)
    after = Rendition.objects.get(session_id=session_id)
    assert (after.status, after.storage_name, after.finished_at, after.attempts) == (
        "ready",
        before.storage_name,
        before.finished_at,
        before.attempts,
    )


def test_renditions_turned_off_are_neither_listed_served_nor_made(api, renditions_on):
    session_id = record(api, load_chrome_set("vp8_opus"))
    body = status_of(api, session_id)
    assert [item["name"] for item in body["renditions"]] == ["mp4", "original"]
    renditions_on.RECORDER_RENDITIONS = False
    body = status_of(api, session_id)
    assert [item["name"] for item in body["renditions"]] == ["original"]
    assert api.get(f"/api/recordings/{body['view_id']}/mp4/").json()["code"] == "rendition_not_ready"
    Rendition.objects.filter(session_id=session_id).update(status="pending", heartbeat_at=None)
    assert rendition_runs.make(session_id, retry_later=None) == rendition_runs.OFF
    assert rendition_runs.stale_requests(timezone.now() + datetime.timedelta(hours=1)) == []


def test_a_busy_machine_hands_the_task_back_instead_of_waiting(api, renditions_on):
    """Where workers share a queue with processing (database, rq), a rendition never holds a worker
    while another rendition has the machine: it is queued again for later."""
    session_id = record(api, load_chrome_set("vp8_opus"))
    long_ago = timezone.now() - datetime.timedelta(minutes=10)
    Rendition.objects.filter(session_id=session_id).update(
        status="pending", heartbeat_at=None, run_id="", requested_at=long_ago
    )
    asked_again = []
    from recordings import background

    with background.one_per_machine("renditions"):  # another rendition runs on this machine
        outcome = threading.Thread(
            target=lambda: asked_again.append(rendition_runs.make(session_id, retry_later=asked_again.append))
        )
        outcome.start()
        outcome.join(timeout=10)
    assert asked_again == [session_id, rendition_runs.DEFERRED]
    rendition = Rendition.objects.get(session_id=session_id)
    assert (rendition.status, rendition.attempts, rendition.run_id) == ("pending", 1, "")  # not claimed again
    assert rendition_runs.stale_requests() == []  # its task is queued again: the sweep adds none


def test_h264_whose_picture_changes_size_is_encoded_at_one_size(api, renditions_on, ffprobe, media_root, tmp_path):
    """A captured window resized mid-recording: H.264 with a second sequence parameter set."""
    parts = []
    for number, size in enumerate(("640x360", "480x270")):
        part = tmp_path / f"part{number}.h264"
        generate_media(
            part,
            seconds=2,
            size=size,
            output_args=[
                "-an",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-bf",
                "0",
                "-pix_fmt",
                "yuv420p",
                "-f",
                "h264",
            ],
        )
        parts.append(part.read_bytes())
    (tmp_path / "both.h264").write_bytes(b"".join(parts))
    joined = tmp_path / "joined.mkv"
    utils.run_ffmpeg(
        ["-r", "15", "-i", str(tmp_path / "both.h264"), "-c", "copy", "-f", "matroska", "-live", "1", str(joined)],
        limits=utils.Limits(timeout_seconds=60),
    )
    recording = Recording("resized", split_bytes(joined.read_bytes(), 3), "video/x-matroska", 4.0, False, True)
    session_id = record(api, recording)
    rendition = Rendition.objects.get(session_id=session_id)
    assert rendition.status == "ready" and rendition.video_copied is False
    probed = check_plays_everywhere(ffprobe, Path(media_root) / rendition.storage_name, has_video=True, has_audio=False)
    [video] = probed["streams"]
    assert (video["width"], video["height"]) == (640, 360)


def test_deleting_a_recording_mid_encode_stops_the_encode_and_stores_nothing(api, settings, media_root, monkeypatch):
    """A stranger's upload, delete, upload again: each deleted recording must not go on costing its
    whole encode. The heartbeat notices and the encode is stopped."""
    monkeypatch.setattr(rendition_runs, "HEARTBEAT_SECONDS", 0.2)
    settings.RECORDER_RENDITION_THREADS = 1
    started = start(api, mime_type="video/webm")
    upload_all(api, started, load_chrome_set("vp8_opus_60s").chunks)
    assert finalize(api, started, is_final=True, total_chunks=59).json()["status"] == "ready"
    settings.RECORDER_RENDITIONS = True
    rendition_runs.ask(RecordingSession.objects.get(pk=started.session_id))
    outcome = []
    making = threading.Thread(target=lambda: outcome.append(rendition_runs.make(started.session_id, retry_later=None)))
    making.start()
    time.sleep(1.5)  # the encode of 60 s on one thread takes several seconds
    assert making.is_alive()
    response = api.delete(
        f"/api/recordings/{started.session_id}/", headers={"Authorization": f"Bearer {started.upload_token}"}
    )
    assert response.status_code in (202, 204), response.content
    deleted = time.monotonic()
    making.join(timeout=30)
    assert not making.is_alive() and outcome == [rendition_runs.SKIPPED]
    assert time.monotonic() - deleted < 2.0
    assert not list(Path(media_root).rglob("video-*.mp4"))
    assert not list(settings.RECORDER_TEMP_DIR.glob("rendition-*"))
