"""What runs in the background: thin tasks that look the recording up and call `processing`."""

import datetime
import logging
import threading
import time
import uuid
from functools import partial

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone
from django_tasks import task
from django_tasks_db import DatabaseBackend

from . import processing, runs
from .locks import after_write_lock
from .models import Status

logger = logging.getLogger("recordings.tasks")


@task()
def process_recording_task(session_id: str) -> str:
    """Process one recording; returns its final status. Safe to run twice."""
    processed = processing.process_recording(session_id)
    return processed.status if processed is not None else "gone"


@task()
def watch_processing_task(session_id: str) -> str:
    """Run processing again if its worker died mid-run; looks again later while it is processing.

    The task backend cannot tell (django-tasks-db leaves a killed worker's task `RUNNING` for
    ever), so the recording's own heartbeat decides. A new run brings its own watch.
    """
    retried = runs.retry_or_give_up(session_id, include_unstarted=False, enqueue=enqueue_processing)
    status = runs.current_status(session_id)
    if status == Status.PROCESSING and not retried:
        _schedule_watch(session_id)
    return status or "gone"


def enqueue_processing(session_id: str) -> None:
    """Queue a processing run of a recording that the caller's open transaction moves to `processing`.

    On the database backend the queued rows join that transaction: the status and the queued run
    commit together or not at all. Other backends (the in-process ones start the task on a thread)
    are called once it has committed.
    """
    if isinstance(process_recording_task.get_backend(), DatabaseBackend):
        _enqueue_run(str(session_id))
    else:
        transaction.on_commit(partial(after_write_lock, partial(_enqueue_run, str(session_id))), robust=True)


def _enqueue_run(session_id: str) -> None:
    process_recording_task.enqueue(session_id)
    if process_recording_task.get_backend().supports_defer:
        _schedule_watch(session_id)


def _schedule_watch(session_id: str) -> None:
    run_after = timezone.now() + datetime.timedelta(seconds=settings.RECORDER_PROCESSING_STALE_SECONDS)
    watch_processing_task.using(run_after=run_after).enqueue(session_id)


def recover_stale_recordings() -> list[uuid.UUID]:
    """Queue again every recording whose processing run died (or, with an in-process backend, never
    ran); those out of attempts become `failed`. Safe to run at any time, from any process."""
    requeued = []
    for session_id in runs.stale_recording_ids(include_unstarted=True):
        if runs.retry_or_give_up(session_id, include_unstarted=True, enqueue=enqueue_processing):
            requeued.append(session_id)
    return requeued


_sweep_started = threading.Lock()
_sweep_thread: threading.Thread | None = None


def keep_recovering() -> None:
    """With the in-process backend, a killed process takes its queued runs with it: sweep for them
    now and every RECORDER_PROCESSING_STALE_SECONDS / 2 from a thread of this process (once)."""
    global _sweep_thread
    with _sweep_started:
        if _sweep_thread is not None:
            return
        _sweep_thread = threading.Thread(target=_sweep_forever, name="recorder-recovery", daemon=True)
        _sweep_thread.start()


def _sweep_forever() -> None:
    interval_seconds = max(1.0, settings.RECORDER_PROCESSING_STALE_SECONDS / 2)
    while True:
        try:
            for session_id in recover_stale_recordings():
                logger.warning("recording %s: its run was lost with a stopped process; queued again", session_id)
        except Exception:
            logger.exception("the recovery sweep failed; it runs again in %.0f s", interval_seconds)
        finally:
            connections.close_all()  # this thread's connections only
        time.sleep(interval_seconds)
