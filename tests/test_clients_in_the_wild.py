"""The request shapes of real frontends of this protocol, sent as they send them, to a real server.

Each test is one client: its paths, field names, body types, order and timing, with real Chrome
chunks. The server runs with RECORDER_WRITE_AUTH=session (these clients know no token) and a short
finalize grace period. What every test asserts: the recording is `ready`, its source is byte for
byte what the browser recorded, and its video plays for the recorded duration.
"""

import base64
import hashlib
import json
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recordings import utils
from tests.conftest import load_chrome_set, make_target_server, run_server_environment
from tests.live_client import call, wait_until_finished

pytestmark = pytest.mark.live_server_process

GRACE_SECONDS = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("clients-in-the-wild")
    environment = run_server_environment(
        work, RECORDER_WRITE_AUTH="session", RECORDER_FINALIZE_GRACE_SECONDS=str(GRACE_SECONDS)
    )
    with make_target_server("run", work, environment) as (base_url, _):
        yield base_url


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """A body as the browser's FormData makes it: text fields, then Blob fields named `blob`."""
    boundary = f"----WebKitFormBoundary{uuid.uuid4().hex[:16]}"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="blob"\r\n'
        parts.append(f"{head}Content-Type: video/webm\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_form(url: str, fields: dict[str, str], files: dict[str, bytes]) -> tuple[int, dict]:
    body, content_type = multipart(fields, files)
    return call("POST", url, body, {"Content-Type": content_type})


def post_json(url: str, payload: dict) -> tuple[int, dict]:
    return call("POST", url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def played_seconds(base_url: str, recording: dict, tmp_path: Path) -> float:
    """Download the served video, as a player would, and measure it with the bundled ffmpeg."""
    path = tmp_path / "served"
    with urllib.request.urlopen(recording["video_url"], timeout=60) as response:
        path.write_bytes(response.read())
    return utils.probe(path).duration_seconds


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_original_protocol_without_a_token(server, tmp_path):
    """start (no body) → each chunk as FormData {session_id, video_chunk} without an index, awaited
    → finalize {session_id, is_final} carrying the last chunk."""
    recording = load_chrome_set("vp8_opus")
    status, started = call("POST", f"{server}/api/start-recording/")
    assert status == 201, started
    session_id = started["session_id"]
    for chunk in recording.chunks[:-1]:
        status, receipt = post_form(
            f"{server}/api/receive-video-chunk/", {"session_id": session_id}, {"video_chunk": chunk}
        )
        assert status == 201, receipt  # before: 401 token_required
    status, finalized = post_form(
        f"{server}/api/finalize-recording/",
        {"session_id": session_id, "is_final": "true"},
        {"video_chunk": recording.chunks[-1]},
    )
    assert status in (200, 202), finalized
    ready = wait_until_finished(server, session_id)
    assert ready["status"] == "ready", ready["error"]
    assert ready["source_sha256"] == recording.joined_sha256
    assert ready["warnings"] == []
    assert played_seconds(server, ready, tmp_path) == pytest.approx(recording.duration_seconds, abs=0.3)


def test_the_session_id_in_the_path_and_an_end_call_racing_the_last_chunk(server, tmp_path):
    """start with fetch(url, {body: {}}) → `[object Object]` as text/plain; each chunk as a raw
    Blob body to /receive-video-chunk/<id>/; the end call to /finalize-recording/<id>/ without a
    count goes out 0.3 s before the last chunk, neither awaited."""
    recording = load_chrome_set("vp8_opus")
    status, started = call(
        "POST", f"{server}/api/start-recording/", b"[object Object]", {"Content-Type": "text/plain;charset=UTF-8"}
    )
    assert status == 201, started  # before: 415
    session_id = started["session_id"]
    chunk_url = f"{server}/api/receive-video-chunk/{session_id}/"
    for chunk in recording.chunks[:-1]:
        status, receipt = call("POST", chunk_url, chunk, {"Content-Type": "video/webm"})
        assert status == 201, receipt  # before: 404
    finalize_answer = {}

    def end_call():
        finalize_answer["response"] = call("POST", f"{server}/api/finalize-recording/{session_id}/", b"", {})

    ender = threading.Thread(target=end_call)
    ender.start()
    time.sleep(0.3)
    last_status, last_receipt = call("POST", chunk_url, recording.chunks[-1], {"Content-Type": "video/webm"})
    ender.join()
    assert last_status == 201, last_receipt  # before: 409 recording_closed
    status, finalized = finalize_answer["response"]
    assert (status, finalized["status"], finalized["expected_chunks"]) == (202, "finalizing", None)
    ready = wait_until_finished(server, session_id)
    assert ready["status"] == "ready", ready["error"]
    assert ready["received_chunks"] == len(recording.chunks)
    assert ready["source_sha256"] == recording.joined_sha256
    # before: 7.05 s of 8.1 s
    assert played_seconds(server, ready, tmp_path) == pytest.approx(recording.duration_seconds, abs=0.3)


def test_other_field_names_and_chunks_counted_from_one(server, tmp_path):
    """JSON bodies: {videoId, blob_index (from 1), blob_object (base64), is_last}, posted without
    awaiting (so they land out of order); the last one with is_last=true to finalize."""
    recording = load_chrome_set("vp8_opus")
    status, started = post_json(f"{server}/api/start-recording/", {})
    session_id = started["session_id"]

    def send(position: int, url: str, is_last: bool) -> tuple[int, dict]:
        payload = {
            "videoId": session_id,
            "blob_index": position + 1,
            "blob_object": base64.b64encode(recording.chunks[position]).decode(),
            "is_last": is_last,
        }
        return post_json(url, payload)

    middle = [0, 2, 1, 4, 3, 6, 5]  # what unawaited uploads on two connections made of the order
    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = list(
            pool.map(lambda position: send(position, f"{server}/api/receive-video-chunk/", False)[0], middle)
        )
    assert statuses == [201] * len(middle)
    status, finalized = send(7, f"{server}/api/finalize-recording/", True)
    assert status in (200, 202), finalized
    ready = wait_until_finished(server, session_id)
    assert ready["status"] == "ready", ready["error"]  # before: `finalizing` for ever, waiting for chunk 0
    assert (ready["first_chunk_index"], ready["expected_chunks"], ready["received_ranges"]) == (1, 9, [[1, 8]])
    assert ready["source_sha256"] == recording.joined_sha256
    assert played_seconds(server, ready, tmp_path) == pytest.approx(recording.duration_seconds, abs=0.3)


def test_a_client_that_resends_everything_so_far(server, tmp_path):
    """Each upload is new Blob(allChunksSoFar) under the next index (sessionId, chunk in `blob`)."""
    recording = load_chrome_set("vp8_opus")
    _, started = post_json(f"{server}/api/start-recording/", {})
    session_id = started["session_id"]
    for index in range(len(recording.chunks)):
        so_far = b"".join(recording.chunks[: index + 1])
        status, receipt = post_form(
            f"{server}/api/receive-video-chunk/", {"sessionId": session_id, "chunk_index": str(index)}, {"blob": so_far}
        )
        assert status == 201, receipt
    status, finalized = post_json(f"{server}/api/finalize-recording/", {"sessionId": session_id, "is_final": True})
    assert status in (200, 202), finalized
    ready = wait_until_finished(server, session_id)
    assert ready["status"] == "ready", ready["error"]
    assert ready["source_sha256"] == recording.joined_sha256  # before: 1.36 MB for 0.32 MB, 57 decode errors
    assert [warning["code"] for warning in ready["warnings"]] == []
    assert played_seconds(server, ready, tmp_path) == pytest.approx(recording.duration_seconds, abs=0.3)


def test_a_restarted_recorder_is_joined_with_continuous_timestamps(server, tmp_path):
    """The client stopped and restarted its MediaRecorder mid-recording: its second stream starts
    with its own header at the next index."""
    first, second = load_chrome_set("vp8_opus").chunks, load_chrome_set("vp8_opus_60s").chunks[:10]
    alone = [upload_as_video_id_client(server, stream) for stream in (first, second)]
    seconds_alone = [played_seconds(server, recording, tmp_path) for recording in alone]
    ready = upload_as_video_id_client(server, first + second)
    assert ready["source_sha256"] == sha256(b"".join(first + second))
    assert [(warning["code"], warning["count"]) for warning in ready["warnings"]] == [("streams_joined", 2)]
    assert played_seconds(server, ready, tmp_path) == pytest.approx(sum(seconds_alone), abs=0.3)


def upload_as_video_id_client(server: str, chunks: list[bytes]) -> dict:
    """FormData {video_id, chunk_index, video_chunk}, then a JSON finalize {video_id, is_final}."""
    _, started = post_json(f"{server}/api/start-recording/", {})
    session_id = started["session_id"]
    for index, chunk in enumerate(chunks):
        status, receipt = post_form(
            f"{server}/api/receive-video-chunk/",
            {"video_id": session_id, "chunk_index": str(index)},
            {"video_chunk": chunk},
        )
        assert status == 201, receipt
    post_json(f"{server}/api/finalize-recording/", {"video_id": session_id, "is_final": True})
    ready = wait_until_finished(server, session_id)
    assert ready["status"] == "ready", ready["error"]
    return ready


def test_index_less_uploads_that_raced_are_ready_but_say_so(server, tmp_path):
    """No chunk_index and unawaited uploads: the server stored them in the order they arrived."""
    recording = load_chrome_set("vp8_opus")
    _, started = post_json(f"{server}/api/start-recording/", {})
    session_id = started["session_id"]
    arrival_order = [0, 1, 2, 4, 3, 5, 6, 7]
    for position in arrival_order:
        status, receipt = post_form(
            f"{server}/api/receive-video-chunk/",
            {"session_id": session_id},
            {"video_chunk": recording.chunks[position]},
        )
        assert status == 201, receipt
    post_json(f"{server}/api/finalize-recording/", {"session_id": session_id, "is_final": True})
    ready = wait_until_finished(server, session_id)
    assert ready["status"] == "ready", ready["error"]
    assert ready["source_sha256"] == sha256(b"".join(recording.chunks[position] for position in arrival_order))
    codes = {warning["code"]: warning["count"] for warning in ready["warnings"]}
    assert codes.get("timestamps_out_of_order", 0) > 0  # before: `ready`, and not a word


# --- session mode: what the session id may do, and who never sees it ---------------------------------------------


def test_in_session_mode_deleting_still_needs_the_token(server):
    _, started = post_json(f"{server}/api/start-recording/", {})
    url = f"{server}/api/recordings/{started['session_id']}/"
    status, refused = call("DELETE", url)
    assert (status, refused["code"]) == (401, "token_required")
    status, refused = call("DELETE", url, headers={"Authorization": "Bearer not-the-token"})
    assert (status, refused["code"]) == (403, "token_invalid")
    assert call("GET", f"{server}/api/get-recorded-data/{started['session_id']}/")[0] == 200
    request = urllib.request.Request(
        url, method="DELETE", headers={"Authorization": f"Bearer {started['upload_token']}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 204


def test_the_view_id_reads_but_never_writes_and_nothing_a_viewer_gets_names_the_session_id(server):
    recording = load_chrome_set("vp8_opus")
    _, started = post_json(f"{server}/api/start-recording/", {"title": "Demo"})
    session_id, view_id = started["session_id"], started["view_id"]
    status, refused = post_form(
        f"{server}/api/receive-video-chunk/", {"session_id": view_id}, {"video_chunk": recording.chunks[0]}
    )
    assert (status, refused["code"]) == (404, "session_not_found")  # a viewer cannot write with what it has
    for chunk in recording.chunks:
        post_form(f"{server}/api/receive-video-chunk/", {"session_id": session_id}, {"video_chunk": chunk})
    post_json(f"{server}/api/finalize-recording/", {"session_id": session_id, "is_final": True})
    wait_until_finished(server, session_id)

    seen = []
    for url in [f"{server}/r/{view_id}/", f"{server}/api/get-recorded-data/{view_id}/"]:
        with urllib.request.urlopen(url, timeout=30) as response:
            seen.append(response.read().decode())
            seen.append(str(dict(response.headers)))
    viewed = json.loads(seen[2])
    assert "session_id" not in viewed and viewed["view_id"] == view_id
    for kind in ("video", "audio", "thumbnail"):
        assert viewed[f"{kind}_url"].startswith(f"{server}/api/recordings/{view_id}/")
        request = urllib.request.Request(viewed[f"{kind}_url"] + "?download=1", headers={"Range": "bytes=0-99"})
        with urllib.request.urlopen(request, timeout=30) as response:
            seen.append(str(dict(response.headers)))
    assert all(session_id not in text and uuid.UUID(session_id).hex[:12] not in text for text in seen)


# --- a client of this kind, as its JavaScript runs in Chromium -------------------------------------------------

LEGACY_CLIENT_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>A recorder extension written for the original protocol</title>
<script>
async function hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

// What such extensions do: no token, the id in the path and as `video_id`, chunks counted from 1,
// uploads never awaited, and the end call fired as the recorder stops, without a count.
window.recordFor = async (api, seconds) => {
  const started = await fetch(`${api}/api/start-recording/`, { method: "POST", body: {} });
  const { session_id } = await started.json();
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const recorder = new MediaRecorder(stream, { mimeType: "video/webm;codecs=vp8,opus" });
  const blobs = [];
  const uploads = [];
  let blobIndex = 0;
  recorder.ondataavailable = (event) => {
    blobs.push(event.data);
    const form = new FormData();
    form.append("video_id", session_id);
    form.append("blob_index", String(++blobIndex));
    form.append("video_chunk", event.data);
    uploads.push(fetch(`${api}/api/receive-video-chunk/${session_id}/`, { method: "POST", body: form }));
  };
  const started_at = performance.now();
  recorder.onstop = () => {
    uploads.push(fetch(`${api}/api/finalize-recording/${session_id}/`, { method: "POST" }));
  };
  recorder.start(500);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const stopped = new Promise((resolve) => recorder.addEventListener("stop", resolve));
  recorder.stop();
  await stopped;
  const recordedMs = performance.now() - started_at;
  stream.getTracks().forEach((track) => track.stop());
  const statuses = await Promise.all(uploads.map(async (upload) => (await upload).status));
  return { session_id, statuses, recordedMs, sha256: await hex(new Blob(blobs)), chunks: blobs.length };
};
window.pageReady = true;
</script>
"""


@pytest.mark.browser
def test_an_extension_of_this_kind_works_unchanged_in_chromium(server, tmp_path):
    from tests.test_recorder_page import chromium, static_site, wait_until

    site = tmp_path / "extension"
    site.mkdir()
    (site / "index.html").write_text(LEGACY_CLIENT_PAGE)
    with static_site(site) as site_url, chromium() as context:
        page = context.new_page()
        page.goto(f"{site_url}/index.html")
        wait_until(page, "window.pageReady === true")
        result = page.evaluate("(api) => window.recordFor(api, 4)", server)

    assert set(result["statuses"][:-1]) == {201}, result["statuses"]  # before: 404 for every one
    assert result["statuses"][-1] == 202  # the end call: it waits for chunks still on their way
    ready = wait_until_finished(server, result["session_id"])
    assert ready["status"] == "ready", ready["error"]
    assert (ready["first_chunk_index"], ready["received_chunks"]) == (1, result["chunks"])
    assert ready["source_sha256"] == result["sha256"]  # byte for byte what the browser recorded
    assert played_seconds(server, ready, tmp_path) == pytest.approx(result["recordedMs"] / 1000, abs=0.6)


@pytest.mark.browser
def test_the_watch_page_says_what_processing_played_past(server):
    from tests.test_recorder_page import chromium, wait_until

    recording = load_chrome_set("vp8_opus")
    _, started = post_json(f"{server}/api/start-recording/", {"title": "Raced"})
    for position in (0, 1, 2, 4, 3, 5, 6, 7):  # index-less uploads that overtook each other
        post_form(
            f"{server}/api/receive-video-chunk/",
            {"session_id": started["session_id"]},
            {"video_chunk": recording.chunks[position]},
        )
    post_json(f"{server}/api/finalize-recording/", {"session_id": started["session_id"], "is_final": True})
    ready = wait_until_finished(server, started["session_id"])
    with chromium() as context:
        page = context.new_page()
        page.goto(ready["watch_url"])
        wait_until(page, "!document.getElementById('media').hidden")
        assert page.locator("#warnings").is_visible()
        listed = page.locator("#warning-list li")
        assert listed.count() == 1
        assert listed.first.get_attribute("data-code") == "timestamps_out_of_order"
        assert "packets had a timestamp earlier" in listed.first.inner_text()
        assert started["session_id"] not in page.content()
