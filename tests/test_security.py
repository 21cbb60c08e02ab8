"""The security promises of docs/security.md, each by a test that fails if the promise breaks."""

import hashlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from recordings import utils
from recordings.models import RecordingSession, chunk_storage_name
from tests.conftest import PROJECT_DIR, load_chrome_set
from tests.live_client import call, start_session
from tests.recorder_client import finalize, post_chunk, start, upload_all

HOSTILE_IDS = [
    "../../etc/passwd",
    "..%2F..%2Fdb.sqlite3",
    "%2e%2e",
    "c0ffee00-0000-4000-8000-000000000000%00.webm",
    "' OR '1'='1",
    "a" * 300,
]


@pytest.mark.django_db
@pytest.mark.parametrize("hostile_id", HOSTILE_IDS)
def test_hostile_ids_are_refused_before_any_file_is_touched(api, media_root, hostile_id):
    before = sorted(media_root.rglob("*"))
    assert api.get(f"/api/get-recorded-data/{hostile_id}/").status_code == 404
    assert api.get(f"/api/recordings/{hostile_id}/video/").status_code == 404
    assert api.delete(f"/api/recordings/{hostile_id}/", headers={"Authorization": "Bearer x"}).status_code == 404
    response = api.post(
        "/api/receive-video-chunk/",
        {"session_id": hostile_id, "chunk_index": 0, "video_chunk": SimpleUploadedFile("blob", b"x")},
        headers={"Authorization": "Bearer x"},
    )
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert sorted(media_root.rglob("*")) == before
    with pytest.raises(ValueError):
        chunk_storage_name(hostile_id, 0)  # names are built from a parsed UUID and an int only


@pytest.mark.django_db
def test_a_hostile_media_kind_is_a_404_not_a_path(api, media_root):
    started = start(api)
    for kind in ("..%2F..%2Fdb.sqlite3", "chunks", "..", "video.webm"):
        response = api.get(f"/api/recordings/{started.session_id}/{kind}/")
        assert response.status_code == 404, kind


def test_upload_tokens_are_stored_only_as_hashes(make_run_server):
    base_url = make_run_server.base_url
    session_id, upload_token = start_session(base_url)
    chunk = load_chrome_set("vp8_opus").chunks[0]
    url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index=0"
    assert call("POST", url, chunk, {"Authorization": f"Bearer {upload_token}", "Content-Type": "video/webm"})[0] == 201
    database = b"".join(path.read_bytes() for path in make_run_server.media_root.parent.glob("db.sqlite3*"))
    assert upload_token.encode() not in database
    assert hashlib.sha256(upload_token.encode()).hexdigest().encode() in database


def test_upload_tokens_never_reach_the_logs(make_run_server, caplog):
    base_url = make_run_server.base_url
    log_before = make_run_server.log_path.read_text()
    session_id, upload_token = start_session(base_url)
    chunk = load_chrome_set("vp8_opus").chunks[0]
    url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index=0"
    for token in (upload_token, upload_token[::-1]):  # accepted, then refused (403)
        call("POST", url, chunk, {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"})
    call("POST", url, b"other bytes", {"Authorization": f"Bearer {upload_token}", "Content-Type": "video/webm"})
    new_log = make_run_server.log_path.read_text()[len(log_before) :]
    assert f"/api/receive-video-chunk/?session_id={session_id}" in new_log  # the requests were logged ...
    assert upload_token not in new_log and upload_token[::-1] not in new_log  # ... their tokens were not


@pytest.mark.django_db(transaction=True)
def test_no_token_in_the_service_logs_at_debug_level(api, caplog):
    caplog.set_level(logging.DEBUG)
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    post_chunk(api, started, b"different", index=0)  # a 409, logged as a warning
    post_chunk(api, started, recording.chunks[0], index=0, token="wrong-token")  # a 403
    finalize(api, started)
    assert RecordingSession.objects.get(pk=started.session_id).status == "ready"
    assert caplog.records  # there was logging to look at
    assert all(started.upload_token not in record.getMessage() for record in caplog.records)


def test_ffmpeg_runs_without_a_shell_whatever_the_file_is_called(tmp_path):
    source_dir = tmp_path / "$(touch pwned); `touch pwned2` | true"
    source_dir.mkdir()
    source_path = source_dir / "a'b\"c $HOME;.webm"
    source_path.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    info = utils.probe(source_path)
    assert info.has_video and info.has_audio
    video_path = source_dir / "out;rm -rf x.webm"
    utils.remux(source_path, video_path, utils.plan_remux("webm", info), limits=utils.Limits(timeout_seconds=60))
    assert video_path.stat().st_size > 0
    assert not any(Path(name).exists() for name in ("pwned", "pwned2", tmp_path / "pwned"))
    sources = "".join(path.read_text() for path in (PROJECT_DIR / "recordings").rglob("*.py"))
    assert not re.search(r"shell\s*=\s*True|os\.system|os\.popen", sources)


@pytest.mark.django_db
def test_pages_and_api_send_the_security_headers(client, settings):
    settings.SECURE_SSL_REDIRECT = False
    page = client.get("/")
    assert "script-src 'self'" in page["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page["Content-Security-Policy"]
    api_response = client.post("/api/start-recording/", {}, content_type="application/json")
    for response in (page, api_response):
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["X-Frame-Options"] == "DENY"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def _get_status_codes(environment: dict, paths: list[str], tmp_path) -> list[int]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "RECORDER_"))}
    code = (
        f"from django.test import Client; c = Client(); print(','.join(str(c.get(p).status_code) for p in {paths!r}))"
    )
    completed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=PROJECT_DIR,
        env={
            **clean,
            "DJANGO_DEBUG": "1",
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            **environment,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return [int(status) for status in completed.stdout.strip().splitlines()[-1].split(",")]


def test_the_api_docs_and_the_admin_can_be_left_out(tmp_path):
    paths = ["/swagger.json", "/swagger/", "/redoc/", "/admin/login/"]
    assert _get_status_codes({}, paths, tmp_path) == [200, 200, 200, 200]
    assert _get_status_codes({"RECORDER_API_DOCS": "0", "DJANGO_ADMIN": "0"}, paths, tmp_path) == [404] * 4
