"""The pipeline for one recording: join → probe → remux → audio → thumbnail → save, and its status."""

import datetime
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from . import chunks, utils
from .locks import database_write_lock
from .models import (
    Chunk,
    IllegalTransition,
    RecordingSession,
    Status,
    chunk_storage_name,
    media_storage_name,
    transition,
)
from .storage import MovableFile

logger = logging.getLogger("recordings.processing")


@dataclass
class StepTimer:
    """Seconds taken by each named step (some run side by side), kept on the recording and logged."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)

    @property
    def total_seconds(self) -> float:
        """Wall-clock time since the run began: less than the sum of the steps when they overlap."""
        return round(time.perf_counter() - self.started, 3)


def process_recording(session_id: uuid.UUID | str) -> RecordingSession:
    """Build the playable video, audio and thumbnail of a recording whose status is `processing`.

    Idempotent: outputs are written under fixed names through an atomic storage, so a second run
    replaces them whole. A failure leaves the chunks untouched and the status `failed` with a code.
    A run claims the recording first: while another run's heartbeat is fresh, this one does nothing.
    """
    attempt = _claim(session_id)
    session = RecordingSession.objects.get(pk=session_id)
    if attempt is None:
        return session
    timer = StepTimer()
    this_run = {"processing_attempts": attempt}
    try:
        with _Heartbeat(session.id, attempt):
            results = _build_outputs(session, timer)
        transition(
            session,
            Status.READY,
            only_if=this_run,
            ready_at=timezone.now(),
            error_code="",
            error_detail="",
            processing_seconds=timer.total_seconds,
            processing_steps=timer.seconds,
            **results,
        )
        logger.info("recording %s ready in %.2f s: %s", session.id, timer.total_seconds, timer.seconds)
        if not settings.RECORDER_KEEP_CHUNKS:
            drop_chunk_files(session)
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
    return session


# --- Claims, heartbeats and stale runs ---------------------------------------------------------------


def _stale_cutoff(now: datetime.datetime | None = None) -> datetime.datetime:
    return (now or timezone.now()) - datetime.timedelta(seconds=settings.RECORDER_PROCESSING_STALE_SECONDS)


def _claim(session_id: uuid.UUID | str) -> int | None:
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
        if heartbeat is not None and heartbeat > _stale_cutoff():
            logger.info(
                "recording %s is being processed by another run (attempt %d)", session_id, session.processing_attempts
            )
            return None
        if session.processing_attempts >= settings.RECORDER_PROCESSING_MAX_ATTEMPTS:
            _give_up(session)
            return None
        session.processing_attempts += 1
        session.processing_heartbeat_at = timezone.now()
        session.save(update_fields=["processing_attempts", "processing_heartbeat_at"])
        if session.processing_attempts > 1:
            logger.warning("recording %s: processing again, attempt %d", session_id, session.processing_attempts)
        return session.processing_attempts


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


class _Heartbeat:
    """Stamps `processing_heartbeat_at` every stale/4 seconds from a thread while a run works."""

    def __init__(self, session_id: uuid.UUID, attempt: int):
        self._session_id = session_id
        self._attempt = attempt
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{session_id}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        interval_seconds = settings.RECORDER_PROCESSING_STALE_SECONDS / 4
        try:
            while not self._stopped.wait(interval_seconds):
                try:
                    RecordingSession.objects.filter(
                        pk=self._session_id, status=Status.PROCESSING, processing_attempts=self._attempt
                    ).update(processing_heartbeat_at=timezone.now())
                except DatabaseError:  # a missed beat is retried; only a stopped process stops beating
                    logger.warning("recording %s: heartbeat failed", self._session_id, exc_info=True)
        finally:
            connections.close_all()  # this thread's connections only


def stale_recording_ids(*, include_unstarted: bool, now: datetime.datetime | None = None) -> list[uuid.UUID]:
    """Recordings in `processing` whose run stopped beating (and, with `include_unstarted`, whose
    requested run never started: lost with an in-process backend when the process was killed)."""
    stale = RecordingSession.objects.filter(_is_stale(include_unstarted, now))
    return list(stale.values_list("id", flat=True))


def _is_stale(include_unstarted: bool, now: datetime.datetime | None = None) -> Q:
    cutoff = _stale_cutoff(now)
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


def _fail(session: RecordingSession, code: str, detail: str, timer: StepTimer, *, only_if: dict) -> None:
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


def _build_outputs(session: RecordingSession, timer: StepTimer) -> dict:
    timeout_seconds = settings.RECORDER_FFMPEG_TIMEOUT_SECONDS
    settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.RECORDER_TEMP_DIR, prefix=f"process-{session.id}-") as work:
        work_dir = Path(work)
        with timer.step("join"):
            source_path = work_dir / "source"
            source = chunks.join_chunks(_chunk_names(session), source_path)
        container = chunks.sniff_container(source.head)
        if container is None:
            raise utils.MediaError(
                "unsupported_media", "The recording does not start with a WebM, Matroska, MP4 or Ogg header."
            )
        with timer.step("probe"):
            source_info = utils.probe(source_path)
        plan = utils.plan_remux(container, source_info)
        video_path = work_dir / f"video.{plan.output.extension}"
        # The audio comes from the source, not the remuxed file, so it runs on the other core while
        # the remux, probe and thumbnail run here.
        with ThreadPoolExecutor(max_workers=1) as audio_worker:
            audio_job = (
                audio_worker.submit(_extract_audio, source_path, work_dir, timer, timeout_seconds)
                if source_info.has_audio
                else None
            )
            with timer.step("remux"):
                utils.remux(source_path, video_path, plan, timeout_seconds=timeout_seconds)
                info = utils.probe(video_path)
            if not info.duration_seconds:
                raise utils.MediaError("media_undecodable", "The recording has no measurable duration.")
            _check_duration(info.duration_seconds)
            outputs = {"video": (video_path, plan.output.content_type)}
            if info.has_video:
                thumbnail_path = work_dir / "thumbnail.jpg"
                with timer.step("thumbnail"):
                    utils.make_thumbnail(
                        video_path,
                        thumbnail_path,
                        at_seconds=utils.thumbnail_time(info.duration_seconds),
                        timeout_seconds=timeout_seconds,
                    )
                outputs["thumbnail"] = (thumbnail_path, "image/jpeg")
            if audio_job is not None:
                outputs["audio"] = audio_job.result()

        with timer.step("store"):
            stored = _store_outputs(session, outputs)

    return {
        "container": container,
        "source_bytes": source.size,
        "source_sha256": source.sha256,
        "duration_seconds": info.duration_seconds,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "video_codec": info.video_codec,
        "audio_codec": info.audio_codec,
        "has_video": info.has_video,
        "has_audio": info.has_audio,
        **stored,
    }


def _check_duration(duration_seconds: float) -> None:
    limit_seconds = settings.RECORDER_MAX_DURATION_SECONDS
    if limit_seconds and duration_seconds > limit_seconds:
        raise utils.MediaError(
            "recording_too_long",
            f"The recording lasts {duration_seconds:.0f} s; at most {limit_seconds} s are processed "
            "(RECORDER_MAX_DURATION_SECONDS).",
        )


def _extract_audio(source_path: Path, work_dir: Path, timer: StepTimer, timeout_seconds: float) -> tuple[Path, str]:
    audio_format = settings.RECORDER_AUDIO_FORMAT
    audio_path = work_dir / f"audio.{utils.AUDIO_FORMATS[audio_format].extension}"
    with timer.step("audio"):
        output = utils.extract_audio(source_path, audio_path, audio_format, timeout_seconds=timeout_seconds)
    return audio_path, output.content_type


def _chunk_names(session: RecordingSession) -> list[str]:
    indices = list(Chunk.objects.filter(session=session).order_by("index").values_list("index", flat=True))
    if indices != list(range(len(indices))) or (
        session.expected_chunks is not None and len(indices) != session.expected_chunks
    ):
        raise utils.MediaError("chunks_missing", "Some chunks of the recording are missing; it cannot be joined.")
    return [chunk_storage_name(session.id, index) for index in indices]


def _store_outputs(session: RecordingSession, outputs: dict[str, tuple[Path, str]]) -> dict:
    stored = {
        "video_name": "",
        "video_bytes": None,
        "video_content_type": "",
        "audio_name": "",
        "audio_bytes": None,
        "audio_content_type": "",
        "thumbnail_name": "",
        "thumbnail_bytes": None,
    }
    for kind, (path, content_type) in outputs.items():
        name = media_storage_name(session.id, path.name)
        size = path.stat().st_size
        with MovableFile(str(path)) as output_file:
            default_storage.save(name, output_file)
        stored[f"{kind}_name"] = name
        stored[f"{kind}_bytes"] = size
        if kind != "thumbnail":
            stored[f"{kind}_content_type"] = content_type
    _delete_stale_outputs(session, keep={stored["video_name"], stored["audio_name"], stored["thumbnail_name"]})
    return stored


def _delete_stale_outputs(session: RecordingSession, *, keep: set[str]) -> None:
    """A rerun with another output format must not leave the previous run's files behind."""
    for name in (session.video_name, session.audio_name, session.thumbnail_name):
        if name and name not in keep:
            default_storage.delete(name)


def drop_chunk_files(session: RecordingSession) -> None:
    """Delete a recording's chunk files (their rows stay, as the record of what was received)."""
    chunks.delete_stored_files(_stored_chunk_names(session))
    chunks.remove_empty_folders(media_storage_name(session.id, "chunks"))
    session.chunks_deleted_at = timezone.now()
    RecordingSession.objects.filter(pk=session.pk).update(chunks_deleted_at=session.chunks_deleted_at)


def _stored_chunk_names(session: RecordingSession) -> list[str]:
    indices = Chunk.objects.filter(session=session).values_list("index", flat=True)
    return [chunk_storage_name(session.id, index) for index in indices]


def output_names(session: RecordingSession) -> list[str]:
    return [name for name in (session.video_name, session.audio_name, session.thumbnail_name) if name]


def delete_all_files(session: RecordingSession) -> None:
    """Every file a recording has: its chunks (if still there) and its outputs."""
    names = output_names(session)
    if session.chunks_deleted_at is None:
        names += _stored_chunk_names(session)
    chunks.delete_stored_files(names)
    chunks.remove_empty_folders(media_storage_name(session.id, ""))


def current_status(session_id: uuid.UUID | str) -> str | None:
    return RecordingSession.objects.filter(pk=session_id).values_list("status", flat=True).first()
