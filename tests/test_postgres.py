"""On PostgreSQL, behind several gunicorn processes: the concurrency-sensitive steps hold.

Each decision (the next chunk index, "is this index taken?", "did this chunk complete the set?",
the finalize decision, the status moves) is taken under the recording's row lock
(`SELECT … FOR UPDATE`), not in any process's memory. These tests fire one recording's chunks and
finalize calls from many threads at three worker processes sharing one PostgreSQL database.

PostgreSQL comes from RECORDER_TEST_POSTGRES_URL (default: the local server, user postgres); each
test module gets a database of its own, dropped afterwards.
"""

import hashlib
import json
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.harness import PROJECT_DIR, db_workers, gunicorn, service_environment
from tests.conftest import load_chrome_set
from tests.live_client import call, start_session, upload_recording, wait_until_finished

pytestmark = [pytest.mark.live_server_process, pytest.mark.postgres]


@pytest.fixture(scope="module")
def server(postgres_url, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("postgres-server")
    environment = {
        "DATABASE_URL": postgres_url,
        "GUNICORN_WORKERS": "3",
        "GUNICORN_THREADS": "6",
        "RECORDER_LOG_LEVEL": "INFO",
    }
    with gunicorn(work_dir, extra_env=environment) as running:
        yield running


def start(base_url: str) -> tuple[str, dict]:
    session_id, upload_token = start_session(base_url)
    return session_id, {"Authorization": f"Bearer {upload_token}"}


def test_the_server_really_runs_on_postgresql(server, postgres_url):
    import psycopg

    session_id, _ = start(server.base_url)
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute(
            "SELECT status FROM recordings_recordingsession WHERE id = %s", [session_id]
        ).fetchone()
    assert row == ("recording",)


def test_chunks_retries_and_finalize_racing_from_many_threads(server):
    base_url = server.base_url
    recording = load_chrome_set("vp8_opus")
    session_id, auth = start(base_url)
    total = len(recording.chunks)

    def upload(index: int) -> tuple[str, int, dict]:
        url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
        return ("chunk", *call("POST", url, recording.chunks[index], {**auth, "Content-Type": "video/webm"}))

    def finalize(_: int) -> tuple[str, int, dict]:
        body = json.dumps({"session_id": session_id, "is_final": True, "total_chunks": total}).encode()
        url = f"{base_url}/api/finalize-recording/"
        return ("finalize", *call("POST", url, body, {**auth, "Content-Type": "application/json"}))

    # every chunk three times (a client's retries), and four finalize calls, in a shuffled order
    jobs = [(upload, index) for index in range(total)] * 3 + [(finalize, attempt) for attempt in range(4)]
    random.Random(7).shuffle(jobs)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda job: job[0](job[1]), jobs))

    chunk_statuses = sorted(status for kind, status, _ in results if kind == "chunk")
    assert chunk_statuses == [200] * (2 * total) + [201] * total  # each index stored once, retries answered 200
    finalize_bodies = [(status, body) for kind, status, body in results if kind == "finalize"]
    assert all(status in (200, 202) for status, _ in finalize_bodies), finalize_bodies

    body = wait_until_finished(base_url, session_id)
    assert body["status"] == "ready", body["error"]
    assert (body["received_chunks"], body["received_bytes"]) == (total, sum(map(len, recording.chunks)))
    assert body["source_sha256"] == recording.joined_sha256
    assert body["duration"] == pytest.approx(recording.duration_seconds, rel=0.1)
    # exactly one processing run, whichever request completed the set
    runs = re.findall(rf"recording {session_id} ready in", (server.work_dir / "gunicorn.log").read_text())
    assert len(runs) == 1


def test_chunks_without_an_index_get_distinct_consecutive_indices(server):
    base_url = server.base_url
    recording = load_chrome_set("vp8_opus")
    session_id, auth = start(base_url)
    url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}"
    headers = {**auth, "Content-Type": "video/webm"}
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: call("POST", url, recording.chunks[0], headers), range(40)))
    assert [status for status, _ in results] == [201] * 40
    assert sorted(body["chunk_index"] for _, body in results) == list(range(40))
    _, body = call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")
    assert (body["received_chunks"], body["received_ranges"]) == (40, [[0, 39]])
    stored = server.work_dir / "media" / "recordings" / session_id / "chunks"
    digest = hashlib.sha256(recording.chunks[0]).hexdigest()
    assert {hashlib.sha256(path.read_bytes()).hexdigest() for path in stored.iterdir()} == {digest}
    assert len(list(stored.iterdir())) == 40


# --- Processing on a pool of db_worker processes ------------------------------------------------------


@pytest.fixture(scope="module")
def worker_server(postgres_url, tmp_path_factory):
    """The service with RECORDER_TASKS_BACKEND=database: it enqueues, and only db_worker processes run."""
    work_dir = tmp_path_factory.mktemp("postgres-worker-server")
    environment = {"DATABASE_URL": postgres_url, "RECORDER_TASKS_BACKEND": "database", "RECORDER_LOG_LEVEL": "INFO"}
    with gunicorn(work_dir, extra_env=environment) as running:
        yield running, {**service_environment(work_dir), **environment}


def test_processing_runs_on_db_workers_not_in_the_web_process(worker_server):
    server, environment = worker_server
    recordings = [load_chrome_set(name) for name in ("vp8_opus", "h264_opus_webm", "vp9_opus_mp4")]
    sessions = [upload_recording([server.base_url], recording.chunks) for recording in recordings]
    assert [finalized["status"] for _, finalized in sessions] == ["processing"] * 3
    time.sleep(1.0)  # no worker yet: nothing may process them
    for session_id, _ in sessions:
        assert call("GET", f"{server.base_url}/api/get-recorded-data/{session_id}/")[1]["status"] == "processing"

    with db_workers(environment, server.work_dir, count=2):
        bodies = [wait_until_finished(server.base_url, session_id) for session_id, _ in sessions]
    for recording, body in zip(recordings, bodies, strict=True):
        assert body["status"] == "ready", body["error"]
        assert body["source_sha256"] == recording.joined_sha256
    worker_logs = "".join(path.read_text() for path in server.work_dir.glob("worker-*.log"))
    web_log = (server.work_dir / "gunicorn.log").read_text()
    for session_id, _ in sessions:
        assert f"recording {session_id} ready in" in worker_logs
        assert f"recording {session_id} ready in" not in web_log


def _processing_row(postgres_url: str, session_id: str) -> tuple:
    import psycopg

    with psycopg.connect(postgres_url) as connection:
        return connection.execute(
            "SELECT status, processing_attempts FROM recordings_recordingsession WHERE id = %s", [session_id]
        ).fetchone()


def test_a_worker_killed_mid_run_leaves_no_recording_stuck(postgres_url, tmp_path):
    """SIGKILL the db_worker while it processes: its task stays RUNNING in django-tasks-db for ever,
    but the recording's heartbeat stops, and another worker runs it again."""
    environment_overrides = {
        "DATABASE_URL": postgres_url,
        "RECORDER_TASKS_BACKEND": "database",
        "RECORDER_LOG_LEVEL": "INFO",
        "RECORDER_PROCESSING_STALE_SECONDS": "3",
    }
    recording = load_chrome_set("vp8_opus_60s")
    with gunicorn(tmp_path, extra_env=environment_overrides) as server:
        environment = {**service_environment(tmp_path), **environment_overrides}
        session_id, _ = upload_recording([server.base_url], recording.chunks)
        first_log = open(tmp_path / "doomed-worker.log", "wb")  # noqa: SIM115 - closed below
        doomed = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"],
            cwd=PROJECT_DIR,
            env=environment,
            stdout=first_log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while _processing_row(postgres_url, session_id) != ("processing", 1):
                assert time.monotonic() < deadline, "the worker never claimed the recording"
                assert doomed.poll() is None
                time.sleep(0.01)
            doomed.kill()  # mid-run: the claim is taken and the heartbeat has started
            doomed.wait(timeout=10)
        finally:
            first_log.close()
        assert _processing_row(postgres_url, session_id) == ("processing", 1)

        import psycopg

        with psycopg.connect(postgres_url) as connection:
            orphaned_task_statuses = connection.execute(
                "SELECT status FROM django_tasks_database_dbtaskresult "
                "WHERE task_path LIKE '%%process_recording_task' AND args_kwargs::text LIKE %s",
                [f"%{session_id}%"],
            ).fetchall()
        assert orphaned_task_statuses == [("RUNNING",)]  # what the task backend alone would leave

        with db_workers(environment, tmp_path, count=1):
            body = wait_until_finished(server.base_url, session_id, timeout_seconds=120)

    assert body["status"] == "ready", body["error"]
    assert body["source_sha256"] == recording.joined_sha256
    assert body["duration"] == pytest.approx(recording.duration_seconds, rel=0.1)
    assert _processing_row(postgres_url, session_id) == ("ready", 2)
    worker_log = (tmp_path / "worker-0.log").read_text()
    assert f"recording {session_id}: its processing run stopped; queued again" in worker_log
    assert f"recording {session_id}: processing again, attempt 2" in worker_log
