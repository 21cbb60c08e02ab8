"""Whole recordings through the HTTP API: every fixture set, every transport, to a playable result."""

import hashlib
import random
from pathlib import Path

import pytest

from recordings import utils
from tests.conftest import CHROME_SETS, GENERATED_KINDS, decode_errors, generate_recording, load_chrome_set
from tests.recorder_client import TRANSPORTS, download, finalize, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


def assert_ready_and_playable(api, session_id: str, recording, work_dir: Path) -> dict:
    body = status_of(api, session_id)
    assert body["status"] == "ready", body["error"]
    assert body["source_sha256"] == recording.joined_sha256
    assert body["received_chunks"] == len(recording.chunks)
    assert body["received_bytes"] == sum(len(chunk) for chunk in recording.chunks)
    assert body["missing_chunks"] == []
    assert body["has_audio"] is recording.has_audio
    assert body["has_video"] is recording.has_video

    video_path = work_dir / "served-video"
    video_path.write_bytes(download(api, body["video_url"]))
    assert video_path.stat().st_size == body["size"]
    exit_code, errors = decode_errors(video_path)
    assert exit_code == 0 and errors == "", errors
    served = utils.probe(video_path)
    assert served.duration_seconds == pytest.approx(recording.duration_seconds, rel=0.10)
    assert body["duration"] == pytest.approx(served.duration_seconds, abs=0.01)
    assert served.has_audio is recording.has_audio
    assert served.has_video is recording.has_video

    if recording.has_audio:
        audio_path = work_dir / "served-audio"
        audio_path.write_bytes(download(api, body["audio_url"]))
        exit_code, errors = decode_errors(audio_path)
        assert exit_code == 0 and errors == "", errors
        audio = utils.probe(audio_path)
        assert not audio.has_video
        assert audio.duration_seconds == pytest.approx(served.duration_seconds, abs=0.25)
    else:
        assert body["audio_url"] is None
        assert api.get(f"/api/recordings/{session_id}/audio/").json()["code"] == "no_audio"

    if recording.has_video:
        thumbnail = download(api, body["thumbnail_url"])
        assert thumbnail[:3] == b"\xff\xd8\xff"  # JPEG SOI marker
        assert body["width"] and body["height"]
    else:
        assert body["thumbnail_url"] is None
    return body


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("set_name", CHROME_SETS)
def test_chrome_recording_becomes_ready_and_playable(api, tmp_path, set_name, transport):
    recording = load_chrome_set(set_name)
    started = start(api, title=set_name, mime_type=recording.mime_type)
    upload_all(api, started, recording.chunks[:-1], transport=transport)
    response = finalize(api, started, transport=transport, chunk=recording.chunks[-1], index=len(recording.chunks) - 1)
    assert response.status_code == 200, response.content  # the in-process backend finishes first
    assert response.json()["status"] == "ready"
    body = assert_ready_and_playable(api, started.session_id, recording, tmp_path)
    # H.264 (Chrome labels it webm but writes Matroska) and MP4 recordings are served as MP4
    mime_type = recording.mime_type
    expected_family = "mp4" if ("mp4" in mime_type or "avc1" in mime_type) else "webm"
    expected_kind = "video" if recording.has_video else "audio"
    assert api.get(body["video_url"])["Content-Type"] == f"{expected_kind}/{expected_family}"


@pytest.mark.parametrize("kind", GENERATED_KINDS)
def test_other_browser_formats_become_ready_and_playable(api, tmp_path, generated_dir, kind):
    recording = generate_recording(kind, generated_dir)
    started = start(api, mime_type=recording.mime_type)
    upload_all(api, started, recording.chunks)
    assert finalize(api, started, total_chunks=len(recording.chunks)).status_code == 200
    body = assert_ready_and_playable(api, started.session_id, recording, tmp_path)
    media_type = api.get(body["video_url"])["Content-Type"]
    if kind == "h264_opus_matroska":  # H.264 cannot be written as WebM: it becomes MP4
        assert media_type == "video/mp4"
    if kind.startswith("audio_only"):
        assert media_type.startswith("audio/")


def test_shuffled_chunks_join_in_index_order(api, tmp_path):
    recording = load_chrome_set("vp9_opus")
    started = start(api)
    order = list(range(len(recording.chunks)))
    random.Random(7).shuffle(order)
    assert order[0] != 0
    upload_all(api, started, recording.chunks, order=order)
    assert finalize(api, started, total_chunks=len(recording.chunks)).status_code == 200
    assert_ready_and_playable(api, started.session_id, recording, tmp_path)


def test_chunks_arriving_after_finalize_complete_the_recording(api, tmp_path):
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks, order=[0, 1, 2, 4, 6])
    response = finalize(api, started, total_chunks=8)
    assert response.status_code == 202
    assert response.json()["status"] == "finalizing"
    assert response.json()["missing_chunks"] == [3, 5, 7]
    upload_all(api, started, recording.chunks, order=[7, 3])
    assert status_of(api, started.session_id)["missing_chunks"] == [5]
    upload_all(api, started, recording.chunks, order=[5])  # completes the set: processing starts by itself
    assert_ready_and_playable(api, started.session_id, recording, tmp_path)


def test_duplicate_chunks_are_stored_once(api, tmp_path):
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks, order=[0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 0])
    assert finalize(api, started).status_code == 200
    body = assert_ready_and_playable(api, started.session_id, recording, tmp_path)
    assert body["received_chunks"] == 8


def test_joined_source_matches_sha256_of_chunks_in_order(api):
    recording = load_chrome_set("video_only_vp8")
    started = start(api)
    upload_all(api, started, recording.chunks, order=[7, 6, 5, 4, 3, 2, 1, 0])
    finalize(api, started)
    expected = hashlib.sha256(b"".join(recording.chunks)).hexdigest()
    assert status_of(api, started.session_id)["source_sha256"] == expected
