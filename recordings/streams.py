"""Joins a recording's chunks into the container streams they carry, keeping only what plays.

Most recorders send one stream: a header in the first chunk, then data. Two kinds send more, and
each of their streams starts with a chunk that starts with a header: clients that send
`new Blob(allChunksSoFar)` every time (each chunk holds the whole recording so far), and recorders
restarted mid-recording. Of two streams in a row, the first is dropped when it is a prefix of the
second (the second carries it and more), the second when it is a prefix of the first (an older
copy that arrived late); otherwise both are kept, as segments to be joined end to end
(`utils.concat_segments`). Everything streams in blocks; docs/processing.md, "Streams".
"""

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from django.core.files.storage import Storage, default_storage

from . import chunks, utils

# Only these headers begin a stream. Every Ogg page starts with `OggS`, so an Ogg chunk cut at a
# page boundary (Firefox) would look like a new stream and is not one.
STREAM_CONTAINERS = frozenset({"webm", "matroska", "mp4"})


@dataclass(frozen=True)
class Segment:
    """One kept stream, in a file of the run's work folder."""

    path: Path
    size: int
    head: bytes  # its first chunks.SNIFF_BYTES bytes

    @property
    def container(self) -> str | None:
        return chunks.sniff_container(self.head)


@dataclass(frozen=True)
class JoinedStreams:
    segments: list[Segment]  # the kept streams in order: one for an ordinary recording
    size: int  # of the kept bytes
    sha256: str  # of the kept bytes, concatenated in order


def join_streams(
    names: Iterable[str], destination: Path, *, max_segments: int, storage: Storage = default_storage
) -> JoinedStreams:
    """Copy the stored chunks `names`, in order, into one file per stream (the first is
    `destination`, the next ones beside it), dropping each stream the next one extends.

    A single stream costs what a plain concatenation does: each byte is read, hashed and written
    once. A stream that follows another also reads the other once, to compare. More than
    `max_segments` kept streams is `too_many_streams`, raised as soon as it is certain.
    """
    join = _Join(destination, max_segments)
    try:
        for name in names:
            with storage.open(name, "rb") as chunk_file:
                block = _first_block(chunk_file)
                if not block:
                    continue  # an empty Blob (the last of an MP4 recording) holds nothing
                if join.current is None or chunks.sniff_container(block[: chunks.SNIFF_BYTES]) in STREAM_CONTAINERS:
                    join.start_stream()
                while block:
                    join.write(block)
                    block = chunk_file.read(chunks.BLOCK_BYTES)
        return join.finish()
    finally:
        join.close()


def _first_block(chunk_file: IO[bytes]) -> bytes:
    """A chunk's first block, holding at least its first SNIFF_BYTES (a storage may read short)."""
    block = chunk_file.read(chunks.BLOCK_BYTES)
    while block and len(block) < chunks.SNIFF_BYTES:
        more = chunk_file.read(chunks.BLOCK_BYTES)
        if not more:
            break
        block += more
    return block


class _Stream:
    """The stream being written: its file and what it holds so far."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.size = 0
        self.head = b""  # its first SNIFF_BYTES, whichever chunks they come from


class _Join:
    """Streams written one after the other. While a stream is written, the one before it is
    undecided: it is compared with the new one as the bytes come, and dropped as soon as the new
    one has matched all of it, kept as soon as a byte differs (or the new one ends shorter).

    The digest of the kept bytes cannot be undone, so while the one before is undecided the new
    stream's bytes go into two digests: one that holds the stream before, one that does not.
    """

    def __init__(self, destination: Path, max_segments: int):
        self.destination = destination
        self.max_segments = max_segments
        self.kept: list[Segment] = []
        self.kept_size = 0
        self.kept_digest = hashlib.sha256()  # of self.kept, concatenated
        self.streams_begun = 0  # the dropped ones included: it names their files
        self.current: _Stream | None = None
        self.digest = hashlib.sha256()  # the kept bytes if `current` and any undecided stream are kept
        self.previous: Segment | None = None  # the undecided stream, if any
        self.previous_digest = hashlib.sha256()  # self.kept + previous
        self.digest_without_previous: Any = None  # self.kept + current, while `previous` is undecided
        self.previous_file: BinaryIO | None = None  # read alongside `current`
        self.compared_bytes = 0

    def start_stream(self) -> None:
        if self.current is not None:
            self._end_current()
        path = (
            self.destination
            if self.streams_begun == 0
            else self.destination.with_name(f"{self.destination.name}-{self.streams_begun}")
        )
        self.streams_begun += 1
        self.current = _Stream(path)
        if self.previous is None:
            self.digest = self.kept_digest.copy()
        else:
            self.digest = self.previous_digest.copy()
            self.digest_without_previous = self.kept_digest.copy()
            self.previous_file = open(self.previous.path, "rb")
            self.compared_bytes = 0

    def _written(self) -> _Stream:
        assert self.current is not None, "a stream is being written"
        return self.current

    def _undecided(self) -> Segment:
        assert self.previous is not None, "a stream before is undecided"
        return self.previous

    def write(self, block: bytes) -> None:
        current = self._written()
        current.head = chunks.keep_head(current.head, block)
        current.file.write(block)
        current.size += len(block)
        self.digest.update(block)
        if self.previous is not None:
            self.digest_without_previous.update(block)
            self._compare(block)

    def _compare(self, block: bytes) -> None:
        assert self.previous_file is not None
        expected = self.previous_file.read(min(len(block), self._undecided().size - self.compared_bytes))
        if block[: len(expected)] != expected:
            self._keep_previous()  # a restarted recorder: its own bytes from the header on
            return
        self.compared_bytes += len(expected)
        if self.compared_bytes == self._undecided().size:
            self._drop_previous()  # the new stream holds all of the one before: a cumulative Blob

    def _keep_previous(self) -> None:
        self._stop_comparing()
        self._keep_undecided()
        self.digest_without_previous = None
        if len(self.kept) + 1 > self.max_segments:  # the current stream will be one more
            raise utils.MediaError(
                "too_many_streams",
                f"The recording holds more than {self.max_segments} separate streams (a header in a chunk "
                "other than the first starts one); at most that many are joined.",
            )

    def _keep_undecided(self) -> None:
        previous = self._undecided()
        self.kept.append(previous)
        self.kept_size += previous.size
        self.kept_digest = self.previous_digest
        self.previous = None

    def _drop_previous(self) -> None:
        self._stop_comparing()
        os.unlink(self._undecided().path)
        self.previous = None
        self.digest = self.digest_without_previous
        self.digest_without_previous = None

    def _stop_comparing(self) -> None:
        if self.previous_file is not None:
            self.previous_file.close()
            self.previous_file = None

    def _end_current(self) -> None:
        """The current stream is complete: it becomes the undecided one, for the next to compare with."""
        current = self._written()
        current.file.close()
        if self.previous is not None and self.compared_bytes == current.size:
            # all of it is the start of the stream before: an older cumulative Blob that arrived
            # late (index-less uploads overtaking each other). It adds nothing: dropped.
            self._stop_comparing()
            os.unlink(current.path)
            self.current = None
            self.digest_without_previous = None
            return
        if self.previous is not None:  # it ended before it had matched all of the stream before
            self._keep_previous()
        self.previous = Segment(current.path, current.size, current.head)
        self.previous_digest = self.digest
        self.current = None

    def finish(self) -> JoinedStreams:
        if self.current is None:  # no bytes at all: an empty source, as a plain join gives
            self.start_stream()
        self._end_current()
        self._keep_undecided()  # the last stream has no successor to extend it: it is kept
        return JoinedStreams(segments=self.kept, size=self.kept_size, sha256=self.kept_digest.hexdigest())

    def close(self) -> None:
        self._stop_comparing()
        if self.current is not None:
            self.current.file.close()
