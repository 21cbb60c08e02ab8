"""The live build: a WebM recording's seekable video (Matroska for H.264), made while its chunks arrive.

Each stored chunk asks for the build to advance (services, under the recording's row lock, at most
one pending request per recording); a background task reads the chunks stored in a row from where
the build stands and appends them (recordings/live_webm.py). At Stop the processing run finishes
the build instead of joining and remuxing the whole recording (H.264's build is then copied into
MP4, as the full pipeline serves it: a stream copy, recordings/processing.py). Where the build
stands is in the database (LiveBuild) and its files in RECORDER_LIVE_DIR, so any process can go
on with it; one at a time, under a lease. Anything the live path does not handle, or any doubt (a file shorter than its
state, another first chunk), and the processing run takes the full pipeline, the reference.
"""

import copy
import datetime
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from . import costs, files, live_audio, live_webm, utils
from .locks import database_write_lock
from .models import Chunk, LiveBuild, RecordingSession, Status, chunk_storage_name

logger = logging.getLogger("recordings.live")

# A process that died while advancing a build holds it this long at most.
LEASE_SECONDS = 30
# A request whose task never ran (its process was killed) is asked again by the next chunk after
# this, beyond the delay it waits anyway. A second task for a build that is advancing costs a
# conditional UPDATE that matches nothing and a read: it finds the lease held.
REQUEST_STALE_SECONDS = 10
_LEASE_POLL_SECONDS = 0.01
# Chunks one step of an advance reads at most: a build far behind (chunk 1 came last) catches up
# in steps, renewing its lease between them.
CHUNKS_PER_STEP = 500


@dataclass(frozen=True)
class _BuildFiles:
    """A build's files: the growing WebM (Matroska for H.264), its Cluster and cue index, the MP3 so far."""

    video: Path
    index: Path
    audio: Path

    @classmethod
    def of(cls, session: RecordingSession) -> "_BuildFiles":
        directory = files.live_build_dir(session)
        return cls(directory / "video.webm", directory / "index.bin", directory / "audio.mp3")


@dataclass(frozen=True)
class LiveOutputs:
    """What a finished build gives the processing run: the video, and the MP3 when it has audio."""

    video_path: Path
    container: str  # the video's DocType: "webm", or "matroska" (H.264, served as MP4)
    video_bytes: int
    duration_seconds: float
    audio_path: Path | None
    audio_decode_errors: int


def wants_advance(session: RecordingSession, now: datetime.datetime) -> bool:
    """Whether a chunk just stored should ask for the build to advance (the caller holds the row
    lock and saves `live_requested_at`): no request is pending, or the pending one is stale."""
    if not settings.RECORDER_LIVE_BUILD or session.status != Status.RECORDING or session.live_abandoned:
        return False
    requested_at = session.live_requested_at
    stale_after = REQUEST_STALE_SECONDS + 2 * settings.RECORDER_LIVE_BUILD_DELAY_SECONDS
    return requested_at is None or requested_at < now - datetime.timedelta(seconds=stale_after)


def advance_while_requested(session_id: uuid.UUID | str, *, schedule_again: Callable[[str, float], None]) -> None:
    """Advance the build, then clear the request unless a chunk came meanwhile (the background task).

    A chunk stored while the build advances finds the request still set and asks for nothing; the
    received-chunk count, compared in the statement that clears the request, says so: the advance
    goes round again at once without RECORDER_LIVE_BUILD_DELAY_SECONDS, else `schedule_again`
    queues the next, after the delay, or at once (behind the queue's other tasks) when this advance
    took longer than the delay: a build catching up has no chunks to wait for.
    """
    while True:
        session = RecordingSession.objects.filter(pk=session_id).first()
        if session is None:
            return
        seen_chunks = session.received_chunks
        began = time.monotonic()
        if session.status == Status.RECORDING:
            advance(session)
        # one statement: the count is compared where it is written, no row lock needed
        nothing_new = Q(received_chunks=seen_chunks) | ~Q(status=Status.RECORDING) | Q(live_abandoned=True)
        with database_write_lock():
            if RecordingSession.objects.filter(nothing_new, pk=session_id).update(live_requested_at=None):
                return
        delay_seconds = settings.RECORDER_LIVE_BUILD_DELAY_SECONDS
        if delay_seconds:
            with database_write_lock():
                RecordingSession.objects.filter(pk=session_id).update(live_requested_at=timezone.now())
            # the request stays set for the chunks meanwhile
            schedule_again(str(session_id), 0 if time.monotonic() - began >= delay_seconds else delay_seconds)
            return


def advance(session: RecordingSession) -> None:
    """Append the chunks stored in a row after the build's position; never raises (the processing
    run finishes, or replaces, whatever is left)."""
    if not _has_work(session):
        return  # nothing new to read: no lease taken, no write beside the uploads
    lease = _take_lease(session, wait=False)
    if lease is None:
        return  # another process is advancing it and will see these chunks (or the run will)
    build = None
    try:
        build = _build_for(session, lease)
        while build is not None and not build.abandoned_reason and _advance_build(session, build, lease):
            pass
    except _LeaseLost:
        logger.warning("recording %s: the live build's lease was taken over; this advance stops", session.id)
    except Exception as error:  # a bug or a storage failure: the full pipeline, once, not a traceback a chunk
        logger.exception("recording %s: the live build failed; processing takes the full pipeline", session.id)
        if build is not None:
            _abandon(session, build, lease, f"unexpected {type(error).__name__}")
    finally:
        lease.release()


def finish(session: RecordingSession) -> LiveOutputs | None:
    """For the processing run of a recording whose chunks are all in: the finished video and audio,
    or None when the full pipeline must make them. Waits for an advance in progress to end."""
    if not settings.RECORDER_LIVE_BUILD:
        return None
    lease = _take_lease(session, wait=True)
    if lease is None:
        logger.warning("recording %s: the live build stayed leased; full pipeline", session.id)
        return None
    try:
        build = _build_for(session, lease)
        if build is None or build.abandoned_reason:
            return None
        if build.first_chunk_index != session.first_chunk_index:
            build = _reset(session, build, lease, session.first_chunk_index)
        # the chunks not yet appended, then all the audio left as one last piece (one ffmpeg, not two)
        while _advance_build(session, build, lease, end_index=session.expected_chunks, encode_audio=False):
            pass
        if build.abandoned_reason:
            return None
        end_index = session.expected_chunks
        if end_index is None or build.next_chunk_index < end_index or not build.state.get("at_chunk_end", False):
            logger.warning("recording %s: the live build stops before the last chunk; full pipeline", session.id)
            return None
        state = build.state
        if state.get("audio") is not None and state.get("audio_mp3") is None:
            return None  # audio the build does not encode (not Opus, or another RECORDER_AUDIO_FORMAT)
        paths = _BuildFiles.of(session)
        if state.get("audio_mp3") is not None and state.get("audio_first_time") is not None:
            state["audio_mp3"] = _encode_audio(session, state, lease, final=True)
        with open(paths.video, "r+b") as output, open(paths.index, "rb") as index:
            finished = live_webm.finish(state, output, index)
        has_audio = state.get("audio_first_time") is not None
        return LiveOutputs(
            video_path=paths.video,
            container=live_webm.output_doc_type(state),
            video_bytes=finished.size,
            duration_seconds=finished.duration_seconds,
            audio_path=paths.audio if has_audio else None,
            audio_decode_errors=state["audio_mp3"]["decode_errors"] if has_audio else 0,
        )
    except (live_webm.NotLive, utils.MediaError, _LeaseLost) as error:
        logger.info("recording %s: the live build ends (%r); full pipeline", session.id, error)
        return None
    except Exception:
        logger.exception("recording %s: the live build could not be finished; full pipeline", session.id)
        return None
    finally:
        lease.release()


def discard(session: RecordingSession) -> None:
    """Remove the build's files and row (the recording is processed, failed, expired or deleted)."""
    shutil.rmtree(files.live_build_dir(session), ignore_errors=True)
    LiveBuild.objects.filter(session_id=session.pk).delete()


# --- Advancing ---------------------------------------------------------------------------------


def _build_for(session: RecordingSession, lease: "_Lease") -> LiveBuild | None:
    """The recording's build (the lease holder's), started once its first chunk is stored: chunk 0
    with a stream header, or chunk 1 with one when there is no chunk 0 and the finalize said the
    client counts from 1, or chunks 2 to 4 are stored already (a chunk 0 that late is unlikely; if
    it comes, the run starts the build again from it). None until then."""
    build = LiveBuild.objects.get(session_id=session.pk)
    if build.state or build.abandoned_reason:
        return build
    first_chunks = dict(
        Chunk.objects.filter(session=session, index__in=(0, 1, 2, 3, 4)).values_list("index", "starts_stream")
    )
    counts_from_one = (
        session.first_chunk_index == 1 if session.status != Status.RECORDING else {2, 3, 4} <= first_chunks.keys()
    )
    if first_chunks.get(0):
        first = 0
    elif 0 not in first_chunks and first_chunks.get(1) and counts_from_one:
        first = 1
    else:
        return None
    return _reset(session, build, lease, first)


def _fresh_state() -> dict:
    # where the build's next chunk starts in the recording's bytes, and whether it stopped at a chunk's end
    return {**live_webm.new_state(), "next_chunk_offset": 0, "at_chunk_end": True}


def _reset(session: RecordingSession, build: LiveBuild, lease: "_Lease", first_chunk_index: int) -> LiveBuild:
    paths = _BuildFiles.of(session)
    paths.video.parent.mkdir(parents=True, exist_ok=True)
    for path in (paths.video, paths.index, paths.audio):
        with open(path, "wb"):
            pass
    build.first_chunk_index = first_chunk_index
    build.next_chunk_index = first_chunk_index
    build.state = _fresh_state()
    build.abandoned_reason = ""
    lease.save(build, ["first_chunk_index", "next_chunk_index", "state", "abandoned_reason"])
    return build


def _has_work(session: RecordingSession) -> bool:
    """Whether an advance would read anything: a build not given up on, whose next chunk is stored
    and whose element being read has all its bytes (a not-yet-started build: whether it can start)."""
    build = LiveBuild.objects.filter(session_id=session.pk).first()
    if build is None or not build.state:
        return build is None or not build.abandoned_reason
    if build.abandoned_reason:
        return False
    return _worth_reading(build.state, _chunks_in_a_row(session, build, None))


def _worth_reading(state: dict, in_a_row: list[tuple[int, int]]) -> bool:
    """Chunks are there, and the element being read (if one waits) has all its bytes in them."""
    available_until = state["next_chunk_offset"] + sum(size for _, size in in_a_row)
    return bool(in_a_row) and available_until >= state.get("needed_until", 0)


def _chunks_in_a_row(session: RecordingSession, build: LiveBuild, end_index: int | None) -> list[tuple[int, int]]:
    """(index, size) of the stored chunks from the build's next one while the indices run on without
    a gap: at most CHUNKS_PER_STEP of them."""
    window_end = build.next_chunk_index + CHUNKS_PER_STEP
    rows = Chunk.objects.filter(
        session=session,
        index__gte=build.next_chunk_index,
        index__lt=window_end if end_index is None else min(window_end, end_index),
    ).order_by("index")
    in_a_row = []
    for expected_index, (index, size) in enumerate(rows.values_list("index", "size"), start=build.next_chunk_index):
        if index != expected_index:
            break
        in_a_row.append((index, size))
    return in_a_row


def _advance_build(
    session: RecordingSession,
    build: LiveBuild,
    lease: "_Lease",
    *,
    end_index: int | None = None,
    encode_audio: bool = True,
) -> bool:
    """Append the chunks from the build's next one while their indices run on without a gap, at
    most CHUNKS_PER_STEP of them; True when that many were there (call again for the rest)."""
    in_a_row = _chunks_in_a_row(session, build, end_index)
    state = build.state
    if not _worth_reading(state, in_a_row):
        return False  # nothing new, or the element being read is not wholly here yet
    paths = _BuildFiles.of(session)
    if not _files_hold(state, paths):
        logger.warning("recording %s: the live build's files do not match its state; started again", session.id)
        build = _reset(session, build, lease, build.first_chunk_index)
        return True
    live_webm.truncate_to(state, paths.video, paths.index)
    chunk_start = state["next_chunk_offset"]
    within_first = state["source_offset"] - chunk_start
    stream = live_webm.ChunkStream(_opened(session, in_a_row, within_first), state["source_offset"])
    try:
        with open(paths.video, "r+b") as output, open(paths.index, "r+b") as index:
            output.seek(state["output_size"])
            # No fsync: the build is made from the chunks, which are durable. A process killed here
            # loses nothing (the page cache stays); after a power loss, files shorter than the saved
            # state start the build again. Only the finished outputs are fsynced (before the chunks go).
            state = live_webm.advance(state, stream, output, index)
    except live_webm.NotLive as error:
        _abandon(session, build, lease, str(error))
        return False
    # The chunk the new position falls in: the build goes on from there next time.
    next_index, next_offset = build.next_chunk_index, chunk_start
    for chunk_index, size in in_a_row:
        if next_offset + size > state["source_offset"]:
            break
        next_index, next_offset = chunk_index + 1, next_offset + size
    state["next_chunk_offset"] = next_offset
    state["at_chunk_end"] = next_offset == state["source_offset"]
    if "audio_mp3" not in state and state["phase"] == "clusters":
        state["audio_mp3"] = live_audio.new_state(state) if settings.RECORDER_AUDIO_FORMAT == "mp3" else None
    if state.get("audio_mp3") is not None and encode_audio:
        try:
            state["audio_mp3"] = _encode_audio(session, state, lease, final=False)
        except (live_webm.NotLive, utils.MediaError) as error:
            _abandon(session, build, lease, f"audio: {error}")
            return False
    moved_on = next_index > build.next_chunk_index
    build.next_chunk_index = next_index
    build.state = state
    lease.save(build, ["next_chunk_index", "state"])
    return moved_on and len(in_a_row) == CHUNKS_PER_STEP


def _encode_audio(session: RecordingSession, state: dict, lease: "_Lease", *, final: bool) -> dict:
    """Encode every whole audio piece the build's video holds now (with `final`, the rest too)."""
    paths = _BuildFiles.of(session)
    audio_state = state["audio_mp3"]
    settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    while (piece := live_audio.next_piece(state, audio_state, final=final)) is not None:
        lease.keep()
        audio_state = live_audio.encode_piece(
            piece,
            state,
            audio_state,
            video_path=paths.video,
            index_path=paths.index,
            audio_path=paths.audio,
            work_dir=settings.RECORDER_TEMP_DIR,
            limits=costs.audio_limits("mp3", state["source_offset"]),  # grows with what was uploaded
            # an encode on a busy machine may outlast the lease: the MP3 is written only by a
            # process that still holds it
            before_writing=lease.keep,
        )
        if final:
            with open(paths.audio, "rb") as audio:
                os.fsync(audio.fileno())  # the finished MP3 outlives the chunks
            break
    return audio_state


def _opened(session: RecordingSession, chunks: list[tuple[int, int]], skip_bytes: int):
    for position, (index, _) in enumerate(chunks):
        opened = default_storage.open(chunk_storage_name(session.id, index), "rb")
        if position == 0 and skip_bytes:
            opened.seek(skip_bytes)
        yield opened


def _files_hold(state: dict, paths: "_BuildFiles") -> bool:
    """The files hold at least what the state says was written (a process that died after
    writing and before saving the state may have left more: cut off before the next write)."""
    audio_bytes = (state.get("audio_mp3") or {}).get("bytes", 0)
    try:
        return (
            paths.video.stat().st_size >= state["output_size"]
            and paths.index.stat().st_size >= state["records"] * live_webm.INDEX_RECORD_BYTES
            and paths.audio.stat().st_size >= audio_bytes
        )
    except FileNotFoundError:
        return False


def _abandon(session: RecordingSession, build: LiveBuild, lease: "_Lease", reason: str) -> None:
    logger.info("recording %s: no live build (%s); processing takes the full pipeline", session.id, reason)
    build.abandoned_reason = reason[:200]
    lease.save(build, ["abandoned_reason"])
    lease.flush()  # before the files go
    with database_write_lock():
        RecordingSession.objects.filter(pk=session.pk).update(live_abandoned=True)
    shutil.rmtree(files.live_build_dir(session), ignore_errors=True)


# --- The lease ---------------------------------------------------------------------------------


class _LeaseLost(Exception):
    """Another process holds the build now (this one stalled past LEASE_SECONDS): it stops."""


class _Lease:
    """This process's hold on a recording's build: renewed while the work goes on, and every save
    of the build's state is conditional on it, so a process that lost it writes no state.

    A save is written with the next renewal or the release (one write, not two): beside the
    uploads, every write waits for SQLite's one writer. Until then the state on disk may run ahead
    of the saved one, which the next advance cuts back to (live_webm.truncate_to).
    """

    def __init__(self, session: RecordingSession, owner: str):
        self._session = session
        self._owner = owner
        self._renewed = time.monotonic()
        self._unsaved: dict = {}

    def keep(self) -> None:
        """Renew it (with the unsaved state) once a third of it has passed: it then has at least
        two thirds of LEASE_SECONDS left, so a write right after this is this process's alone."""
        if time.monotonic() - self._renewed >= LEASE_SECONDS / 3:
            self.flush()

    def save(self, build: LiveBuild, fields: list[str]) -> None:
        """Write these fields, as they are now, with the next renewal or the release."""
        values = {name: copy.deepcopy(getattr(build, name)) for name in fields}  # the state dict changes on
        self._unsaved.update(values, updated_at=timezone.now())
        self.keep()

    def flush(self) -> None:
        """Renew it and write the unsaved state now, or raise _LeaseLost."""
        self._update(lease_expires_at=timezone.now() + datetime.timedelta(seconds=LEASE_SECONDS))
        self._renewed = time.monotonic()

    def release(self) -> None:
        """Write the unsaved state and let go; a lost lease writes nothing (logged)."""
        try:
            self._update(lease_owner="", lease_expires_at=None)
        except _LeaseLost:
            logger.warning("recording %s: the live build's lease was lost; its last state is unsaved", self._session.pk)

    def _update(self, **lease_fields) -> None:
        fields, self._unsaved = {**self._unsaved, **lease_fields}, {}
        with database_write_lock():
            updated = _lease_rows(self._session).filter(lease_owner=self._owner).update(**fields)
        if not updated:
            raise _LeaseLost(self._session.pk)


def _take_lease(session: RecordingSession, *, wait: bool) -> _Lease | None:
    """Hold the recording's build for this process (LEASE_SECONDS, renewed by the holder): one
    conditional UPDATE when it is free, as it nearly always is. While another holds it, waiting
    reads (no write lock) until it is free or has expired."""
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + LEASE_SECONDS + 1
    row_checked = False
    while True:
        now = timezone.now()
        with database_write_lock():
            taken = (
                _lease_rows(session)
                .filter(_free_at(now))
                .update(lease_owner=owner, lease_expires_at=now + datetime.timedelta(seconds=LEASE_SECONDS))
            )
        if taken:
            return _Lease(session, owner)
        if not row_checked:
            row_checked = True
            if _created_row(session):  # the build's first advance: its row is new, and free
                continue
        if not wait:
            return None
        while not _lease_rows(session).filter(_free_at(timezone.now())).exists():
            if time.monotonic() > deadline:
                return None
            time.sleep(_LEASE_POLL_SECONDS)


def _free_at(now: datetime.datetime) -> Q:
    return Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)


def _created_row(session: RecordingSession) -> bool:
    """Create the build's row, not started (empty state) until its first chunk is there; False
    when it exists already."""
    if _lease_rows(session).exists():
        return False
    try:
        with database_write_lock(), transaction.atomic():
            LiveBuild.objects.create(session_id=session.pk, first_chunk_index=0, next_chunk_index=0, state={})
    except IntegrityError:
        pass  # another process created it meanwhile: it may hold it too; the UPDATE tells
    return True


def _lease_rows(session: RecordingSession):
    return LiveBuild.objects.filter(session_id=session.pk)
