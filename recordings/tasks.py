"""What runs in the background: thin tasks that look the recording up and call `processing`."""

import datetime
import uuid
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_tasks import task
from django_tasks_db import DatabaseBackend

from . import processing, runs
from .backends import waiting_arguments
from .locks import after_write_lock
from .models import Status


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
    """Queue again every recording whose processing run died or never started; see runs.recover_stale."""
    return runs.recover_stale(enqueue=enqueue_processing)


def keep_recovering() -> None:
    """With the embedded backend: sweep for lost runs from this process, marking its own waiting ones."""
    runs.keep_recovering(enqueue=enqueue_processing, waiting=lambda: [args[0] for args in waiting_arguments() if args])
