"""How a chunk reaches durable storage and how a recording's chunks are joined (storage API only)."""

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.core.files import File
from django.core.files.storage import Storage, default_storage

from .errors import RecorderError, storage_error

BLOCK_BYTES = 1024 * 1024
SNIFF_BYTES = 64

EBML_MAGIC = b"\x1a\x45\xdf\xa3"
EBML_DOCTYPE_ID = b"\x42\x82"


class ChunkDigest:
    """A chunk's size, SHA-256 and first SNIFF_BYTES (what `sniff_container` reads), taken as its
    blocks go by: the one place where a chunk's bytes are hashed and its head kept."""

    def __init__(self):
        self.size = 0
        self.head = b""
        self._sha256 = hashlib.sha256()

    def update(self, block: bytes) -> None:
        self.size += len(block)
        self._sha256.update(block)
        self.head = keep_head(self.head, block)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


def keep_head(head: bytes, block: bytes) -> bytes:
    """`head` with as much of `block` after it as makes it SNIFF_BYTES long."""
    return head if len(head) >= SNIFF_BYTES else head + block[: SNIFF_BYTES - len(head)]


class StagedChunk(File):
    """A received chunk in a local temporary file, measured, hashed and fsynced, not yet acknowledged."""

    is_synced = True  # tells the durable storage that renaming it into place needs no second fsync

    def __init__(self, path: str, *, size: int, sha256: str, head: bytes):
        super().__init__(open(path, "rb"), name=path)
        self.path = path
        self.size = size
        self.sha256 = sha256
        self.head = head

    def temporary_file_path(self) -> str:
        """Lets the durable storage rename the staged file into place instead of copying it."""
        return self.path

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@contextmanager
def storage_errors() -> Iterator[None]:
    """Turns a full disk or an unreachable store into a retryable 507/503 RecorderError."""
    try:
        yield
    except Exception as error:
        failure = storage_error(error)
        if failure is None:
            raise
        raise failure from error


def chunk_too_large(max_bytes: int) -> RecorderError:
    return RecorderError(
        code="chunk_too_large",
        detail=f"A chunk may hold at most {max_bytes} bytes (RECORDER_MAX_CHUNK_BYTES).",
        status=413,
    )


def stage_upload(stream: BinaryIO, *, max_bytes: int, staging_dir: Path) -> StagedChunk:
    """Stream `stream` into a temporary file in blocks, hashing as it goes; never all in memory.

    An upload that Django already spooled to a temporary file is hashed in place and adopted,
    not copied. Raises `chunk_too_large` as soon as the limit is passed.
    """
    staging_dir.mkdir(parents=True, exist_ok=True)
    spooled_path = getattr(stream, "temporary_file_path", None)
    if spooled_path is not None and os.path.dirname(spooled_path()) == str(staging_dir):
        return _adopt_spooled_file(stream, spooled_path(), max_bytes=max_bytes)
    digest = ChunkDigest()
    fd, path = tempfile.mkstemp(dir=staging_dir, prefix="chunk-", suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as staged:
            while block := stream.read(BLOCK_BYTES):
                digest.update(block)
                if digest.size > max_bytes:
                    raise chunk_too_large(max_bytes)
                staged.write(block)
            staged.flush()
            os.fsync(staged.fileno())  # here, not under the database lock where the rename happens
    except BaseException:
        os.unlink(path)
        raise
    return StagedChunk(path, size=digest.size, sha256=digest.sha256, head=digest.head)


def sha256_of_stored(names: Iterable[str], storage: Storage = default_storage) -> str:
    """The SHA-256 of the stored files `names` joined in order, read in blocks."""
    digest = ChunkDigest()
    for name in names:
        with storage.open(name, "rb") as stored:
            while block := stored.read(BLOCK_BYTES):
                digest.update(block)
    return digest.sha256


def remove_stale_temp_entries(temp_dir: Path, *, older_than_seconds: int, now: float | None = None) -> int:
    """Delete what killed processes left in the temporary directory: staged uploads and processing
    directories untouched (newest mtime inside) for longer than any live request or run leaves one.
    The number of entries removed."""
    cutoff = (time.time() if now is None else now) - older_than_seconds
    removed = 0
    try:
        entries = list(os.scandir(temp_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.endswith(".lock"):
            continue  # a machine-wide lock (captions, renditions): held for as long as its work runs
        try:
            if _newest_mtime(entry) >= cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # its owner finished and removed it meanwhile
        removed += 1
    return removed


def _newest_mtime(entry: os.DirEntry) -> float:
    newest = entry.stat(follow_symlinks=False).st_mtime
    if entry.is_dir(follow_symlinks=False):
        for folder, _, file_names in os.walk(entry.path):
            for name in file_names:
                newest = max(newest, os.stat(os.path.join(folder, name), follow_symlinks=False).st_mtime)
    return newest


def _adopt_spooled_file(uploaded, path: str, *, max_bytes: int) -> StagedChunk:
    size = os.path.getsize(path)
    if size > max_bytes:
        raise chunk_too_large(max_bytes)
    sha256, head = getattr(uploaded, "sha256", None), getattr(uploaded, "head", None)
    if sha256 is None or head is None:  # spooled by a handler that did not hash on the way in
        sha256, head = _hash_file(path)
    with open(path, "rb") as spooled:
        os.fsync(spooled.fileno())  # here, not under the database lock where the rename happens
    # Django's temporary upload file deletes itself on close; take it over under a new name.
    adopted_path = f"{path}.adopted"
    os.link(path, adopted_path)
    uploaded.close()
    return StagedChunk(adopted_path, size=size, sha256=sha256, head=head)


def _hash_file(path: str) -> tuple[str, bytes]:
    digest = ChunkDigest()
    with open(path, "rb") as spooled:
        while block := spooled.read(BLOCK_BYTES):
            digest.update(block)
    return digest.sha256, digest.head


def store_chunk(staged: StagedChunk, name: str, *, storage: Storage = default_storage) -> None:
    """Write the staged chunk to `name` durably (temporary name, fsync, rename) before returning."""
    stored_name = storage.save(name, staged)
    if stored_name != name:  # a storage that renames on collision would break the index → name map
        storage.delete(stored_name)
        raise RuntimeError(f"storage saved {name!r} as {stored_name!r}; it must allow overwrite")


@dataclass(frozen=True)
class JoinedSource:
    size: int
    sha256: str
    head: bytes


def join_chunks(names: Iterable[str], destination: Path, *, storage: Storage = default_storage) -> JoinedSource:
    """Concatenate the stored chunks `names`, in the order given, into `destination`, streaming."""
    digest = ChunkDigest()
    with open(destination, "wb") as joined:
        for name in names:
            with storage.open(name, "rb") as chunk_file:
                while block := chunk_file.read(BLOCK_BYTES):
                    digest.update(block)
                    joined.write(block)
    return JoinedSource(size=digest.size, sha256=digest.sha256, head=digest.head)


def delete_stored_files(names: Iterable[str], *, storage: Storage = default_storage) -> None:
    """Delete `names`; a name already gone is fine (deleting again after a crash must work)."""
    for name in names:
        storage.delete(name)


def remove_empty_folders(prefix: str, *, storage: Storage = default_storage) -> None:
    """On a file system, remove the folders left empty under `prefix` (object stores have none)."""
    try:
        root = storage.path(prefix)
    except NotImplementedError:
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty, or already gone


def sniff_container(head: bytes) -> str | None:
    """The container the first bytes of a recording announce: webm, matroska, mp4, ogg, or None.

    Decided from bytes, never from the client's mime type: Chrome labels H.264 recordings
    `video/webm;codecs=h264` but writes Matroska.
    """
    if head.startswith(EBML_MAGIC):
        doctype = _ebml_doctype(head)
        return "webm" if doctype == b"webm" else "matroska"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"OggS"):
        return "ogg"
    return None


def _ebml_doctype(head: bytes) -> bytes | None:
    position = head.find(EBML_DOCTYPE_ID)
    if position < 0 or position + 2 >= len(head):
        return None
    size_byte = head[position + 2]
    width = 8 - size_byte.bit_length() + 1  # an EBML variable-size integer: leading zeros + 1
    if not 1 <= width <= 8:
        return None
    size = size_byte & (0xFF >> width)
    for extra in head[position + 3 : position + 2 + width]:
        size = (size << 8) | extra
    start = position + 2 + width
    return head[start : start + size]
