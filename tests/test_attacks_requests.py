"""Hostile requests (issue 12), in process: each gets a code and a sentence, never a 500."""

import base64
import io
import json

import pytest
from django.core.management import call_command
from django.test import RequestFactory

from recordings import services
from recordings.errors import RecorderError
from recordings.models import RecordingSession, Status
from recordings.responses import serve_stored_file
from tests.conftest import load_chrome_set
from tests.recorder_client import finalize, post_chunk, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ready(api):
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    body = finalize(api, started).json()
    assert body["status"] == "ready"
    return started, body


# --- Range headers with thousands of digits --------------------------------------------------------

HUGE = "9" * 5000  # past Python's 4,300-digit int() limit


@pytest.mark.parametrize(
    ("range_header", "expected_status", "expected_range"),
    [
        (f"bytes={HUGE}-", 416, None),
        (f"bytes=0-{HUGE}", 206, "bytes 0-{last}/{size}"),
        (f"bytes=-{HUGE}", 206, "bytes 0-{last}/{size}"),
        (f"bytes={'1' * 5000}-{'2' * 5000}", 416, None),
        (f"bytes=00000000000000000000000000000000000000000000000000{'0' * 5000}5-9", 206, "bytes 5-9/{size}"),
    ],
)
def test_a_range_with_thousands_of_digits_is_answered_not_a_500(
    api, ready, range_header, expected_status, expected_range
):
    started, body = ready
    response = api.get(f"/api/recordings/{started.session_id}/video/", headers={"Range": range_header})
    assert response.status_code == expected_status  # before: 500 (ValueError from int())
    if expected_range:
        assert response["Content-Range"] == expected_range.format(last=body["size"] - 1, size=body["size"])


# --- Deeply nested JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/start-recording/", "/api/receive-video-chunk/", "/api/finalize-recording/"])
@pytest.mark.parametrize("body", ["[" * 100_000, '{"session_id": ' + "[" * 100_000, '{"title": ' + '{"a": ' * 50_000])
def test_deeply_nested_json_is_a_400_malformed_body(api, url, body):
    response = api.generic("POST", url, body, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (400, "malformed_body")  # before: 500 RecursionError


# --- A DELETE is final for every reader and writer at once ---------------------------------------------


def test_a_deleted_recording_answers_404_everywhere_from_the_moment_the_delete_is_accepted(api, ready):
    started, _ = ready
    headers = {"Authorization": f"Bearer {started.upload_token}"}
    assert api.delete(f"/api/recordings/{started.session_id}/", headers=headers).status_code == 204
    for response in (
        api.get(f"/api/get-recorded-data/{started.session_id}/"),
        api.get(f"/api/recordings/{started.session_id}/video/"),
        post_chunk(api, started, b"x", index=9),
        finalize(api, started),
        api.delete(f"/api/recordings/{started.session_id}/", headers=headers),
    ):
        assert (response.status_code, response.json()["code"]) == (404, "session_not_found")
    assert api.get(f"/r/{started.session_id}/").status_code == 404


def test_a_read_that_found_the_file_before_the_delete_gets_a_404_not_a_500(api, ready):
    started, _ = ready
    media = services.media_file(session_id=started.session_id, kind="video")  # the read looked it up...
    services.delete_recording(session=RecordingSession.objects.get(pk=started.session_id))  # ...then it went
    with pytest.raises(RecorderError) as refused:
        serve_stored_file(RequestFactory().get("/"), media, as_attachment=False)
    assert (refused.value.status, refused.value.code) == (404, "session_not_found")  # before: FileNotFoundError


def test_a_deletion_cut_short_before_its_files_went_looks_deleted_and_expire_finishes_it(api, ready, media_root):
    started, _ = ready
    # what a crash (or a storage outage) between the DELETE's commit and its file removal leaves
    RecordingSession.objects.filter(pk=started.session_id).update(status=Status.DELETING)
    assert api.get(f"/api/get-recorded-data/{started.session_id}/").status_code == 404
    assert api.get(f"/api/recordings/{started.session_id}/video/").status_code == 404
    outputs = media_root / "outputs" / str(RecordingSession.objects.get(pk=started.session_id).view_id)
    assert any(outputs.rglob("*.webm"))
    call_command("expire_recordings")
    assert not (media_root / "recordings" / started.session_id).exists()
    assert not outputs.exists()
    assert not RecordingSession.objects.filter(pk=started.session_id).exists()


class DeletesItsRecordingWhenRead(io.BytesIO):
    """A body whose recording is deleted by its owner while the body is still arriving."""

    def __init__(self, data: bytes, session: RecordingSession):
        super().__init__(data)
        self._session = session

    def read(self, size: int = -1) -> bytes:
        if self._session is not None:
            services.delete_recording(session=self._session)
            self._session = None
        return super().read(size)


def test_a_chunk_whose_recording_is_deleted_while_its_body_arrives_gets_404(api, media_root):
    started = start(api)
    session = RecordingSession.objects.get(pk=started.session_id)
    chunk = load_chrome_set("vp8_opus").chunks[0]
    with pytest.raises(RecorderError) as refused:
        services.receive_chunk(session=session, chunk_index=0, stream=DeletesItsRecordingWhenRead(chunk, session))
    assert (refused.value.status, refused.value.code) == (404, "session_not_found")  # before: DoesNotExist, a 500
    assert [path for path in media_root.rglob("*") if path.is_file()] == []  # nor a staged or stored chunk


# --- Finalize with an empty raw body --------------------------------------------------------------------


def test_finalize_with_an_empty_raw_body_and_no_index_stores_no_phantom_chunk(api):
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    response = finalize(api, started, transport="raw", total_chunks=len(recording.chunks))  # an empty body
    assert response.status_code == 200, response.json()  # before: 400 total_chunks_too_small
    assert (response.json()["status"], response.json()["received_chunks"]) == ("ready", len(recording.chunks))


def test_an_empty_raw_body_with_an_index_is_still_an_empty_last_chunk(api):
    recording = load_chrome_set("mp4_avc1_opus")  # Chrome's MP4 ends with an empty chunk
    started = start(api)
    upload_all(api, started, recording.chunks[:-1])
    response = finalize(api, started, transport="raw", chunk=b"", index=len(recording.chunks) - 1)
    assert response.status_code == 200
    assert status_of(api, started.session_id)["received_chunks"] == len(recording.chunks)


# --- JSON uploads: streamed, strict, bounded -------------------------------------------------------------


def post_json(api, started, body: str):
    return api.generic(
        "POST",
        "/api/receive-video-chunk/",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )


@pytest.fixture
def first_chunk() -> bytes:
    return load_chrome_set("vp8_opus").chunks[0]


@pytest.mark.parametrize(
    "shape",
    [
        '{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "{b64}"}}',
        '{{"video_chunk": "{b64}", "chunk_index": 0, "session_id": "{sid}"}}',  # the fields after the chunk
        '{{"session_id": "{sid}", "chunk_index": 0, "blob": "data:video/webm;codecs=vp8,opus;base64,{b64}"}}',
        '{{"session_id": "{sid}", "chunk_index": 0, "chunk": "{slashes}"}}',  # PHP-style escaped slashes
        ' \n{{ "session_id" : "{sid}" ,"chunk_index":0,"videoChunk":"{b64}" , "extra": [1, {{"a": null}}]}}\n ',
        '{{"session_\\u0069d": "{sid}", "chunk_index": 0, "video_chunk": "{b64}"}}',
    ],
)
def test_json_chunks_in_every_shape_clients_send_are_stored_byte_exact(api, media_root, first_chunk, shape):
    started = start(api)
    b64 = base64.b64encode(first_chunk).decode()
    body = shape.format(sid=started.session_id, b64=b64, slashes=b64.replace("/", "\\/"))
    response = post_json(api, started, body)
    assert response.status_code == 201, response.json()
    assert (media_root / "recordings" / started.session_id / "chunks" / "0").read_bytes() == first_chunk


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf*A=="}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf6A==GkXf"}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf6"}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf\\n6A=="}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "data:video/webm,GkXf"}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": null}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": {{"a": 1}}}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "video_chunk": "GkXf", "blob": "GkXf"}}', "malformed_body"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf', "malformed_body"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf"}} trailing', "malformed_body"),
        ('{{"session_id": "{sid}", "chunk_index": 0,, "video_chunk": "GkXf"}}', "malformed_body"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf",}}', "malformed_body"),
        ('["{sid}"]', "malformed_body"),
        ('{{"session_id": "{sid}", "pad": "' + "x" * 70_000 + '", "video_chunk": "GkXf"}}', "malformed_body"),
        ('{{"session_id": "{sid}", "chunk_index": NaN, "video_chunk": "GkXf"}}', "malformed_body"),
        ('{{"session_id": "{sid}", "a\\x": 1, "video_chunk": "GkXf"}}', "malformed_body"),  # a bad escape in a name
        (
            '{{"session_id": "{sid}", ' + "".join(f'"m{n}": 0, ' for n in range(70)) + '"video_chunk": "GkXf"}}',
            "malformed_body",
        ),
        ('{{"session_id": "{sid}", "' + "k" * 70_000 + '": 0, "video_chunk": "GkXf"}}', "malformed_body"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf\\u0041AAA"}}', "invalid_base64"),
        ('{{"session_id": "{sid}", "chunk_index": 0, "video_chunk": "GkXf\\"AAA"}}', "invalid_base64"),
    ],
)
def test_malformed_json_chunks_are_refused_with_a_code_and_leave_nothing(api, media_root, body, code):
    started = start(api)
    response = post_json(api, started, body.format(sid=started.session_id))
    assert (response.status_code, response.json()["code"]) == (400, code)
    assert [path for path in media_root.rglob("*") if path.is_file()] == []


def test_json_bodies_with_invalid_utf8_in_a_name_are_a_400_not_a_500(api):
    started = start(api)
    body = b'{"session_id": "' + started.session_id.encode() + b'", "\xff\xfe": 1, "video_chunk": "GkXf"}'
    response = post_json(api, started, body)
    assert (response.status_code, response.json()["code"]) == (400, "malformed_body")


def test_whitespace_and_escaped_slashes_across_block_boundaries_are_read_right(api, media_root, first_chunk):
    from recordings.json_chunks import READ_BYTES

    started = start(api)
    head = (
        '{"session_id": "' + started.session_id + '", "chunk_index": 0,' + " " * (3 * READ_BYTES) + '"video_chunk": "'
    )
    b64 = base64.b64encode(first_chunk).decode()
    # put the backslash of an escaped slash as the last byte of a block, its slash first in the next
    slash = b64.index("/")
    padding = (READ_BYTES - (len(head) + slash) % READ_BYTES - 1) % READ_BYTES
    body = head.replace('"video_chunk"', " " * padding + '"video_chunk"') + b64.replace("/", "\\/") + '"}'
    assert (len(body.encode()[: body.index("\\/")]) + 1) % READ_BYTES == 0
    response = post_json(api, started, body)
    assert response.status_code == 201, response.json()
    assert (media_root / "recordings" / started.session_id / "chunks" / "0").read_bytes() == first_chunk


def test_a_json_chunk_is_decoded_in_blocks_not_held_whole(first_chunk, settings, tmp_path):
    import tracemalloc

    from recordings.json_chunks import read_json_chunk_upload
    from recordings.upload_handlers import HashingTemporaryFileUploadHandler

    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    chunk = (first_chunk * (-(-16 * 1024 * 1024 // len(first_chunk))))[: 16 * 1024 * 1024]
    body = io.BytesIO(b'{"session_id": "x", "video_chunk": "' + base64.b64encode(chunk) + b'"}')
    tracemalloc.start()
    try:
        parsed = read_json_chunk_upload(
            body,
            chunk_field_names=["video_chunk"],
            new_sink=HashingTemporaryFileUploadHandler,
            too_large=lambda: RecorderError(code="chunk_too_large", detail="", status=413),
            max_chunk_bytes=64 * 1024 * 1024,
        )
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.chunk.size == len(chunk) and parsed.fields == {"session_id": "x"}
    assert peak_bytes < 4 * 1024 * 1024  # a few blocks for a 16 MiB chunk (json.load held ~64 MiB)
    parsed.chunk.close()


def test_json_uploads_past_the_memory_budget_get_503_with_retry_after(api, settings, first_chunk):
    settings.RECORDER_JSON_MEMORY_BUDGET_BYTES = 100 * 1024  # less than one streamed upload's buffers
    started = start(api)
    body = json.dumps({"session_id": started.session_id, "video_chunk": base64.b64encode(first_chunk).decode()})
    response = post_json(api, started, body)
    assert (response.status_code, response.json()["code"]) == (503, "server_busy")
    assert response["Retry-After"] == "1"
    assert (
        post_chunk(api, started, first_chunk, index=0, transport="raw").status_code == 201
    )  # streamed forms are not held


def test_the_memory_budget_is_shared_by_every_json_body_in_the_process(settings):
    from recordings import memory_budget

    settings.RECORDER_JSON_MEMORY_BUDGET_BYTES = 1000
    with memory_budget.reserve(600):
        with pytest.raises(RecorderError) as refused, memory_budget.reserve(600):
            pass
        assert refused.value.status == 503
        with memory_budget.reserve(400):
            assert memory_budget.reserved_bytes() == 1000
    assert memory_budget.reserved_bytes() == 0
