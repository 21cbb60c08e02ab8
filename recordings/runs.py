"""A processing run of one recording: how it is claimed, how many run at once, how it beats, how it
ends (`ready` or `failed`, then the chunks' hash and deletion), and how a dead one is retried or
given up. What it builds: recordings/processing.py."""

import datetime
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import chunks, files, live, processing, rendition_runs, transcription, utils
from .background import Heartbeat
from .locks import database_write_lock
from .models import IllegalTransition, RecordingSession, Status, transition

logger = logging.getLogger("recordings.runs")

_slots_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_slots_size = 0


@contextmanager
def run_slot() -> Iterator[None]:
    """At most RECORDER_PROCESSING_CONCURRENCY runs at once in this process; the others wait here
    (before they claim, so a waiting run does not look like a dead one)."""
    global _slots, _slots_size
    with _slots_lock:
        if _slots is None or _slots_size != settings.RECORDER_PROCESSING_CONCURRENCY:
            _slots_size = settings.RECORDER_PROCESSING_CONCURRENCY
            _slots = threading.BoundedSemaphore(_slots_size)
        slots = _slots
    with slots:
        yield


def process_recording(session_id: uuid.UUID | str, *, use_live_build: bool = True) -> RecordingSession | None:
    """Build the playable video, audio and thumbnail of a recording whose status is `processing`.

    Idempotent: outputs are written under fixed names through an atomic storage, so a second run
    replaces them whole. A failure leaves the chunks untouched and the status `failed` with a code.
    A run claims the recording first: while another run's heartbeat is fresh, this one does nothing.
    Without `use_live_build` it takes the full pipeline, the reference. None when the recording no
    longer exists.
    """
    with run_slot():
        attempt = claim(session_id)
        try:
            session = RecordingSession.objects.filter(pk=session_id).first()
            if attempt is None or session is None:
                return session
            return _run(session, attempt, use_live_build=use_live_build)
        finally:
            if attempt is not None:
                finished(session_id)


def _run(session: RecordingSession, attempt: int, *, use_live_build: bool) -> RecordingSession:
    timer = processing.StepTimer()
    this_run = {"processing_attempts": attempt}
    try:
        with _processing_heartbeat(session.id, attempt):
            if attempt > 1:  # the dead run's work folder, if it died on this machine
                files.remove_work_dirs(session, settings.RECORDER_TEMP_DIR)
            results = processing.build_outputs(session, timer, use_live_build=use_live_build)
        with database_write_lock(), transaction.atomic():  # ready, and its rendition asked for, or neither
            transition(
                session,
                Status.READY,
                only_if=this_run,
                ready_at=timezone.now(),
                error_code="",
                error_detail="",
                processing_seconds=timer.total_seconds,
                processing_steps=timer.seconds,
                captions_status=transcription.initial_status(results.get("has_audio")),
                **results,
            )
            rendition_runs.ask(session)
        logger.info(
            "recording %s ready in %.2f s: %s%s",
            session.id,
            timer.total_seconds,
            timer.seconds,
            "".join(f"; {warning['code']} ({warning['count']})" for warning in results["warnings"]),
        )
        _after_ready(session)
    except IllegalTransition:
        logger.warning("recording %s: run %d was overtaken by another run; its result is dropped", session.id, attempt)
        session.refresh_from_db()
    except utils.MediaError as error:
        _fail(session, error.code, error.detail, timer, only_if=this_run)
    except Exception:
        logger.exception("processing recording %s failed unexpectedly", session.id)
        _fail(
            session,
            "processing_error",
            "Processing failed unexpectedly; the error has been logged.",
            timer,
            only_if=this_run,
        )
    finally:
        live.discard(session)  # used, or of no use to a later run (which takes the full pipeline)
    return session


def _after_ready(session: RecordingSession) -> None:
    """The chunks' SHA-256 when the live build made the outputs (it read each chunk once, as it
    came), then the chunks go. The recording is ready whatever fails here: logged, and the chunks
    are then kept."""
    try:
        if not session.source_sha256:
            session.source_sha256 = chunks.sha256_of_stored(processing.chunk_names(session))
            RecordingSession.objects.filter(pk=session.pk).update(source_sha256=session.source_sha256)
        if not settings.RECORDER_KEEP_CHUNKS:
            files.drop_chunk_files(session)
            session.chunks_deleted_at = timezone.now()
            RecordingSession.objects.filter(pk=session.pk).update(chunks_deleted_at=session.chunks_deleted_at)
    except Exception:
        logger.exception("recording %s is ready, but its chunks could not be hashed or deleted", session.id)


def _fail(session: RecordingSession, code: str, detail: str, timer: processing.StepTimer, *, only_if: dict) -> None:
    logger.warning("recording %s failed: %s (%s)", session.id, code, detail)
    try:
        transition(
            session,
            Status.FAILED,
            only_if=only_if,
            error_code=code,
            error_detail=detail,
            processing_seconds=timer.total_seconds,
            processing_steps=timer.seconds,
        )
    except IllegalTransition:
        logger.warning("recording %s: this run was overtaken by another run; its failure is dropped", session.id)
        session.refresh_from_db()


def stale_cutoff(now: datetime.datetime | None = None) -> datetime.datetime:
    return (now or timezone.now()) - datetime.timedelta(seconds=settings.RECORDER_PROCESSING_STALE_SECONDS)


def claim(session_id: uuid.UUID | str) -> int | None:
    """Take the recording for this run: its attempt number, or None when there is nothing to do.

    Nothing to do: it is not `processing`, or another run's heartbeat is fresh. A recording whose
    runs all died (RECORDER_PROCESSING_MAX_ATTEMPTS of them) becomes `failed` here instead.
    """
    with database_write_lock(), transaction.atomic():
        session = RecordingSession.objects.select_for_update().filter(pk=session_id).first()
        if session is None or session.status != Status.PROCESSING:
            logger.info("recording %s is %s, not processing: nothing to do", session_id, session and session.status)
            return None
        heartbeat = session.processing_heartbeat_at
        if heartbeat is not None and heartbeat > stale_cutoff():
            logger.info(
                "recording %s is being processed by another run (attempt %d)", session_id, session.processing_attempts
            )
            return None
        if session.processing_attempts >= settings.RECORDER_PROCESSING_MAX_ATTEMPTS:
            _give_up(session)
            return None
        session.processing_attempts += 1
        session.processing_runs_total = F("processing_runs_total") + 1
        session.processing_heartbeat_at = timezone.now()
        session.save(update_fields=["processing_attempts", "processing_runs_total", "processing_heartbeat_at"])
        if session.processing_attempts > 1:
            logger.warning("recording %s: processing again, attempt %d", session_id, session.processing_attempts)
        with _active_lock:
            _active_runs[str(session_id)] = session.processing_attempts
        return session.processing_attempts


# The runs this process has claimed and not finished: handed back if the process stops first.
_active_lock = threading.Lock()
_active_runs: dict[str, int] = {}


def finished(session_id: uuid.UUID | str) -> None:
    """The run this process claimed has ended (in any way)."""
    with _active_lock:
        _active_runs.pop(str(session_id), None)


def release_active_runs() -> None:
    """A process that stops (gracefully) hands its unfinished runs back: not counted as attempts,
    and at once stale for the recovery sweep of a live process."""
    with _active_lock:
        active = dict(_active_runs)
        _active_runs.clear()
    long_ago = stale_cutoff() - datetime.timedelta(seconds=1)
    for session_id, attempt in active.items():
        try:
            RecordingSession.objects.filter(
                pk=session_id, status=Status.PROCESSING, processing_attempts=attempt
            ).update(
                processing_attempts=attempt - 1,
                processing_runs_total=F("processing_runs_total") - 1,
                processing_heartbeat_at=None,
                processing_requested_at=long_ago,
            )
            logger.warning("recording %s: this process stopped mid-run; the run is handed back", session_id)
        except DatabaseError:
            logger.exception("recording %s: the run could not be handed back; it goes stale instead", session_id)


def _give_up(session: RecordingSession) -> None:
    attempts = session.processing_attempts
    logger.error("recording %s: %d processing runs were interrupted; giving up", session.id, attempts)
    transition(
        session,
        Status.FAILED,
        error_code="processing_interrupted",
        error_detail=f"Processing was interrupted {attempts} times (a worker stopped mid-run); "
        "run `manage.py process_recording` to try again.",
    )


def _processing_heartbeat(session_id: uuid.UUID, attempt: int) -> Heartbeat:
    def stamp() -> None:
        RecordingSession.objects.filter(pk=session_id, status=Status.PROCESSING, processing_attempts=attempt).update(
            processing_heartbeat_at=timezone.now()
        )

    return Heartbeat(
        stamp, interval_seconds=settings.RECORDER_PROCESSING_STALE_SECONDS / 4, name=f"heartbeat-{session_id}"
    )


def stale_recording_ids(*, include_unstarted: bool, now: datetime.datetime | None = None) -> list[uuid.UUID]:
    """Recordings in `processing` whose run stopped beating (and, with `include_unstarted`, whose
    requested run never started: lost with an in-process backend when the process was killed)."""
    stale = RecordingSession.objects.filter(_is_stale(include_unstarted, now))
    return list(stale.values_list("id", flat=True))


def _is_stale(include_unstarted: bool, now: datetime.datetime | None = None) -> Q:
    cutoff = stale_cutoff(now)
    stale = Q(processing_heartbeat_at__lt=cutoff)
    if include_unstarted:
        stale |= Q(processing_heartbeat_at__isnull=True, processing_requested_at__lt=cutoff)
    return stale & Q(status=Status.PROCESSING)


def retry_or_give_up(session_id: uuid.UUID | str, *, include_unstarted: bool, enqueue: Callable[[str], None]) -> bool:
    """For a stale recording: call `enqueue` for a new run (inside the transaction that records it)
    and return True; False when it has moved on, or its attempts are used up and it is `failed`."""
    with database_write_lock(), transaction.atomic():
        stale = RecordingSession.objects.select_for_update().filter(_is_stale(include_unstarted), pk=session_id)
        session = stale.first()
        if session is None:
            return False
        if session.processing_attempts >= settings.RECORDER_PROCESSING_MAX_ATTEMPTS:
            _give_up(session)
            return False
        session.processing_requested_at = timezone.now()
        session.processing_heartbeat_at = None  # until the new run claims it: not stale, not running
        session.save(update_fields=["processing_requested_at", "processing_heartbeat_at"])
        logger.warning("recording %s: its processing run stopped; queued again", session.id)
        enqueue(str(session.id))
        return True


def current_status(session_id: uuid.UUID | str) -> str | None:
    return RecordingSession.objects.filter(pk=session_id).values_list("status", flat=True).first()


def recover_stale(*, enqueue: Callable[[str], None]) -> list[uuid.UUID]:
    """Queue again every recording whose processing run died (or, with an in-process backend, never
    ran); those out of attempts become `failed`. Safe to run at any time, from any process."""
    return [
        session_id
        for session_id in stale_recording_ids(include_unstarted=True)
        if retry_or_give_up(session_id, include_unstarted=True, enqueue=enqueue)
    ]


def mark_waiting(session_ids: list[str]) -> None:
    """Runs still waiting in this process's queue are not lost: say so, or another process's sweep
    would take them for runs a dead process lost."""
    if session_ids:
        RecordingSession.objects.filter(
            pk__in=session_ids, status=Status.PROCESSING, processing_heartbeat_at__isnull=True
        ).update(processing_requested_at=timezone.now())


_sweep_lock = threading.Lock()
_sweep_pid: int | None = None


def keep_recovering(
    *, enqueue: Callable[[str], None], waiting: Callable[[], list[str]], settle_overdue: Callable[[], object]
) -> None:
    """With an in-process backend a killed process takes its queued runs with it: from a thread of
    this process (once), sweep for them now and every RECORDER_PROCESSING_STALE_SECONDS / 2."""
    global _sweep_pid
    with _sweep_lock:
        if _sweep_pid == os.getpid():
            return
        _sweep_pid = os.getpid()
    threading.Thread(
        target=_sweep_forever, args=(enqueue, waiting, settle_overdue), name="recorder-recovery", daemon=True
    ).start()


def _sweep_forever(
    enqueue: Callable[[str], None], waiting: Callable[[], list[str]], settle_overdue: Callable[[], object]
) -> None:
    interval_seconds = max(1.0, settings.RECORDER_PROCESSING_STALE_SECONDS / 2)
    while True:
        try:
            settle_overdue()
            mark_waiting(waiting())
            for session_id in recover_stale(enqueue=enqueue):
                logger.warning("recording %s: its run had stopped; queued again", session_id)
        except Exception:
            logger.exception("the recovery sweep failed; it runs again in %.0f s", interval_seconds)
        finally:
            connections.close_all()  # this thread's connections only
        time.sleep(interval_seconds)
