"""drf-yasg descriptions of the API: request forms, the bearer token, every response with examples."""

from drf_yasg import openapi
from drf_yasg.generators import OpenAPISchemaGenerator
from drf_yasg.inspectors import SwaggerAutoSchema
from drf_yasg.utils import swagger_auto_schema

from .models import MAX_CHUNKS
from .serializers import (
    ChunkReceiptOutput,
    ErrorOutput,
    FinalizeOutput,
    RecordingOutput,
    StartRecordingInput,
    StartRecordingOutput,
)

API_INFO = openapi.Info(
    title="Recorder API",
    default_version="v1",
    description=(
        "Upload-while-you-record backend for browser MediaRecorder clients. Start a recording, post "
        "each chunk as it is made (any order, retries are safe), finalize, then poll until `ready` "
        "and fetch the seekable video, the audio and a thumbnail.\n\n"
        'Every error is JSON `{"code", "detail"}`; `code` is stable and listed per endpoint.'
    ),
    license=openapi.License(name="MIT"),
)

UPLOAD_SECURITY: list[dict[str, list[str]]] = [{"UploadToken": []}]
_CHECKSUM = "^((sha256:)?[0-9a-fA-F]{64})?$"  # what serializers.ChunkUploadInput accepts; empty means none
_BINARY = openapi.Schema(type=openapi.TYPE_STRING, format=openapi.FORMAT_BINARY)

EXAMPLE_SESSION_ID = "8d7f2b8e-4c1a-4f5e-9a57-2f0b7c1d9e21"
EXAMPLE_VIEW_ID = "5b0c7d2e-91f4-4a8b-b3c6-2e9d1f0a7c44"
_UPLOAD_FORMS = (
    "\n\nThe chunk can be sent three ways (Swagger UI shows the first):\n"
    "1. `multipart/form-data`: fields `session_id`, `chunk_index`, file field `video_chunk` "
    "(also accepted: `chunk`, `blob`, `file`, `videoChunk`, `videoDataChunk`).\n"
    '2. `application/json`: `{"session_id": ..., "chunk_index": 3, "video_chunk": "<base64>"}`; '
    "the base64 may carry a `data:video/webm;base64,` prefix. Bodies are capped by "
    "`DATA_UPLOAD_MAX_MEMORY_SIZE` (16 MiB by default).\n"
    "3. A raw body (`application/octet-stream`, `video/*`, `audio/*`) with `session_id` and "
    "`chunk_index` in the query string.\n\n"
    "The upload token goes in `Authorization: Bearer <token>` (or `X-Upload-Token`, or an "
    "`upload_token` body field). An optional `checksum` field or `X-Chunk-SHA256` header "
    "(`sha256:<hex>`) is verified before the chunk is stored."
)


# Routes kept for clients that put the session id in the path (README "Compatibility"): the same
# operations as their canonical routes, so they are described there, not listed twice.
COMPATIBILITY_PATHS = frozenset({"/api/receive-video-chunk/{session_id}/", "/api/finalize-recording/{session_id}/"})


class CanonicalPathsGenerator(OpenAPISchemaGenerator):
    """Every route also answers without its trailing slash; the schema lists the slashed one only."""

    def get_endpoints(self, request):
        endpoints = super().get_endpoints(request)
        return {
            path: endpoint
            for path, endpoint in endpoints.items()
            if path.endswith("/") and path not in COMPATIBILITY_PATHS
        }


class OptionalBodySchema(SwaggerAutoSchema):
    """drf-yasg marks every request body required; start-recording works without one (`curl -X POST`)."""

    def make_body_parameter(self, schema):
        parameter = super().make_body_parameter(schema)
        parameter.required = False
        return parameter


class MultipartUploadSchema(SwaggerAutoSchema):
    """OpenAPI 2 allows one body form per operation: document the multipart one, which lets
    Swagger UI's "Try it out" send a file; the JSON and raw forms are described in words."""

    def get_consumes(self):
        return ["multipart/form-data"]

    def get_operation(self, operation_keys=None):
        operation = super().get_operation(operation_keys)
        operation["x-codeSamples"] = _upload_code_samples(self.path)  # ReDoc shows these per transport
        return operation


def _upload_code_samples(path: str) -> list[dict]:
    url = f"http://127.0.0.1:8000{path}"
    return [
        {
            "lang": "Shell",
            "label": "multipart",
            "source": f'curl -H "Authorization: Bearer $TOKEN" -F session_id=$SID -F chunk_index=0 '
            f"-F video_chunk=@chunk_000.webm {url}",
        },
        {
            "lang": "Shell",
            "label": "JSON + base64",
            "source": f'curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" '
            f'-d "{{\\"session_id\\": \\"$SID\\", \\"chunk_index\\": 0, '
            f'\\"video_chunk\\": \\"$(base64 -w0 chunk_000.webm)\\"}}" {url}',
        },
        {
            "lang": "Shell",
            "label": "raw body",
            "source": f'curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/octet-stream" '
            f'--data-binary @chunk_000.webm "{url}?session_id=$SID&chunk_index=0"',
        },
        {
            "lang": "JavaScript",
            "label": "browser",
            "source": "const form = new FormData();\nform.append('session_id', sessionId);\n"
            "form.append('chunk_index', String(index));\nform.append('video_chunk', event.data);\n"
            f"await fetch('{url}', {{method: 'POST', body: form, "
            "headers: {Authorization: `Bearer ${uploadToken}`}});",
        },
    ]


def _error(description: str, code: str, detail: str) -> openapi.Response:
    return openapi.Response(description, ErrorOutput, examples={"application/json": {"code": code, "detail": detail}})


def _header(name: str, description: str, **extra) -> openapi.Parameter:
    return openapi.Parameter(
        name, openapi.IN_HEADER, type=openapi.TYPE_STRING, required=False, description=description, **extra
    )


def _form(name: str, type_: str, description: str, *, required: bool = False, **extra) -> openapi.Parameter:
    return openapi.Parameter(name, openapi.IN_FORM, description=description, type=type_, required=required, **extra)


_UPLOAD_PARAMETERS = [
    _form("session_id", openapi.TYPE_STRING, "The recording's id.", required=True, format=openapi.FORMAT_UUID),
    _form(
        "chunk_index",
        openapi.TYPE_INTEGER,
        "0-based index; omit to append after the highest received.",
        minimum=0,
        maximum=MAX_CHUNKS,
    ),
    _form("checksum", openapi.TYPE_STRING, "Optional `sha256:<64 hex digits>` of the chunk.", pattern=_CHECKSUM),
    _form("upload_token", openapi.TYPE_STRING, "The upload token, for clients that cannot set headers."),
    _header("X-Chunk-SHA256", "Like the `checksum` field; when both are sent, both are verified.", pattern=_CHECKSUM),
]

_CHUNK_EXAMPLE = {
    "session_id": EXAMPLE_SESSION_ID,
    "chunk_index": 3,
    "size": 29749,
    "sha256": "5f2b6c0e3d7a4c1b9e8f7a6d5c4b3a29181716151413121110f0e0d0c0b0a090",
    "received_chunks": 4,
    "received_bytes": 112637,
    "status": "recording",
}

_RECORDING_EXAMPLE = {
    "session_id": EXAMPLE_SESSION_ID,
    "view_id": EXAMPLE_VIEW_ID,
    "title": "Demo",
    "status": "ready",
    "created_at": "2026-11-24T10:00:00Z",
    "finalized_at": "2026-11-24T10:00:09Z",
    "ready_at": "2026-11-24T10:00:10Z",
    "mime_type": "video/webm;codecs=vp8,opus",
    "container": "webm",
    "expected_chunks": 8,
    "first_chunk_index": 0,
    "received_chunks": 8,
    "received_bytes": 236128,
    "received_ranges": [[0, 7]],
    "missing_chunks": [],
    "duration": 8.1,
    "width": 640,
    "height": 360,
    "fps": 20.0,
    "video_codec": "vp8",
    "audio_codec": "opus",
    "has_audio": True,
    "has_video": True,
    "size": 236473,
    "source_sha256": "0c9d1f0e6b7a5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d",
    "processing_seconds": 0.61,
    "processing_steps": {"join": 0.002, "probe": 0.02, "remux": 0.04, "audio": 0.14, "thumbnail": 0.04, "store": 0.004},
    "warnings": [],
    "watch_url": f"http://127.0.0.1:8000/r/{EXAMPLE_VIEW_ID}/",
    "video_url": f"http://127.0.0.1:8000/api/recordings/{EXAMPLE_VIEW_ID}/video/",
    "audio_url": f"http://127.0.0.1:8000/api/recordings/{EXAMPLE_VIEW_ID}/audio/",
    "thumbnail_url": f"http://127.0.0.1:8000/api/recordings/{EXAMPLE_VIEW_ID}/thumbnail/",
    "error": None,
    "captions_status": "off",
    "captions_language": None,
    "captions_url": None,
    "transcript_url": None,
    "renditions": [
        {
            "name": "mp4",
            "status": "ready",
            "url": f"http://127.0.0.1:8000/api/recordings/{EXAMPLE_VIEW_ID}/mp4/",
            "content_type": "video/mp4",
            "codecs": "avc1.64001E, mp4a.40.2",
            "type": 'video/mp4; codecs="avc1.64001E, mp4a.40.2"',
            "size": 611204,
        },
        {
            "name": "original",
            "status": "ready",
            "url": f"http://127.0.0.1:8000/api/recordings/{EXAMPLE_VIEW_ID}/video/",
            "content_type": "video/webm",
            "codecs": "vp8, opus",
            "type": 'video/webm; codecs="vp8, opus"',
            "size": 236473,
        },
    ],
}

_AUTH_ERRORS = {
    "401": _error(
        "`token_required`: no upload token was sent.",
        "token_required",
        "Send the upload token from start-recording as `Authorization: Bearer <token>`.",
    ),
    "403": _error(
        "`token_invalid`: the token is not this recording's.",
        "token_invalid",
        "The upload token does not match this recording.",
    ),
    "404": _error("`session_not_found`.", "session_not_found", f"No recording has the id {EXAMPLE_SESSION_ID}."),
    "410": _error(
        "`recording_expired`: abandoned for RECORDER_SESSION_TTL, or past RECORDER_RETENTION_DAYS; its files are gone.",
        "recording_expired",
        f"Recording {EXAMPLE_SESSION_ID} expired on 2026-11-25 10:00 UTC; its files are gone.",
    ),
}

_SERVER_BUSY = _error(
    "`server_busy` (as many JSON bodies are being read as the process holds in memory) or `storage_unavailable`: "
    "nothing was stored; retry after `Retry-After` seconds.",
    "server_busy",
    "The server is reading as many JSON uploads as it holds in memory at once; retry shortly.",
)

_CHUNK_ERRORS = {
    "400": _error(
        "`invalid_request` (see `fields`), `chunk_missing`, `chunk_not_a_file`, `invalid_base64`, "
        "`checksum_mismatch` (the `checksum` field or the `X-Chunk-SHA256` header is not the chunk's), "
        "`unsupported_media` (the first chunk is not WebM/Matroska/MP4), "
        "`malformed_body`.",
        "unsupported_media",
        "The first chunk must start with a WebM/Matroska (EBML) or MP4 (ftyp) header; it starts with b'undefined'.",
    ),
    **_AUTH_ERRORS,
    "409": _error(
        "`chunk_conflict` (same index, different bytes), `recording_closed` (already processing, ready "
        "or failed), `chunk_index_out_of_range` (past the finalized count, or 10,000,000).",
        "chunk_conflict",
        "Chunk 3 was already received with different bytes.",
    ),
    "411": _error(
        "`length_required`: the body was sent with chunked transfer encoding; send it with a Content-Length.",
        "length_required",
        "Send the body with a Content-Length (a Blob, file or FormData body), not chunked transfer encoding.",
    ),
    "413": _error(
        "`chunk_too_large`, `recording_too_large`, `request_too_large`.",
        "chunk_too_large",
        "A chunk may hold at most 67108864 bytes (RECORDER_MAX_CHUNK_BYTES).",
    ),
    "415": _error("`unsupported_content_type`.", "unsupported_content_type", "Unsupported content type 'text/plain'."),
    "503": _SERVER_BUSY,
}

start_recording = swagger_auto_schema(
    operation_id="start_recording",
    tags=["upload"],
    operation_summary="Start a recording",
    operation_description="Creates a recording and returns its id and a secret upload token (shown once). "
    "The body is optional: JSON or form with `title` and `mime_type` (as MediaRecorder reported it).",
    request_body=StartRecordingInput,
    auto_schema=OptionalBodySchema,
    responses={
        "201": openapi.Response(
            "Created.",
            StartRecordingOutput,
            examples={
                "application/json": {
                    "session_id": EXAMPLE_SESSION_ID,
                    "upload_token": "q3W1o9...secret",
                    "status": "recording",
                    "created_at": "2026-11-24T10:00:00Z",
                    "chunk_url": "http://127.0.0.1:8000/api/receive-video-chunk/",
                    "finalize_url": "http://127.0.0.1:8000/api/finalize-recording/",
                    "status_url": f"http://127.0.0.1:8000/api/get-recorded-data/{EXAMPLE_SESSION_ID}/",
                    "view_id": EXAMPLE_VIEW_ID,
                    "watch_url": f"http://127.0.0.1:8000/r/{EXAMPLE_VIEW_ID}/",
                }
            },
        ),
        "400": _error(
            "`invalid_request` or `malformed_body`.",
            "invalid_request",
            "Some fields are missing or invalid; see `fields`.",
        ),
        "413": _error(
            "`request_too_large`: a body past DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE.",
            "request_too_large",
            "This body may hold at most 1048576 bytes (DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE).",
        ),
        "411": _CHUNK_ERRORS["411"],
        "503": _SERVER_BUSY,
    },
    security=[],
)

receive_chunk = swagger_auto_schema(
    operation_id="receive_video_chunk",
    tags=["upload"],
    operation_summary="Upload one chunk",
    operation_description="Stores one MediaRecorder chunk durably, then acknowledges it. Chunks may arrive in "
    "any order; the same index with identical bytes is an idempotent retry (200), with different "
    "bytes a conflict (409). Empty chunks are valid." + _UPLOAD_FORMS,
    auto_schema=MultipartUploadSchema,
    manual_parameters=[
        *_UPLOAD_PARAMETERS,
        _form("video_chunk", openapi.TYPE_FILE, "The chunk's bytes (the Blob from `dataavailable`).", required=True),
    ],
    responses={
        "201": openapi.Response("Stored.", ChunkReceiptOutput, examples={"application/json": _CHUNK_EXAMPLE}),
        "200": openapi.Response("Already stored with identical bytes; nothing changed.", ChunkReceiptOutput),
        **_CHUNK_ERRORS,
    },
    security=UPLOAD_SECURITY,
)

finalize_recording = swagger_auto_schema(
    operation_id="finalize_recording",
    tags=["upload"],
    operation_summary="Finalize a recording (optionally with its last chunk)",
    operation_description="With `is_final=true`, fixes the chunk count (`total_chunks`, else the last chunk's "
    "index + 1). Given neither, it answers 202 `finalizing` and waits RECORDER_FINALIZE_GRACE_SECONDS (longer "
    "while a chunk of it is being received) for chunks still on their way, then takes the highest received + 1. "
    "When every chunk is stored, processing starts in the "
    "background and the answer is 202 `processing` at once, whatever the recording's length: poll "
    "get-recorded-data (200 if it had already finished). "
    "Missing chunks: 202 with status `finalizing` and `missing_chunks`; each late chunk that completes "
    "the set starts processing. Calling it again answers the current state and never starts a "
    "second run. With `is_final` false or missing, this is exactly a chunk upload." + _UPLOAD_FORMS,
    auto_schema=MultipartUploadSchema,
    manual_parameters=[
        *_UPLOAD_PARAMETERS,
        _form("is_final", openapi.TYPE_BOOLEAN, "true/false, 1/0, yes/no, on/off."),
        _form(
            "total_chunks", openapi.TYPE_INTEGER, "How many chunks the recording has.", minimum=1, maximum=MAX_CHUNKS
        ),
        _form("video_chunk", openapi.TYPE_FILE, "Optional last chunk."),
    ],
    responses={
        "200": openapi.Response(
            "Finished (`ready` or `failed`): the recording. With `is_final` false and a chunk already "
            "stored with the same bytes: its receipt, as from receive-video-chunk.",
            FinalizeOutput,
            examples={"application/json": _RECORDING_EXAMPLE},
        ),
        "201": openapi.Response("`is_final` false: the chunk was stored.", ChunkReceiptOutput),
        "202": openapi.Response("Accepted: `finalizing` (chunks missing) or `processing`.", RecordingOutput),
        **_CHUNK_ERRORS,
        "400": _error(
            "As for chunks, plus `no_chunks` and `total_chunks_too_small`.",
            "total_chunks_too_small",
            "total_chunks is 8, but chunk 9 was already received.",
        ),
        "409": _error(
            "As for chunks, plus `total_chunks_conflict`.",
            "total_chunks_conflict",
            "The recording was finalized with 8 chunks, not 9.",
        ),
    },
    security=UPLOAD_SECURITY,
)

get_recorded_data = swagger_auto_schema(
    operation_id="get_recorded_data",
    tags=["results"],
    operation_summary="A recording's status, metadata and media URLs",
    operation_description="Poll after finalize until `status` is `ready` or `failed`. `received_ranges` tells a "
    "client which chunks the server has (to resume after a network drop). URLs are null until ready. "
    "The id is the session id or the view id; read by view id (what viewers have), the answer has no "
    "`session_id`. `warnings` lists what processing played past (e.g. `timestamps_out_of_order`).",
    responses={
        "200": openapi.Response("The recording.", RecordingOutput, examples={"application/json": _RECORDING_EXAMPLE}),
        "404": _AUTH_ERRORS["404"],
        "410": _AUTH_ERRORS["410"],
    },
    security=[],
)

delete_recording = swagger_auto_schema(
    operation_id="delete_recording",
    tags=["results"],
    operation_summary="Delete a recording and every file it has",
    operation_description="With the recording's upload token. Chunks, video, audio and thumbnail are deleted, then "
    "the recording; its id answers 404 afterwards. Refused (409 `recording_busy`) while it is processing.",
    responses={
        "204": openapi.Response("Deleted."),
        **{code: _AUTH_ERRORS[code] for code in ("401", "403", "404", "410")},
        "409": _error("`recording_busy`: it is being processed.", "recording_busy", "Recording … is being processed."),
    },
    security=UPLOAD_SECURITY,
)

get_media = swagger_auto_schema(
    operation_id="get_recording_media",
    tags=["results"],
    operation_summary="Download or stream the video, audio, thumbnail, captions, transcript or MP4 rendition",
    operation_description="`kind` is `video`, `audio`, `thumbnail`, `captions` (WebVTT, `text/vtt`), "
    "`transcript` (JSON: `language`, `transcribed_seconds`, `words` [{`word`, `start`, `end`, `probability`}], "
    "`text`), the last two once the recording's `captions_status` is `ready`, or `mp4` (H.264 + AAC-LC, which "
    "Safari and iPhones play), once its entry in `renditions` is `ready`. Supports single byte ranges (206, 416), "
    "`ETag`/`Last-Modified` with 304, `If-Range`, and `?download=1` for an attachment.",
    manual_parameters=[
        openapi.Parameter(
            "download",
            openapi.IN_QUERY,
            type=openapi.TYPE_BOOLEAN,
            required=False,
            description="1: `Content-Disposition: attachment`.",
        ),
        _header("Range", "e.g. `bytes=0-1023`, `bytes=1000-`, `bytes=-500`."),
    ],
    responses={
        "200": openapi.Response("The whole file.", schema=_BINARY),
        "206": openapi.Response("The requested byte range.", schema=_BINARY),
        "302": openapi.Response(
            "With object storage (`RECORDER_MEDIA_DELIVERY=redirect`): `Location` is a short-lived presigned "
            "URL that serves the file and its ranges."
        ),
        "304": openapi.Response("Not modified."),
        "404": _error(
            "`session_not_found`, `media_not_ready`, `captions_not_ready`, `no_audio`, `no_video`, "
            "`no_thumbnail`, `no_captions`, `no_transcript`, `rendition_not_ready`.",
            "media_not_ready",
            "Recording 8d7f... is processing; its files are served once it is ready.",
        ),
        "416": openapi.Response("Range not satisfiable."),
    },
    produces=["video/webm", "video/mp4", "audio/mpeg", "image/jpeg", "application/json"],
    security=[],
)
