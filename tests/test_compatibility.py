"""What the service absorbs from older clients of its protocol, tested in-process: write auth modes,
field aliases, the session id in the path, optional start bodies, the finalize wait, chunks counted
from 1. The same shapes against a real server: tests/test_clients_in_the_wild.py."""

import base64
import datetime
import io
import json
import threading
import time
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from recordings import inflight, services, tasks
from recordings.models import RecordingSession, Status
from tests.conftest import load_chrome_set
from tests.recorder_client import finalize, post_chunk, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def vp8():
    return load_chrome_set("vp8_opus")


# --- write auth ----------------------------------------------------------------------------------------


def test_token_mode_is_the_default_and_still_wants_the_token(api, vp8):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, token=None)
    assert (response.status_code, response.json()["code"]) == (401, "token_required")


def test_session_mode_takes_chunks_and_finalize_on_the_session_id_alone(api, vp8, settings):
    settings.RECORDER_WRITE_AUTH = "session"
    started = start(api)
    upload_all_without_token(api, started, vp8.chunks)
    response = finalize(api, started, token=None)
    assert (response.status_code, response.json()["status"]) == (200, "ready")
    wrong = post_chunk(api, started, vp8.chunks[0], index=0, token="not-the-token")
    assert (wrong.status_code, wrong.json()["code"]) == (403, "token_invalid")  # a token given is still checked
    late = post_chunk(api, started, vp8.chunks[0], index=8, token=None)
    assert (late.status_code, late.json()["code"]) == (409, "recording_closed")  # open recordings only
    refused = api.delete(f"/api/recordings/{started.session_id}/")
    assert (refused.status_code, refused.json()["code"]) == (401, "token_required")


def upload_all_without_token(api, started, chunks):
    for index, chunk in enumerate(chunks):
        assert post_chunk(api, started, chunk, index=index, token=None).status_code == 201


def test_the_view_id_is_not_a_write_id(api, vp8, settings):
    settings.RECORDER_WRITE_AUTH = "session"
    started = start(api)
    as_viewer = post_chunk(
        api, started, vp8.chunks[0], index=0, token=None, extra={"session_id": started.body["view_id"]}
    )
    assert (as_viewer.status_code, as_viewer.json()["code"]) == (404, "session_not_found")
    assert RecordingSession.objects.get(pk=started.session_id).received_chunks == 0


def test_reading_by_view_id_hides_the_session_id(api, vp8):
    started = start(api)
    by_session = status_of(api, started.session_id)
    by_view = status_of(api, started.body["view_id"])
    assert by_session["session_id"] == started.session_id
    assert "session_id" not in by_view
    assert {key: value for key, value in by_session.items() if key != "session_id"} == by_view


# --- aliases and the path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["multipart", "json", "raw"])
@pytest.mark.parametrize("alias", ["video_id", "videoId", "sessionId"])
def test_other_names_of_the_session_id(api, vp8, transport, alias):
    started = start(api)
    response = post_chunk(
        api,
        started,
        vp8.chunks[0],
        index=None,
        transport=transport,
        extra={"session_id": None} | {alias: started.session_id},
    )
    assert response.status_code == 201, response.json()
    assert response.json()["chunk_index"] == 0


def test_two_names_of_one_field_that_disagree_are_refused(api, vp8):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, transport="json", extra={"blob_index": 3})
    assert (response.status_code, response.json()["code"]) == (400, "conflicting_fields")
    assert "blob_index" in response.json()["detail"]
    other = str(uuid.uuid4())
    in_path = post_chunk(api, started, vp8.chunks[0], index=0, url=f"/api/receive-video-chunk/{other}/")
    assert (in_path.status_code, in_path.json()["code"]) == (400, "conflicting_fields")
    assert RecordingSession.objects.get(pk=started.session_id).received_chunks == 0


def test_the_session_id_in_the_path_with_and_without_the_slash(api, vp8):
    started = start(api)
    for index, url in enumerate(
        [f"/api/receive-video-chunk/{started.session_id}/", f"/api/receive-video-chunk/{started.session_id}"]
    ):
        response = post_chunk(api, started, vp8.chunks[index], index=index, transport="raw", url=url)
        assert response.status_code == 201, response.json()
    upload_all(api, started, vp8.chunks, order=range(2, 8))
    response = finalize(api, started, transport="raw", url=f"/api/finalize-recording/{started.session_id}")
    assert response.json()["status"] == "ready"


def test_blob_object_and_is_last_in_json(api, vp8):
    started = start(api)
    for index, chunk in enumerate(vp8.chunks):
        response = post_chunk(
            api,
            started,
            None,
            index=None,
            transport="json",
            url="/api/finalize-recording/",
            extra={"blob_index": index, "blob_object": base64.b64encode(chunk).decode(), "is_last": index == 7},
        )
        assert response.status_code in (200, 201), response.json()
    assert response.json()["status"] == "ready"
    assert response.json()["source_sha256"] == vp8.joined_sha256


# --- start bodies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"[object Object]", "text/plain;charset=UTF-8"), (b"", "text/plain"), (b"\x00\xff", "application/x-anything")],
)
def test_a_start_body_that_is_not_json_or_a_form_is_ignored(api, body, content_type):
    response = api.generic("POST", "/api/start-recording/", body, content_type=content_type)
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "recording"


def test_malformed_json_sent_as_json_is_still_refused(api):
    response = api.generic("POST", "/api/start-recording/", b"[object Object]", content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (400, "malformed_body")


def test_an_ignored_start_body_is_still_bounded(api, settings):
    response = api.generic(
        "POST", "/api/start-recording/", b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1), content_type="text/plain"
    )
    assert (response.status_code, response.json()["code"]) == (413, "request_too_large")


# --- the finalize wait --------------------------------------------------------------------------------------


def test_finalize_without_a_count_waits_and_a_late_chunk_gets_in(api, vp8, settings):
    settings.RECORDER_FINALIZE_GRACE_SECONDS = 0.6
    started = start(api)
    upload_all(api, started, vp8.chunks[:7])
    waiting = finalize(api, started)
    assert (waiting.status_code, waiting.json()["status"], waiting.json()["expected_chunks"]) == (
        202,
        "finalizing",
        None,
    )
    late = post_chunk(api, started, vp8.chunks[7], index=7)
    assert late.status_code == 201, late.json()  # before: 409 recording_closed, the video cut short
    body = wait_for(api, started.session_id, "ready")
    assert (body["expected_chunks"], body["source_sha256"]) == (8, vp8.joined_sha256)


def test_finalize_with_total_chunks_does_not_wait(api, vp8, settings):
    settings.RECORDER_FINALIZE_GRACE_SECONDS = 30
    started = start(api)
    upload_all(api, started, vp8.chunks)
    response = finalize(api, started, total_chunks=8)
    assert (response.status_code, response.json()["status"]) == (200, "ready")


def test_a_waiting_finalize_where_no_chunk_ever_came_fails_with_no_chunks(api, settings):
    settings.RECORDER_FINALIZE_GRACE_SECONDS = 0.2
    started = start(api)
    assert finalize(api, started).status_code == 202
    body = wait_for(api, started.session_id, "failed")
    assert body["error"]["code"] == "no_chunks"


def test_an_upload_in_progress_holds_the_finalize_but_never_past_the_longest_wait(vp8, settings):
    settings.RECORDER_FINALIZE_GRACE_SECONDS = 0.0
    settings.RECORDER_FINALIZE_MAX_WAIT_SECONDS = 1.0
    started = services.start_recording()
    session = started.session
    services.receive_chunk(session=session, chunk_index=0, stream=io.BytesIO(vp8.chunks[0]))
    with inflight.marked(session.id, settings.RECORDER_TEMP_DIR):  # e.g. a process killed mid-upload
        finalized = services.finalize_recording(session=session)
        assert (finalized.status, finalized.expected_chunks) == (Status.FINALIZING, None)
        assert services.settle_finalize(session.id) == pytest.approx(0.25)
        time.sleep(1.1)
        assert services.settle_finalize(session.id) is None  # the longest wait is over: decided anyway
    settled = RecordingSession.objects.get(pk=session.pk)
    assert settled.expected_chunks == 1


def test_settling_again_and_again_changes_nothing(vp8, settings):
    started = services.start_recording()
    session = started.session
    services.receive_chunk(session=session, chunk_index=0, stream=io.BytesIO(vp8.chunks[0]))
    services.receive_chunk(session=session, chunk_index=2, stream=io.BytesIO(vp8.chunks[2]))
    settings.RECORDER_FINALIZE_GRACE_SECONDS = 0.01
    services.finalize_recording(session=session)
    time.sleep(0.05)
    assert [services.settle_finalize(session.id) for _ in range(3)] == [None, None, None]
    settled = RecordingSession.objects.get(pk=session.pk)
    assert (settled.status, settled.expected_chunks, settled.settle_at) == (Status.FINALIZING, 3, None)


def test_overdue_finalizes_are_settled_by_the_recovery_sweep(vp8, settings):
    started = services.start_recording()
    session = started.session
    services.receive_chunk(session=session, chunk_index=0, stream=io.BytesIO(vp8.chunks[0]))
    ten_seconds_ago = session.created_at - datetime.timedelta(seconds=10)
    RecordingSession.objects.filter(pk=session.pk).update(
        status=Status.FINALIZING,
        finalized_at=ten_seconds_ago,
        settle_at=ten_seconds_ago,  # its process was killed before the timer fired
    )
    assert services.settle_overdue_finalizes() == [session.id]
    assert RecordingSession.objects.get(pk=session.pk).expected_chunks == 1


# --- chunks counted from 1 -----------------------------------------------------------------------------------


def test_chunks_counted_from_one_with_total_chunks(api, vp8):
    started = start(api)
    upload_all_from_one(api, started, vp8.chunks)
    response = finalize(api, started, total_chunks=8)
    assert response.status_code in (200, 202), response.json()
    body = wait_for(api, started.session_id, "ready")
    assert (body["first_chunk_index"], body["expected_chunks"]) == (1, 9)
    late_zero = post_chunk(api, started, vp8.chunks[0], index=0)
    assert late_zero.json()["code"] in ("recording_closed", "chunk_index_out_of_range")


def test_a_chunk_zero_that_comes_after_all_shows_the_client_counts_from_zero(api, vp8):
    started = start(api)
    cumulative = [b"".join(vp8.chunks[: position + 1]) for position in range(3)]  # every chunk has a header
    for index in (1, 2):
        assert post_chunk(api, started, cumulative[index], index=index).status_code == 201
    assert finalize(api, started, total_chunks=8).json()["first_chunk_index"] == 1  # as far as anyone can tell
    response = post_chunk(api, started, cumulative[0], index=0)
    assert response.status_code == 201, response.json()
    body = status_of(api, started.session_id)
    assert (body["first_chunk_index"], body["expected_chunks"], body["missing_chunks"]) == (0, 8, [3, 4, 5, 6, 7])


def test_a_missing_chunk_zero_is_not_mistaken_for_counting_from_one(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks, order=range(1, 8))  # chunk 1 has no header: chunk 0 was lost
    response = finalize(api, started)
    assert (response.json()["status"], response.json()["missing_chunks"]) == ("finalizing", [0])


def upload_all_from_one(api, started, chunks):
    for position, chunk in enumerate(chunks):
        assert post_chunk(api, started, chunk, index=position + 1).status_code == 201


def wait_for(api, session_id: str, wanted: str, timeout_seconds: float = 60) -> dict:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        body = status_of(api, session_id)
        if body["status"] == wanted:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{session_id} is {body['status']}, not {wanted}")


def test_many_waiting_finalizes_cost_one_thread_not_one_each(api, vp8, settings):
    # longer than the 40 finalizes take on a slow machine: a settle that fired meanwhile would
    # process its recording on the settling thread beside this one's writes (the in-memory test
    # database has table locks, not a busy timeout)
    settings.RECORDER_FINALIZE_GRACE_SECONDS = 60
    threads_before = threading.active_count()
    for _ in range(40):
        started = start(api)
        post_chunk(api, started, vp8.chunks[0], index=0)
        assert finalize(api, started).status_code == 202
    assert threading.active_count() - threads_before <= 1
    assert [thread.name for thread in threading.enumerate()].count("recorder-later") == 1
    assert len(tasks._later._due) >= 40
    # let the settles fire now, as no-ops, rather than during another test
    RecordingSession.objects.update(status=Status.EXPIRED)
    with tasks._later._condition:
        tasks._later._due = sorted((0.0, order, job) for _, order, job in tasks._later._due)  # a heap too
        tasks._later._condition.notify()
    deadline = time.monotonic() + 30
    while tasks._later._due and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the last one popped may still be running


@pytest.mark.parametrize("count", ["is_last", "total_chunks"])
def test_counting_from_one_is_recognised_when_chunk_one_comes_after_the_end_call(api, vp8, count):
    """Uploads not awaited: chunks 2-8 and the end call land while chunk 1 (with the header) is on its way."""
    started = start(api)
    for position in range(1, 7):
        assert post_chunk(api, started, vp8.chunks[position], index=position + 1).status_code == 201
    if count == "is_last":
        finalize(api, started, chunk=vp8.chunks[7], index=8)
    else:
        assert post_chunk(api, started, vp8.chunks[7], index=8).status_code == 201
        finalize(api, started, total_chunks=8)
    late_first = post_chunk(api, started, vp8.chunks[0], index=1)
    assert late_first.status_code == 201, late_first.json()
    body = wait_for(api, started.session_id, "ready")  # before: `finalizing` for ever, waiting for chunk 0
    assert (body["first_chunk_index"], body["expected_chunks"], body["source_sha256"]) == (1, 9, vp8.joined_sha256)


@pytest.mark.parametrize(
    ("extra", "is_refused"),
    [
        ({"is_final": "true", "is_last": "1"}, False),
        ({"total_chunks": "8", "totalChunks": 8}, False),
        ({"is_final": "true", "isLast": "false"}, True),
        ({"total_chunks": 8, "totalChunks": 9}, True),
    ],
)
def test_two_names_that_say_the_same_thing_differently_agree(api, vp8, extra, is_refused):
    started = start(api)
    upload_all(api, started, vp8.chunks)
    response = post_chunk(api, started, None, index=None, url="/api/finalize-recording/", transport="json", extra=extra)
    assert (response.status_code == 400 and response.json()["code"] == "conflicting_fields") == is_refused


def test_a_session_id_without_dashes_in_the_path_agrees_with_the_body(api, vp8):
    started = start(api)
    url = f"/api/receive-video-chunk/{uuid.UUID(started.session_id).hex}/"
    response = post_chunk(api, started, vp8.chunks[0], index=0, url=url)
    assert response.status_code == 201, response.json()


def test_a_json_object_sent_as_text_plain_keeps_its_fields(api):
    """fetch(url, {method: "POST", body: JSON.stringify({title})}) sets no Content-Type: text/plain."""
    response = api.generic(
        "POST", "/api/start-recording/", b'{"title": "Standup"}', content_type="text/plain;charset=UTF-8"
    )
    assert response.status_code == 201, response.content
    assert status_of(api, response.json()["session_id"])["title"] == "Standup"


def test_a_refused_json_chunk_leaves_no_temporary_file(api, vp8, settings):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, transport="json", extra={"blob_index": 5})
    assert response.json()["code"] == "conflicting_fields"
    unknown = post_chunk(
        api, started, vp8.chunks[0], index=0, transport="json", extra={"session_id": str(uuid.uuid4())}
    )
    assert unknown.json()["code"] == "session_not_found"
    assert [path.name for path in settings.RECORDER_TEMP_DIR.iterdir()] == []


@pytest.mark.parametrize("write_auth", ["token", "session"])
def test_a_token_holding_a_lone_surrogate_is_invalid_not_a_500(api, vp8, settings, write_auth):
    settings.RECORDER_WRITE_AUTH = write_auth
    started = start(api)
    chunk = base64.b64encode(vp8.chunks[0]).decode()
    body = json.dumps(
        {"session_id": started.session_id, "chunk_index": 0, "upload_token": "TOKEN", "video_chunk": chunk}
    ).replace('"TOKEN"', '"\\ud800"')  # json.dumps would escape the surrogate the same way; explicit here
    response = api.generic("POST", "/api/receive-video-chunk/", body, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (403, "token_invalid")  # found by attack: a 500


def test_a_title_holding_a_lone_surrogate_is_refused(api):
    response = api.generic("POST", "/api/start-recording/", '{"title": "a\\ud800b"}', content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert "title" in response.json()["fields"]


def other_recording(api) -> str:
    return start(api).session_id


@pytest.mark.parametrize(
    "shape",
    ["query_and_form", "form_twice", "query_twice", "query_and_json", "json_key_twice", "index_query_and_form"],
)
def test_one_field_said_twice_differently_is_refused_wherever_it_is_said(api, vp8, shape):
    """Found by attack: the body silently won over the query string, the last repeat over the first,
    so access logs named one recording while another was written."""
    started, other = start(api), other_recording(api)
    chunk = vp8.chunks[0]
    auth = {"Authorization": f"Bearer {started.upload_token}"}
    url = "/api/receive-video-chunk/"
    if shape == "query_and_form":
        response = api.post(
            f"{url}?session_id={other}", {"session_id": started.session_id, "video_chunk": blob(chunk)}, headers=auth
        )
    elif shape == "form_twice":
        response = api.post(url, {"session_id": [other, started.session_id], "video_chunk": blob(chunk)}, headers=auth)
    elif shape == "query_twice":
        response = api.generic(
            "POST",
            f"{url}?session_id={other}&session_id={started.session_id}",
            chunk,
            content_type="video/webm",
            headers=auth,
        )
    elif shape == "query_and_json":
        body = json.dumps({"session_id": started.session_id, "video_chunk": base64.b64encode(chunk).decode()})
        response = api.generic("POST", f"{url}?session_id={other}", body, content_type="application/json", headers=auth)
    elif shape == "json_key_twice":
        encoded = base64.b64encode(chunk).decode()
        body = f'{{"session_id": "{other}", "session_id": "{started.session_id}", "video_chunk": "{encoded}"}}'
        response = api.generic("POST", url, body, content_type="application/json", headers=auth)
    else:
        response = api.post(
            f"{url}?chunk_index=7",
            {"session_id": started.session_id, "chunk_index": "6", "video_chunk": blob(chunk)},
            headers=auth,
        )
    assert response.status_code == 400, response.json()
    assert response.json()["code"] in ("conflicting_fields", "malformed_body")
    assert RecordingSession.objects.filter(received_chunks__gt=0).count() == 0


def test_the_same_value_said_in_the_query_and_the_body_is_fine(api, vp8):
    started = start(api)
    response = api.post(
        f"/api/receive-video-chunk/?session_id={started.session_id}&chunk_index=0",
        {"session_id": started.session_id, "chunk_index": "0", "video_chunk": blob(vp8.chunks[0])},
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )
    assert response.status_code == 201, response.json()


def blob(data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile("blob", data, content_type="video/webm")


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("/api/receive-video-chunk/?session_id={id}&chunk_index=3", True),
        ("/api/receive-video-chunk?videoId={id}", True),
        ("/api/finalize-recording/{id}/", True),
        ("/api/receive-video-chunk/{id}", True),
        ("/api/receive-video-chunk/", False),  # a form or JSON body names it: not known while it arrives
        ("/api/receive-video-chunk/?session_id=not-a-uuid", False),
        ("/api/start-recording/?session_id={id}", False),
        ("/api/get-recorded-data/{id}/", False),
    ],
)
def test_the_buffering_server_knows_an_uploads_recording_from_its_url(target, named):
    session_id = uuid.uuid4()
    found = inflight.session_id_of_upload(target.format(id=session_id))
    assert found == (session_id if named else None)


def test_the_last_chunk_of_a_client_counting_from_one_is_kept_when_it_overtakes_chunk_one(api, vp8):
    """Found by attack: chunks 2-7, total_chunks=8, chunk 8, then chunk 1 (delayed by a retry): chunk 8
    got a final 409 and the recording waited for it until it expired."""
    started = start(api)
    for position in range(1, 7):
        assert post_chunk(api, started, vp8.chunks[position], index=position + 1).status_code == 201
    assert finalize(api, started, total_chunks=8).json()["status"] == "finalizing"
    overtaking = post_chunk(api, started, vp8.chunks[7], index=8)
    assert overtaking.status_code == 201, overtaking.json()
    assert post_chunk(api, started, vp8.chunks[0], index=1).status_code == 201
    body = wait_for(api, started.session_id, "ready")
    assert (body["first_chunk_index"], body["expected_chunks"], body["source_sha256"]) == (1, 9, vp8.joined_sha256)


def test_a_zero_based_client_still_cannot_go_past_its_total(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks[:3])
    finalize(api, started, total_chunks=8)
    response = post_chunk(api, started, vp8.chunks[5], index=8)
    assert (response.status_code, response.json()["code"]) == (409, "chunk_index_out_of_range")
