"""A recording's captions and transcript, made window after window: while it records, from the live
build's MP3 as it grows, and after `ready` from its stored audio, to the end; then its WebVTT and
transcript JSON are stored beside its other outputs and `captions_status` becomes `ready`.

Never on the `ready` path: every window runs in its own task (queue `captions`), on a thread at the
lowest priority (nice 19), one at a time on a machine (a lock file in RECORDER_TEMP_DIR), with a
model on one CPU thread. What one window may cost is bounded by its length (WINDOW_SECONDS), what a
recording may cost by RECORDER_CAPTIONS_MAX_SECONDS. docs/captions.md.
"""

import datetime
import json
import logging
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import background, captions, files, live_audio, utils
from .locks import database_write_lock
from .models import CaptionsStatus, LiveBuild, RecordingSession, Status, Transcription, TranscriptSegment

logger = logging.getLogger("recordings.transcription")

# A request whose task never ran (its process was killed) is asked again after this.
REQUEST_STALE_SECONDS = 60
# A ready recording's captions are `failed` after this many failed tasks (each tried a minute apart).
MAX_FAILURES = 3
DECODE_LIMITS = utils.Limits(timeout_seconds=120, memory_bytes=512 * 1024 * 1024, output_bytes=8 * 1024 * 1024)


@dataclass(frozen=True)
class _Audio:
    """Where the audio to transcribe is, and how much of it there is to take now."""

    path: Path
    available_seconds: float
    is_complete: bool  # the recording is ready: the last window takes the rest


def initial_status(has_audio: bool | None) -> str:
    """The captions status of a recording that has just become ready."""
    status = captions.status_for_new_recording()
    if status == CaptionsStatus.PENDING and not has_audio:
        return CaptionsStatus.NONE
    return status


# --- Asking for a window -------------------------------------------------------------------------


def wants_live_window(session_id: uuid.UUID | str) -> bool:
    """After a live build's advance: whether a whole window of new audio is there to transcribe and
    no request is pending; if so the request is recorded here (the caller queues the task)."""
    row = (
        RecordingSession.objects.filter(pk=session_id, status=Status.RECORDING, captions_status=CaptionsStatus.PENDING)
        .values_list("live__state", flat=True)
        .first()
    )
    audio_state = (row or {}).get("audio_mp3") if isinstance(row, dict) else None
    if not audio_state:
        return False
    available_seconds = min(live_audio.encoded_seconds(audio_state), settings.RECORDER_CAPTIONS_MAX_SECONDS)
    done_seconds = (
        Transcription.objects.filter(pk=uuid.UUID(str(session_id))).values_list("next_seconds", flat=True).first()
    )
    if available_seconds < (done_seconds or 0.0) + captions.WINDOW_SECONDS:
        return False
    return _mark_requested(session_id)


def _mark_requested(session_id: uuid.UUID | str) -> bool:
    """Record a request unless a fresh one is pending: True when the caller should queue a task."""
    now = timezone.now()
    stale = now - datetime.timedelta(seconds=REQUEST_STALE_SECONDS)
    with database_write_lock():
        if Transcription.objects.filter(
            Q(requested_at__isnull=True) | Q(requested_at__lt=stale), pk=uuid.UUID(str(session_id))
        ).update(requested_at=now):
            return True
        try:
            with transaction.atomic():
                Transcription.objects.create(session_id=session_id, requested_at=now)
            return True
        except IntegrityError:
            return False  # it exists, with a fresh request


def request_final(session_id: uuid.UUID | str) -> None:
    """For a recording that has just become ready with captions pending: the rest is wanted, whatever
    request is pending (an equal task queued twice finds nothing left to do). A transcription that
    was finished before (the recording was processed again) starts over."""
    with database_write_lock():
        Transcription.objects.filter(pk=uuid.UUID(str(session_id)), finished_at__isnull=False).delete()
        if not Transcription.objects.filter(pk=uuid.UUID(str(session_id))).update(requested_at=timezone.now()):
            try:
                with transaction.atomic():
                    Transcription.objects.create(session_id=session_id, requested_at=timezone.now())
            except IntegrityError:
                pass


# --- The task ------------------------------------------------------------------------------------


def advance(session_id: uuid.UUID | str, *, enqueue_again: Callable[[str], None]) -> str:
    """Transcribe the next window there is audio for; once the recording is ready and the last one
    is done, store the captions. With more to do, `enqueue_again` queues the next window as a task
    of its own, so a processing run waits behind one window at most. The captions status after.
    Never raises for a recording's own trouble: a failure is logged, and at the end it is `failed`."""
    session = RecordingSession.objects.filter(pk=session_id).first()
    if session is None:
        return "gone"
    if session.captions_status != CaptionsStatus.PENDING:
        _clear_request(session_id)
        return session.captions_status
    is_final = session.status == Status.READY
    outcome = _DONE
    try:
        with _audio_of(session) as audio:
            if audio is not None:
                outcome = _transcribe_next_window(session, audio)
                if audio.is_complete and outcome == _DONE:
                    _store(session, audio)
    except captions.CaptionsUnavailable as error:
        logger.error("recording %s: no captions: %s", session.id, error)
        _finish_failed(session, "captions_unavailable")
    except Exception:
        logger.exception("recording %s: transcription failed", session.id)
        if not is_final or _failed_again(session) < MAX_FAILURES:
            # the request stays: the recovery sweep asks again once it is stale (a live window: the
            # next advance after a minute)
            return session.captions_status
        _finish_failed(session, "captions_failed")
    if outcome == _MORE:
        enqueue_again(str(session_id))
    elif outcome == _DONE:
        _clear_request(session_id)
    # _LOST: another process moved it on meanwhile, and goes on with it
    return RecordingSession.objects.filter(pk=session_id).values_list("captions_status", flat=True).first() or "gone"


@contextmanager
def _audio_of(session: RecordingSession) -> Iterator[_Audio | None]:
    """The ready recording's stored audio (a local copy where the storage has no path), or while it
    records the live build's MP3 so far; None when there is none to read now."""
    if session.status == Status.READY:
        name = session.audio_name or session.video_name
        if not name or not session.duration_seconds:
            _finish(session, CaptionsStatus.NONE)  # nothing to listen to: no captions will come
            yield None
            return
        with files.local_copy(name) as path:
            yield _Audio(path, min(session.duration_seconds, settings.RECORDER_CAPTIONS_MAX_SECONDS), True)
        return
    state = LiveBuild.objects.filter(session_id=session.pk).values_list("state", flat=True).first() or {}
    audio_state = state.get("audio_mp3") if isinstance(state, dict) else None
    if session.status != Status.RECORDING or not audio_state:
        yield None
        return
    available_seconds = live_audio.encoded_seconds(audio_state)
    path = files.live_build_dir(session) / "audio.mp3"
    if not path.is_file():  # a worker without RECORDER_LIVE_DIR: all of it after `ready`, from storage
        yield None
        return
    yield _Audio(path, min(available_seconds, settings.RECORDER_CAPTIONS_MAX_SECONDS), False)


_MORE, _DONE, _LOST = "more", "done", "lost"


def _transcribe_next_window(session: RecordingSession, audio: _Audio) -> str:
    """Transcribe one window if there is audio for one: `more` when another is there after it,
    `done` when the audio there is now is all transcribed, `lost` when another process committed
    this window first. On this machine the position is read under the captions lock, so a second
    task for the recording (a recovery, a duplicate) waits and then finds the window done."""
    with background.one_per_machine("captions"):
        if not RecordingSession.objects.filter(pk=session.pk, captions_status=CaptionsStatus.PENDING).exists():
            return _LOST  # it failed, expired or was deleted while this task waited: nothing more
        with database_write_lock():
            transcription, _ = Transcription.objects.get_or_create(session_id=session.pk)
        if transcription.finished_at is not None:
            return _LOST  # a finished one, about to be started over by the run that asked for it
        if not _has_window(transcription.next_seconds, audio):
            return _DONE
        start_seconds = transcription.next_seconds
        left_seconds = audio.available_seconds - start_seconds
        is_last = audio.is_complete and left_seconds <= captions.WINDOW_SECONDS
        duration_seconds = min(left_seconds, captions.WINDOW_SECONDS)
        language = settings.RECORDER_CAPTIONS_LANGUAGE
        began = time.monotonic()
        result = background.at_low_priority(
            lambda: _transcribe(audio.path, start_seconds, duration_seconds, is_last=is_last, language=language),
            name="recorder-captions",
        )
        if not _commit(transcription, result, time.monotonic() - began):
            logger.info("recording %s: another process transcribed this window first", session.id)
            return _LOST
    return _MORE if _has_window(transcription.next_seconds, audio) else _DONE


def _has_window(start_seconds: float, audio: _Audio) -> bool:
    """Audio for a window from `start_seconds`: a whole one while it records, any left at the end."""
    left_seconds = audio.available_seconds - start_seconds
    return left_seconds > 0.05 if audio.is_complete else left_seconds >= captions.WINDOW_SECONDS


def _transcribe(
    path: Path, start_seconds: float, duration_seconds: float, *, is_last: bool, language: str
) -> captions.WindowResult:
    settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.RECORDER_TEMP_DIR, prefix="captions-") as work:
        samples_path = Path(work) / "window.f32"
        utils.decode_speech(
            path, samples_path, start_seconds=start_seconds, duration_seconds=duration_seconds, limits=DECODE_LIMITS
        )
        samples = numpy.fromfile(samples_path, dtype=numpy.float32)
    if not len(samples):
        return captions.WindowResult([], start_seconds + duration_seconds, language)
    # Audio that ends before the window does (the container's duration was the video's, or rounded
    # up): this is the last of it, whose words are all kept; the transcription moves to the window's end.
    audio_ended = len(samples) < (duration_seconds - 1.0) * utils.SPEECH_SAMPLE_RATE
    result = captions.transcribe_window(
        samples, start_seconds=start_seconds, is_last=is_last or audio_ended, language=language
    )
    if is_last or audio_ended:
        return captions.WindowResult(result.words, start_seconds + duration_seconds, result.language)
    return result


def _commit(transcription: Transcription, result: captions.WindowResult, seconds: float) -> bool:
    """The window's words and the new position, together, if no other process moved it meanwhile."""
    with database_write_lock(), transaction.atomic():
        moved = Transcription.objects.filter(pk=transcription.pk, version=transcription.version).update(
            next_seconds=result.next_start_seconds,
            version=F("version") + 1,
            language=result.language or "",
            windows=F("windows") + 1,
            requested_at=timezone.now(),  # a task that keeps committing is not a lost one
            seconds=F("seconds") + seconds,
        )
        if not moved:
            return False
        if result.words:
            TranscriptSegment.objects.create(
                transcription=transcription,
                start_seconds=result.words[0].start_seconds,
                words=[word.as_json() for word in result.words],
            )
    transcription.refresh_from_db()
    return True


def _clear_request(session_id: uuid.UUID | str) -> None:
    with database_write_lock():
        Transcription.objects.filter(pk=uuid.UUID(str(session_id))).update(requested_at=None)


# --- The outputs ---------------------------------------------------------------------------------


def words_of(transcription: Transcription) -> Iterator[captions.Word]:
    """Every kept word, in order, read a segment at a time."""
    for words in transcription.segments.order_by("start_seconds").values_list("words", flat=True).iterator():
        for word in words:
            yield captions.Word(word["word"], word["start"], word["end"], word["probability"])


def _store(session: RecordingSession, audio: _Audio) -> None:
    """Write the WebVTT and the transcript, store them under the view id, and say `ready`: only once
    the transcription has reached the end of `audio`. Each store has names of its own, so a store
    that loses (to a DELETE, an expiry, another process's store) deletes what it wrote and nothing
    of the winner's."""
    transcription = Transcription.objects.filter(session_id=session.pk).first()
    if transcription is None or transcription.finished_at is not None:
        return  # deleted with its recording meanwhile, or an earlier run's, whose words are gone
    if _has_window(transcription.next_seconds, audio):
        logger.warning(
            "recording %s: captions not stored: transcribed to %.1f s only", session.id, transcription.next_seconds
        )
        return
    language = transcription.language or settings.RECORDER_CAPTIONS_LANGUAGE
    suffix = secrets.token_hex(4)
    with tempfile.TemporaryDirectory(dir=settings.RECORDER_TEMP_DIR, prefix="captions-") as work:
        captions_path = Path(work) / f"captions-{suffix}.vtt"
        transcript_path = Path(work) / f"transcript-{suffix}.json"
        with open(captions_path, "w", encoding="utf-8") as captions_file:
            captions_file.writelines(captions.webvtt_lines(captions.cues(words_of(transcription))))
        with open(transcript_path, "w", encoding="utf-8") as transcript_file:
            _write_transcript(transcript_file, transcription, language)
        stored: dict[str, int | str] = {}
        for kind, path in (("captions", captions_path), ("transcript", transcript_path)):
            stored[f"{kind}_bytes"] = path.stat().st_size
            stored[f"{kind}_name"] = files.store_output(session, path)
    with database_write_lock():  # ordered with a DELETE's status change on SQLite, as every writer is
        before = RecordingSession.objects.filter(pk=session.pk).values("captions_name", "transcript_name").first()
        moved = RecordingSession.objects.filter(
            pk=session.pk, status=Status.READY, captions_status=CaptionsStatus.PENDING
        ).update(
            captions_status=CaptionsStatus.READY,
            captions_language=language,
            captions_ready_at=timezone.now(),
            captions_error_code="",
            **stored,
        )
    stale = [stored["captions_name"], stored["transcript_name"]] if not moved else list((before or {}).values())
    for name in stale:  # a loser's own files; a winner's predecessors (the recording processed again)
        if name:
            default_storage.delete(str(name))
    if not moved:
        return
    for name in (session.audio_name, session.video_name):
        files.drop_local_copy(name)  # S3: the copy windows were read from
    transcription.segments.all().delete()  # its words are in the transcript now
    Transcription.objects.filter(pk=transcription.pk).update(finished_at=timezone.now())
    logger.info(
        "recording %s: captions ready (%d windows, %.1f s)", session.id, transcription.windows, transcription.seconds
    )


def _write_transcript(out, transcription: Transcription, language: str) -> None:
    """{"language", "transcribed_seconds", "words": [...], "text"}, written a word at a time."""
    out.write(f'{{"language": {json.dumps(language)}, "transcribed_seconds": {round(transcription.next_seconds, 3)}')
    out.write(', "words": [')
    for number, word in enumerate(words_of(transcription)):
        out.write(("," if number else "") + json.dumps(word.as_json()))
    out.write('], "text": "')
    for number, word in enumerate(words_of(transcription)):
        out.write((" " if number else "") + json.dumps(word.text)[1:-1])
    out.write('"}\n')


def _failed_again(session: RecordingSession) -> int:
    """Count a failed task of a ready recording; how many there have been."""
    with database_write_lock():
        Transcription.objects.filter(session_id=session.pk).update(failures=F("failures") + 1)
    failures = Transcription.objects.filter(session_id=session.pk).values_list("failures", flat=True).first()
    return MAX_FAILURES if failures is None else failures


def _finish_failed(session: RecordingSession, code: str) -> None:
    _finish(session, CaptionsStatus.FAILED, captions_error_code=code)


def _finish(session: RecordingSession, captions_status: str, **changes) -> None:
    with database_write_lock():
        RecordingSession.objects.filter(pk=session.pk, captions_status=CaptionsStatus.PENDING).update(
            captions_status=captions_status, **changes
        )


# --- Recovery ------------------------------------------------------------------------------------


def stale_requests() -> list[uuid.UUID]:
    """Ready recordings whose captions are pending with no fresh request: their task was lost."""
    cutoff = timezone.now() - datetime.timedelta(seconds=REQUEST_STALE_SECONDS)
    return list(
        RecordingSession.objects.filter(status=Status.READY, captions_status=CaptionsStatus.PENDING)
        .filter(
            Q(transcription__isnull=True)
            | Q(transcription__requested_at__isnull=True)
            | Q(transcription__requested_at__lt=cutoff)
        )
        .filter(Q(ready_at__lt=cutoff))
        .values_list("id", flat=True)
    )
