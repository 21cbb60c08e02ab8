"""What the HTTP API accepts (input serializers) and returns (output serializers)."""

import re

from django.core.validators import RegexValidator
from rest_framework import serializers

from .models import MAX_CHUNKS, CaptionsStatus, Status

_CHECKSUM = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")


class TextField(serializers.CharField):
    """Text in, text out: a JSON number or boolean is refused rather than turned into a string, and
    the no-NUL rule (DRF's, which PostgreSQL needs) is a pattern the API schema can show."""

    def __init__(self, **kwargs):
        kwargs.setdefault("validators", []).append(RegexValidator(r"^[^\x00]*$", "Null characters are not allowed."))
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            data.encode("utf-8")  # a lone surrogate ("\ud800" in JSON) is no text PostgreSQL can store
        except UnicodeEncodeError:
            self.fail("invalid")
        return super().to_internal_value(data)


class StartRecordingInput(serializers.Serializer):
    title = TextField(max_length=200, required=False, allow_blank=True, default="")
    mime_type = TextField(max_length=255, required=False, allow_blank=True, default="")


def _checksum_field(help_text: str) -> TextField:
    return TextField(required=False, allow_null=True, allow_blank=True, default=None, help_text=help_text)


class ChunkUploadInput(serializers.Serializer):
    """The scalar fields of a chunk upload, from the body (form or JSON) or the query string."""

    session_id = serializers.UUIDField(help_text="The id returned by start-recording.")
    chunk_index = serializers.IntegerField(
        min_value=0,
        max_value=MAX_CHUNKS,
        required=False,
        allow_null=True,
        default=None,
        help_text="0-based position of the chunk. Omitted: the next index after the highest received.",
    )
    checksum = _checksum_field("Optional `sha256:<hex>` of the chunk's bytes; a mismatch discards the chunk.")
    checksum_header = _checksum_field("X-Chunk-SHA256, verified the same way.")

    def validate_checksum(self, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        match = _CHECKSUM.match(value.strip())
        if match is None:
            raise serializers.ValidationError("Use `sha256:` followed by 64 hexadecimal digits.")
        return match.group(1).lower()

    validate_checksum_header = validate_checksum


class FinalizeInput(ChunkUploadInput):
    is_final = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="true/false, 1/0, yes/no, on/off. False: this call is a plain chunk upload. Missing: the same "
        "when the call carries a chunk; without one, it is a finalize (the end call of clients that send none).",
    )
    total_chunks = serializers.IntegerField(
        min_value=1,
        max_value=MAX_CHUNKS,
        required=False,
        allow_null=True,
        default=None,
        help_text="How many chunks the recording has. Default: the last chunk's index + 1.",
    )


class ErrorOutput(serializers.Serializer):
    code = serializers.CharField(help_text="Stable snake_case machine code, e.g. `chunk_conflict`.")
    detail = serializers.CharField(help_text="A sentence for a human.")
    fields = serializers.DictField(  # type: ignore[assignment]  # the error's field messages, not Serializer.fields
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Per-field messages, for `invalid_request`.",
    )


class StartRecordingOutput(serializers.Serializer):
    session_id = serializers.UUIDField()
    upload_token = serializers.CharField(help_text="Shown once. Send as `Authorization: Bearer <token>`.")
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    chunk_url = serializers.URLField()
    finalize_url = serializers.URLField()
    status_url = serializers.URLField()
    view_id = serializers.UUIDField(help_text="The read-only id to share: watch page and media URLs use it.")
    watch_url = serializers.URLField(help_text="The recording's watch page, by view id.")


class ChunkReceiptOutput(serializers.Serializer):
    session_id = serializers.UUIDField()
    chunk_index = serializers.IntegerField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    received_chunks = serializers.IntegerField()
    received_bytes = serializers.IntegerField()
    status = serializers.CharField()


class RecordingErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


class RecordingWarningOutput(serializers.Serializer):
    code = serializers.CharField(
        help_text="`timestamps_out_of_order`, `decode_errors`, `streams_joined`: stable, for machines."
    )
    detail = serializers.CharField()
    count = serializers.IntegerField(help_text="How many times the step's report said so.")


class OptionalTextField(serializers.CharField):
    """A text column that is blank until known: null in the API."""

    def to_representation(self, value):
        return super().to_representation(value) or None


# Every status a reader can see: `deleting` answers 404 instead.
READABLE_STATUSES = [status for status in Status.values if status != Status.DELETING]


class RenditionOutput(serializers.Serializer):
    name = serializers.CharField(
        source="item.name", help_text="`mp4` (H.264 + AAC-LC, made after `ready`) or `original` (the recorded video)."
    )
    status = serializers.ChoiceField(
        source="item.status",
        choices=["pending", "ready", "failed"],
        help_text="`pending` while it is made (after `ready`, which never waits for it), `ready` or `failed`.",
    )
    url = serializers.URLField(allow_null=True, help_text="Once `ready`: served with Range, ETag and ?download=1.")
    content_type = serializers.CharField(source="item.content_type", help_text="e.g. `video/mp4`.")
    codecs = OptionalTextField(
        source="item.codecs",
        allow_null=True,
        help_text="RFC 6381, e.g. `avc1.64001F, mp4a.40.2`; null when not known exactly.",
    )
    type = serializers.CharField(
        source="item.type", help_text='For a <source type="...">: the content type with its codecs parameter.'
    )
    size = serializers.IntegerField(source="item.size", allow_null=True, help_text="Bytes, once `ready`.")


class RecordingOutput(serializers.Serializer):
    """A recording as the API shows it, read from a services.RecordingReadout."""

    session_id = serializers.UUIDField(
        source="session.id", help_text="Absent when the recording is read through its view id."
    )
    view_id = serializers.UUIDField(
        source="session.view_id", help_text="The read-only id: watch page and media URLs use it."
    )
    title = serializers.CharField(source="session.title", allow_blank=True)
    status = serializers.ChoiceField(source="session.status", choices=READABLE_STATUSES)
    created_at = serializers.DateTimeField(source="session.created_at")
    finalized_at = serializers.DateTimeField(source="session.finalized_at", allow_null=True)
    ready_at = serializers.DateTimeField(source="session.ready_at", allow_null=True)
    mime_type = serializers.CharField(
        source="session.mime_type", allow_blank=True, help_text="As the client reported it; may be empty."
    )
    container = serializers.CharField(
        source="session.container", allow_blank=True, help_text="`webm` or `mp4` once the first chunk is in."
    )
    expected_chunks = serializers.IntegerField(
        source="session.expected_chunks",
        allow_null=True,
        help_text="One past the last chunk index, once known: after finalize (and its wait, when it gave no count).",
    )
    first_chunk_index = serializers.IntegerField(
        source="session.first_chunk_index", help_text="1 for clients found to count their chunks from 1."
    )
    received_chunks = serializers.IntegerField(source="progress.received_chunks")
    received_bytes = serializers.IntegerField(source="progress.received_bytes")
    received_ranges = serializers.ListField(
        source="progress.received_ranges",
        child=serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2),
        help_text="Inclusive index ranges of stored chunks, e.g. [[0, 41], [43, 57]].",
    )
    missing_chunks = serializers.ListField(
        source="progress.missing_chunks",
        child=serializers.IntegerField(),
        allow_null=True,
        help_text="Indices not yet received, once the chunk count is known (after finalize); the first 1,000.",
    )
    missing_chunks_count = serializers.IntegerField(
        source="progress.missing_chunks_count",
        allow_null=True,
        help_text="How many indices are not yet received, once the chunk count is known.",
    )
    duration = serializers.FloatField(source="session.duration_seconds", allow_null=True, help_text="Seconds.")
    width = serializers.IntegerField(source="session.width", allow_null=True)
    height = serializers.IntegerField(source="session.height", allow_null=True)
    fps = serializers.FloatField(source="session.fps", allow_null=True)
    video_codec = OptionalTextField(source="session.video_codec", allow_null=True)
    audio_codec = OptionalTextField(source="session.audio_codec", allow_null=True)
    has_audio = serializers.BooleanField(source="session.has_audio", allow_null=True)
    has_video = serializers.BooleanField(source="session.has_video", allow_null=True)
    size = serializers.IntegerField(
        source="session.video_bytes", allow_null=True, help_text="Bytes of the served video file."
    )
    source_sha256 = OptionalTextField(
        source="session.source_sha256",
        allow_null=True,
        help_text="SHA-256 of the joined chunks (the kept streams, in order). A recording built while it was "
        "uploaded (the live build) gets it right after `ready`: null for that moment.",
    )
    processing_seconds = serializers.FloatField(
        source="session.processing_seconds", allow_null=True, help_text="Wall-clock seconds of the last run."
    )
    processing_steps = serializers.DictField(
        source="session.processing_steps",
        child=serializers.FloatField(),
        help_text="Seconds per step (join, probe, remux, audio, thumbnail, store).",
    )
    warnings = RecordingWarningOutput(
        source="session.warnings",
        many=True,
        help_text="What processing noticed and played past (timestamp jumps, decode errors, joined streams); "
        "empty when the recording came through clean.",
    )
    watch_url = serializers.URLField(source="links.watch_url", help_text="The watch page, by view id.")
    video_url = serializers.URLField(source="links.video_url", allow_null=True)
    audio_url = serializers.URLField(source="links.audio_url", allow_null=True)
    thumbnail_url = serializers.URLField(source="links.thumbnail_url", allow_null=True)
    error = RecordingErrorOutput(allow_null=True)
    captions_status = serializers.ChoiceField(
        choices=CaptionsStatus.values,
        help_text="`pending` (being made: while it records, then after `ready`, which never waits for them), "
        "`ready`, `none` (none will be made: no audio, or the recording failed or expired), `failed`, "
        "`off` (RECORDER_CAPTIONS=0) or `unavailable` (the captions extra is not installed).",
    )
    captions_language = OptionalTextField(
        source="session.captions_language", allow_null=True, help_text="The spoken language, e.g. `en`."
    )
    captions_url = serializers.URLField(
        source="links.captions_url", allow_null=True, help_text="WebVTT, once `captions_status` is `ready`."
    )
    transcript_url = serializers.URLField(
        source="links.transcript_url",
        allow_null=True,
        help_text="The transcript with word timings (JSON: language, transcribed_seconds, words "
        "[{word, start, end, probability}], text), once `captions_status` is `ready`.",
    )
    renditions = RenditionOutput(
        many=True,
        help_text="Once `ready`: the files of the video, in the order a player should try them, as <source> "
        "elements: the MP4 that every browser plays (iPhones too) once it is made, then the recorded video.",
    )


class RecordingViewOutput(RecordingOutput):
    """A recording read through its view id: everything but the session id."""

    session_id = None  # type: ignore[assignment]  # DRF drops an inherited field set to None


class FinalizeOutput(RecordingOutput):
    """finalize-recording's 200: the recording, or, when `is_final` is false and the chunk was a
    retry, that chunk's receipt. OpenAPI 2 has no oneOf, so only what both carry is required."""

    chunk_index = serializers.IntegerField(required=False, help_text="Receipts only.")
    sha256 = serializers.CharField(required=False, help_text="Receipts only.")

    def get_fields(self):
        fields = super().get_fields()
        shared = set(ChunkReceiptOutput().fields) & set(RecordingOutput().fields)
        for name, field in fields.items():
            field.required = name in shared
        return fields
