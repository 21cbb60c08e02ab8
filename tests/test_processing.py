"""The processing pipeline: failures are recorded with codes, reruns replace outputs whole."""

import datetime
import fcntl
import os
import uuid
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from recordings import locks, runs, services
from recordings.models import RecordingSession
from tests.conftest import load_chrome_set, output_path, recording_files
from tests.recorder_client import finalize, start, status_of, upload_all

pytestmark = pytest.mark.django_db(transaction=True)


def ffmpeg_children() -> list[int]:
    """ffmpeg processes whose parent is this test process."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent_pid = int(stat.rsplit(")", 1)[1].split()[1])
        if parent_pid == os.getpid() and b"ffmpeg" in command:
            children.append(int(entry.name))
    return children


@pytest.mark.parametrize(
    ("live_build", "steps"),
    [
        (True, {"live_finish", "probe", "thumbnail", "store"}),  # video and audio built while it arrived
        (False, {"join", "probe", "remux", "audio", "thumbnail", "store"}),
    ],
)
def test_ready_recording_has_its_files_and_step_times(api, media_root, settings, live_build, steps):
    settings.RECORDER_LIVE_BUILD = live_build
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    finalize(api, started)
    session = RecordingSession.objects.get(pk=started.session_id)
    # the chunks are deleted once the video holds their streams (RECORDER_KEEP_CHUNKS is off)
    assert recording_files(media_root, started.session_id) == ["audio.mp3", "thumbnail.jpg", "video.webm"]
    assert not (media_root / "recordings" / started.session_id / "chunks").exists()
    assert session.chunks_deleted_at is not None
    assert set(session.processing_steps) == steps
    assert session.source_sha256 == recording.joined_sha256
    # audio runs beside remux and thumbnail, so the wall-clock total is at most the sum of the steps
    assert max(session.processing_steps.values()) <= session.processing_seconds
    assert session.processing_seconds <= sum(session.processing_steps.values()) + 0.05
    assert ffmpeg_children() == []
    assert list((media_root / ".tmp").iterdir()) == []  # the per-run work directory is gone
    assert list((media_root / ".live").iterdir()) == [] if live_build else not (media_root / ".live").exists()


def test_undecodable_media_fails_with_a_code_and_keeps_the_chunks(api, media_root):
    header_only = load_chrome_set("vp8_opus").chunks[0][:40]  # an EBML header, then nothing playable
    started = start(api)
    upload_all(api, started, [header_only, os.urandom(5000)])
    response = finalize(api, started)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "media_undecodable"
    assert body["video_url"] is None
    assert recording_files(media_root, started.session_id) == ["chunks/0", "chunks/1"]
    again = finalize(api, started)  # a media error is not retried by finalize
    assert again.json()["status"] == "failed"
    with pytest.raises(CommandError, match="media_undecodable"):
        call_command("process_recording", started.session_id)


def test_a_lost_chunk_file_fails_and_a_later_finalize_processes_again(api, media_root, settings):
    settings.RECORDER_LIVE_BUILD = False  # the full pipeline reads the chunks at Stop (the build, as they came)
    recording = load_chrome_set("vp9_opus")
    started = start(api)
    upload_all(api, started, recording.chunks[:-1])
    chunk_path = media_root / "recordings" / started.session_id / "chunks" / "3"
    kept = chunk_path.read_bytes()
    chunk_path.unlink()  # the storage lost a file the database still lists
    failed = finalize(api, started, chunk=recording.chunks[-1], index=7)
    assert failed.json()["status"] == "failed"
    assert failed.json()["error"]["code"] == "processing_error"
    chunk_path.write_bytes(kept)
    retried = finalize(api, started)
    assert retried.status_code == 200
    assert retried.json()["status"] == "ready"
    assert retried.json()["error"] is None
    assert retried.json()["source_sha256"] == recording.joined_sha256


def test_process_recording_command_rebuilds_outputs_in_place(api, media_root, capsys, settings):
    settings.RECORDER_KEEP_CHUNKS = True
    recording = load_chrome_set("mp4_avc1_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    finalize(api, started)
    first = status_of(api, started.session_id)
    before = recording_files(media_root, started.session_id)
    video_before = output_path(media_root, started.session_id, "video.mp4").read_bytes()

    call_command("process_recording", started.session_id)

    second = status_of(api, started.session_id)
    assert "ready" in capsys.readouterr().out
    assert second["status"] == "ready"
    assert second["ready_at"] > first["ready_at"]
    assert recording_files(media_root, started.session_id) == before
    assert output_path(media_root, started.session_id, "video.mp4").read_bytes() == video_before


def test_process_recording_command_rejects_a_recording_still_uploading(api):
    started = start(api)
    with pytest.raises(CommandError, match="illegal_status_change"):
        call_command("process_recording", started.session_id)


def test_process_recording_command_with_unknown_id(api):
    with pytest.raises(CommandError, match="session_not_found"):
        call_command("process_recording", "d3c1f1c5-0000-4000-8000-000000000000")


def test_audio_format_setting_changes_the_audio_output(api, settings):
    settings.RECORDER_AUDIO_FORMAT = "m4a"
    recording = load_chrome_set("vp8_opus")
    started = start(api)
    upload_all(api, started, recording.chunks)
    body = finalize(api, started).json()
    response = api.get(body["audio_url"])
    assert response["Content-Type"] == "audio/mp4"
    assert b"ftyp" in b"".join(response.streaming_content)[:16]


# --- Runs that died: heartbeats, bounded attempts, recovery ------------------------------------------


def as_if_a_run_died(session_id: str, *, attempts: int, silent_seconds: float = 600) -> None:
    """The state a killed worker leaves: `processing`, its claim taken, its heartbeat old."""
    long_ago = timezone.now() - datetime.timedelta(seconds=silent_seconds)
    session = RecordingSession.objects.get(pk=session_id)
    RecordingSession.objects.filter(pk=session_id).update(
        status="processing",
        expected_chunks=session.received_chunks,
        processing_requested_at=long_ago,
        processing_heartbeat_at=long_ago if attempts else None,
        processing_attempts=attempts,
    )


def uploaded(api, name: str = "vp8_opus"):
    recording = load_chrome_set(name)
    started = start(api)
    upload_all(api, started, recording.chunks)
    return recording, started


def test_recover_recordings_runs_a_recording_whose_worker_died_again(api, capsys):
    recording, started = uploaded(api)
    as_if_a_run_died(started.session_id, attempts=1)
    call_command("recover_recordings")
    assert f"{started.session_id}: queued again" in capsys.readouterr().out
    session = RecordingSession.objects.get(pk=started.session_id)
    assert (session.status, session.processing_attempts) == ("ready", 2)
    assert session.source_sha256 == recording.joined_sha256
    call_command("recover_recordings")  # idempotent: nothing is stale any more
    assert "0 recording(s) queued again" in capsys.readouterr().out


def test_a_recording_whose_runs_all_died_fails_and_only_an_operator_runs_it_again(api, settings):
    recording, started = uploaded(api)
    as_if_a_run_died(started.session_id, attempts=settings.RECORDER_PROCESSING_MAX_ATTEMPTS)
    assert services.recover_stale_recordings() == []
    body = status_of(api, started.session_id)
    assert (body["status"], body["error"]["code"]) == ("failed", "processing_interrupted")
    # a recording whose runs kept dying may be what kills them: a client cannot start more (issue 12)
    response = finalize(api, started)
    assert (response.status_code, response.json()["status"]) == (200, "failed")
    call_command("process_recording", started.session_id)
    assert status_of(api, started.session_id)["status"] == "ready"


def test_a_run_whose_heartbeat_is_fresh_is_not_run_twice(api):
    _, started = uploaded(api)
    as_if_a_run_died(started.session_id, attempts=1, silent_seconds=1)  # beating 1 s ago: alive
    assert services.recover_stale_recordings() == []
    runs.process_recording(started.session_id)  # a duplicate task of the same recording
    session = RecordingSession.objects.get(pk=started.session_id)
    assert (session.status, session.processing_attempts) == ("processing", 1)


@pytest.mark.parametrize(("waiting_seconds", "recovered"), [(5, False), (600, True)])
def test_a_requested_run_that_never_started_is_recovered_once_it_is_old(api, waiting_seconds, recovered):
    _, started = uploaded(api)
    as_if_a_run_died(started.session_id, attempts=0, silent_seconds=waiting_seconds)
    requeued = services.recover_stale_recordings()
    assert requeued == ([uuid.UUID(started.session_id)] if recovered else [])
    assert status_of(api, started.session_id)["status"] == ("ready" if recovered else "processing")


def test_work_queued_under_the_write_lock_runs_after_the_lock_is_released(tmp_path):
    lock_path = str(tmp_path / "db.sqlite3.write-lock")
    seen = []

    def try_the_lock_from_another_open_file():
        fd = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while held
            seen.append("lock was free")
        finally:
            os.close(fd)

    with locks.held_write_lock(lock_path):
        locks.after_write_lock(try_the_lock_from_another_open_file)
        assert seen == []
    assert seen == ["lock was free"]
    locks.after_write_lock(lambda: seen.append("no lock held: at once"))
    assert seen == ["lock was free", "no lock held: at once"]
