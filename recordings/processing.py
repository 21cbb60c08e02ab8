"""The pipeline for one recording: join → check → probe → remux → audio → thumbnail → save, and its status."""

import logging
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone

from . import chunks, ebml, files, runs, utils
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

MiB = 1024 * 1024


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


def process_recording(session_id: uuid.UUID | str) -> RecordingSession | None:
    """Build the playable video, audio and thumbnail of a recording whose status is `processing`.

    Idempotent: outputs are written under fixed names through an atomic storage, so a second run
    replaces them whole. A failure leaves the chunks untouched and the status `failed` with a code.
    A run claims the recording first: while another run's heartbeat is fresh, this one does nothing.
    None when the recording no longer exists.
    """
    with runs.run_slot():
        attempt = runs.claim(session_id)
        try:
            session = RecordingSession.objects.filter(pk=session_id).first()
            if attempt is None or session is None:
                return session
            return _run(session, attempt)
        finally:
            if attempt is not None:
                runs.finished(session_id)


def _run(session: RecordingSession, attempt: int) -> RecordingSession:
    timer = StepTimer()
    this_run = {"processing_attempts": attempt}
    try:
        with runs.Heartbeat(session.id, attempt):
            if attempt > 1:  # the dead run's work folder, if it died on this machine
                files.remove_work_dirs(session, settings.RECORDER_TEMP_DIR)
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
            files.drop_chunk_files(session)
            session.chunks_deleted_at = timezone.now()
            RecordingSession.objects.filter(pk=session.pk).update(chunks_deleted_at=session.chunks_deleted_at)
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


# --- What a run may cost -----------------------------------------------------------------------------
# Every bound grows with what the client uploaded, never with what the file claims about itself.

STEP_BASE_SECONDS = 20
# A stream copy barely changes the size (and a re-encode shrinks what browsers do not send); the
# audio is re-encoded at a fixed bitrate (MP3 at 128 kb/s is 21 x Opus at its lowest, 6 kb/s), WAV
# uncompressed (256 x); a thumbnail is one JPEG at most 1280 wide. The slack is for the tiniest
# uploads; it is small, or a 2 KB file claiming a long duration would still make megabytes.
VIDEO_GROWTH = 2
AUDIO_GROWTH = {"wav": 256}
DEFAULT_AUDIO_GROWTH = 24
OUTPUT_SLACK_BYTES = 256 * 1024
THUMBNAIL_MAX_BYTES = 16 * MiB
# A video re-encode (only for codecs no browser records) costs in proportion to the pixels it
# decodes and encodes. MJPEG, the least compressed codec a camera sends, carries about 10 pixels
# per byte; a file claiming far more (a few static frames repeated for hours) is refused.
REENCODE_MAX_PIXELS_PER_BYTE = 1000


def step_limits(source_bytes: int, *, output_bytes: int | None) -> utils.Limits:
    """The limits of one ffmpeg step of a recording of `source_bytes` that may write `output_bytes`."""
    timeout_seconds = min(
        settings.RECORDER_FFMPEG_TIMEOUT_SECONDS,
        STEP_BASE_SECONDS + settings.RECORDER_FFMPEG_SECONDS_PER_MIB * source_bytes / MiB,
    )
    return utils.Limits(
        timeout_seconds=timeout_seconds,
        memory_bytes=settings.RECORDER_FFMPEG_MAX_MEMORY_BYTES or None,
        output_bytes=output_bytes,
        max_frame_pixels=settings.RECORDER_MAX_FRAME_PIXELS or None,
    )


def _check_structure(container: str, source_path: Path) -> None:
    """Refuse Matroska files whose frames ffmpeg would inflate (ContentEncoding) before it reads them."""
    if container not in ("webm", "matroska"):
        return
    try:
        with open(source_path, "rb") as source:
            layout = ebml.read_layout(source)
    except ebml.NotMatroska as error:
        raise utils.MediaError("media_undecodable", f"The recording's Matroska header cannot be read: {error}.")
    if not layout.has_tracks:
        raise utils.MediaError("media_undecodable", "The recording declares no tracks before its first cluster.")
    if layout.stray_tracks_ids:
        raise utils.MediaError(
            "unsupported_media",
            "The recording's header holds a second Tracks element inside another element, where a player "
            "that resyncs after damage would find it; such recordings are not processed.",
        )
    if layout.encoded_tracks:
        raise utils.MediaError(
            "unsupported_media",
            f"Track {layout.encoded_tracks[0]} declares a ContentEncoding (compressed or encrypted frames), "
            "which no browser writes; such recordings are not processed.",
        )


def _check_reencode_cost(plan: utils.RemuxPlan, info: utils.MediaInfo, source_bytes: int) -> None:
    if not plan.reencodes_video or not (info.width and info.height and info.fps and info.duration_seconds):
        return
    pixels = info.width * info.height * info.fps * info.duration_seconds
    if pixels > REENCODE_MAX_PIXELS_PER_BYTE * source_bytes:
        raise utils.MediaError(
            "unsupported_media",
            f"The video is {info.video_codec}, which no browser plays: re-encoding {pixels:.3g} pixels from "
            f"{source_bytes} bytes is more than a recording of that size can need.",
        )


# Every recorder samples audio between telephone quality and studio quality. A file that claims 1 Hz
# makes the resampler to 48 kHz (Opus, MP3) turn each sample into 48,000: seconds of encoding
# for every few bytes uploaded.
AUDIO_SAMPLE_RATES = range(8000, 192_001)


def _check_audio_sample_rate(info: utils.MediaInfo) -> None:
    if info.audio_sample_rate is not None and info.audio_sample_rate not in AUDIO_SAMPLE_RATES:
        raise utils.MediaError(
            "unsupported_media",
            f"The audio is sampled at {info.audio_sample_rate} Hz; recordings are sampled at 8,000 to 192,000 Hz.",
        )


def _check_frame_size(info: utils.MediaInfo) -> None:
    limit = settings.RECORDER_MAX_FRAME_PIXELS
    if limit and info.width and info.height and info.width * info.height > limit:
        raise utils.MediaError(
            "frame_too_large",
            f"The video is {info.width}x{info.height}; at most {limit} pixels a frame are processed "
            "(RECORDER_MAX_FRAME_PIXELS).",
        )


def _build_outputs(session: RecordingSession, timer: StepTimer) -> dict:
    settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.RECORDER_TEMP_DIR, prefix=files.work_dir_prefix(session)) as work:
        work_dir = Path(work)
        with timer.step("join"):
            source_path = work_dir / "source"
            source = chunks.join_chunks(_chunk_names(session), source_path)
        container = chunks.sniff_container(source.head)
        if container is None:
            raise utils.MediaError(
                "unsupported_media", "The recording does not start with a WebM, Matroska, MP4 or Ogg header."
            )
        _check_structure(container, source_path)
        with timer.step("probe"):
            source_info = utils.probe(source_path, limits=step_limits(source.size, output_bytes=None))
        _check_frame_size(source_info)
        _check_audio_sample_rate(source_info)
        if source_info.damage and container in ("webm", "matroska"):
            raise utils.MediaError("media_undecodable", f"The recording's structure is damaged: {source_info.damage}")
        plan = utils.plan_remux(container, source_info)
        _check_reencode_cost(plan, source_info, source.size)
        video_path = work_dir / f"video.{plan.output.extension}"
        video_limits = step_limits(source.size, output_bytes=int(VIDEO_GROWTH * source.size) + OUTPUT_SLACK_BYTES)
        # The audio comes from the source, not the remuxed file, so it runs on the other core while
        # the remux, probe and thumbnail run here.
        with ThreadPoolExecutor(max_workers=1) as audio_worker:
            audio_job = (
                audio_worker.submit(_extract_audio, source_path, source.size, work_dir, timer)
                if source_info.has_audio
                else None
            )
            with timer.step("remux"):
                utils.remux(source_path, video_path, plan, limits=video_limits)
                info = utils.probe(video_path, limits=video_limits)
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
                        limits=step_limits(source.size, output_bytes=THUMBNAIL_MAX_BYTES),
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


def _extract_audio(source_path: Path, source_bytes: int, work_dir: Path, timer: StepTimer) -> tuple[Path, str]:
    audio_format = settings.RECORDER_AUDIO_FORMAT
    audio_path = work_dir / f"audio.{utils.AUDIO_FORMATS[audio_format].extension}"
    growth = AUDIO_GROWTH.get(audio_format, DEFAULT_AUDIO_GROWTH)
    limits = step_limits(source_bytes, output_bytes=int(growth * source_bytes) + OUTPUT_SLACK_BYTES)
    with timer.step("audio"):
        output = utils.extract_audio(source_path, audio_path, audio_format, limits=limits)
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
