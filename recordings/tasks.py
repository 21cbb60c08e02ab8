"""What runs in the background: thin tasks that look the recording up and call `processing`."""

import datetime
import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone
from django_tasks import task
from django_tasks.backends.immediate import ImmediateBackend
from django_tasks_db import DatabaseBackend

from . import backends, live, rendition_runs, runs, transcription
from .backends import waiting_arguments
from .locks import after_write_lock
from .models import CaptionsStatus, RecordingSession, Status

logger = logging.getLogger("recordings.tasks")


@task()
def process_recording_task(session_id: str) -> str:
    """Process one recording; returns its final status. Safe to run twice."""
    processed = runs.process_recording(session_id)
    if processed is not None:
        enqueue_after_ready(processed)
    return processed.status if processed is not None else "gone"


@task(queue_name=backends.CAPTIONS_QUEUE_NAME)
def transcribe_task(session_id: str) -> str:
    """Transcribe the next window of the recording's audio (queueing the one after); its captions status."""
    return transcription.advance(session_id, enqueue_again=_enqueue_transcription)


def _enqueue_transcription(session_id: str) -> None:
    """The next window, as a task of its own; with the `immediate` backend (tests, scripts), after
    this one returns rather than inside it: an hour's 150 windows must not nest 150 calls deep."""
    waiting = getattr(_immediate_windows, "waiting", None)
    if waiting is not None:
        waiting.append(session_id)
        return
    if type(transcribe_task.get_backend()) is ImmediateBackend:
        _immediate_windows.waiting = [session_id]
        try:
            while _immediate_windows.waiting:
                _queue_transcription(_immediate_windows.waiting.pop(0))
        finally:
            _immediate_windows.waiting = None
        return
    _queue_transcription(session_id)


_immediate_windows = threading.local()
CAPTIONS_PRIORITY = -10  # below processing and the live build (0), where the backend orders by priority


def _queue_transcription(session_id: str) -> None:
    backend = transcribe_task.get_backend()
    (transcribe_task.using(priority=CAPTIONS_PRIORITY) if backend.supports_priority else transcribe_task).enqueue(
        session_id
    )


def enqueue_after_ready(session: RecordingSession) -> None:
    """A recording that has just become ready: its captions are finished, and its MP4 rendition
    made, each in a task of its own."""
    if session.status == Status.READY and session.captions_status == CaptionsStatus.PENDING:
        transcription.request_final(session.id)
        _queue_transcription(str(session.id))
    if session.status == Status.READY and rendition_runs.is_pending(session.id):
        _queue_rendition(str(session.id))


RENDITION_PRIORITY = -20  # below captions too: a viewer on Safari waits for it, nobody else does
# A rendition task that finds its machine busy with another (database, rq) asks again this much later.
RENDITION_RETRY_SECONDS = 30


@task(queue_name=backends.RENDITIONS_QUEUE_NAME)
def make_rendition_task(session_id: str) -> str:
    """Make the MP4 rendition of a ready recording (recordings/rendition_runs.py); what became of it.
    Where workers take tasks from a shared queue, a worker never waits for another rendition to end."""
    retry_later = _queue_rendition_later if make_rendition_task.get_backend().supports_defer else None
    return rendition_runs.make(session_id, retry_later=retry_later)


def _queue_rendition(session_id: str, **options) -> None:
    if make_rendition_task.get_backend().supports_priority:
        options["priority"] = RENDITION_PRIORITY
    make_rendition_task.using(**options).enqueue(session_id)


def _queue_rendition_later(session_id: str) -> None:
    _queue_rendition(session_id, run_after=timezone.now() + datetime.timedelta(seconds=RENDITION_RETRY_SECONDS))


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


@task()
def advance_live_task(session_id: str) -> str:
    """Append the chunks stored since the last time to the recording's live build (recordings/live.py)."""
    live.advance_while_requested(session_id, schedule_again=schedule_live_advance)
    if transcription.wants_live_window(session_id):  # a window of new audio: captions while it records
        _queue_transcription(session_id)
    return runs.current_status(session_id) or "gone"


def enqueue_live_advance(session_id: str) -> None:
    """Queue an advance of the live build, RECORDER_LIVE_BUILD_DELAY_SECONDS after the caller's
    transaction (which stored a chunk) commits: the chunks of those seconds make one advance."""
    delay_seconds = settings.RECORDER_LIVE_BUILD_DELAY_SECONDS
    transaction.on_commit(
        partial(after_write_lock, partial(schedule_live_advance, session_id, delay_seconds)), robust=True
    )


def schedule_live_advance(session_id: str, delay_seconds: float) -> None:
    if not delay_seconds:
        advance_live_task.enqueue(session_id)
    elif advance_live_task.get_backend().supports_defer:
        advance_live_task.using(run_after=timezone.now() + datetime.timedelta(seconds=delay_seconds)).enqueue(
            session_id
        )
    else:  # in-process backends: the scheduling thread queues it when its time comes
        _later.add(time.monotonic() + delay_seconds, partial(advance_live_task.enqueue, session_id))


@task()
def settle_finalize_task(session_id: str) -> str:
    """Decide the chunk count of a finalize that gave none, once chunks on their way had time to arrive."""
    _settle(session_id)
    return runs.current_status(session_id) or "gone"


def schedule_settle(session_id: str, delay_seconds: float) -> None:
    """Settle this finalize in `delay_seconds`, once the caller's transaction has committed.

    Backends that can defer a task (database, rq) hold it for that long; with the in-process ones
    one settling thread of this process does it (a killed process loses it: the recovery sweep settles
    overdue finalizes). Settling takes a few queries, so it never waits behind a processing run,
    except with the `immediate` backend, where the settling thread runs the processing it starts.
    """
    transaction.on_commit(partial(after_write_lock, partial(_schedule_settle, session_id, delay_seconds)), robust=True)


def _schedule_settle(session_id: str, delay_seconds: float) -> None:
    if settle_finalize_task.get_backend().supports_defer:
        run_after = timezone.now() + datetime.timedelta(seconds=delay_seconds)
        settle_finalize_task.using(run_after=run_after).enqueue(session_id)
        return
    _later.add(time.monotonic() + delay_seconds, partial(_settle, session_id))


class _Later:
    """One thread per process runs short jobs when their time comes (settling a waiting finalize,
    queueing a delayed live-build advance): a waiting job costs an entry in a heap, not a thread,
    however many there are. A killed process loses them: the recovery sweep settles overdue
    finalizes, and the next chunk asks for a live build's advance again."""

    def __init__(self):
        self._condition = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._added = itertools.count()  # ties in time: first come, first run; jobs are never compared
        self._started_in_pid: int | None = None

    def add(self, due: float, job: Callable[[], object]) -> None:
        with self._condition:
            if self._started_in_pid != os.getpid():  # first use, or first use after a fork
                self._started_in_pid = os.getpid()
                self._due = []
                threading.Thread(target=self._run, name="recorder-later", daemon=True).start()
            heapq.heappush(self._due, (due, next(self._added), job))
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._condition.wait(timeout=self._due[0][0] - time.monotonic() if self._due else None)
                _, _, job = heapq.heappop(self._due)
            try:
                job()
            except Exception:
                logger.exception("a scheduled job (%r) failed; the recovery sweep or the next chunk retries", job)
            finally:
                connections.close_all()  # this thread's connections only


_later = _Later()


def _settle(session_id: str) -> None:
    from . import services  # services queues tasks: imported here, not at the top, to avoid a cycle

    seconds_left = services.settle_finalize(session_id)
    if seconds_left is not None:
        _schedule_settle(session_id, seconds_left)


def recover_stale_recordings() -> list[uuid.UUID]:
    """Queue again every recording whose processing run died or never started (runs.recover_stale),
    and every ready one whose captions or rendition task was lost. With the embedded backend each
    web process's own sweep does the last two: a command's threads would end with the command."""
    if not isinstance(transcribe_task.get_backend(), backends.EmbeddedBackend):
        recover_lost_slow_work()
    return runs.recover_stale(enqueue=enqueue_processing)


def recover_lost_slow_work() -> None:
    """The work after `ready` (captions, the rendition) whose tasks a killed worker lost."""
    for session_id in transcription.stale_requests():
        logger.warning("recording %s: its captions task was lost; queued again", session_id)
        transcription.request_final(session_id)
        _queue_transcription(str(session_id))
    for session_id in rendition_runs.stale_requests():
        logger.warning("recording %s: its rendition task was lost; queued again", session_id)
        _queue_rendition(str(session_id))


def _settle_overdue_and_recover_slow_work() -> None:
    from . import services  # see _settle

    services.settle_overdue_finalizes()
    recover_lost_slow_work()


def keep_recovering() -> None:
    """With the embedded backend: sweep for lost runs from this process, marking its own waiting ones."""
    runs.keep_recovering(
        enqueue=enqueue_processing,
        waiting=lambda: [args[0] for args in waiting_arguments() if args],
        settle_overdue=_settle_overdue_and_recover_slow_work,
    )
