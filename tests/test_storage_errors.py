"""A full disk: the chunk that does not fit gets 507 `storage_full`, leaves nothing behind, and its
retry succeeds once there is room. The media root is a real 2 MiB tmpfs, mounted by the test."""

import hashlib
import os
import subprocess

import pytest

from recordings.models import Chunk
from tests.conftest import load_chrome_set, skip_or_fail, use_media_root
from tests.recorder_client import post_chunk, start

pytestmark = pytest.mark.django_db(transaction=True)

CHUNK_BYTES = 256 * 1024


@pytest.fixture
def tiny_media_root(media_root, tmp_path, settings):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a 2 MiB tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    root = use_media_root(settings, mount_point / "media")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def files_under(root) -> list[str]:
    """Every stored file but the live build's (made from the chunks, not a copy of any: tests/test_live.py)."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).parts[0] != ".live"
    )


@pytest.mark.parametrize("transport", ["multipart", "raw"])
def test_a_chunk_that_does_not_fit_gets_507_leaves_nothing_and_its_retry_succeeds(api, tiny_media_root, transport):
    header_chunk = load_chrome_set("vp8_opus").chunks[0]
    started = start(api)
    assert post_chunk(api, started, header_chunk, index=0, transport=transport).status_code == 201
    filler = tiny_media_root / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024))  # another tenant of the disk

    bodies = {}
    for index in range(1, 20):
        body = os.urandom(CHUNK_BYTES)
        response = post_chunk(api, started, body, index=index, transport=transport)
        if response.status_code != 201:
            break
        bodies[index] = body
    else:
        pytest.fail("the 2 MiB disk never filled up")

    assert response.status_code == 507, response.content
    assert response.json()["code"] == "storage_full"
    assert response["Retry-After"] == "30"
    # nothing of the refused chunk anywhere: no row, no file, no staged or partial copy
    assert not Chunk.objects.filter(session_id=started.session_id, index=index).exists()
    chunk_dir = f"recordings/{started.session_id}/chunks"
    assert files_under(tiny_media_root) == sorted(["filler", *(f"{chunk_dir}/{i}" for i in [0, *bodies])])
    for stored_index, stored_body in bodies.items():
        stored = (tiny_media_root / chunk_dir / str(stored_index)).read_bytes()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(stored_body).digest()

    filler.unlink()  # room again: the client's retry of the same chunk goes through
    response = post_chunk(api, started, body, index=index, transport=transport)
    assert response.status_code == 201, response.content
    assert (tiny_media_root / chunk_dir / str(index)).read_bytes() == body
