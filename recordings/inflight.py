"""Which recordings have a chunk upload being received right now, seen from every process of a machine.

A finalize that does not say how many chunks there are waits for these before it decides. Each
upload holds an empty marker file in RECORDER_TEMP_DIR while it is staged and stored, and, under
`make serve`, while its body arrives if its URL names the recording (the session id in the query
string or the path): no database write on the chunk path, no fsync. A killed process leaves its
marker behind; markers older than RECORDER_FINALIZE_MAX_WAIT_SECONDS are not counted (and
expire_recordings removes them with the other temporary files). Uploads received by another
machine, or whose recording only their form or JSON body names, are not seen while they arrive:
there only the grace period helps.
"""

import os
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .field_names import FIELD_ALIASES

_PREFIX = "uploading-"


@contextmanager
def marked(session_id: uuid.UUID, temp_dir: Path) -> Iterator[None]:
    """Mark an upload of `session_id` as in progress for the duration of the block."""
    path = mark(session_id, temp_dir)
    try:
        yield
    finally:
        unmark(path)


def mark(session_id: uuid.UUID, temp_dir: Path | str) -> Path:
    """A marker of an upload of `session_id` in progress; `unmark` it when the upload is over."""
    os.makedirs(temp_dir, exist_ok=True)
    path = Path(temp_dir) / f"{_PREFIX}{uuid.UUID(str(session_id)).hex}-{secrets.token_hex(6)}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def unmark(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_UPLOAD_PATH = re.compile(r"/(?:receive-video-chunk|finalize-recording)(?:/(?P<session_id>[^/]+))?/?$")


def session_id_of_upload(request_target: str) -> uuid.UUID | None:
    """The recording a chunk upload or finalize names in its URL (path or query string), if any:
    what the server that buffers bodies (`make serve`) can mark while the body is still arriving."""
    target = urlsplit(request_target)
    upload = _UPLOAD_PATH.search(target.path)
    if upload is None:
        return None
    query = parse_qs(target.query)
    candidates = [upload["session_id"]] + [
        value for name in ("session_id", *FIELD_ALIASES["session_id"]) for value in query.get(name, [])
    ]
    for candidate in filter(None, candidates):
        try:
            return uuid.UUID(candidate)
        except ValueError:
            return None  # the app refuses it
    return None


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
