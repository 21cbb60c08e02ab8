"""Which stored files belong to a recording (chunks, outputs, work folders, the live build): storing
its outputs, and removing them."""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

from . import chunks
from .models import Chunk, RecordingSession, chunk_storage_name, media_storage_name, output_storage_name
from .storage import MovableFile


def drop_chunk_files(session: RecordingSession) -> None:
    """Delete a recording's chunk files (their rows stay, as the record of what was received)."""
    chunks.delete_stored_files(_stored_chunk_names(session))
    chunks.remove_empty_folders(media_storage_name(session.id, "chunks"))


def _stored_chunk_names(session: RecordingSession) -> list[str]:
    indices = Chunk.objects.filter(session=session).values_list("index", flat=True)
    return [chunk_storage_name(session.id, index) for index in indices]


def output_names(session: RecordingSession) -> list[str]:
    names = [session.video_name, session.audio_name, session.thumbnail_name, session.captions_name]
    renditions = session.renditions.exclude(storage_name="").values_list("storage_name", flat=True)
    return [name for name in [*names, session.transcript_name, *renditions] if name]


def delete_all_files(session: RecordingSession) -> None:
    """Every file a recording has: its chunks (if still there), its outputs, its live build. Safe to repeat."""
    names = list(dict.fromkeys(output_names(session) + _stored_output_names(session)))
    if session.chunks_deleted_at is None:
        names += _stored_chunk_names(session)
    chunks.delete_stored_files(names)
    chunks.remove_empty_folders(media_storage_name(session.id, ""))
    chunks.remove_empty_folders(output_storage_name(session.view_id, ""))
    shutil.rmtree(live_build_dir(session), ignore_errors=True)


def _stored_output_names(session: RecordingSession) -> list[str]:
    """Whatever is stored under the recording's view id, named on its row or not (a store that died
    before its row named its files, e.g. captions): nothing outlives the recording."""
    folder = output_storage_name(session.view_id, "")
    try:
        _, file_names = default_storage.listdir(folder)
    except FileNotFoundError:
        return []
    return [f"{folder}{file_name}" for file_name in file_names]


def live_build_dir(session: RecordingSession) -> Path:
    """Where the recording's video grows while it records (recordings/live.py)."""
    return settings.RECORDER_LIVE_DIR / session.view_id.hex


def work_dir_prefix(session: RecordingSession, kind: str = "process") -> str:
    """The name every work folder of this kind (`process`, `rendition`) of this recording starts with."""
    return f"{kind}-{session.view_id}-"  # ffmpeg may name it in an error a viewer reads


def remove_work_dirs(session: RecordingSession, temp_dir: Path, kind: str = "process") -> int:
    """Remove the work folders of this kind earlier runs of this recording left in `temp_dir` (this
    machine's only): called by a run that took over from a dead one. How many there were."""
    removed = 0
    for folder in temp_dir.glob(f"{work_dir_prefix(session, kind)}*"):
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def store_outputs(session: RecordingSession, outputs: dict[str, tuple[Path, str]]) -> dict:
    """Save each finished output (kind → (path, content type)) under the recording's view id, moving
    the file where the storage can; the fields the recording gets. Outputs of an earlier run that
    this one did not make (another format) are deleted."""
    stored: dict[str, str | int | None] = {
        "video_name": "",
        "video_bytes": None,
        "video_content_type": "",
        "audio_name": "",
        "audio_bytes": None,
        "audio_content_type": "",
        "thumbnail_name": "",
        "thumbnail_bytes": None,
    }
    for kind, (path, content_type) in outputs.items():
        name = output_storage_name(session.view_id, path.name)
        size = path.stat().st_size
        with MovableFile(str(path)) as output_file:
            default_storage.save(name, output_file)
        stored[f"{kind}_name"] = name
        stored[f"{kind}_bytes"] = size
        if kind != "thumbnail":
            stored[f"{kind}_content_type"] = content_type
    _delete_stale_outputs(session, keep={str(stored[f"{kind}_name"]) for kind in ("video", "audio", "thumbnail")})
    return stored


def _delete_stale_outputs(session: RecordingSession, *, keep: set[str]) -> None:
    """A rerun with another output format must not leave the previous run's files behind."""
    for name in (session.video_name, session.audio_name, session.thumbnail_name):
        if name and name not in keep:
            default_storage.delete(name)


def store_output(session: RecordingSession, path: Path) -> str:
    """Save one more output (captions, transcript) under the recording's view id; its storage name."""
    name = output_storage_name(session.view_id, path.name)
    with MovableFile(str(path)) as output_file:
        return default_storage.save(name, output_file)


@contextmanager
def local_copy(name: str) -> Iterator[Path]:
    """A stored file as a local path: the storage's own where it has one, else a copy in
    RECORDER_TEMP_DIR (S3), made once in blocks and kept for the next caller (a recording's
    transcription reads it window after window, task after task) until drop_local_copy or the
    temporary directory's clean-up (expire_recordings)."""
    try:
        local_path = Path(default_storage.path(name))
    except NotImplementedError:
        local_path = None
    if local_path is not None:
        yield local_path
        return
    copy_path = _local_copy_path(name)
    size = default_storage.size(name)
    if not (copy_path.is_file() and copy_path.stat().st_size == size):
        copy_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=copy_path.parent, prefix="stored-", delete=False) as partial:
            with default_storage.open(name, "rb") as stored:
                shutil.copyfileobj(stored, partial, 1024 * 1024)
        os.replace(partial.name, copy_path)
    os.utime(copy_path)  # in use: not stale for the clean-up
    yield copy_path


@contextmanager
def private_copy(name: str, directory: Path) -> Iterator[Path]:
    """A stored file as a local path that no other task deletes meanwhile (local_copy's shared copy
    may be dropped by the transcription): the storage's own path where it has one, else a copy in
    `directory`, made in blocks, which goes with the directory."""
    try:
        local_path = Path(default_storage.path(name))
    except NotImplementedError:
        local_path = directory / f"stored{Path(name).suffix[:8]}"
        with default_storage.open(name, "rb") as stored, local_path.open("wb") as copy:
            shutil.copyfileobj(stored, copy, 1024 * 1024)
    yield local_path


def drop_local_copy(name: str) -> None:
    if name:
        _local_copy_path(name).unlink(missing_ok=True)


def _local_copy_path(name: str) -> Path:
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return settings.RECORDER_TEMP_DIR / f"stored-copy-{digest}{Path(name).suffix[:8]}"
