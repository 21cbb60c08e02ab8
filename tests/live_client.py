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
    """Poll the recording until it is ready or failed; its JSON."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        _, body = call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")
        if body["status"] in ("ready", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{session_id} is still {body['status']}")
