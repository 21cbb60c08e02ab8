"""Against a real `make run` server: many clients at once, and playback in a real Chromium."""

import hashlib
import json
import random
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.browser import CHROMIUM, CHROMIUM_FLAGS, chromium_playwright
from tests.conftest import load_chrome_set
from tests.live_client import call, start_session, wait_until_finished

pytestmark = pytest.mark.live_server_process


def test_many_clients_with_shuffled_duplicated_late_chunks(make_run_server):
    base_url = make_run_server.base_url
    recordings = [load_chrome_set(name) for name in ("vp8_opus", "mp4_avc1_opus", "vp9_opus")] * 4
    sessions = [start_session(base_url) for _ in recordings]
    randomizer = random.Random(11)
    requests = []
    for (session_id, token), recording in zip(sessions, recordings, strict=True):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        plan = list(range(len(recording.chunks))) + randomizer.sample(range(len(recording.chunks)), 2)
        randomizer.shuffle(plan)
        for index in plan:
            url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
            requests.append(("POST", url, recording.chunks[index], headers))
        # finalize is fired among the chunks, as clients that do not await their uploads do
        finalize_body = json.dumps(
            {"session_id": session_id, "is_final": True, "total_chunks": len(recording.chunks)}
        ).encode()
        requests.insert(
            randomizer.randrange(len(requests)),
            (
                "POST",
                f"{base_url}/api/finalize-recording/",
                finalize_body,
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ),
        )
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda request: call(*request)[0], requests))
    assert sorted(set(statuses)) <= [200, 201, 202], statuses
    for (session_id, _), recording in zip(sessions, recordings, strict=True):
        body = wait_until_finished(base_url, session_id)
        assert body["status"] == "ready", body["error"]
        assert body["source_sha256"] == recording.joined_sha256
        assert body["received_chunks"] == len(recording.chunks)


def test_swagger_ui_try_it_out_uploads_a_file(make_run_server, tmp_path):
    sync_playwright = chromium_playwright()
    base_url = make_run_server.base_url
    session_id, token = start_session(base_url)
    chunk_path = tmp_path / "chunk_000.webm"
    chunk_path.write_bytes(load_chrome_set("vp8_opus").chunks[0])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(f"{base_url}/swagger/")
        page.click(".btn.authorize")
        page.fill(".auth-container input", f"Bearer {token}")
        page.click(".auth-btn-wrapper .btn.authorize")
        page.click(".btn-done")
        operation = page.locator("#operations-upload-receive_video_chunk")
        operation.locator(".opblock-summary").click()
        operation.locator(".try-out__btn").click()
        operation.locator("tr[data-param-name='session_id'] input").fill(session_id)
        operation.locator("tr[data-param-name='chunk_index'] input").fill("0")
        operation.locator("tr[data-param-name='video_chunk'] input[type=file]").set_input_files(str(chunk_path))
        operation.locator(".execute").click()
        status_cell = operation.locator(".live-responses-table tr.response .response-col_status").first
        status_cell.wait_for()
        assert status_cell.inner_text().strip() == "201"
        browser.close()
    _, body = call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")
    assert (body["received_chunks"], body["received_bytes"]) == (1, chunk_path.stat().st_size)


def test_video_plays_and_seeks_to_the_middle_in_chromium(make_run_server):
    sync_playwright = chromium_playwright()
    base_url = make_run_server.base_url
    recording = load_chrome_set("vp8_opus")
    session_id, token = start_session(base_url)
    for index, chunk in enumerate(recording.chunks):
        status, _ = call(
            "POST",
            f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}",
            chunk,
            {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"},
        )
        assert status == 201
    call(
        "POST",
        f"{base_url}/api/finalize-recording/",
        json.dumps({"session_id": session_id, "is_final": "true"}).encode(),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    body = wait_until_finished(base_url, session_id)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(f"{base_url}/swagger.json")
        result = page.evaluate(
            """async (url) => {
                const video = document.createElement('video');
                video.muted = true;
                video.preload = 'auto';
                document.body.appendChild(video);
                const once = (name) => new Promise((resolve, reject) => {
                    video.addEventListener(name, resolve, {once: true});
                    const fail = () => reject(new Error('media error ' + video.error?.code));
                    video.addEventListener('error', fail, {once: true});
                });
                const loaded = once('loadedmetadata');
                video.src = url;
                await loaded;
                const duration = video.duration;
                const seeked = once('seeked');
                video.currentTime = duration / 2;
                await seeked;
                const afterSeek = video.currentTime;
                await video.play();
                await new Promise((resolve) => setTimeout(resolve, 500));
                video.pause();
                return {duration, afterSeek, playedTo: video.currentTime, width: video.videoWidth};
            }""",
            body["video_url"],
        )
        browser.close()
    assert result["duration"] == pytest.approx(recording.duration_seconds, rel=0.10)
    assert result["afterSeek"] == pytest.approx(result["duration"] / 2, abs=0.5)
    assert result["playedTo"] > result["afterSeek"]
    assert result["width"] == 640


def send_raw_request(base_url: str, head: bytes, body: bytes) -> bytes:
    """Send a request over a plain socket and half-close it, as a client that drops mid-upload does."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head + body)
        connection.shutdown(socket.SHUT_WR)
        response = b""
        while block := connection.recv(65536):
            response += block
    return response


def test_a_raw_upload_cut_short_is_not_stored_and_its_retry_succeeds(make_run_server):
    base_url = make_run_server.base_url
    chunk = load_chrome_set("vp8_opus").chunks[0]
    session_id, token = start_session(base_url)
    head = (
        f"POST /api/receive-video-chunk/?session_id={session_id}&chunk_index=0 HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(chunk)}\r\nConnection: close\r\n\r\n"
    ).encode()
    response = send_raw_request(base_url, head, chunk[:10_000])
    assert response.startswith(b"HTTP/1.1 400"), response[:200]
    assert b'"upload_interrupted"' in response
    _, body = call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")
    assert body["received_chunks"] == 0
    status, receipt = call(
        "POST",
        f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index=0",
        chunk,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    )
    assert (status, receipt["size"]) == (201, len(chunk))


def test_a_chunked_raw_upload_is_refused_rather_than_stored_empty(make_run_server):
    base_url = make_run_server.base_url
    session_id, token = start_session(base_url)
    head = (
        f"POST /api/receive-video-chunk/?session_id={session_id}&chunk_index=0 HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    response = send_raw_request(base_url, head, b"4\r\n\x1a\x45\xdf\xa3\r\n0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 411"), response[:200]
    _, body = call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")
    assert body["received_chunks"] == 0


def test_a_multipart_upload_cut_short_is_not_stored(make_run_server):
    base_url = make_run_server.base_url
    chunk = load_chrome_set("vp8_opus").chunks[0]
    session_id, token = start_session(base_url)
    boundary = b"recorder-test-boundary"
    body = b"".join(
        [
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n' + session_id.encode(),
            b"\r\n--" + boundary + b'\r\nContent-Disposition: form-data; name="chunk_index"\r\n\r\n0',
            b"\r\n--" + boundary + b'\r\nContent-Disposition: form-data; name="video_chunk"; filename="blob"\r\n'
            b"Content-Type: video/webm\r\n\r\n" + chunk + b"\r\n--" + boundary + b"--\r\n",
        ]
    )
    head = (
        f"POST /api/receive-video-chunk/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    response = send_raw_request(base_url, head, body[:15_000])
    assert response.startswith(b"HTTP/1.1 400"), response[:200]
    _, status_body = call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")
    assert status_body["received_chunks"] == 0


def test_racing_uploads_of_one_index_store_exactly_the_acknowledged_bytes(make_run_server):
    base_url = make_run_server.base_url
    recording = load_chrome_set("vp8_opus")
    session_id, token = start_session(base_url)
    contenders = [recording.chunks[0], recording.chunks[0][:-1] + b"\x00"]  # same index, different bytes
    url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index=0"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"}
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda attempt: call("POST", url, contenders[attempt % 2], headers), range(24)))
    acknowledged = {body["sha256"] for status, body in results if status in (200, 201)}
    assert len(acknowledged) == 1  # one version won; every other answer was a 409 conflict
    statuses = [status for status, _ in results]
    assert (statuses.count(201), statuses.count(200), statuses.count(409)) == (1, 11, 12)
    stored = make_run_server.media_root / "recordings" / session_id / "chunks" / "0"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == acknowledged.pop()
