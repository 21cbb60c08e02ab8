"""Chunk storage and joining, through the real storage API on a real file system."""

import hashlib
import io
import os
import tracemalloc
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from recordings import chunks
from recordings.errors import RecorderError
from tests.conftest import CHROME_SETS, load_chrome_set


@pytest.mark.parametrize(
    ("head", "container"),
    [
        (load_chrome_set("vp8_opus").chunks[0][:64], "webm"),
        (load_chrome_set("mp4_avc1_opus").chunks[0][:64], "mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska", "matroska"),
        (b"OggS\x00\x02", "ogg"),
        (b"undefined", None),
        (b"{}", None),
        (b"[object Object]", None),
        (b"", None),
        (b"\x00\x00\x00\x18ftx", None),
    ],
)
def test_container_is_sniffed_from_bytes(head, container):
    assert chunks.sniff_container(head) == container


@pytest.mark.parametrize("set_name", CHROME_SETS)
def test_only_the_first_chunk_of_a_chrome_recording_has_a_header(set_name):
    recording = load_chrome_set(set_name)
    assert chunks.sniff_container(recording.chunks[0][:64]) is not None
    assert all(chunks.sniff_container(chunk[:64]) is None for chunk in recording.chunks[1:])


def test_stage_upload_hashes_and_measures_while_streaming(tmp_path):
    tmp_path = tmp_path / "staging"
    data = os.urandom(3 * chunks.BLOCK_BYTES + 17)
    staged = chunks.stage_upload(io.BytesIO(data), max_bytes=len(data), staging_dir=tmp_path)
    assert (staged.size, staged.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert staged.head == data[:64]
    assert Path(staged.path).read_bytes() == data
    staged.discard()
    assert list(tmp_path.iterdir()) == []


def test_stage_upload_stops_at_the_limit_and_leaves_nothing(tmp_path):
    tmp_path = tmp_path / "staging"
    data = os.urandom(2 * chunks.BLOCK_BYTES)
    with pytest.raises(RecorderError) as raised:
        chunks.stage_upload(io.BytesIO(data), max_bytes=chunks.BLOCK_BYTES, staging_dir=tmp_path)
    assert (raised.value.code, raised.value.status) == ("chunk_too_large", 413)
    assert list(tmp_path.iterdir()) == []


def test_stored_chunk_replaces_a_leftover_and_leaves_no_partial_file(media_root, settings):
    name = "recordings/00000000-0000-4000-8000-000000000000/chunks/0"
    default_storage.save(name, ContentFile(b"left over by a crashed attempt"))
    staged = chunks.stage_upload(io.BytesIO(b"the real chunk"), max_bytes=100, staging_dir=settings.RECORDER_TEMP_DIR)
    chunks.store_chunk(staged, name)
    staged.discard()
    directory = media_root / "recordings/00000000-0000-4000-8000-000000000000/chunks"
    assert [path.name for path in directory.iterdir()] == ["0"]
    assert (directory / "0").read_bytes() == b"the real chunk"
    assert list(settings.RECORDER_TEMP_DIR.iterdir()) == []


def test_join_streams_chunks_in_the_given_order(media_root):
    recording = load_chrome_set("vp9_opus")
    names = []
    for index, data in enumerate(recording.chunks):
        names.append(default_storage.save(f"join-test/{index}", ContentFile(data)))
    destination = media_root / "joined"
    joined = chunks.join_chunks(names, destination)
    assert destination.read_bytes() == b"".join(recording.chunks)
    assert joined.sha256 == recording.joined_sha256
    assert joined.size == sum(map(len, recording.chunks))


def test_join_memory_does_not_grow_with_the_recording(media_root):
    block = os.urandom(chunks.BLOCK_BYTES)
    names = [default_storage.save(f"big/{index}", ContentFile(block)) for index in range(40)]
    tracemalloc.start()
    chunks.join_chunks(names, media_root / "joined")
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (media_root / "joined").stat().st_size == 40 * chunks.BLOCK_BYTES
    assert peak_bytes < 4 * chunks.BLOCK_BYTES  # a few blocks in flight, not 40 MiB
