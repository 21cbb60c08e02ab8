"""How much memory the JSON bodies this process is reading may hold at once; past it, 503 and retry."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from .errors import RecorderError

_lock = threading.Lock()
_reserved_bytes = 0


@contextmanager
def reserve(byte_count: int) -> Iterator[None]:
    """Hold `byte_count` of RECORDER_JSON_MEMORY_BUDGET_BYTES while the block runs, or answer 503
    `server_busy` with Retry-After at once: a client retries later, the process never swells."""
    global _reserved_bytes
    with _lock:
        if _reserved_bytes + byte_count > settings.RECORDER_JSON_MEMORY_BUDGET_BYTES:
            raise RecorderError(
                code="server_busy",
                detail="The server is reading as many JSON uploads as it holds in memory at once; retry "
                "shortly, or send chunks as multipart/form-data or a raw body, which are streamed to disk.",
                status=503,
                retry_after_seconds=1,
            )
        _reserved_bytes += byte_count
    try:
        yield
    finally:
        with _lock:
            _reserved_bytes -= byte_count


def reserved_bytes() -> int:
    return _reserved_bytes
