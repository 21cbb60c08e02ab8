"""What the HTTP API accepts (input serializers) and returns (output serializers)."""

import re

from django.core.validators import RegexValidator
from rest_framework import serializers

from .models import MAX_CHUNKS

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
        default=False,
        help_text="true/false, 1/0, yes/no, on/off. False or missing: this call is a plain chunk upload.",
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
    fields = serializers.DictField(
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


class RecordingOutput(serializers.Serializer):
    session_id = serializers.UUIDField()
    title = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=["recording", "finalizing", "processing", "ready", "failed"])
    created_at = serializers.DateTimeField()
    finalized_at = serializers.DateTimeField(allow_null=True)
    ready_at = serializers.DateTimeField(allow_null=True)
    mime_type = serializers.CharField(allow_blank=True, help_text="As the client reported it; may be empty.")
    container = serializers.CharField(allow_blank=True, help_text="`webm` or `mp4` once the first chunk is in.")
    expected_chunks = serializers.IntegerField(allow_null=True)
    received_chunks = serializers.IntegerField()
    received_bytes = serializers.IntegerField()
    received_ranges = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2),
        help_text="Inclusive index ranges of stored chunks, e.g. [[0, 41], [43, 57]].",
    )
    missing_chunks = serializers.ListField(
        child=serializers.IntegerField(),
        allow_null=True,
        help_text="Indices not yet received, once the chunk count is known (after finalize); the first 1,000.",
    )
    missing_chunks_count = serializers.IntegerField(
        allow_null=True, help_text="How many indices are not yet received, once the chunk count is known."
    )
    duration = serializers.FloatField(allow_null=True, help_text="Seconds.")
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)
    fps = serializers.FloatField(allow_null=True)
    video_codec = serializers.CharField(allow_null=True)
    audio_codec = serializers.CharField(allow_null=True)
    has_audio = serializers.BooleanField(allow_null=True)
    has_video = serializers.BooleanField(allow_null=True)
    size = serializers.IntegerField(allow_null=True, help_text="Bytes of the served video file.")
    source_sha256 = serializers.CharField(allow_null=True, help_text="SHA-256 of the joined chunks.")
    processing_seconds = serializers.FloatField(allow_null=True, help_text="Wall-clock seconds of the last run.")
    processing_steps = serializers.DictField(
        child=serializers.FloatField(), help_text="Seconds per step (join, probe, remux, audio, thumbnail, store)."
    )
    video_url = serializers.URLField(allow_null=True)
    audio_url = serializers.URLField(allow_null=True)
    thumbnail_url = serializers.URLField(allow_null=True)
    error = RecordingErrorOutput(allow_null=True)


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
