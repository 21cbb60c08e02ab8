"""Which recordings have a chunk upload being received right now, seen from every process of a machine.

A finalize that does not say how many chunks there are waits for these before it decides. Each
upload holds an empty marker file in RECORDER_TEMP_DIR while it is staged and stored: no database
write on the chunk path, no fsync. A killed process leaves its marker behind; markers older than
RECORDER_FINALIZE_MAX_WAIT_SECONDS are not counted (and expire_recordings removes them with the other
temporary files). Uploads received by another machine are not seen: there only the grace period helps.
"""

import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PREFIX = "uploading-"


@contextmanager
def marked(session_id: uuid.UUID, temp_dir: Path) -> Iterator[None]:
    """Mark an upload of `session_id` as in progress for the duration of the block."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    path = temp_dir / f"{_PREFIX}{uuid.UUID(str(session_id)).hex}-{secrets.token_hex(6)}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def count(session_id: uuid.UUID, temp_dir: Path, *, max_age_seconds: float, now: float | None = None) -> int:
    """How many uploads of `session_id` are in progress on this machine (markers younger than max_age)."""
    prefix = f"{_PREFIX}{uuid.UUID(str(session_id)).hex}-"
    oldest_counted = (time.time() if now is None else now) - max_age_seconds
    in_progress = 0
    try:
        entries = list(os.scandir(temp_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= oldest_counted:
                in_progress += 1
        except FileNotFoundError:
            continue  # its upload finished meanwhile
    return in_progress
