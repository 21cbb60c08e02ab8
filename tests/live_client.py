"""A client for a real server process over HTTP: one call, start a recording, wait until it is done."""

import json
import time
import urllib.error
import urllib.request


def call(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_session(base_url: str) -> tuple[str, str]:
    """A new recording: (session_id, upload_token)."""
    status, body = call("POST", f"{base_url}/api/start-recording/", b"{}", {"Content-Type": "application/json"})
    assert status == 201, body
    return body["session_id"], body["upload_token"]


def wait_until_finished(base_url: str, session_id: str, timeout_seconds: float = 120) -> dict:
    """Poll the recording until it is failed, or ready with its `source_sha256` (which a recording
    built while it was uploaded gets right after `ready`); its JSON."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        _, body = call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")
        if body["status"] == "failed" or (body["status"] == "ready" and body["source_sha256"]):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{session_id} is still {body['status']}")


def upload_recording(base_urls: list[str], chunks: list[bytes], *, mime_type: str = "video/webm") -> tuple[str, dict]:
    """Start a recording, post chunk i to base_urls[i % n] and finalize on the next one, as a client
    behind a load balancer without sticky sessions would; (session_id, the finalize answer)."""
    session_id, upload_token = start_session(base_urls[0])
    auth = {"Authorization": f"Bearer {upload_token}"}
    for index, chunk in enumerate(chunks):
        base_url = base_urls[index % len(base_urls)]
        url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
        status, body = call("POST", url, chunk, {**auth, "Content-Type": mime_type})
        assert status == 201, body
    finalize_url = f"{base_urls[len(chunks) % len(base_urls)]}/api/finalize-recording/"
    body = json.dumps({"session_id": session_id, "is_final": True, "total_chunks": len(chunks)}).encode()
    status, finalized = call("POST", finalize_url, body, {**auth, "Content-Type": "application/json"})
    assert status in (200, 202), finalized
    return session_id, finalized
