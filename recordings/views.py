"""The HTTP API: parse input, call one service, render output. No ORM, files or ffmpeg here."""

from dataclasses import dataclass

from django.urls import reverse
from rest_framework import status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import schema, services
from .errors import RecorderError
from .models import CaptionsStatus, RecordingSession, Status
from .parsers import BoundedJSONParser, IgnoredBodyParser, JsonChunkParser, RawChunkParser
from .responses import deliver_stored_file, serve_stored_file
from .serializers import (
    ChunkReceiptOutput,
    ChunkUploadInput,
    FinalizeInput,
    RecordingOutput,
    RecordingViewOutput,
    StartRecordingInput,
    StartRecordingOutput,
)
from .uploads import ChunkUpload, read_chunk_upload, read_upload_token, refuse_chunked_body, require_chunk

UPLOAD_PARSERS = [MultiPartParser, FormParser, JsonChunkParser, RawChunkParser]


def _absolute(request: Request, url_name: str, **kwargs) -> str:
    return request.build_absolute_uri(reverse(url_name, kwargs=kwargs or None))


@dataclass(frozen=True)
class RecordingReadout:
    """What RecordingOutput shows: the recording, its chunk progress and its absolute URLs."""

    session: RecordingSession
    progress: services.ChunkProgress
    links: dict[str, str | None]
    renditions: list[dict]  # {"item": renditions.Listed, "url": its absolute URL or None}

    @property
    def captions_status(self) -> str:
        return self.session.captions_status or CaptionsStatus.UNAVAILABLE  # recordings from before captions

    @property
    def error(self) -> dict | None:
        return (
            {"code": self.session.error_code, "detail": self.session.error_detail} if self.session.error_code else None
        )


def _readout(request: Request, session: RecordingSession) -> RecordingReadout:
    """Every URL in it uses the view id, never the session id (a write secret in `session` mode)."""
    is_ready = session.status == Status.READY

    def media_url(kind: str) -> str | None:
        if not (is_ready and getattr(session, f"{kind}_name")):
            return None
        return _absolute(request, "recording-media", session_id=session.view_id, kind=kind)

    def text_url(kind: str) -> str | None:
        if not (is_ready and session.captions_status == CaptionsStatus.READY and getattr(session, f"{kind}_name")):
            return None
        return _absolute(request, "recording-media", session_id=session.view_id, kind=kind)

    links = {
        "watch_url": _absolute(request, "watch", session_id=session.view_id),
        **{f"{kind}_url": media_url(kind) for kind in services.MEDIA_KINDS},
        **{f"{kind}_url": text_url(kind) for kind in services.TEXT_KINDS},
    }
    listed = [
        {
            "item": item,
            "url": _absolute(request, "recording-media", session_id=session.view_id, kind=item.media_kind)
            if item.is_served
            else None,
        }
        for item in services.video_files(session)
    ]
    return RecordingReadout(session=session, progress=services.chunk_progress(session), links=links, renditions=listed)


def _recording_response(request: Request, session: RecordingSession, **response_options) -> Response:
    return Response(RecordingOutput(_readout(request, session)).data, **response_options)


def _chunk_receipt_response(receipt: services.ChunkReceipt) -> Response:
    payload = {
        "session_id": receipt.session.id,
        "chunk_index": receipt.chunk.index,
        "size": receipt.chunk.size,
        "sha256": receipt.chunk.sha256,
        "received_chunks": receipt.received_chunks,
        "received_bytes": receipt.received_bytes,
        "status": receipt.session.status,
    }
    return Response(
        ChunkReceiptOutput(payload).data, status=status.HTTP_201_CREATED if receipt.created else status.HTTP_200_OK
    )


def _receive(session: RecordingSession, upload: ChunkUpload) -> services.ChunkReceipt:
    return services.receive_chunk(
        session=session,
        chunk_index=upload.fields["chunk_index"],
        stream=require_chunk(upload),
        checksums=[upload.fields["checksum"], upload.fields["checksum_header"]],
    )


class StartRecordingView(APIView):
    parser_classes = [BoundedJSONParser, FormParser, MultiPartParser, IgnoredBodyParser]
    throttle_scope = "start"

    @schema.start_recording
    def post(self, request: Request) -> Response:
        refuse_chunked_body(request)  # Django would read it as empty: the title and type would vanish
        body = request.data if hasattr(request.data, "get") else None
        if body is None:
            raise RecorderError(code="malformed_body", detail="The body must be a JSON object or a form.")
        given = StartRecordingInput(data={key: body.get(key) for key in ("title", "mime_type") if key in body})
        given.is_valid(raise_exception=True)
        started = services.start_recording(**given.validated_data)
        session = started.session
        payload = {
            "session_id": session.id,
            "upload_token": started.upload_token,
            "status": session.status,
            "created_at": session.created_at,
            "chunk_url": _absolute(request, "receive-video-chunk"),
            "finalize_url": _absolute(request, "finalize-recording"),
            "status_url": _absolute(request, "get-recorded-data", session_id=session.id),
            "view_id": session.view_id,
            "watch_url": _absolute(request, "watch", session_id=session.view_id),
        }
        return Response(StartRecordingOutput(payload).data, status=status.HTTP_201_CREATED)


class ReceiveChunkView(APIView):
    parser_classes = UPLOAD_PARSERS
    throttle_scope = "chunk"

    @schema.receive_chunk
    def post(self, request: Request, session_id: str | None = None) -> Response:
        with read_chunk_upload(request, ChunkUploadInput, path_session_id=session_id) as upload:
            session = services.authorize_upload(
                session_id=upload.fields["session_id"], upload_token=upload.upload_token
            )
            return _chunk_receipt_response(_receive(session, upload))


class FinalizeRecordingView(APIView):
    parser_classes = UPLOAD_PARSERS
    throttle_scope = "finalize"

    @schema.finalize_recording
    def post(self, request: Request, session_id: str | None = None) -> Response:
        with read_chunk_upload(
            request, FinalizeInput, empty_body_is_a_chunk=False, path_session_id=session_id
        ) as upload:
            session = services.authorize_upload(
                session_id=upload.fields["session_id"], upload_token=upload.upload_token
            )
            receipt = None
            if upload.stream is not None or not upload.fields["is_final"]:
                receipt = _receive(session, upload)
                if not upload.fields["is_final"]:
                    return _chunk_receipt_response(receipt)
        session = services.finalize_recording(
            session=session,
            total_chunks=upload.fields["total_chunks"],
            last_chunk_index=receipt.chunk.index if receipt else None,
        )
        finished = session.status in (Status.READY, Status.FAILED)
        return _recording_response(
            request, session, status=status.HTTP_200_OK if finished else status.HTTP_202_ACCEPTED
        )


class RecordingView(APIView):
    throttle_scope = "read"

    @schema.get_recorded_data
    def get(self, request: Request, session_id: str) -> Response:
        """By session id (its owner) or view id (a viewer: the answer holds no session id)."""
        readable = services.get_readable(recording_id=session_id)
        output = RecordingViewOutput if readable.by_view_id else RecordingOutput
        return Response(output(_readout(request, readable.session)).data)


class RecordingResourceView(APIView):
    """/api/recordings/<session_id>/: DELETE, for the recording's owner (its upload token)."""

    throttle_scope = "finalize"

    @schema.delete_recording
    def delete(self, request: Request, session_id: str) -> Response:
        upload_token = read_upload_token(request)
        session = services.authorize_upload(session_id=session_id, upload_token=upload_token, destructive=True)
        services.delete_recording(session=session)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AnyAcceptNegotiation(DefaultContentNegotiation):
    """Media URLs answer whatever a <video> element puts in Accept; errors are still JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class RecordingMediaView(APIView):
    content_negotiation_class = AnyAcceptNegotiation
    throttle_scope = "read"

    @schema.get_media
    def get(self, request: Request, session_id: str, kind: str):
        media = services.media_file(session_id=session_id, kind=kind)
        as_attachment = request.query_params.get("download", "").lower() in ("1", "true", "yes")
        if kind in services.TEXT_KINDS:
            # Small, and from this origin always: a <track> or a fetch under the page's CSP could
            # not follow a redirect to the object store without CORS there.
            return serve_stored_file(request, media, as_attachment=as_attachment)
        return deliver_stored_file(request, media, as_attachment=as_attachment)
