"""When a recording's MP4 rendition (recordings/renditions.py) is made, and by whom: asked for in the
same transaction that makes the recording ready, made in a run of its own (one per machine at nice
19, claimed, beating, stopped once it is no longer wanted), kept beside the recording's other
outputs, and asked for again when its worker was lost. docs/renditions.md."""

import datetime
import logging
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from . import background, chunks, files, renditions, utils
from .locks import database_write_lock
from .models import RecordingSession, Rendition, Status, output_storage_name

logger = logging.getLogger("recordings.renditions")

# The run making a rendition stamps its row this often; one silent for STALE_SECONDS was lost with
# its worker, and the recovery sweep asks for it again, MAX_ATTEMPTS runs in all.
HEARTBEAT_SECONDS = 15
STALE_SECONDS = 60
MAX_ATTEMPTS = 3
# What a run that did not make the rendition says (besides the rendition's own statuses).
SKIPPED = "skipped"  # not pending, another run has it, or it was no longer wanted
DEFERRED = "deferred"  # another rendition has this machine: asked again later
OFF = "off"  # RECORDER_RENDITIONS is off


def ask(session: RecordingSession) -> None:
    """Call in the transaction that makes the recording ready: its rendition is pending (a recording
    processed again gets one made from its new video; the old file goes when the new one is stored)."""
    if not renditions.is_on() or not session.video_name:
        return
    Rendition.objects.update_or_create(
        session_id=session.pk,
        name=renditions.MP4,
        defaults={
            "status": Rendition.Status.PENDING,
            "requested_at": timezone.now(),
            "heartbeat_at": None,
            "run_id": "",
            "attempts": 0,
            "error_code": "",
            "error_detail": "",
            "finished_at": None,
        },
    )


def is_pending(session_id: uuid.UUID | str) -> bool:
    return Rendition.objects.filter(
        session_id=uuid.UUID(str(session_id)), name=renditions.MP4, status=Rendition.Status.PENDING
    ).exists()


def make(session_id: uuid.UUID | str, *, retry_later: Callable[[str], None] | None) -> str:
    """Make the recording's pending rendition when this machine's turn comes. With `retry_later`
    (a queue whose workers also process recordings), a busy machine is not waited for: the task is
    queued again for later and the worker freed. What became of it."""
    if not renditions.is_on():
        return OFF
    if not is_pending(session_id):
        return SKIPPED
    with background.one_per_machine("renditions", wait=retry_later is None) as has_turn:
        if not has_turn and retry_later is not None:
            with database_write_lock():  # asked for again just now: the recovery sweep adds no second task
                Rendition.objects.filter(
                    session_id=uuid.UUID(str(session_id)), name=renditions.MP4, status=Rendition.Status.PENDING
                ).filter(heartbeat_at__isnull=True).update(requested_at=timezone.now())
            retry_later(str(session_id))
            return DEFERRED
        run_id = secrets.token_hex(8)
        rendition = _claim(session_id, run_id)
        if rendition is None:
            return SKIPPED
        return _run(rendition, run_id)


def _claim(session_id: uuid.UUID | str, run_id: str) -> Rendition | None:
    """Take the pending rendition of a ready recording for this run, unless another run's heartbeat is fresh."""
    fresh = timezone.now() - datetime.timedelta(seconds=STALE_SECONDS)
    with database_write_lock():
        claimed = (
            Rendition.objects.filter(
                session_id=uuid.UUID(str(session_id)),
                name=renditions.MP4,
                status=Rendition.Status.PENDING,
                session__status=Status.READY,
            )
            .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=fresh))
            .update(run_id=run_id, heartbeat_at=timezone.now(), attempts=F("attempts") + 1)
        )
    if not claimed:
        return None
    return Rendition.objects.select_related("session").filter(run_id=run_id).first()


def _still_ours(rendition: Rendition, run_id: str) -> bool:
    return Rendition.objects.filter(
        pk=rendition.pk, run_id=run_id, status=Rendition.Status.PENDING, session__status=Status.READY
    ).exists()


def _run(rendition: Rendition, run_id: str) -> str:
    session = rendition.session
    unwanted = threading.Event()  # set by the heartbeat once the rendition is no longer this run's

    def stamp() -> None:
        with database_write_lock():
            beating = Rendition.objects.filter(
                pk=rendition.pk, run_id=run_id, status=Rendition.Status.PENDING, session__status=Status.READY
            ).update(heartbeat_at=timezone.now())
        if not beating:  # deleted, expired or processed again: the encode is stopped
            unwanted.set()

    began = time.monotonic()
    if rendition.attempts > 1:  # a killed run's work folder, if it died on this machine
        files.remove_work_dirs(session, settings.RECORDER_TEMP_DIR, kind="rendition")
    with background.Heartbeat(stamp, interval_seconds=HEARTBEAT_SECONDS, name=f"rendition-{session.id}"):
        try:
            with tempfile.TemporaryDirectory(
                dir=settings.RECORDER_TEMP_DIR, prefix=files.work_dir_prefix(session, "rendition")
            ) as work:
                made = background.at_low_priority(
                    lambda: _encode(session, Path(work), unwanted), name="recorder-rendition"
                )
                if made is None:
                    _finish(rendition, run_id, status=Rendition.Status.NONE)
                    return Rendition.Status.NONE
                if not _still_ours(rendition, run_id):
                    return SKIPPED
                return _store(session, rendition, run_id, made, seconds=time.monotonic() - began)
        except utils.MediaError as error:
            if unwanted.is_set():
                logger.info("recording %s: its rendition was no longer wanted; stopped", session.id)
                return SKIPPED
            logger.warning("recording %s: its rendition failed: %s %s", session.id, error.code, error.detail)
            _finish(rendition, run_id, status=Rendition.Status.FAILED, error_code=error.code, error_detail=error.detail)
            return Rendition.Status.FAILED
        except Exception:
            # a storage or database outage: handed back, for the recovery sweep to ask again
            with database_write_lock():
                Rendition.objects.filter(pk=rendition.pk, run_id=run_id).update(heartbeat_at=None, run_id="")
            raise


def _encode(session: RecordingSession, work_dir: Path, unwanted: threading.Event) -> renditions.Made | None:
    container = "mp4" if session.video_content_type.endswith("/mp4") else "webm"
    with files.private_copy(session.video_name, work_dir) as video_path:
        return renditions.encode_file(
            video_path, container, work_dir, fallback_duration_seconds=session.duration_seconds, cancel=unwanted
        )


def _store(
    session: RecordingSession, rendition: Rendition, run_id: str, made: renditions.Made, *, seconds: float
) -> str:
    """Save the file under the recording's view id and point the rendition at it, if this run still
    may, under the recording's row lock (an expiry or deletion holding it lists the files after);
    the file it replaces (a recording processed again) goes."""
    size = made.path.stat().st_size
    storage_name = files.store_output(session, made.path)
    with database_write_lock(), transaction.atomic():
        is_ready = RecordingSession.objects.select_for_update().filter(pk=session.pk, status=Status.READY).exists()
        stored = is_ready and Rendition.objects.filter(
            pk=rendition.pk, run_id=run_id, status=Rendition.Status.PENDING
        ).update(
            status=Rendition.Status.READY,
            storage_name=storage_name,
            size=size,
            content_type=made.content_type,
            codecs=made.codecs,
            video_copied=made.video_copied,
            seconds=round(seconds, 3),
            heartbeat_at=None,
            finished_at=timezone.now(),
        )
    if not stored:  # processed again, expired or deleted meanwhile: this file is nobody's
        default_storage.delete(storage_name)
        chunks.remove_empty_folders(output_storage_name(session.view_id, ""))
        return SKIPPED
    if rendition.storage_name and rendition.storage_name != storage_name:
        default_storage.delete(rendition.storage_name)
    logger.info("recording %s: rendition %s (%d bytes) in %.1f s", session.id, made.codecs, size, seconds)
    return Rendition.Status.READY


def _finish(rendition: Rendition, run_id: str, *, status: str, **changes) -> None:
    with database_write_lock():
        finished = Rendition.objects.filter(pk=rendition.pk, run_id=run_id).update(
            status=status, heartbeat_at=None, finished_at=timezone.now(), storage_name="", size=None, **changes
        )
    if finished and rendition.storage_name:
        default_storage.delete(rendition.storage_name)  # an earlier run's file, of another video


def stale_requests(now: datetime.datetime | None = None) -> list[uuid.UUID]:
    """Ready recordings whose pending rendition has no live run (its task was lost, or its worker
    killed), asked for again; those that have had MAX_ATTEMPTS runs fail."""
    if not renditions.is_on():
        return []
    now = now or timezone.now()
    cutoff = now - datetime.timedelta(seconds=STALE_SECONDS)
    stale = Q(status=Rendition.Status.PENDING, session__status=Status.READY) & (
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, requested_at__lt=cutoff)
    )
    given_up = dict(Rendition.objects.filter(stale, attempts__gte=MAX_ATTEMPTS).values_list("pk", "storage_name"))
    if given_up:
        with database_write_lock():
            Rendition.objects.filter(stale, pk__in=list(given_up)).update(
                status=Rendition.Status.FAILED,
                error_code="rendition_interrupted",
                error_detail=f"Making the rendition was interrupted {MAX_ATTEMPTS} times (a worker stopped mid-run).",
                storage_name="",
                size=None,
                finished_at=now,
            )
        failed = Rendition.objects.filter(pk__in=list(given_up), status=Rendition.Status.FAILED, storage_name="")
        for pk in failed.values_list("pk", flat=True):
            if given_up[pk]:
                default_storage.delete(given_up[pk])  # an earlier run's file, of another video
    session_ids = list(Rendition.objects.filter(stale, attempts__lt=MAX_ATTEMPTS).values_list("session_id", flat=True))
    if session_ids:
        with database_write_lock():  # asked again: not stale again until this request is
            Rendition.objects.filter(stale, session_id__in=session_ids).update(requested_at=now, heartbeat_at=None)
    return session_ids
