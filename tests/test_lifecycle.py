"""Lifecycle: idle uploads expire, old recordings go when a retention is set, owners delete theirs,
and chunks go once a recording is ready unless RECORDER_KEEP_CHUNKS. Expired ids answer 410,
deleted ones 404."""

import datetime
import os
import time

import pytest
from django.core.management import call_command
from django.utils import timezone

from recordings import services
from recordings.models import Chunk, RecordingSession
from tests.conftest import load_chrome_set, recording_files
from tests.recorder_client import finalize, post_chunk, start, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


def age(session_id: str, **ago) -> None:
    """Move a recording's clock back, as if it had been left alone that long."""
    then = timezone.now() - datetime.timedelta(**ago)
    RecordingSession.objects.filter(pk=session_id).update(
        created_at=then,
        last_chunk_at=then,
        finalized_at=None,
    )


def test_an_idle_upload_expires_with_its_chunks_and_answers_410(api, media_root, capsys):
    recording = load_chrome_set("vp8_opus")
    idle, active = start(api), start(api)
    upload_all(api, idle, recording.chunks[:3])
    upload_all(api, active, recording.chunks[:3])
    age(idle.session_id, hours=25)
    age(active.session_id, hours=23)

    call_command("expire_recordings")
    assert "1 idle upload(s) and 0 old recording(s) expired" in capsys.readouterr().out

    assert recording_files(media_root, idle.session_id) == []
    assert recording_files(media_root, active.session_id) == ["chunks/0", "chunks/1", "chunks/2"]
    for response in (
        api.get(f"/api/get-recorded-data/{idle.session_id}/"),
        post_chunk(api, idle, recording.chunks[3], index=3),
        finalize(api, idle),
    ):
        assert response.status_code == 410, response.content
        assert response.json()["code"] == "recording_expired"
    assert services.expire_recordings().abandoned == []  # idempotent
    # the one still within its TTL goes on as if nothing happened
    assert post_chunk(api, active, recording.chunks[3], index=3).status_code == 201


def test_ready_recordings_stay_until_a_retention_is_set(api, media_root, settings):
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    assert finalize(api, started).json()["status"] == "ready"
    RecordingSession.objects.filter(pk=started.session_id).update(
        ready_at=timezone.now() - datetime.timedelta(days=400)
    )
    assert services.expire_recordings().past_retention == []  # kept for ever by default
    assert recording_files(media_root, started.session_id) == ["audio.mp3", "thumbnail.jpg", "video.webm"]

    settings.RECORDER_RETENTION_DAYS = 365
    assert [str(session_id) for session_id in services.expire_recordings().past_retention] == [started.session_id]
    assert recording_files(media_root, started.session_id) == []
    response = api.get(f"/api/recordings/{started.session_id}/video/")
    assert (response.status_code, response.json()["code"]) == (410, "recording_expired")


def test_the_owner_deletes_a_recording_and_every_file_it_has(api, media_root, settings):
    settings.RECORDER_KEEP_CHUNKS = True
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    finalize(api, started)
    assert len(recording_files(media_root, started.session_id)) == 8 + 3
    url = f"/api/recordings/{started.session_id}/"

    assert api.delete(url).status_code == 401
    assert api.delete(url, headers={"Authorization": "Bearer not-the-token"}).status_code == 403
    owner = {"Authorization": f"Bearer {started.upload_token}"}
    response = api.delete(url, headers=owner)
    assert response.status_code == 204
    assert not (media_root / "recordings" / started.session_id).exists()
    assert not Chunk.objects.filter(session_id=started.session_id).exists()
    for response in (api.get(f"/api/get-recorded-data/{started.session_id}/"), api.delete(url, headers=owner)):
        assert (response.status_code, response.json()["code"]) == (404, "session_not_found")
    assert api.delete(url.rstrip("/"), headers=owner).status_code == 404  # without the slash too


def test_a_recording_still_uploading_can_be_deleted(api, media_root):
    started = start(api)
    upload_all(api, started, load_chrome_set("vp8_opus").chunks[:2])
    response = api.delete(
        f"/api/recordings/{started.session_id}/", headers={"Authorization": f"Bearer {started.upload_token}"}
    )
    assert response.status_code == 204
    assert not (media_root / "recordings" / started.session_id).exists()


def test_kept_chunks_allow_processing_again_and_dropped_ones_refuse_it_clearly(api, settings):
    recording = load_chrome_set("vp8_opus")
    dropped = start(api)
    upload_all(api, dropped, recording.chunks)
    finalize(api, dropped)
    with pytest.raises(services.RecorderError) as refused:
        services.reprocess_recording(session_id=dropped.session_id)
    assert (refused.value.code, refused.value.status) == ("chunks_deleted", 409)

    settings.RECORDER_KEEP_CHUNKS = True
    kept = start(api)
    upload_all(api, kept, recording.chunks)
    finalize(api, kept)
    assert services.reprocess_recording(session_id=kept.session_id).status == "ready"


def test_a_recording_longer_than_the_limit_fails_with_a_code(api, settings):
    settings.RECORDER_MAX_DURATION_SECONDS = 5
    recording = load_chrome_set("vp8_opus")  # about 8 seconds
    started = start(api)
    upload_all(api, started, recording.chunks)
    body = finalize(api, started).json()
    assert (body["status"], body["error"]["code"]) == ("failed", "recording_too_long")
    assert "RECORDER_MAX_DURATION_SECONDS" in body["error"]["detail"]


def test_expire_recordings_sweeps_what_killed_processes_left_in_the_temporary_directory(settings, capsys):
    temp_dir = settings.RECORDER_TEMP_DIR
    two_hours_ago = time.time() - 7200
    stale_upload = temp_dir / "chunk-abc.upload"
    fresh_upload = temp_dir / "chunk-def.upload"
    stale_run = temp_dir / "process-1-xyz"
    busy_run = temp_dir / "process-2-xyz"  # an old directory that a live run is still writing into
    for path in (stale_upload, fresh_upload):
        path.write_bytes(b"x" * 100)
    for folder in (stale_run, busy_run):
        folder.mkdir()
        (folder / "source.webm").write_bytes(b"x" * 100)
    os.utime(stale_upload, (two_hours_ago, two_hours_ago))
    for path in (stale_run / "source.webm", stale_run, busy_run):
        os.utime(path, (two_hours_ago, two_hours_ago))

    call_command("expire_recordings")
    assert "2 stale temporary file(s) removed" in capsys.readouterr().out
    assert sorted(path.name for path in temp_dir.iterdir()) == ["chunk-def.upload", "process-2-xyz"]
    call_command("expire_recordings")
    assert "0 stale temporary file(s) removed" in capsys.readouterr().out
