"""What happens on start / chunk / finalize / read: transactions, row locks, task enqueueing."""

import datetime
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.text import slugify

from . import captions, chunks, files, inflight, live, renditions, runs, streams, tasks
from .errors import RecorderError
from .locks import database_write_lock
from .models import (
    GONE_STATUSES,
    MAX_CHUNKS,
    CaptionsStatus,
    Chunk,
    RecordingSession,
    Status,
    chunk_storage_name,
    transition,
)
from .tasks import enqueue_processing

logger = logging.getLogger("recordings.services")

# Failures a finalize may try again, a bounded number of times (processing_runs_total): those that
# another run may not repeat. Media errors (undecodable, unsupported, too large) would; so would a
# timeout, at the cost of a whole timeout each time; and `processing_interrupted` means runs already
# died three times. `manage.py process_recording` reruns any of them.
RETRYABLE_ERROR_CODES = frozenset({"chunks_missing", "processing_error"})


# --- Tokens and lookup ------------------------------------------------------------------------------


def hash_upload_token(upload_token: str) -> str:
    """Tokens are 256 random bits, so a plain SHA-256 is enough; no slow KDF is needed."""
    # surrogatepass: a JSON string may hold a lone surrogate ("\ud800"); it hashes to a mismatch, not a 500
    return hashlib.sha256(upload_token.encode("utf-8", "surrogatepass")).hexdigest()


def get_session(*, session_id: str | uuid.UUID) -> RecordingSession:
    """The recording with this id, or `session_not_found` (also for ids that are not UUIDs)."""
    parsed_id = _parse_id(session_id)
    session = RecordingSession.objects.filter(pk=parsed_id).first() if parsed_id is not None else None
    return _live(session, session_id)


@dataclass(frozen=True)
class Readable:
    session: RecordingSession
    by_view_id: bool  # read through its view id: whoever asked must not learn the session id


def get_readable(*, recording_id: str | uuid.UUID) -> Readable:
    """The recording whose session id or view id this is (both are random UUID4s)."""
    parsed_id = _parse_id(recording_id)
    session = RecordingSession.objects.filter(Q(pk=parsed_id) | Q(view_id=parsed_id)).first() if parsed_id else None
    session = _live(session, recording_id)
    return Readable(session=session, by_view_id=session.id != parsed_id)


def _parse_id(recording_id: str | uuid.UUID) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(recording_id))
    except ValueError:
        return None


def _live(session: RecordingSession | None, asked_id: str | uuid.UUID) -> RecordingSession:
    if session is None or session.status in GONE_STATUSES:
        raise session_not_found(asked_id)
    if session.status == Status.EXPIRED:
        raise RecorderError(
            code="recording_expired",
            detail=f"Recording {asked_id!s:.64} expired on {session.expired_at:%Y-%m-%d %H:%M} UTC; "
            "its files are gone.",
            status=410,
        )
    return session


def session_not_found(session_id: str | uuid.UUID) -> RecorderError:
    return RecorderError(code="session_not_found", detail=f"No recording has the id {session_id!s:.64}.", status=404)


def authorize_upload(
    *, session_id: str | uuid.UUID, upload_token: str | None, destructive: bool = False
) -> RecordingSession:
    """The recording, if the caller may write to it: 401 without a token, 403 with a wrong one.

    With RECORDER_WRITE_AUTH=session, the session id alone may add chunks and finalize (the chunk
    checks refuse a recording that is no longer open); `destructive` calls (DELETE) still need the token.
    """
    if not upload_token:
        if settings.RECORDER_WRITE_AUTH == "session" and not destructive:
            return get_session(session_id=session_id)
        raise RecorderError(
            code="token_required",
            detail="Send the upload token from start-recording as `Authorization: Bearer <token>`.",
            status=401,
        )
    session = get_session(session_id=session_id)
    if not hmac.compare_digest(hash_upload_token(upload_token), session.upload_token_hash):
        raise RecorderError(code="token_invalid", detail="The upload token does not match this recording.", status=403)
    return session


# --- Start ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartedRecording:
    session: RecordingSession
    upload_token: str


def start_recording(*, title: str = "", mime_type: str = "") -> StartedRecording:
    """Create a recording; its upload token is returned here once and only its hash is stored."""
    upload_token = secrets.token_urlsafe(32)
    session = RecordingSession.objects.create(
        title=title,
        mime_type=mime_type,
        upload_token_hash=hash_upload_token(upload_token),
        captions_status=captions.status_for_new_recording(),
    )
    return StartedRecording(session=session, upload_token=upload_token)


# --- Progress ---------------------------------------------------------------------------------------------


# A finalize may claim up to 10,000,000 chunks; listing every missing index would make each status
# poll megabytes long. The first ones are what a resuming client needs; the count says how many.
MISSING_CHUNKS_LISTED = 1000


@dataclass(frozen=True)
class ChunkProgress:
    received_chunks: int
    received_bytes: int
    received_ranges: list[list[int]]
    missing_chunks: list[int] | None
    missing_chunks_count: int | None


def chunk_progress(session: RecordingSession) -> ChunkProgress:
    """Which chunks are stored: the ranges a client resumes from, and the gaps once the end is known."""
    rows = list(Chunk.objects.filter(session=session).order_by("index").values_list("index", "size"))
    ranges: list[list[int]] = []
    for index, _ in rows:
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    missing = missing_count = None
    if session.expected_chunks is not None:
        missing, missing_count = _first_missing(
            ranges, session.expected_chunks, first=session.first_chunk_index, limit=MISSING_CHUNKS_LISTED
        )
    return ChunkProgress(
        received_chunks=len(rows),
        received_bytes=sum(size for _, size in rows),
        received_ranges=ranges,
        missing_chunks=missing,
        missing_chunks_count=missing_count,
    )


def _first_missing(ranges: list[list[int]], expected: int, *, first: int, limit: int) -> tuple[list[int], int]:
    """The first `limit` indices from `first` to below `expected` outside the received ranges, and how
    many there are."""
    gaps = []
    start = first
    for first, last in [*ranges, [expected, expected]]:
        if first > start and start < expected:
            gaps.append((start, min(first, expected)))
        start = max(start, last + 1)
    listed: list[int] = []
    for first, end in gaps:
        listed.extend(range(first, min(end, first + limit - len(listed))))
        if len(listed) >= limit:
            break
    return listed, sum(end - first for first, end in gaps)


# --- Chunks ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkReceipt:
    chunk: Chunk
    created: bool
    session: RecordingSession
    received_chunks: int
    received_bytes: int


def receive_chunk(
    *, session: RecordingSession, chunk_index: int | None, stream: BinaryIO, checksums: Iterable[str | None] = ()
) -> ChunkReceipt:
    """Store one chunk durably before returning; an identical retry changes nothing. Every checksum
    given (the form field, the header: None when absent) must be the chunk's SHA-256.

    The bytes are staged outside any transaction; the decision (conflict, closed, limits, first
    bytes) and the rename into place happen under the recording's row lock, so two uploads of
    the same index can never both be written.
    """
    with chunks.storage_errors(), inflight.marked(session.id, settings.RECORDER_TEMP_DIR):
        return _receive_chunk(session, chunk_index, stream, checksums)


def _receive_chunk(
    session: RecordingSession, chunk_index: int | None, stream: BinaryIO, checksums: Iterable[str | None]
) -> ChunkReceipt:
    with chunks.storage_errors():
        staged = chunks.stage_upload(
            stream, max_bytes=settings.RECORDER_MAX_CHUNK_BYTES, staging_dir=settings.RECORDER_TEMP_DIR
        )
    try:
        for checksum in checksums:
            if checksum is not None and checksum != staged.sha256:
                raise RecorderError(
                    code="checksum_mismatch",
                    detail=f"The chunk's SHA-256 is {staged.sha256}, not {checksum}; it was discarded.",
                )
        with database_write_lock(), transaction.atomic():
            locked = _lock(session)
            index = chunk_index if chunk_index is not None else _next_index(locked)
            existing = _existing_chunk(locked, index)
            if existing is not None:
                if existing.sha256 != staged.sha256:
                    raise RecorderError(
                        code="chunk_conflict",
                        detail=f"Chunk {index} was already received with different bytes.",
                        status=409,
                    )
                return ChunkReceipt(existing, False, locked, locked.received_chunks, locked.received_bytes)
            _check_chunk_accepted(locked, index, staged)
            container = _sniff_if_first(locked, index, staged)
            with chunks.storage_errors():
                chunks.store_chunk(staged, chunk_storage_name(locked.id, index))
            chunk = Chunk.objects.create(
                session=locked,
                index=index,
                size=staged.size,
                sha256=staged.sha256,
                starts_stream=chunks.sniff_container(staged.head) in streams.STREAM_CONTAINERS,
            )
            _count_chunk(locked, chunk, container)
            if locked.status == Status.FINALIZING and locked.expected_chunks is None:
                _wait_longer(locked)
            elif locked.status == Status.FINALIZING:
                if index in (0, 1):
                    _reconsider_first_index(locked)
                _start_processing_if_complete(locked)
        return ChunkReceipt(chunk, True, locked, locked.received_chunks, locked.received_bytes)
    finally:
        staged.discard()


def _lock(session: RecordingSession) -> RecordingSession:
    """The recording, row-locked until the transaction ends; 404 if it was deleted meanwhile."""
    locked = RecordingSession.objects.select_for_update().filter(pk=session.pk).first()
    if locked is None or locked.status in GONE_STATUSES:
        raise session_not_found(session.pk)
    return locked


def _existing_chunk(session: RecordingSession, index: int) -> Chunk | None:
    """The stored chunk at `index`; no query for the usual case, a chunk past the highest index."""
    if session.highest_chunk_index is None or index > session.highest_chunk_index:
        return None
    return Chunk.objects.filter(session=session, index=index).first()


def _next_index(session: RecordingSession) -> int:
    return 0 if session.highest_chunk_index is None else session.highest_chunk_index + 1


def _count_chunk(session: RecordingSession, chunk: Chunk, container: str | None) -> None:
    """Add a newly stored chunk to the recording's running totals (the caller holds the row lock)."""
    session.received_chunks += 1
    session.received_bytes += chunk.size
    session.highest_chunk_index = max(
        chunk.index, -1 if session.highest_chunk_index is None else session.highest_chunk_index
    )
    session.last_chunk_at = chunk.received_at
    session.container = container or session.container
    changed = ["received_chunks", "received_bytes", "highest_chunk_index", "last_chunk_at", "container"]
    if live.wants_advance(session, chunk.received_at):
        session.live_requested_at = chunk.received_at
        changed.append("live_requested_at")
        tasks.enqueue_live_advance(str(session.id))
    session.save(update_fields=changed)


def _check_chunk_accepted(session: RecordingSession, index: int, staged: chunks.StagedChunk) -> None:
    if session.is_closed:
        raise RecorderError(
            code="recording_closed",
            detail=f"Recording {session.id} is {session.status}; it takes no more chunks.",
            status=409,
        )
    if index >= MAX_CHUNKS:
        raise RecorderError(
            code="chunk_index_out_of_range",
            detail=f"A recording holds at most {MAX_CHUNKS} chunks; index {index} is past that.",
            status=409,
        )
    counted_from_one_to_the_end = (
        session.first_chunk_index == 1
        and session.total_chunks_given is not None
        and (session.highest_chunk_index or 0) >= session.total_chunks_given
    )
    if index == 0 and counted_from_one_to_the_end:
        raise RecorderError(
            code="chunk_index_out_of_range",
            detail=f"This recording counts its chunks from 1 and its chunk {session.highest_chunk_index} is stored; "
            "a chunk 0 cannot be part of it.",
            status=409,
        )
    if (
        session.expected_chunks is not None
        and index >= session.expected_chunks
        and not _may_count_from_one(session, index)
    ):
        raise RecorderError(
            code="chunk_index_out_of_range",
            detail=f"The recording was finalized with {session.expected_chunks} chunks; index {index} is past its end.",
            status=409,
        )
    if session.received_bytes + staged.size > settings.RECORDER_MAX_RECORDING_BYTES:
        raise RecorderError(
            code="recording_too_large",
            detail=f"A recording may hold at most {settings.RECORDER_MAX_RECORDING_BYTES} bytes "
            "(RECORDER_MAX_RECORDING_BYTES).",
            status=413,
        )


def _sniff_if_first(session: RecordingSession, index: int, staged: chunks.StagedChunk) -> str | None:
    """Check the container header when this chunk is, for certain, the first non-empty one.

    Chunks arrive out of order, so a chunk is only judged once every lower index is stored
    (and empty); otherwise the header check is left to processing.
    """
    if staged.size == 0 or session.container:  # the header was already seen and checked
        return None
    if index > 0:
        lower = Chunk.objects.filter(session=session, index__lt=index).aggregate(
            count=Count("id"), non_empty=Count("id", filter=Q(size__gt=0))
        )
        if lower["non_empty"] or lower["count"] < index:
            return None
    container = chunks.sniff_container(staged.head)
    if container is None:
        raise RecorderError(
            code="unsupported_media",
            detail="The first chunk must start with a WebM/Matroska (EBML) or MP4 (ftyp) header; "
            f"it starts with {staged.head[:16]!r}.",
        )
    return container


# --- Finalize -------------------------------------------------------------------------------------------------------


def finalize_recording(
    *, session: RecordingSession, total_chunks: int | None = None, last_chunk_index: int | None = None
) -> RecordingSession:
    """Fix the expected chunk count and start processing once all of them are stored.

    Without a count (no `total_chunks`, no indexed last chunk) the count is decided later, by
    `settle_finalize`, once chunks still on their way had RECORDER_FINALIZE_GRACE_SECONDS to arrive.
    Calling it again never starts a second run; it answers the current state.
    """
    count_given = total_chunks is not None or last_chunk_index is not None
    wait_seconds = settings.RECORDER_FINALIZE_GRACE_SECONDS
    if not count_given and not wait_seconds and _uploads_in_progress(session):
        wait_seconds = 0.001  # no grace, but a chunk is being received: settle once it is stored
    with database_write_lock(), transaction.atomic():
        locked = _lock(session)
        if locked.expected_chunks is None and (count_given or not wait_seconds):
            _fix_chunk_count(locked, *_chunk_range(locked, total_chunks, last_chunk_index), total_chunks)
        elif locked.expected_chunks is None:
            if locked.status == Status.RECORDING:
                now = timezone.now()
                settle_at = now + datetime.timedelta(seconds=wait_seconds)
                transition(locked, Status.FINALIZING, finalized_at=now, settle_at=settle_at)
                tasks.schedule_settle(str(locked.id), wait_seconds)
        elif total_chunks is not None and total_chunks != locked.expected_chunks - locked.first_chunk_index:
            raise RecorderError(
                code="total_chunks_conflict",
                detail=f"The recording was finalized with {locked.expected_chunks - locked.first_chunk_index} "
                f"chunks, not {total_chunks}.",
                status=409,
            )
        if locked.status == Status.FINALIZING or _may_run_again(locked):
            _start_processing_if_complete(locked)
    locked.refresh_from_db()
    return locked


def settle_finalize(session_id: str | uuid.UUID) -> float | None:
    """Decide the chunk count of a finalize that did not give one, once its wait is over; then
    process the recording if every chunk is in. Seconds to wait before calling again, or None when
    there is nothing more to do. Safe to call at any time, from any process, any number of times."""
    waiting = _waiting_for_count(RecordingSession.objects.filter(pk=session_id).first())
    if waiting is None:
        return None
    seconds_left = _seconds_left_to_wait(waiting, look_at_uploads=True)  # outside the lock: it lists a folder
    if seconds_left:
        return seconds_left
    with database_write_lock(), transaction.atomic():
        locked = _waiting_for_count(RecordingSession.objects.select_for_update().filter(pk=session_id).first())
        if locked is None:
            return None
        seconds_left = _seconds_left_to_wait(locked, look_at_uploads=False)  # a chunk may have come meanwhile
        if seconds_left:
            return seconds_left
        if locked.highest_chunk_index is None:
            waited = (timezone.now() - (locked.finalized_at or timezone.now())).total_seconds()
            transition(
                locked,
                Status.FAILED,
                error_code="no_chunks",
                error_detail=f"The recording was finalized, but no chunk arrived in the {waited:.1f} s after it.",
                settle_at=None,
            )
            return None
        _fix_chunk_count(locked, *_chunk_range(locked, None, None), None)
        _start_processing_if_complete(locked)
    return None


def settle_overdue_finalizes() -> list[uuid.UUID]:
    """Settle the finalizes whose wait is over but nobody settled (the process that would have
    was killed): for the recovery sweep and `recover_stale_recordings`."""
    overdue = RecordingSession.objects.filter(
        status=Status.FINALIZING,
        expected_chunks__isnull=True,
        settle_at__lt=timezone.now() - datetime.timedelta(seconds=1),
    ).values_list("id", flat=True)
    settled = []
    for session_id in overdue:
        if settle_finalize(session_id) is None:
            settled.append(session_id)
    return settled


# While a chunk is being received, a waiting finalize looks again this often.
_IN_PROGRESS_POLL_SECONDS = 0.25


def _waiting_for_count(session: RecordingSession | None) -> RecordingSession | None:
    """`session` if it is a finalize still waiting to decide its chunk count."""
    if session is None or session.status != Status.FINALIZING or session.expected_chunks is not None:
        return None
    return session


def _seconds_left_to_wait(session: RecordingSession, *, look_at_uploads: bool) -> float:
    now = timezone.now()
    longest_wait_over = now >= (session.finalized_at or now) + datetime.timedelta(
        seconds=settings.RECORDER_FINALIZE_MAX_WAIT_SECONDS
    )
    if longest_wait_over:
        return 0.0
    if session.settle_at is not None and now < session.settle_at:
        return (session.settle_at - now).total_seconds()
    return _IN_PROGRESS_POLL_SECONDS if look_at_uploads and _uploads_in_progress(session) else 0.0


def _uploads_in_progress(session: RecordingSession) -> int:
    return inflight.count(
        session.id, settings.RECORDER_TEMP_DIR, max_age_seconds=settings.RECORDER_FINALIZE_MAX_WAIT_SECONDS
    )


def _wait_longer(session: RecordingSession) -> None:
    """A chunk arrived while a finalize waits for the count: more may be on their way."""
    settle_at = timezone.now() + datetime.timedelta(seconds=settings.RECORDER_FINALIZE_GRACE_SECONDS)
    if session.settle_at is None or settle_at > session.settle_at:
        session.settle_at = settle_at
        session.save(update_fields=["settle_at"])


def _fix_chunk_count(session: RecordingSession, first_index: int, end_index: int, total_chunks: int | None) -> None:
    fields: dict[str, Any] = {
        "expected_chunks": end_index,
        "first_chunk_index": first_index,
        "total_chunks_given": total_chunks,
        "settle_at": None,
    }
    if session.status == Status.RECORDING:
        transition(session, Status.FINALIZING, finalized_at=timezone.now(), **fields)
        return
    for name, value in fields.items():
        setattr(session, name, value)
    session.save(update_fields=list(fields))


def _may_run_again(session: RecordingSession) -> bool:
    """A failed recording that a finalize may process again: the failure could pass on another run,
    and it has not been run RECORDER_PROCESSING_MAX_ATTEMPTS times already."""
    return (
        session.status == Status.FAILED
        and session.error_code in RETRYABLE_ERROR_CODES
        and session.processing_runs_total < settings.RECORDER_PROCESSING_MAX_ATTEMPTS
    )


def _chunk_range(session: RecordingSession, total_chunks: int | None, last_chunk_index: int | None) -> tuple[int, int]:
    """The first chunk index and one past the last: from the count given, or the highest index stored."""
    first = 1 if _counts_from_one(session) else 0
    highest = session.highest_chunk_index
    if total_chunks is not None and first == 0 and highest == total_chunks and not _has_chunk_zero(session):
        first = 1  # the only reading under which chunk `total_chunks` belongs: chunk 1 is still on its way
    if total_chunks is not None:
        end = first + total_chunks
    elif last_chunk_index is not None:
        end = last_chunk_index + 1
    else:
        end = 0 if highest is None else highest + 1
    if end <= first:
        raise RecorderError(code="no_chunks", detail="A recording needs at least one chunk before it is finalized.")
    if highest is not None and highest >= end:
        raise RecorderError(
            code="total_chunks_too_small",
            detail=f"total_chunks is {end - first}, but chunk {highest} was already received.",
        )
    return first, end


def _reconsider_first_index(session: RecordingSession) -> None:
    """Chunk 0 or 1 arrived after the count was fixed (uploads not awaited): it may show that the
    client counts from 1 after all, or from 0. With a total_chunks, the last index moves with it."""
    first = 1 if _counts_from_one(session) else 0
    if first == session.first_chunk_index:
        return
    session.first_chunk_index = first
    if session.total_chunks_given is not None:
        session.expected_chunks = first + session.total_chunks_given
    session.save(update_fields=["first_chunk_index", "expected_chunks"])


def _has_chunk_zero(session: RecordingSession) -> bool:
    return Chunk.objects.filter(session=session, index=0).exists()


def _may_count_from_one(session: RecordingSession, index: int) -> bool:
    """Chunk `total_chunks` of a client that may count from 1, before its chunk 1 (with the header)
    has arrived: taken, since refusing it would lose it for good once chunk 1 shows how it counts."""
    return (
        session.total_chunks_given is not None
        and session.first_chunk_index == 0
        and index == session.expected_chunks
        and not Chunk.objects.filter(session=session, index__in=(0, 1)).exists()
    )


def _counts_from_one(session: RecordingSession) -> bool:
    """A client that numbers its chunks from 1: no chunk 0, and chunk 1 starts with a WebM,
    Matroska or MP4 header (a recording's first bytes; not Ogg, whose every page starts alike).
    Otherwise its recording would wait for ever for chunk 0."""
    lowest = Chunk.objects.filter(session=session).order_by("index").values_list("index", "starts_stream").first()
    return lowest == (1, True)


def _start_processing_if_complete(session: RecordingSession) -> None:
    # Every stored index is in [first_chunk_index, expected_chunks) (finalize and the chunk checks
    # see to it), so the running count says whether the set is complete.
    if session.expected_chunks is None:
        return
    if session.received_chunks != session.expected_chunks - session.first_chunk_index:
        return
    transition(session, Status.PROCESSING, **_processing_request())
    enqueue_processing(str(session.id))


def _processing_request() -> dict:
    """What a move to `processing` resets: a fresh request with no run and no error yet."""
    return {
        "error_code": "",
        "error_detail": "",
        "processing_requested_at": timezone.now(),
        "processing_heartbeat_at": None,
        "processing_attempts": 0,
    }


def recover_stale_recordings() -> list[uuid.UUID]:
    """Queue again every recording whose processing run died (or, with an in-process backend, never
    ran); those out of attempts become `failed`. Finalizes whose wait ended unsettled are settled.
    Safe to run from cron at any time."""
    settle_overdue_finalizes()
    return tasks.recover_stale_recordings()


def reprocess_recording(*, session_id: str) -> RecordingSession:
    """Run the full pipeline again (e.g. `manage.py process_recording`): for failed or ready recordings."""
    with transaction.atomic():
        locked = _lock(get_session(session_id=session_id))
        if locked.chunks_deleted_at is not None:
            raise RecorderError(
                code="chunks_deleted",
                detail=f"Recording {locked.id}'s chunks were deleted after processing (RECORDER_KEEP_CHUNKS is off); "
                "it cannot be processed again.",
                status=409,
            )
        if locked.status != Status.PROCESSING:
            transition(locked, Status.PROCESSING, **_processing_request())
    # a direct, synchronous run of the full pipeline (the reference), whatever the backend
    processed = runs.process_recording(locked.id, use_live_build=False)
    if processed is None:
        raise session_not_found(session_id)
    tasks.enqueue_after_ready(processed)  # captions and rendition in the background, as after any run
    return processed


# --- Lifecycle: delete, expire ---------------------------------------------------------------------------


def delete_recording(*, session: RecordingSession) -> None:
    """Delete a recording and every file it has. From the moment this returns, its id answers 404
    to every reader and writer; the files go right after (or, if the storage fails meanwhile, at
    the next `expire_recordings`)."""
    with database_write_lock(), transaction.atomic():
        locked = _lock(session)
        if locked.status == Status.PROCESSING:
            raise RecorderError(
                code="recording_busy",
                detail=f"Recording {locked.id} is being processed; delete it once it is ready or failed.",
                status=409,
            )
        # The status first, files second: a reader that sees the old status still finds every file.
        transition(locked, Status.DELETING)
    logger.info("recording %s deleted by its owner", session.id)
    _delete_files_and_row(locked)


def _delete_files_and_row(session: RecordingSession) -> bool:
    """Finish a deletion: every file, then the row. False (and logged) when the storage failed."""
    try:
        files.delete_all_files(session)
    except Exception:  # the DELETE is already accepted: whatever failed, the next expiry run tries again
        logger.exception("recording %s: its files could not be deleted yet; expire_recordings retries", session.id)
        return False
    RecordingSession.objects.filter(pk=session.pk, status=Status.DELETING).delete()
    return True


@dataclass(frozen=True)
class ExpiryReport:
    abandoned: list[uuid.UUID]
    past_retention: list[uuid.UUID]
    temp_entries_removed: int


def expire_recordings(*, now: datetime.datetime | None = None) -> ExpiryReport:
    """Expire uploads idle for RECORDER_SESSION_TTL, and finished recordings past
    RECORDER_RETENTION_DAYS; their files are deleted, their ids answer 410. Temporary files that
    killed processes left behind go too. Idempotent."""
    now = now or timezone.now()
    idle_since = now - datetime.timedelta(seconds=settings.RECORDER_SESSION_TTL)
    abandoned = Q(status__in=[Status.RECORDING, Status.FINALIZING]) & (
        Q(last_chunk_at__lt=idle_since) | Q(last_chunk_at__isnull=True, created_at__lt=idle_since)
    )
    for session in RecordingSession.objects.filter(status=Status.DELETING):
        _delete_files_and_row(session)  # deletions a crash or a storage outage left unfinished
    expired_idle = _expire_each(abandoned, now, reason="idle upload")
    expired_old = []
    if settings.RECORDER_RETENTION_DAYS:
        finished_before = now - datetime.timedelta(days=settings.RECORDER_RETENTION_DAYS)
        past_retention = Q(status__in=[Status.READY, Status.FAILED]) & (
            Q(ready_at__lt=finished_before)
            | Q(ready_at__isnull=True, finalized_at__lt=finished_before)
            | Q(ready_at__isnull=True, finalized_at__isnull=True, created_at__lt=finished_before)
        )
        expired_old = _expire_each(past_retention, now, reason="past retention")
    temp_entries_removed = chunks.remove_stale_temp_entries(
        settings.RECORDER_TEMP_DIR, older_than_seconds=settings.RECORDER_TEMP_MAX_AGE, now=now.timestamp()
    )
    return ExpiryReport(abandoned=expired_idle, past_retention=expired_old, temp_entries_removed=temp_entries_removed)


def _expire_each(condition: Q, now: datetime.datetime, *, reason: str) -> list[uuid.UUID]:
    expired = []
    for session_id in RecordingSession.objects.filter(condition).values_list("id", flat=True):
        with database_write_lock(), transaction.atomic():
            # checked again under the lock: a chunk may have arrived since the query
            locked = RecordingSession.objects.select_for_update().filter(condition, pk=session_id).first()
            if locked is None:
                continue
            with chunks.storage_errors():
                files.delete_all_files(locked)
            transition(
                locked,
                Status.EXPIRED,
                expired_at=now,
                chunks_deleted_at=locked.chunks_deleted_at or now,
                video_name="",
                audio_name="",
                thumbnail_name="",
                captions_name="",
                transcript_name="",
            )
        logger.info("recording %s expired (%s)", session_id, reason)
        expired.append(session_id)
    return expired


# --- Media ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaFile:
    storage_name: str
    size: int
    content_type: str
    etag: str
    last_modified: int
    download_name: str


MEDIA_KINDS = ("video", "audio", "thumbnail")
# Made after the recording is ready (recordings/transcription.py), on their own clock.
TEXT_KINDS = {"captions": "text/vtt; charset=utf-8", "transcript": "application/json"}
# Made after the recording is ready too (recordings/renditions.py); served like the video.
RENDITION_KINDS = (renditions.MP4,)


def media_file(*, session_id: str, kind: str) -> MediaFile:
    """Where a ready recording's video, audio, thumbnail, captions, transcript or MP4 rendition is
    stored, with what to serve it as. `session_id` may be the view id; nothing served names the
    session id."""
    if kind not in MEDIA_KINDS and kind not in TEXT_KINDS and kind not in RENDITION_KINDS:
        raise RecorderError(
            code="not_found",
            detail=f"A recording has no {kind!s:.32}; use video, audio, thumbnail, captions, transcript or mp4.",
            status=404,
        )
    session = get_readable(recording_id=session_id).session
    if session.status != Status.READY:
        raise RecorderError(
            code="media_not_ready",
            detail=f"Recording {session_id!s:.64} is {session.status}; its files are served once it is ready.",
            status=404,
        )
    if kind in RENDITION_KINDS:
        return _rendition_file(session, kind)
    if kind in TEXT_KINDS and session.captions_status != CaptionsStatus.READY:
        raise RecorderError(
            code="captions_not_ready",
            detail=f"The captions of recording {session_id!s:.64} are {session.captions_status or 'unavailable'}.",
            status=404,
        )
    storage_name = getattr(session, f"{kind}_name")
    if not storage_name:
        raise RecorderError(code=f"no_{kind}", detail=f"Recording {session_id!s:.64} has no {kind}.", status=404)
    size = getattr(session, f"{kind}_bytes")
    if kind in TEXT_KINDS:
        content_type = TEXT_KINDS[kind]
        made_at = session.captions_ready_at or session.ready_at or session.created_at
    else:
        content_type = "image/jpeg" if kind == "thumbnail" else getattr(session, f"{kind}_content_type")
        made_at = session.ready_at or session.created_at
    return _media_file(session, kind, storage_name=storage_name, size=size, content_type=content_type, made_at=made_at)


def video_files(session: RecordingSession) -> list[renditions.Listed]:
    """A ready recording's video files in the order a player should try them (recordings/renditions.py)."""
    return renditions.listed(session)


def _rendition_file(session: RecordingSession, kind: str) -> MediaFile:
    rendition = renditions.served_rendition(session, kind)
    if rendition is None:
        status = session.renditions.filter(name=kind).values_list("status", flat=True).first()
        raise RecorderError(
            code="rendition_not_ready",
            detail=f"The {kind} rendition of recording {session.view_id} is {status or 'not made'}"
            + (" (its own video plays everywhere)." if status == "none" else "."),
            status=404,
        )
    return _media_file(
        session,
        kind,
        storage_name=rendition.storage_name,
        size=rendition.size or 0,
        content_type=rendition.content_type,
        made_at=rendition.finished_at or session.ready_at or session.created_at,
    )


def _media_file(
    session: RecordingSession, kind: str, *, storage_name: str, size: int, content_type: str, made_at
) -> MediaFile:
    extension = storage_name.rsplit(".", 1)[-1]
    made_timestamp = made_at.timestamp()
    return MediaFile(
        storage_name=storage_name,
        size=size,
        content_type=content_type,
        etag=f'"{session.view_id.hex[:12]}-{int(made_timestamp * 1000):x}-{size:x}"',
        last_modified=int(made_timestamp),
        download_name=f"{slugify(session.title) or f'recording-{session.view_id}'}-{kind}.{extension}",
    )
