"""A file system storage whose saves are atomic and durable: all of a file or none of it, on disk."""

import errno
import os
import tempfile

from django.core.files import File
from django.core.files.storage import FileSystemStorage

_COPY_BLOCK_BYTES = 1024 * 1024


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MovableFile(File):
    """A finished local file that the caller gives up: a storage on the same file system renames it
    into place instead of copying it (a processed 1 GiB video costs a rename, not a copy)."""

    def __init__(self, path: str):
        super().__init__(open(path, "rb"), name=path)
        self._path = path

    def temporary_file_path(self) -> str:
        return self._path


class DurableFileSystemStorage(FileSystemStorage):
    """`save()` writes to a hidden temporary name in the target directory, fsyncs, then renames.

    A reader (or a restart after a crash) sees either the old file or the complete new one, never
    a prefix; a save that returned is on disk. Saving an existing name replaces it, so a retried
    upload or a second processing run overwrites rather than piling up `name_abc123` copies.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_overwrite", True)
        kwargs.setdefault("file_permissions_mode", 0o644)
        super().__init__(**kwargs)

    def _save(self, name: str, content) -> str:
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        os.makedirs(directory, exist_ok=True)
        if not (hasattr(content, "temporary_file_path") and self._move_into_place(content, full_path)):
            self._copy_into_place(content, full_path)
        _fsync_directory(directory)
        return os.path.relpath(full_path, self.location).replace("\\", "/")

    def _move_into_place(self, content, full_path: str) -> bool:
        """Rename a finished temporary file into place; False when it is on another file system."""
        source_path = content.temporary_file_path()
        if not getattr(content, "is_synced", False):  # a staged chunk was fsynced when it was written
            with open(source_path, "rb") as source:
                os.fsync(source.fileno())
        os.chmod(source_path, self.file_permissions_mode or 0o644)
        try:
            os.replace(source_path, full_path)
        except OSError as error:
            if error.errno == errno.EXDEV:
                return False
            raise
        return True

    def _copy_into_place(self, content, full_path: str) -> None:
        fd, partial_path = tempfile.mkstemp(dir=os.path.dirname(full_path), prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as partial:
                if hasattr(content, "seek") and getattr(content, "seekable", lambda: True)():
                    content.seek(0)
                while block := content.read(_COPY_BLOCK_BYTES):
                    partial.write(block)
                partial.flush()
                os.fsync(partial.fileno())
            os.chmod(partial_path, self.file_permissions_mode or 0o644)
            os.replace(partial_path, full_path)
        except BaseException:
            try:
                os.unlink(partial_path)
            except FileNotFoundError:
                pass
            raise
