"""Crash safety and concurrency against a real multi-process server: nothing acknowledged is lost.

- 20 recorders keep 100 chunk uploads in flight; the whole server (master and workers) is
  SIGKILLed mid-way and started again: every chunk that got a 2xx is there, byte-exact, no
  half-written chunk is visible, and every recorder resumes from `received_ranges`, finalizes and
  ends `ready` with its source byte-identical.
- 200 recordings with every chunk sent twice, shuffled together, from 32 threads: every joined
  source byte-identical, no 5xx, no deadlock.
"""

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.harness import PROJECT_DIR, PYTHON, gunicorn, service_environment
from tests.browser import ARTIFACTS_DIR
from tests.conftest import load_chrome_set
from tests.live_client import call, start_session, wait_until_finished

pytestmark = [pytest.mark.live_server_process, pytest.mark.slow]

SERVER = {"GUNICORN_WORKERS": "3", "GUNICORN_THREADS": "8", "RECORDER_KEEP_CHUNKS": "1"}


def post_chunk(base_url: str, session_id: str, token: str, index: int, body: bytes) -> int:
    url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
    try:
        return call("POST", url, body, {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"})[0]
    except (OSError, json.JSONDecodeError):
        return 0  # no answer: the server died under it


def finalize(base_url: str, session_id: str, token: str, total_chunks: int) -> int:
    body = json.dumps({"session_id": session_id, "is_final": True, "total_chunks": total_chunks}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return call("POST", f"{base_url}/api/finalize-recording/", body, headers)[0]


def test_killing_the_server_mid_upload_loses_no_acknowledged_chunk(tmp_path):
    recording = load_chrome_set("vp8_opus_60s")  # 59 chunks
    chunks = recording.chunks
    acknowledged: dict[str, set[int]] = {}
    lock = threading.Lock()
    killed = threading.Event()
    kill_now = threading.Event()

    with gunicorn(tmp_path, extra_env=SERVER) as server:
        sessions = [start_session(server.base_url) for _ in range(20)]
        for session_id, _ in sessions:
            acknowledged[session_id] = set()

        def upload(job: tuple[str, str, int]) -> int | None:
            session_id, token, index = job
            if killed.is_set():
                return None  # not sent: the client would send it after the restart
            status = post_chunk(server.base_url, session_id, token, index, chunks[index])
            if 200 <= status < 300:
                with lock:
                    acknowledged[session_id].add(index)
                    if sum(map(len, acknowledged.values())) >= 400:
                        kill_now.set()
            return status

        jobs = [(session_id, token, index) for index in range(len(chunks)) for session_id, token in sessions]
        with ThreadPoolExecutor(max_workers=100) as pool:  # 100 uploads in flight at once
            results = pool.map(upload, jobs)
            assert kill_now.wait(timeout=300), "400 chunks were never acknowledged"
            os.killpg(server.pid, signal.SIGKILL)  # master and workers, mid-upload
            killed.set()
            statuses = list(results)
        uploads_killed = statuses.count(0)  # sent, never answered

    acknowledged_count = sum(map(len, acknowledged.values()))
    assert acknowledged_count >= 400 and uploads_killed > 0, (acknowledged_count, uploads_killed)
    assert set(statuses) <= {None, 0, 201}, set(statuses)  # the server never answered 5xx before it died

    # Nothing half-written is visible: every chunk file present is exactly the bytes of its index.
    digests = [hashlib.sha256(chunk).hexdigest() for chunk in chunks]
    chunk_files = [
        path
        for session_id, _ in sessions
        for path in (tmp_path / "media" / "recordings" / session_id / "chunks").glob("*")
    ]
    assert len(chunk_files) >= acknowledged_count
    for path in chunk_files:
        assert path.name.isdigit(), f"a stray file is visible: {path}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[int(path.name)], path

    # The uploads cut off left staged files behind; expire_recordings sweeps them once stale.
    temp_dir = tmp_path / "media" / ".tmp"
    left_behind = len(list(temp_dir.iterdir()))
    sweep = subprocess.run(
        [PYTHON, "manage.py", "expire_recordings"],
        cwd=PROJECT_DIR,
        env={**service_environment(tmp_path), "RECORDER_TEMP_MAX_AGE": "0s"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{left_behind} stale temporary file(s) removed" in sweep.stdout, sweep.stdout
    assert list(temp_dir.iterdir()) == []

    lost_count = 0
    with gunicorn(tmp_path, extra_env=SERVER) as restarted:  # the same database and media
        for session_id, token in sessions:
            _, body = call("GET", f"{restarted.base_url}/api/get-recorded-data/{session_id}/")
            stored = {index for first, last in body["received_ranges"] for index in range(first, last + 1)}
            lost = acknowledged[session_id] - stored
            lost_count += len(lost)
            assert not lost, f"{session_id} lost acknowledged chunks {sorted(lost)}"
            for index in sorted(set(range(len(chunks))) - stored):  # the client resumes
                assert post_chunk(restarted.base_url, session_id, token, index, chunks[index]) == 201
            assert finalize(restarted.base_url, session_id, token, len(chunks)) in (200, 202)  # 202: processing
        for session_id, _ in sessions:
            body = wait_until_finished(restarted.base_url, session_id)
            assert body["status"] == "ready", body["error"]
            # the live build went on from its state in the database and its files, not restarted
            assert "live_finish" in body["processing_steps"], body["processing_steps"]
            assert body["source_sha256"] == recording.joined_sha256
            assert body["received_chunks"] == len(chunks)

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    figures = {
        "recordings": len(sessions),
        "uploads_in_flight": 100,
        "acknowledged_before_kill": acknowledged_count,
        "uploads_killed": uploads_killed,
        "acknowledged_chunks_lost": lost_count,
        "staged_files_left_by_the_kill": left_behind,
        "recordings_ready": len(sessions),
    }
    (ARTIFACTS_DIR / "crash-safety.json").write_text(json.dumps(figures, indent=2) + "\n")


def test_two_hundred_recordings_with_shuffled_duplicated_concurrent_chunks(tmp_path):
    recordings = [load_chrome_set(name) for name in ("vp8_opus", "audio_opus_webm", "vp9_opus")]
    with gunicorn(tmp_path, extra_env={**SERVER, "GUNICORN_ACCESS_LOG": "-"}) as server:
        sessions = []
        for number in range(200):
            session_id, token = start_session(server.base_url)
            sessions.append((session_id, token, recordings[number % len(recordings)]))
        jobs = [
            (session_id, token, index, chunk)
            for session_id, token, recording in sessions
            for index, chunk in enumerate(recording.chunks)
        ] * 2  # every chunk twice
        random.Random(200).shuffle(jobs)
        with ThreadPoolExecutor(max_workers=32) as pool:  # a deadlock raises TimeoutError instead of hanging
            statuses = list(pool.map(lambda job: post_chunk(server.base_url, *job), jobs, timeout=900))
        server_errors = sum(status >= 500 for status in statuses)
        assert sorted(set(statuses)) == [200, 201], sorted(set(statuses))
        assert statuses.count(201) == len(jobs) // 2  # each index stored exactly once

        def finish(session) -> dict:
            session_id, token, recording = session
            assert finalize(server.base_url, session_id, token, len(recording.chunks)) in (200, 202)
            return wait_until_finished(server.base_url, session_id, timeout_seconds=300)

        with ThreadPoolExecutor(max_workers=8) as pool:
            bodies = list(pool.map(finish, sessions))
        log = (tmp_path / "gunicorn.log").read_text()

    for (_, _, recording), body in zip(sessions, bodies, strict=True):
        assert body["status"] == "ready", body["error"]
        assert body["source_sha256"] == recording.joined_sha256
    assert "Traceback" not in log
    assert not re.findall(r'HTTP/1.1" 5\d\d ', log)  # nor to finalize and the polls
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    figures = {
        "recordings": len(sessions),
        "chunk_requests": len(jobs),
        "server_errors": server_errors,
        "recordings_ready_byte_identical": len(bodies),
    }
    (ARTIFACTS_DIR / "concurrency.json").write_text(json.dumps(figures, indent=2) + "\n")
