"""What a recording and a chunk are, and the one function that moves a recording's status."""

import uuid

from django.db import models
from django.utils import timezone

from .errors import RecorderError


class CaptionsStatus(models.TextChoices):
    PENDING = "pending"  # being made (while it records, or after `ready`)
    READY = "ready"
    NONE = "none"  # none will be made: the recording has no audio, or it failed or expired
    FAILED = "failed"
    OFF = "off"  # RECORDER_CAPTIONS is off
    UNAVAILABLE = "unavailable"  # the captions extra is not installed (or was not, when it started)


class RecordingSession(models.Model):
    """One browser recording: its upload state while it records, its media once processed."""

    class Status(models.TextChoices):
        RECORDING = "recording"
        FINALIZING = "finalizing"
        PROCESSING = "processing"
        READY = "ready"
        FAILED = "failed"
        EXPIRED = "expired"  # abandoned, or past its retention: its files are gone, its id answers 410
        DELETING = "deleting"  # deleted by its owner: answers 404 from that moment while its files go

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # What viewers get (watch page, media URLs): read-only, so that the session id stays a write
    # secret where the session id alone may upload (RECORDER_WRITE_AUTH=session).
    view_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    title = models.CharField(max_length=200, blank=True)
    mime_type = models.CharField(max_length=255, blank=True, help_text="As the client said.")
    container = models.CharField(max_length=16, blank=True, help_text="As sniffed from the bytes.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECORDING)
    upload_token_hash = models.CharField(max_length=64)

    created_at = models.DateTimeField(default=timezone.now)
    last_chunk_at = models.DateTimeField(null=True, blank=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    # Set once the chunk files are deleted (after processing, unless RECORDER_KEEP_CHUNKS): the
    # recording can no longer be processed again.
    chunks_deleted_at = models.DateTimeField(null=True, blank=True)

    # One past the last chunk index, once known. A finalize that does not say how many chunks there
    # are leaves it unknown until `settle_at`: chunks still on their way are waited for until then.
    expected_chunks = models.PositiveIntegerField(null=True, blank=True)
    settle_at = models.DateTimeField(null=True, blank=True)
    # 1 for clients that count their chunks from 1 (no chunk 0; chunk 1 carries the container
    # header): looked at again as chunks 0 and 1 arrive, until processing starts.
    first_chunk_index = models.PositiveSmallIntegerField(default=0)
    # The finalize's total_chunks, when it gave one: with counting from 1 the last index is this, not this - 1.
    total_chunks_given = models.PositiveIntegerField(null=True, blank=True)
    # Running totals of the stored chunks, kept under the recording's row lock, so taking a chunk
    # costs the same whether it is the 1st or the 3,600th of the recording.
    received_chunks = models.PositiveIntegerField(default=0)
    received_bytes = models.BigIntegerField(default=0)
    highest_chunk_index = models.IntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)

    duration_seconds = models.FloatField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    fps = models.FloatField(null=True, blank=True)
    video_codec = models.CharField(max_length=32, blank=True)
    audio_codec = models.CharField(max_length=32, blank=True)
    has_audio = models.BooleanField(null=True, blank=True)
    has_video = models.BooleanField(null=True, blank=True)

    source_bytes = models.BigIntegerField(null=True, blank=True)
    source_sha256 = models.CharField(max_length=64, blank=True)
    video_bytes = models.BigIntegerField(null=True, blank=True)
    audio_bytes = models.BigIntegerField(null=True, blank=True)
    thumbnail_bytes = models.BigIntegerField(null=True, blank=True)
    video_name = models.CharField(max_length=255, blank=True)
    video_content_type = models.CharField(max_length=64, blank=True)
    audio_name = models.CharField(max_length=255, blank=True)
    audio_content_type = models.CharField(max_length=64, blank=True)
    thumbnail_name = models.CharField(max_length=255, blank=True)
    # A processing run beats every few seconds; a run whose beat stops (its worker was killed) is
    # stale and is run again, at most RECORDER_PROCESSING_MAX_ATTEMPTS times (docs/processing.md).
    processing_requested_at = models.DateTimeField(null=True, blank=True)
    processing_heartbeat_at = models.DateTimeField(null=True, blank=True)
    processing_attempts = models.PositiveIntegerField(default=0)
    # Every run ever started, never reset: a finalize restarts a failed recording only while this is
    # below RECORDER_PROCESSING_MAX_ATTEMPTS, so no client can make the service process it for ever.
    processing_runs_total = models.PositiveIntegerField(default=0)
    processing_seconds = models.FloatField(null=True, blank=True)
    processing_steps = models.JSONField(default=dict, blank=True, help_text="Seconds per step.")
    # Set when a chunk asked for the live build to advance (recordings/live.py), cleared when the
    # build has caught up: chunks arriving meanwhile queue no second task. An old one is stale.
    live_requested_at = models.DateTimeField(null=True, blank=True)
    # The live build gave up on this recording (what it holds is for the full pipeline): chunks
    # stop asking for it.
    live_abandoned = models.BooleanField(default=False)
    # Captions and transcript (recordings/transcription.py): made after `ready`, or while it records.
    captions_status = models.CharField(max_length=16, choices=CaptionsStatus.choices, blank=True)
    captions_language = models.CharField(max_length=16, blank=True)
    captions_name = models.CharField(max_length=255, blank=True)
    captions_bytes = models.BigIntegerField(null=True, blank=True)
    transcript_name = models.CharField(max_length=255, blank=True)
    transcript_bytes = models.BigIntegerField(null=True, blank=True)
    captions_ready_at = models.DateTimeField(null=True, blank=True)
    captions_error_code = models.CharField(max_length=64, blank=True)
    # What processing noticed but could play past (timestamp jumps, decode errors, joined streams):
    # [{"code": ..., "detail": ..., "count": ...}], from the reports of steps that ran anyway.
    warnings = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "last_chunk_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_closed(self) -> bool:
        """No new chunks once processing has started."""
        return self.status in CLOSED_STATUSES


Status = RecordingSession.Status
# The most chunks a recording holds: far past any real one (4 h at a 10 ms timeslice is 1.44 million).
MAX_CHUNKS = 10_000_000

CLOSED_STATUSES = frozenset({Status.PROCESSING, Status.READY, Status.FAILED, Status.EXPIRED, Status.DELETING})
# Statuses under which the recording is gone for every reader and writer (404): its row only
# waits for its files to be deleted.
GONE_STATUSES = frozenset({Status.DELETING})

# Statuses in which no captions are made (the transcription so far is dropped on entering them).
CAPTIONLESS_STATUSES = frozenset({Status.FAILED, Status.EXPIRED})

# recording → finalizing → processing → ready | failed. A failed or ready recording may be
# processed again (by `manage.py process_recording`, or a finalize once its chunks are complete).
# An upload abandoned for RECORDER_SESSION_TTL, or a finished one past RECORDER_RETENTION_DAYS,
# expires; nothing leaves `expired`. A DELETE moves any recording not being processed to
# `deleting`, whose row goes once its files are gone.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    Status.RECORDING: frozenset({Status.FINALIZING, Status.EXPIRED, Status.DELETING}),
    # failed: a finalize that waited for chunks (count unknown) and no chunk came at all
    Status.FINALIZING: frozenset({Status.PROCESSING, Status.FAILED, Status.EXPIRED, Status.DELETING}),
    Status.PROCESSING: frozenset({Status.READY, Status.FAILED}),
    Status.FAILED: frozenset({Status.PROCESSING, Status.EXPIRED, Status.DELETING}),
    Status.READY: frozenset({Status.PROCESSING, Status.EXPIRED, Status.DELETING}),
    Status.EXPIRED: frozenset(),
    Status.DELETING: frozenset(),
}


class IllegalTransition(RecorderError):
    def __init__(self, *, session_id: uuid.UUID, current: str, wanted: str):
        super().__init__(
            code="illegal_status_change",
            detail=f"Recording {session_id} is {current}; it cannot become {wanted}.",
            status=409,
        )


def transition(session: RecordingSession, to_status: str, *, only_if: dict | None = None, **changes) -> None:
    """Move `session` to `to_status` (with `changes` saved alongside), or raise IllegalTransition.

    The update is conditional on the status the caller saw (and on the `only_if` field values), so
    two processes racing to make the same move cannot both succeed, whatever the database's locking.
    """
    if to_status not in ALLOWED_TRANSITIONS.get(session.status, frozenset()):
        raise IllegalTransition(session_id=session.id, current=session.status, wanted=to_status)
    moved = RecordingSession.objects.filter(pk=session.pk, status=session.status, **(only_if or {})).update(
        status=to_status, **changes
    )
    if moved != 1:
        current = RecordingSession.objects.filter(pk=session.pk).values_list("status", flat=True).first()
        raise IllegalTransition(session_id=session.id, current=current or "gone", wanted=to_status)
    session.status = to_status
    for field_name, value in changes.items():
        setattr(session, field_name, value)
    if to_status in CAPTIONLESS_STATUSES:
        _end_captions(session)
    elif to_status == Status.PROCESSING and session.captions_status == CaptionsStatus.READY:
        # processed again: its captions are made again once it is ready (until then not served)
        RecordingSession.objects.filter(pk=session.pk, captions_status=CaptionsStatus.READY).update(
            captions_status=CaptionsStatus.PENDING
        )
        session.captions_status = CaptionsStatus.PENDING


def _end_captions(session: RecordingSession) -> None:
    """A recording that failed or expired gets no captions: its status says so (`none`), and the
    words transcribed while it recorded go (a transcript must not outlive the recording's files)."""
    RecordingSession.objects.filter(pk=session.pk, captions_status=CaptionsStatus.PENDING).update(
        captions_status=CaptionsStatus.NONE
    )
    if session.captions_status == CaptionsStatus.PENDING:
        session.captions_status = CaptionsStatus.NONE
    Transcription.objects.filter(session_id=session.pk).delete()


class Chunk(models.Model):
    """One MediaRecorder Blob as received; its bytes live in storage under `storage_name`."""

    session = models.ForeignKey(RecordingSession, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # It begins with a WebM, Matroska or MP4 header, as read when it arrived: a client's first chunk,
    # or a restarted recorder's. Tells a client counting from 1 without reading the chunk again.
    starts_stream = models.BooleanField(default=False)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["session", "index"]
        constraints = [models.UniqueConstraint(fields=["session", "index"], name="unique_chunk_index_per_session")]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.index}"

    @property
    def storage_name(self) -> str:
        return chunk_storage_name(self.session_id, self.index)


class LiveBuild(models.Model):
    """The video a recording's chunks have built so far, while it records (recordings/live.py):
    where the build stands (its files are in RECORDER_LIVE_DIR) and who is advancing it."""

    session = models.OneToOneField(RecordingSession, on_delete=models.CASCADE, primary_key=True, related_name="live")
    first_chunk_index = models.PositiveIntegerField()  # the chunk its stream starts with: 0, or 1
    next_chunk_index = models.PositiveIntegerField()  # the first chunk not wholly read yet
    state = models.JSONField(default=dict)  # live_webm's state: offsets, open Cluster, track times
    # Why the live path gave up (the stream holds what only the full pipeline handles); then
    # nothing advances it again and processing takes the full pipeline.
    abandoned_reason = models.CharField(max_length=200, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"live build of {self.session_id}"


def chunk_storage_name(session_id: uuid.UUID, index: int) -> str:
    """Storage names are built from a UUID and an integer only, so no input can reach a path."""
    return f"recordings/{uuid.UUID(str(session_id))}/chunks/{int(index)}"


def media_storage_name(session_id: uuid.UUID, file_name: str) -> str:
    return f"recordings/{uuid.UUID(str(session_id))}/{file_name}"


def output_storage_name(view_id: uuid.UUID, file_name: str) -> str:
    """Outputs are stored under the view id: a redirect to the storage (S3) must not show a viewer
    the session id, which may be a write secret (RECORDER_WRITE_AUTH=session)."""
    return f"outputs/{uuid.UUID(str(view_id))}/{file_name}"


class Transcription(models.Model):
    """How far a recording's transcription has come (recordings/transcription.py): the audio before
    `next_seconds` is in its segments. Each window's words and the new position commit together,
    conditional on `version`, so two processes cannot both add the same window."""

    session = models.OneToOneField(
        RecordingSession, on_delete=models.CASCADE, primary_key=True, related_name="transcription"
    )
    next_seconds = models.FloatField(default=0.0)
    version = models.PositiveIntegerField(default=0)
    language = models.CharField(max_length=16, blank=True)
    # Set when a window (or the finish) was asked for, cleared when it is done: one task at a time.
    requested_at = models.DateTimeField(null=True, blank=True)
    windows = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0.0)  # wall-clock seconds of its windows (decode and model)
    # Tasks that failed after `ready` (a storage or database outage): tried again until MAX_FAILURES.
    failures = models.PositiveSmallIntegerField(default=0)
    # Its captions were stored (its segments then go): a recording processed again starts over.
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"transcription of {self.session_id} ({self.next_seconds:.1f} s)"


class TranscriptSegment(models.Model):
    """The words one window kept: [{"word", "start", "end", "probability"}], in recording seconds."""

    transcription = models.ForeignKey(Transcription, on_delete=models.CASCADE, related_name="segments")
    start_seconds = models.FloatField()
    words = models.JSONField(default=list)

    class Meta:
        ordering = ["transcription", "start_seconds"]

    def __str__(self) -> str:
        return f"{len(self.words)} words of {self.transcription_id} from {self.start_seconds:.1f} s"


class Rendition(models.Model):
    """Another file of a ready recording's video, made in the background (recordings/renditions.py):
    the MP4 that Safari and iPhones play (H.264 + AAC-LC, `moov` first)."""

    class Status(models.TextChoices):
        PENDING = "pending"  # asked for, or being made
        READY = "ready"
        FAILED = "failed"
        NONE = "none"  # not needed: the recording's own video plays everywhere

    session = models.ForeignKey(RecordingSession, on_delete=models.CASCADE, related_name="renditions")
    name = models.CharField(max_length=16)  # "mp4", also its media kind in URLs
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    storage_name = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    content_type = models.CharField(max_length=64, blank=True)
    codecs = models.CharField(max_length=64, blank=True, help_text="RFC 6381, e.g. avc1.64001F, mp4a.40.2")
    video_copied = models.BooleanField(null=True, blank=True)  # the source's H.264, not re-encoded
    requested_at = models.DateTimeField(null=True, blank=True)
    # The run making it stamps this every few seconds (while it waits for the machine's turn too);
    # a pending one whose stamp stopped was lost with its worker and is asked for again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    run_id = models.CharField(max_length=32, blank=True)  # the run that may store it
    attempts = models.PositiveSmallIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)
    seconds = models.FloatField(null=True, blank=True)  # wall-clock time of the encode
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["session", "name"], name="unique_rendition_per_session")]

    def __str__(self) -> str:
        return f"{self.name} of {self.session_id} ({self.status})"
