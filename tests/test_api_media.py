"""Serving the video, audio and thumbnail: byte ranges, validators, 304, downloads."""

import pytest
from django.utils.http import http_date

from tests.conftest import load_chrome_set
from tests.recorder_client import finalize, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ready(api):
    """A ready recording: (its status body, the served video's bytes)."""
    recording = load_chrome_set("vp8_opus")
    started = start(api, title="Range test")
    upload_all(api, started, recording.chunks)
    finalize(api, started)
    body = status_of(api, started.session_id)
    full = api.get(body["video_url"])
    return body, b"".join(full.streaming_content), full


def ranged(api, url, range_header, **headers):
    response = api.get(url, headers={"Range": range_header, **headers})
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return response, content


def test_full_download_has_length_type_and_validators(ready):
    body, video, response = ready
    assert response.status_code == 200
    assert len(video) == body["size"]
    assert response["Content-Length"] == str(body["size"])
    assert response["Content-Type"] == "video/webm"
    assert response["Accept-Ranges"] == "bytes"
    assert response["ETag"].startswith('"')
    assert response["Last-Modified"]
    assert response["Content-Disposition"].startswith("inline")


def test_first_bytes(api, ready):
    body, video, _ = ready
    response, content = ranged(api, body["video_url"], "bytes=0-99")
    assert response.status_code == 206
    assert content == video[:100]
    assert response["Content-Range"] == f"bytes 0-99/{len(video)}"
    assert response["Content-Length"] == "100"


def test_middle_bytes(api, ready):
    body, video, _ = ready
    middle = len(video) // 2
    response, content = ranged(api, body["video_url"], f"bytes={middle}-{middle + 4095}")
    assert response.status_code == 206
    assert content == video[middle : middle + 4096]


def test_suffix_range(api, ready):
    body, video, _ = ready
    response, content = ranged(api, body["video_url"], "bytes=-100")
    assert response.status_code == 206
    assert content == video[-100:]
    assert response["Content-Range"] == f"bytes {len(video) - 100}-{len(video) - 1}/{len(video)}"


def test_open_ended_range(api, ready):
    body, video, _ = ready
    response, content = ranged(api, body["video_url"], "bytes=1000-")
    assert response.status_code == 206
    assert content == video[1000:]


def test_range_past_the_end_is_clamped(api, ready):
    body, video, _ = ready
    response, content = ranged(api, body["video_url"], f"bytes={len(video) - 10}-{len(video) + 1000}")
    assert response.status_code == 206
    assert content == video[-10:]


@pytest.mark.parametrize(
    "header_for", [lambda size: f"bytes={size}-", lambda size: f"bytes={size + 5}-{size + 9}", lambda size: "bytes=-0"]
)
def test_unsatisfiable_range_is_416(api, ready, header_for):
    body, video, _ = ready
    response, _ = ranged(api, body["video_url"], header_for(len(video)))
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(video)}"


@pytest.mark.parametrize("header", ["bytes=0-9,20-29", "items=0-9", "bytes=9-0", "bytes=abc"])
def test_multiple_or_malformed_ranges_get_the_whole_file(api, ready, header):
    body, video, _ = ready
    response, content = ranged(api, body["video_url"], header)
    assert response.status_code == 200
    assert content == video


def test_if_range_with_current_etag_honours_the_range(api, ready):
    body, video, full = ready
    response, content = ranged(api, body["video_url"], "bytes=0-9", **{"If-Range": full["ETag"]})
    assert response.status_code == 206
    assert content == video[:10]


def test_if_range_with_old_etag_sends_the_whole_file(api, ready):
    body, video, _ = ready
    response, content = ranged(api, body["video_url"], "bytes=0-9", **{"If-Range": '"stale-etag"'})
    assert response.status_code == 200
    assert content == video


def test_if_range_with_last_modified_date(api, ready):
    body, video, full = ready
    response, content = ranged(api, body["video_url"], "bytes=0-9", **{"If-Range": full["Last-Modified"]})
    assert response.status_code == 206
    old_date = http_date(0)
    response, content = ranged(api, body["video_url"], "bytes=0-9", **{"If-Range": old_date})
    assert response.status_code == 200


def test_if_none_match_gives_304(api, ready):
    body, _, full = ready
    response = api.get(body["video_url"], headers={"If-None-Match": full["ETag"]})
    assert response.status_code == 304
    assert response["ETag"] == full["ETag"]
    assert response.content == b""


def test_if_modified_since_gives_304(api, ready):
    body, _, full = ready
    response = api.get(body["video_url"], headers={"If-Modified-Since": full["Last-Modified"]})
    assert response.status_code == 304


def test_head_sends_headers_only(api, ready):
    body, video, _ = ready
    response = api.head(body["video_url"])
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(video))
    assert response.content == b""


def test_download_parameter_makes_an_attachment_with_a_file_name(api, ready):
    body, _, _ = ready
    response = api.get(body["audio_url"] + "?download=1")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="range-test-audio.mp3"'
    assert response["Content-Type"] == "audio/mpeg"


def test_thumbnail_is_a_jpeg(api, ready):
    body, _, _ = ready
    response = api.get(body["thumbnail_url"])
    assert response["Content-Type"] == "image/jpeg"
    assert b"".join(response.streaming_content)[:3] == b"\xff\xd8\xff"


def test_media_of_an_unfinished_recording_is_404(api):
    started = start(api)
    response = api.get(f"/api/recordings/{started.session_id}/video/")
    assert response.status_code == 404
    assert response.json()["code"] == "media_not_ready"


def test_unknown_media_kind_is_404(api, ready):
    body, _, _ = ready
    response = api.get(f"/api/recordings/{body['session_id']}/source/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_media_answers_a_video_elements_accept_header(api, ready):
    body, _, _ = ready
    response = api.get(body["video_url"], headers={"Accept": "video/webm,video/ogg,video/*;q=0.9", "Range": "bytes=0-"})
    assert response.status_code == 206


def test_x_sendfile_names_the_stored_file_and_sends_no_body(api, ready, settings, media_root):
    body, _, _ = ready
    settings.RECORDER_MEDIA_DELIVERY = "x-sendfile"
    response = api.get(f"{body['audio_url']}?download=1")
    assert (response.status_code, response.content) == (200, b"")
    sendfile_path = response["X-Sendfile"]
    assert sendfile_path == str(media_root / "outputs" / body["view_id"] / "audio.mp3")
    with open(sendfile_path, "rb") as audio:
        assert len(audio.read()) > 0
    assert response["Content-Type"] == "audio/mpeg"
    assert response["Content-Disposition"].startswith("attachment;")
    assert api.get(body["audio_url"], headers={"If-None-Match": response["ETag"]}).status_code == 304
