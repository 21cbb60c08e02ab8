"""RECORDER_TASKS_BACKEND=rq: the Redis/RQ alternative to the database queue works with one setting.

A real Redis (REDIS_URL for the tests: RECORDER_TEST_REDIS_URL, default database 13 of the local
server, emptied first) and a real `manage.py rqworker`; the web process only enqueues.
"""

import os
import subprocess
import sys
import time

import pytest

from bench.harness import PROJECT_DIR, gunicorn, service_environment
from tests.conftest import load_chrome_set, skip_or_fail
from tests.live_client import call, upload_recording, wait_until_finished

pytestmark = pytest.mark.live_server_process

REDIS_URL = os.environ.get("RECORDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_url():
    try:
        import redis
    except ImportError:
        skip_or_fail("the RQ packages are not installed (pip install -r requirements-rq.txt)")
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        connection.flushdb()
    except redis.ConnectionError as error:
        skip_or_fail(f"Redis is not reachable at {REDIS_URL} ({error}); set RECORDER_TEST_REDIS_URL")
    yield REDIS_URL
    connection.flushdb()


def test_processing_runs_on_an_rq_worker(redis_url, tmp_path):
    settings = {"RECORDER_TASKS_BACKEND": "rq", "REDIS_URL": redis_url, "RECORDER_LOG_LEVEL": "INFO"}
    recording = load_chrome_set("vp9_opus")
    with gunicorn(tmp_path, extra_env=settings) as server:
        session_id, finalized = upload_recording([server.base_url], recording.chunks)
        assert finalized["status"] == "processing"
        time.sleep(1.0)  # no worker yet: nothing processes it
        assert call("GET", f"{server.base_url}/api/get-recorded-data/{session_id}/")[1]["status"] == "processing"

        command = [sys.executable, "manage.py", "rqworker", "--job-class", "django_tasks_rq.Job", "--with-scheduler"]
        with open(tmp_path / "rqworker.log", "wb") as log:
            worker = subprocess.Popen(
                [*command, "default"],
                cwd=PROJECT_DIR,
                env={**service_environment(tmp_path), **settings},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                body = wait_until_finished(server.base_url, session_id, timeout_seconds=60)
            finally:
                worker.terminate()
                worker.wait(timeout=30)
        web_log = (tmp_path / "gunicorn.log").read_text()

    assert body["status"] == "ready", body["error"]
    assert body["source_sha256"] == recording.joined_sha256
    assert f"recording {session_id} ready in" in (tmp_path / "rqworker.log").read_text()
    assert f"recording {session_id} ready in" not in web_log
