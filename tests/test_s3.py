"""RECORDER_STORAGE=s3 against a real S3 API server (moto's server mode) on loopback.

Chunks become objects, processing reads them into a local work directory and uploads its outputs,
and the media URLs answer 302 to presigned URLs that serve Range themselves.
"""

import hashlib
import json
import time
import urllib.error
import urllib.request
from email.message import Message
from urllib.parse import parse_qs, urlsplit

import pytest

from bench.harness import free_port, gunicorn
from tests.conftest import load_chrome_set
from tests.live_client import call, start_session, upload_recording, wait_until_finished

pytestmark = pytest.mark.live_server_process


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get_without_following(url: str) -> tuple[int, Message]:
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(url, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def get_bytes(url: str, headers: dict | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture(scope="module")
def s3_service(s3_server, tmp_path_factory):
    bucket, environment = s3_server.new_bucket()
    work_dir = tmp_path_factory.mktemp("s3-service")
    with gunicorn(work_dir, extra_env={**environment, "RECORDER_LOG_LEVEL": "INFO"}) as server:
        yield server, bucket


def test_chunks_and_outputs_are_objects_and_nothing_stays_on_local_disk(s3_service, s3_server):
    server, bucket = s3_service
    recording = load_chrome_set("vp8_opus")
    session_id, _ = upload_recording([server.base_url], recording.chunks)
    body = wait_until_finished(server.base_url, session_id)
    assert body["status"] == "ready", body["error"]
    assert body["source_sha256"] == recording.joined_sha256
    assert body["duration"] == pytest.approx(recording.duration_seconds, rel=0.1)

    objects = s3_server.objects(bucket)
    prefix = f"recordings/{session_id}/"
    for index, chunk in enumerate(recording.chunks):
        assert hashlib.sha256(objects[f"{prefix}chunks/{index}"]).digest() == hashlib.sha256(chunk).digest()
    assert {key for key in objects if key.startswith(prefix) and "/chunks/" not in key} == set()
    outputs = f"outputs/{body['view_id']}/"  # what a redirect shows a viewer: never the session id
    assert {key for key in objects if key.startswith(outputs)} == {
        f"{outputs}video.webm",
        f"{outputs}audio.mp3",
        f"{outputs}thumbnail.jpg",
    }
    assert len(objects[f"{outputs}video.webm"]) == body["size"]
    media_root = server.work_dir / "media"
    assert not (media_root / "recordings").exists()  # every byte went to the bucket
    assert [path for path in (media_root / ".tmp").rglob("*") if path.is_file()] == []  # work dirs cleaned up


def test_media_urls_redirect_to_presigned_urls_that_serve_ranges(s3_service, s3_server):
    server, bucket = s3_service
    session_id, _ = upload_recording([server.base_url], load_chrome_set("vp9_opus").chunks)
    body = wait_until_finished(server.base_url, session_id)
    assert body["video_url"].startswith(server.base_url)  # the JSON is the same as with local files
    outputs = f"outputs/{body['view_id']}/"
    video = s3_server.objects(bucket)[f"{outputs}video.webm"]

    status, headers = get_without_following(body["video_url"])
    assert status == 302
    assert headers["Cache-Control"] == "no-store"
    location = headers["Location"]
    assert location.startswith(f"{s3_server.endpoint_url}/{bucket}/{outputs}video.webm?")
    assert session_id not in location
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert query["response-content-type"] == ["video/webm"]

    middle = len(video) // 2
    status, headers, part = get_bytes(location, {"Range": f"bytes={middle}-{middle + 999}"})
    assert status == 206
    assert part == video[middle : middle + 1000]
    assert headers["Content-Range"] == f"bytes {middle}-{middle + 999}/{len(video)}"

    status, headers = get_without_following(f"{body['audio_url']}?download=1")
    assert status == 302
    status, headers, audio = get_bytes(headers["Location"])
    assert status == 200
    assert audio == s3_server.objects(bucket)[f"{outputs}audio.mp3"]
    assert headers["Content-Disposition"].startswith("attachment;")


def test_an_unreachable_object_store_answers_503_and_stores_nothing(s3_server, tmp_path):
    _, environment = s3_server.new_bucket()
    environment["AWS_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    recording = load_chrome_set("vp8_opus")
    with gunicorn(tmp_path, extra_env=environment) as server:
        session_id, upload_token = start_session(server.base_url)
        url = f"{server.base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index=0"
        status, body = call(
            "POST", url, recording.chunks[0], {"Authorization": f"Bearer {upload_token}", "Content-Type": "video/webm"}
        )
        _, progress = call("GET", f"{server.base_url}/api/get-recorded-data/{session_id}/")
    assert (status, body["code"]) == (503, "storage_unavailable")
    assert progress["received_chunks"] == 0
    assert [path for path in (tmp_path / "media" / ".tmp").rglob("*") if path.is_file()] == []


def test_captions_are_made_from_the_bucket_and_stored_in_it(s3_server, tmp_path):
    from recordings import captions
    from tests.conftest import skip_or_fail
    from tests.speech import normalized_words, speech_recording, word_error_rate

    if not captions.is_installed():
        skip_or_fail("the captions extra is not installed (make captions)")
    speech = speech_recording(tmp_path / "speech")
    bucket, environment = s3_server.new_bucket()
    # the live build off: every window is read from the bucket's MP3, through a local copy
    extra_env = {**environment, "RECORDER_CAPTIONS": "1", "RECORDER_LIVE_BUILD": "0"}
    with gunicorn(tmp_path / "server", extra_env=extra_env) as server:
        session_id, _ = upload_recording([server.base_url], speech.recording.chunks)
        body = wait_until_finished(server.base_url, session_id)
        assert body["status"] == "ready", body["error"]
        deadline = time.monotonic() + 120
        while body["captions_status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
            body = call("GET", f"{server.base_url}/api/get-recorded-data/{session_id}/")[1]
        assert body["captions_status"] == "ready"
        status, headers, transcript = get_bytes(body["transcript_url"])  # from the service, not a redirect
        assert status == 200 and headers["Content-Type"] == "application/json"
        heard = normalized_words(" ".join(word["word"] for word in json.loads(transcript)["words"]))
        assert word_error_rate(speech.words, heard) <= 0.10
        objects = s3_server.objects(bucket)
        outputs = f"outputs/{body['view_id']}/"
        [transcript_key] = [key for key in objects if key.startswith(f"{outputs}transcript-")]
        [captions_key] = [key for key in objects if key.startswith(f"{outputs}captions-")]
        assert objects[transcript_key] == transcript and objects[captions_key].startswith(b"WEBVTT\n")
        temp_dir = server.work_dir / "media" / ".tmp"
        assert [path.name for path in temp_dir.rglob("*") if path.is_file() and path.name != "captions.lock"] == []


def test_the_mp4_rendition_is_made_from_the_bucket_and_stored_in_it(s3_server, tmp_path):
    bucket, environment = s3_server.new_bucket()
    with gunicorn(tmp_path / "server", extra_env={**environment, "RECORDER_RENDITIONS": "1"}) as server:
        session_id, _ = upload_recording([server.base_url], load_chrome_set("vp8_opus").chunks)
        body = wait_until_finished(server.base_url, session_id)
        assert body["status"] == "ready", body["error"]
        deadline = time.monotonic() + 120
        while (mp4 := next(item for item in body["renditions"] if item["name"] == "mp4"))["status"] == "pending":
            assert time.monotonic() < deadline, body["renditions"]
            time.sleep(0.2)
            body = call("GET", f"{server.base_url}/api/get-recorded-data/{session_id}/")[1]
        assert mp4["status"] == "ready" and body["renditions"][0]["name"] == "mp4"
        objects = s3_server.objects(bucket)
        [key] = [key for key in objects if key.startswith(f"outputs/{body['view_id']}/video-")]
        assert len(objects[key]) == mp4["size"] and objects[key][4:8] == b"ftyp"
        status, headers = get_without_following(mp4["url"])
        assert status == 302 and urlsplit(headers["Location"]).path.endswith(key)
        status, _, middle = get_bytes(headers["Location"], {"Range": "bytes=1000-1999"})
        assert status == 206 and middle == objects[key][1000:2000]
        temp_dir = server.work_dir / "media" / ".tmp"
        assert [path.name for path in temp_dir.rglob("*") if path.is_file() and not path.name.endswith(".lock")] == []
