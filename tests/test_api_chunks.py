"""Chunk upload and finalize over HTTP: the rules, the edge cases real clients hit, the error codes."""

import base64
import hashlib
import json

import pytest

from recordings.models import Chunk, RecordingSession
from tests.conftest import load_chrome_set
from tests.recorder_client import TRANSPORTS, finalize, post_chunk, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def vp8():
    return load_chrome_set("vp8_opus")


def stored_files(media_root) -> list[str]:
    """Every file stored under MEDIA_ROOT but the live build's, which grows from the chunks (tests/test_live.py)."""
    return sorted(
        str(path.relative_to(media_root))
        for path in media_root.rglob("*")
        if path.is_file() and path.relative_to(media_root).parts[0] != ".live"
    )


# --- acknowledgement and idempotency ---------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_new_chunk_is_acknowledged_with_its_hash(api, vp8, transport, media_root):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, transport=transport)
    assert response.status_code == 201
    body = response.json()
    assert body == {
        "session_id": started.session_id,
        "chunk_index": 0,
        "size": len(vp8.chunks[0]),
        "sha256": hashlib.sha256(vp8.chunks[0]).hexdigest(),
        "received_chunks": 1,
        "received_bytes": len(vp8.chunks[0]),
        "status": "recording",
    }
    stored = media_root / "recordings" / started.session_id / "chunks" / "0"
    assert stored.read_bytes() == vp8.chunks[0]
    assert list((media_root / ".tmp").iterdir()) == []  # nothing staged is left behind


def test_identical_retry_answers_200_and_changes_nothing(api, vp8):
    started = start(api)
    first = post_chunk(api, started, vp8.chunks[0], index=0)
    received_at = Chunk.objects.get(index=0).received_at
    retry = post_chunk(api, started, vp8.chunks[0], index=0, transport="raw")
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["received_chunks"] == 1
    assert Chunk.objects.get(index=0).received_at == received_at


def test_conflicting_duplicate_chunk_is_rejected(api, vp8, media_root):
    started = start(api)
    post_chunk(api, started, vp8.chunks[0], index=0)
    post_chunk(api, started, vp8.chunks[1], index=1)
    response = post_chunk(api, started, vp8.chunks[2], index=1)
    assert response.status_code == 409
    assert response.json()["code"] == "chunk_conflict"
    assert (media_root / "recordings" / started.session_id / "chunks" / "1").read_bytes() == vp8.chunks[1]


def test_chunk_without_index_gets_the_next_one(api, vp8):
    started = start(api)
    indices = [post_chunk(api, started, chunk, index=None).json()["chunk_index"] for chunk in vp8.chunks[:3]]
    assert indices == [0, 1, 2]
    post_chunk(api, started, vp8.chunks[5], index=5)
    assert post_chunk(api, started, vp8.chunks[6], index=None).json()["chunk_index"] == 6


def test_running_totals_match_the_stored_chunks_after_shuffled_retried_and_refused_uploads(api, vp8):
    started = start(api)
    order = [3, 0, 5, 3, 1, 0, 6, 2]  # out of order, with identical retries
    receipts = [post_chunk(api, started, vp8.chunks[index], index=index) for index in order]
    assert [receipt.status_code for receipt in receipts] == [201, 201, 201, 200, 201, 200, 201, 201]
    assert post_chunk(api, started, vp8.chunks[4], index=5).status_code == 409  # conflict: not counted
    stored = sorted(set(order))
    session = RecordingSession.objects.get(pk=started.session_id)
    assert session.received_chunks == len(stored) == Chunk.objects.filter(session=session).count()
    assert session.received_bytes == sum(len(vp8.chunks[index]) for index in stored)
    assert session.highest_chunk_index == 6
    assert receipts[-1].json()["received_bytes"] == session.received_bytes
    assert post_chunk(api, started, vp8.chunks[7], index=None).json()["chunk_index"] == 7


@pytest.mark.parametrize("field_name", ["chunk", "blob", "file", "videoChunk", "videoDataChunk"])
def test_field_names_of_real_clients_are_accepted(api, vp8, field_name):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, file_field=field_name)
    assert response.status_code == 201
    assert response.json()["size"] == len(vp8.chunks[0])


def test_routes_answer_without_trailing_slash(api, vp8):
    response = api.post("/api/start-recording", {}, format="json")
    assert response.status_code == 201
    started = start(api)
    assert post_chunk(api, started, vp8.chunks[0], index=0, url="/api/receive-video-chunk").status_code == 201
    assert api.get(f"/api/get-recorded-data/{started.session_id}").status_code == 200


def test_start_returns_urls_and_stores_only_a_hash_of_the_token(api):
    started = start(api, title="Weekly demo", mime_type="video/webm;codecs=vp8,opus")
    assert started.body["status"] == "recording"
    assert started.body["status_url"].endswith(f"/api/get-recorded-data/{started.session_id}/")
    assert started.body["chunk_url"].endswith("/api/receive-video-chunk/")
    assert started.body["finalize_url"].endswith("/api/finalize-recording/")
    session = RecordingSession.objects.get(pk=started.session_id)
    assert session.title == "Weekly demo"
    assert started.upload_token not in json.dumps(list(RecordingSession.objects.values()), default=str)
    assert session.upload_token_hash == hashlib.sha256(started.upload_token.encode()).hexdigest()


def test_start_accepts_an_empty_body(api):
    response = api.post("/api/start-recording/")
    assert response.status_code == 201
    assert response.json()["upload_token"]


# --- tokens and ids ------------------------------------------------------------------------------------


def test_missing_token_is_401(api, vp8):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, token=None)
    assert response.status_code == 401
    assert response.json()["code"] == "token_required"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_token_is_403(api, vp8):
    started = start(api)
    other = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, token=other.upload_token)
    assert response.status_code == 403
    assert response.json()["code"] == "token_invalid"
    assert Chunk.objects.count() == 0


def test_token_in_x_upload_token_header_or_body_field_is_accepted(api, vp8):
    started = start(api)
    by_header = post_chunk(
        api, started, vp8.chunks[0], index=0, token=None, headers={"X-Upload-Token": started.upload_token}
    )
    by_field = post_chunk(
        api, started, vp8.chunks[1], index=1, token=None, extra={"upload_token": started.upload_token}
    )
    assert (by_header.status_code, by_field.status_code) == (201, 201)


def test_token_in_query_string_is_not_accepted(api, vp8):
    started = start(api)
    response = api.generic(
        "POST",
        f"/api/receive-video-chunk/?session_id={started.session_id}&chunk_index=0&upload_token={started.upload_token}",
        vp8.chunks[0],
        content_type="application/octet-stream",
    )
    assert response.status_code == 401


def test_unknown_session_is_404(api, vp8):
    started = start(api)
    started.session_id = "0b1c5e8a-2f44-4c55-8d8e-6f1d2a3b4c5d"
    response = post_chunk(api, started, vp8.chunks[0], index=0)
    assert response.status_code == 404
    assert response.json()["code"] == "session_not_found"
    assert api.get(f"/api/get-recorded-data/{started.session_id}/").json()["code"] == "session_not_found"


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "../../etc/passwd", "%00", "1" * 300])
def test_malformed_session_id_is_a_client_error(api, vp8, bad_id):
    started = start(api)
    started.session_id = bad_id
    response = post_chunk(api, started, vp8.chunks[0], index=0)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert "session_id" in response.json()["fields"]
    read = api.get(f"/api/get-recorded-data/{bad_id}/")
    assert read.status_code == 404


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("junk", [b"undefined", b"{}", b"[object Object]", b"null", b"\x00" * 64])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_junk_first_chunk_is_rejected(api, junk, transport, media_root):
    started = start(api)
    response = post_chunk(api, started, junk, index=0, transport=transport)
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_media"
    assert Chunk.objects.count() == 0
    assert stored_files(media_root) == []


def test_text_instead_of_a_blob_in_a_form_is_rejected(api):
    started = start(api)
    response = api.post(
        "/api/receive-video-chunk/",
        {"session_id": started.session_id, "video_chunk": "undefined"},
        format="multipart",
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "chunk_not_a_file"


def test_request_without_a_chunk_is_rejected(api):
    started = start(api)
    response = post_chunk(api, started, None, index=0)
    assert response.status_code == 400
    assert response.json()["code"] == "chunk_missing"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_empty_chunks_are_valid_and_counted(api, vp8, transport, tmp_path):
    started = start(api)
    assert post_chunk(api, started, b"", index=0, transport=transport).json()["size"] == 0
    upload_all(api, started, [b"", *vp8.chunks], order=range(1, 9))
    assert post_chunk(api, started, b"", index=9, transport=transport).status_code == 201
    response = finalize(api, started)
    assert response.json()["status"] == "ready", response.json()
    assert response.json()["received_chunks"] == 10
    assert response.json()["source_sha256"] == vp8.joined_sha256


def test_bad_base64_is_rejected(api):
    started = start(api)
    response = api.post(
        "/api/receive-video-chunk/",
        {"session_id": started.session_id, "chunk_index": 0, "video_chunk": "%%%not64"},
        format="json",
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_base64"


def test_base64_with_a_data_url_prefix_is_decoded(api, vp8, media_root):
    started = start(api)
    encoded = "data:video/webm;codecs=vp8,opus;base64," + base64.b64encode(vp8.chunks[0]).decode()
    response = api.post(
        "/api/receive-video-chunk/",
        {"session_id": started.session_id, "chunk_index": 0, "video_chunk": encoded},
        format="json",
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )
    assert response.status_code == 201
    assert (media_root / "recordings" / started.session_id / "chunks" / "0").read_bytes() == vp8.chunks[0]


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "{not json"])
def test_json_body_that_is_not_an_object_is_rejected(api, body):
    started = start(api)
    response = api.generic(
        "POST",
        "/api/receive-video-chunk/",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_body"


def test_unsupported_content_type_is_415(api):
    started = start(api)
    response = api.generic(
        "POST",
        f"/api/receive-video-chunk/?session_id={started.session_id}",
        b"hello",
        content_type="text/plain",
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_content_type"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_checksum_mismatch_discards_the_chunk(api, vp8, transport, media_root):
    started = start(api)
    wrong = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()
    response = post_chunk(api, started, vp8.chunks[0], index=0, transport=transport, extra={"checksum": wrong})
    assert response.status_code == 400
    assert response.json()["code"] == "checksum_mismatch"
    assert Chunk.objects.count() == 0
    assert stored_files(media_root) == []


def test_matching_checksum_in_field_or_header_is_accepted(api, vp8):
    started = start(api)
    digest = hashlib.sha256(vp8.chunks[0]).hexdigest()
    by_field = post_chunk(api, started, vp8.chunks[0], index=0, extra={"checksum": f"sha256:{digest}"})
    digest_1 = hashlib.sha256(vp8.chunks[1]).hexdigest()
    by_header = post_chunk(
        api, started, vp8.chunks[1], index=1, transport="raw", headers={"X-Chunk-SHA256": f"sha256:{digest_1}"}
    )
    assert (by_field.status_code, by_header.status_code) == (201, 201)


def test_malformed_checksum_is_a_validation_error(api, vp8):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, extra={"checksum": "md5:abc"})
    assert response.status_code == 400
    assert "checksum" in response.json()["fields"]


def test_a_checksum_header_and_field_are_both_verified_and_a_wrong_one_stores_nothing(api, vp8, media_root):
    started = start(api)
    digest = hashlib.sha256(vp8.chunks[0]).hexdigest()
    both = {"extra": {"checksum": digest}}
    agreeing = post_chunk(
        api, started, vp8.chunks[0], index=0, headers={"X-Chunk-SHA256": f"sha256:{digest.upper()}"}, **both
    )
    assert agreeing.status_code == 201
    for header in ("not-a-checksum", "0" * 64):
        response = post_chunk(api, started, vp8.chunks[1], index=1, headers={"X-Chunk-SHA256": header}, **both)
        code = "invalid_request" if header == "not-a-checksum" else "checksum_mismatch"
        assert (response.status_code, response.json()["code"]) == (400, code)
    assert stored_files(media_root) == [f"recordings/{started.session_id}/chunks/0"]


def test_an_index_past_ten_million_is_out_of_range_even_when_appended(api, vp8):
    started = start(api)
    assert post_chunk(api, started, vp8.chunks[0], index=0).status_code == 201
    assert post_chunk(api, started, vp8.chunks[1], index=9_999_999).status_code == 201
    appended = post_chunk(api, started, vp8.chunks[2], index=None)
    assert (appended.status_code, appended.json()["code"]) == (409, "chunk_index_out_of_range")
    assert finalize(api, started).json()["missing_chunks_count"] == 10_000_000 - 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oversized_chunk_is_413(api, vp8, transport, settings, media_root):
    settings.RECORDER_MAX_CHUNK_BYTES = 10_000
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, transport=transport)
    assert response.status_code == 413
    assert response.json()["code"] == "chunk_too_large"
    assert stored_files(media_root) == []


def test_oversized_multipart_body_is_refused_from_its_content_length(api, settings, media_root):
    settings.RECORDER_MAX_CHUNK_BYTES = 1000
    started = start(api)
    response = post_chunk(api, started, b"\x1a\x45\xdf\xa3" + bytes(200_000), index=0)
    assert response.status_code == 413
    assert response.json()["code"] == "chunk_too_large"
    assert list((media_root / ".tmp").iterdir()) == []  # refused before anything was spooled


def test_recording_over_its_size_limit_is_413(api, vp8, settings):
    settings.RECORDER_MAX_RECORDING_BYTES = len(vp8.chunks[0]) + len(vp8.chunks[1]) + 10
    started = start(api)
    upload_all(api, started, vp8.chunks[:2])
    response = post_chunk(api, started, vp8.chunks[2], index=2)
    assert response.status_code == 413
    assert response.json()["code"] == "recording_too_large"
    assert post_chunk(api, started, b"", index=2).status_code == 201  # an empty chunk still fits


def test_json_chunks_are_streamed_whatever_the_limit_on_bodies_read_whole(api, vp8, settings, media_root):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=0, transport="json")
    assert response.status_code == 201
    stored = media_root / "recordings" / started.session_id / "chunks" / "0"
    assert stored.read_bytes() == vp8.chunks[0]


def test_a_json_chunk_over_the_chunk_limit_is_413_once_decoded(api, settings, media_root):
    settings.RECORDER_MAX_CHUNK_BYTES = 100_000
    started = start(api)
    # 120,000 bytes: the body's length passes the early check (base64 is 4/3), the decoded size does not
    response = post_chunk(api, started, b"\x1a\x45\xdf\xa3" + bytes(119_996), index=0, transport="json")
    assert (response.status_code, response.json()["code"]) == (413, "chunk_too_large")
    assert list((media_root / ".tmp").iterdir()) == []  # the part decoded so far is gone


def test_a_start_body_over_the_memory_limit_is_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.post("/api/start-recording/", {"title": "x" * 2000}, format="json")
    assert (response.status_code, response.json()["code"]) == (413, "request_too_large")


def test_negative_chunk_index_is_rejected(api, vp8):
    started = start(api)
    response = post_chunk(api, started, vp8.chunks[0], index=-1)
    assert response.status_code == 400
    assert "chunk_index" in response.json()["fields"]


# --- finalize ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["true", "True", "1", "on", "yes"])
def test_is_final_accepts_true_words(api, vp8, word):
    started = start(api)
    upload_all(api, started, vp8.chunks)
    response = post_chunk(api, started, None, index=None, url="/api/finalize-recording/", extra={"is_final": word})
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_is_final_false_is_exactly_a_chunk_upload(api, vp8, transport):
    started = start(api)
    response = post_chunk(
        api,
        started,
        vp8.chunks[0],
        index=0,
        transport=transport,
        url="/api/finalize-recording/",
        extra={"is_final": "false"},
    )
    assert response.status_code == 201
    assert set(response.json()) == {
        "session_id",
        "chunk_index",
        "size",
        "sha256",
        "received_chunks",
        "received_bytes",
        "status",
    }
    assert response.json()["status"] == "recording"


def test_is_final_as_json_boolean(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks)
    response = api.post(
        "/api/finalize-recording/",
        {"session_id": started.session_id, "is_final": True},
        format="json",
        headers={"Authorization": f"Bearer {started.upload_token}"},
    )
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


@pytest.mark.parametrize("word", ["maybe", "2", "finished"])
def test_is_final_rejects_other_words(api, vp8, word):
    started = start(api)
    response = post_chunk(api, started, None, index=None, url="/api/finalize-recording/", extra={"is_final": word})
    assert response.status_code == 400
    assert "is_final" in response.json()["fields"]


def test_a_gap_keeps_the_recording_finalizing(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks, order=[0, 1, 2, 4, 5, 6])
    response = finalize(api, started, chunk=vp8.chunks[7], index=7)
    assert response.status_code == 202
    assert response.json()["status"] == "finalizing"
    assert response.json()["missing_chunks"] == [3]
    body = status_of(api, started.session_id)
    assert body["status"] == "finalizing"
    assert body["received_ranges"] == [[0, 2], [4, 7]]
    assert body["missing_chunks"] == [3]
    assert body["missing_chunks_count"] == 1
    assert body["video_url"] is None


def test_a_huge_total_chunks_lists_the_first_thousand_missing_and_counts_the_rest(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks[:6], order=[0, 1, 2, 4, 5])
    response = finalize(api, started, total_chunks=10_000_000)
    assert response.status_code == 202
    assert len(response.content) < 20_000  # not 10 million indices on every poll
    body = status_of(api, started.session_id)
    assert body["missing_chunks"] == [3, *range(6, 1005)]
    assert body["missing_chunks_count"] == 10_000_000 - 5
    assert body["received_ranges"] == [[0, 2], [4, 5]]


def test_finalize_twice_answers_the_state_without_a_second_run(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks)
    first = finalize(api, started)
    second = finalize(api, started)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["ready_at"] == second.json()["ready_at"]


def test_finalize_while_missing_then_again_still_waits(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks, order=[0, 1])
    assert finalize(api, started, total_chunks=8).status_code == 202
    again = finalize(api, started)
    assert again.status_code == 202
    assert again.json()["missing_chunks"] == [2, 3, 4, 5, 6, 7]


def test_total_chunks_cannot_change_after_finalize(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks, order=[0, 1])
    finalize(api, started, total_chunks=8)
    response = finalize(api, started, total_chunks=9)
    assert response.status_code == 409
    assert response.json()["code"] == "total_chunks_conflict"


def test_total_chunks_below_a_received_index_is_rejected(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks, order=[0, 1, 5])
    response = finalize(api, started, total_chunks=3)
    assert response.status_code == 400
    assert response.json()["code"] == "total_chunks_too_small"


def test_chunk_past_the_finalized_count_is_rejected(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks, order=[0, 1])
    finalize(api, started, total_chunks=4)
    response = post_chunk(api, started, vp8.chunks[5], index=5)
    assert response.status_code == 409
    assert response.json()["code"] == "chunk_index_out_of_range"


def test_finalize_without_any_chunk_is_rejected(api):
    started = start(api)
    response = finalize(api, started)
    assert response.status_code == 400
    assert response.json()["code"] == "no_chunks"


def test_chunk_for_a_ready_recording_is_closed_but_a_retry_is_fine(api, vp8):
    started = start(api)
    upload_all(api, started, vp8.chunks)
    finalize(api, started)
    late = post_chunk(api, started, vp8.chunks[0], index=8)
    assert late.status_code == 409
    assert late.json()["code"] == "recording_closed"
    retry = post_chunk(api, started, vp8.chunks[3], index=3)
    assert retry.status_code == 200


# --- errors are always JSON ---------------------------------------------------------------------------------------


def test_unknown_url_is_json_404(api):
    response = api.get("/api/no-such-thing/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_wrong_method_is_json_405(api):
    response = api.get("/api/receive-video-chunk/")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_cors_preflight_allows_authorization_and_json_from_any_origin(api):
    response = api.options(
        "/api/receive-video-chunk/",
        headers={
            "Origin": "chrome-extension://abcdefghijklmnop",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-chunk-sha256",
        },
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "*"
    allowed = response["Access-Control-Allow-Headers"].lower()
    assert {"authorization", "content-type", "x-chunk-sha256"} <= set(allowed.replace(" ", "").split(","))
    assert "Access-Control-Allow-Credentials" not in response
