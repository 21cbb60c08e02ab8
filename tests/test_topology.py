"""The scaled-out topology, for real, on one machine: PostgreSQL, an S3 API server, two gunicorn
processes on different ports (two "hosts" with their own local disks) and two db_worker processes.

Each recording's chunks alternate between the two web processes, as behind a load balancer
without sticky sessions; every recording must end `ready` with exactly the outputs (bytes and
metadata) that the embedded mode (SQLite, local files, processing in-process) makes of it.
"""

import hashlib
import json
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from bench.harness import db_workers, gunicorn, service_environment
from tests.conftest import load_chrome_set
from tests.live_client import call, start_session, upload_recording, wait_until_finished

pytestmark = [pytest.mark.live_server_process, pytest.mark.postgres]

RECORDINGS = ("vp8_opus", "vp9_opus", "h264_opus_webm", "vp9_opus_mp4", "audio_opus_webm", "vp8_opus_60s")
COMPARED_FIELDS = (
    "status",
    "container",
    "received_chunks",
    "received_bytes",
    "duration",
    "width",
    "height",
    "fps",
    "video_codec",
    "audio_codec",
    "has_audio",
    "has_video",
    "size",
    "source_sha256",
)


def fetch_sha256(url: str | None) -> str | None:
    """The sha256 of what a client gets at `url`, following a redirect to object storage."""
    if url is None:
        return None
    with urllib.request.urlopen(url, timeout=60) as response:
        digest = hashlib.sha256()
        while block := response.read(1 << 20):
            digest.update(block)
        return digest.hexdigest()


def outputs(body: dict) -> dict:
    return {
        **{field: body[field] for field in COMPARED_FIELDS},
        **{kind: fetch_sha256(body[f"{kind}_url"]) for kind in ("video", "audio", "thumbnail")},
        "built_live": "live_finish" in body["processing_steps"],  # made while the chunks arrived
    }


def process_everywhere(base_urls: list[str]) -> dict[str, dict]:
    sessions = {name: upload_recording(base_urls, load_chrome_set(name).chunks)[0] for name in RECORDINGS}
    return {name: outputs(wait_until_finished(base_urls[0], session_id)) for name, session_id in sessions.items()}


def test_two_web_processes_two_workers_postgresql_and_s3_make_what_the_embedded_mode_makes(
    postgres_url, s3_server, tmp_path
):
    with gunicorn(tmp_path / "embedded") as embedded:
        expected = process_everywhere([embedded.base_url])
    assert {name: result["status"] for name, result in expected.items()} == dict.fromkeys(RECORDINGS, "ready")

    bucket, s3_environment = s3_server.new_bucket()
    shared = {
        **s3_environment,
        "DATABASE_URL": postgres_url,
        "RECORDER_TASKS_BACKEND": "database",
        "RECORDER_LOG_LEVEL": "INFO",
    }
    with ExitStack() as stack:
        web = [stack.enter_context(gunicorn(tmp_path / f"web-{number}", extra_env=shared)) for number in (1, 2)]
        worker_dir = tmp_path / "workers"
        worker_dir.mkdir()
        stack.enter_context(db_workers({**service_environment(worker_dir), **shared}, worker_dir, count=2))
        scaled = process_everywhere([server.base_url for server in web])
        web_logs = "".join((server.work_dir / "gunicorn.log").read_text() for server in web)
    worker_logs = "".join(path.read_text() for path in worker_dir.glob("worker-*.log"))

    assert scaled == expected
    # the live build ran in the workers, its state in PostgreSQL, the chunks read from S3
    assert [name for name, result in scaled.items() if result["built_live"]] == [
        "vp8_opus",
        "vp9_opus",
        "h264_opus_webm",
        "audio_opus_webm",
        "vp8_opus_60s",
    ]
    objects = s3_server.objects(bucket)
    assert sum("/chunks/" in key for key in objects) == sum(len(load_chrome_set(name).chunks) for name in RECORDINGS)
    for server in web:  # the web hosts kept nothing on their own disks
        assert not (server.work_dir / "media" / "recordings").exists()
    assert worker_logs.count(" ready in ") == len(RECORDINGS)
    assert " ready in " not in web_logs


def test_a_finalize_without_a_count_is_settled_by_a_worker_and_a_late_chunk_gets_in(postgres_url, tmp_path):
    """The `database` backend defers the settling as a task a db_worker runs when the wait is over."""
    recording = load_chrome_set("vp8_opus")
    shared = {
        "DATABASE_URL": postgres_url,
        "MEDIA_ROOT": str(tmp_path / "media"),  # one machine: the worker reads the chunks the web process stored
        "RECORDER_TASKS_BACKEND": "database",
        "RECORDER_FINALIZE_GRACE_SECONDS": "1",
    }
    with ExitStack() as stack:
        web = stack.enter_context(gunicorn(tmp_path / "web", extra_env=shared))
        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        stack.enter_context(db_workers({**service_environment(worker_dir), **shared}, worker_dir, count=1))
        session_id, token = start_session(web.base_url)
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"}
        chunk_url = f"{web.base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index="
        for index, chunk in enumerate(recording.chunks[:-1]):
            assert call("POST", f"{chunk_url}{index}", chunk, auth)[0] == 201
        end_call = {}
        body = json.dumps({"session_id": session_id, "is_final": True}).encode()
        finalize_headers = {**auth, "Content-Type": "application/json"}
        ender = threading.Thread(
            target=lambda: end_call.update(
                answer=call("POST", f"{web.base_url}/api/finalize-recording/", body, finalize_headers)
            )
        )
        ender.start()
        time.sleep(0.3)
        assert call("POST", f"{chunk_url}7", recording.chunks[-1], auth)[0] == 201
        ender.join()
        assert end_call["answer"][0] == 202
        finished = wait_until_finished(web.base_url, session_id)
    assert finished["status"] == "ready", finished["error"]
    assert (finished["expected_chunks"], finished["source_sha256"]) == (8, recording.joined_sha256)
    assert "recordings.tasks.settle_finalize_task state=SUCCESSFUL" in (worker_dir / "worker-0.log").read_text()


def made_by_a_pool_of_its_own(
    postgres_url: str, tmp_path, chunks: list[bytes], *, setting: str, queue: str, status_of
) -> tuple[dict, Path]:
    """`make worker QUEUE=default` processes; until a worker of `queue` runs, the ready recording's
    work of that queue waits (`status_of` its body says `pending`); then that worker makes it. The
    last body and the workers' log folder."""
    shared = {
        "DATABASE_URL": postgres_url,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "RECORDER_TASKS_BACKEND": "database",
        setting: "1",
    }
    worker_dir = tmp_path / "workers"
    worker_dir.mkdir()
    worker_env = {**service_environment(worker_dir), **shared}
    with ExitStack() as stack:
        web = stack.enter_context(gunicorn(tmp_path / "web", extra_env=shared))
        stack.enter_context(db_workers(worker_env, worker_dir, count=1, queue_names="default"))
        session_id, _ = upload_recording([web.base_url], chunks)
        body = wait_until_finished(web.base_url, session_id)
        assert body["status"] == "ready", body["error"]
        time.sleep(3)  # its task would have run by now, had anything taken its queue
        assert status_of(call("GET", f"{web.base_url}/api/get-recorded-data/{session_id}/")[1]) == "pending"
        stack.enter_context(db_workers(worker_env, worker_dir, count=1, queue_names=queue))
        deadline = time.monotonic() + 120
        while status_of(body := call("GET", f"{web.base_url}/api/get-recorded-data/{session_id}/")[1]) == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    return body, worker_dir


def test_captions_are_taken_by_a_worker_pool_of_their_own(postgres_url, tmp_path):
    """`make worker QUEUE=captions` transcribes, and nothing else does."""
    from recordings import captions
    from tests.conftest import skip_or_fail
    from tests.speech import speech_recording

    if not captions.is_installed():
        skip_or_fail("the captions extra is not installed (make captions)")
    speech = speech_recording(tmp_path / "speech")
    body, worker_dir = made_by_a_pool_of_its_own(
        postgres_url,
        tmp_path,
        speech.recording.chunks,
        setting="RECORDER_CAPTIONS",
        queue="captions",
        status_of=lambda body: body["captions_status"],
    )
    assert body["captions_status"] == "ready" and body["captions_url"]
    captions_log = (worker_dir / "worker-captions-0.log").read_text()
    assert "recordings.tasks.transcribe_task state=SUCCESSFUL" in captions_log
    assert "transcribe_task" not in (worker_dir / "worker-0.log").read_text()


def test_renditions_are_taken_by_a_worker_pool_of_their_own(postgres_url, tmp_path):
    """`make worker QUEUE=renditions` makes the MP4s, and nothing else does."""
    body, worker_dir = made_by_a_pool_of_its_own(
        postgres_url,
        tmp_path,
        load_chrome_set("vp9_opus").chunks,
        setting="RECORDER_RENDITIONS",
        queue="renditions",
        status_of=lambda body: next(item["status"] for item in body["renditions"] if item["name"] == "mp4"),
    )
    assert body["renditions"][0]["name"] == "mp4" and body["renditions"][0]["url"].endswith("/mp4/")
    renditions_log = (worker_dir / "worker-renditions-0.log").read_text()
    assert "recordings.tasks.make_rendition_task state=SUCCESSFUL" in renditions_log
    assert "make_rendition_task" not in (worker_dir / "worker-0.log").read_text()
