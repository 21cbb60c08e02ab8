"""Serializes SQLite write transactions across processes with flock, so writers queue instead of polling.

SQLite makes a writer that finds the database locked sleep and retry (1, 2, 5, 10 ... 100 ms). Under
many concurrent chunk uploads those sleeps, not the work, set the latency. A blocking flock on a
file beside the database hands the lock to the next writer the moment it is released. Other
databases lock rows themselves: there this is a no-op.
"""

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import connection

_process_lock = threading.Lock()  # flock is per open file: threads of one process queue here first
_this_thread = threading.local()  # .deferred: callbacks waiting for this thread's flock to be released


def _sqlite_lock_path() -> str | None:
    if connection.vendor != "sqlite":
        return None
    database_name = str(connection.settings_dict["NAME"])
    if database_name == ":memory:" or database_name.startswith("file:"):
        return None  # a test database in memory: one process only
    return f"{database_name}.write-lock"


@contextmanager
def _flock(path: str) -> Iterator[None]:
    with file_lock(path, thread_lock=_process_lock):
        yield


@contextmanager
def file_lock(path: str | os.PathLike, *, thread_lock: threading.Lock) -> Iterator[int]:
    """An exclusive flock on `path` (created if need be) across processes; `thread_lock` queues this
    process's threads first (a flock is per open file). Yields the file's descriptor."""
    with thread_lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the flock


@contextmanager
def file_lock_if_free(path: str | os.PathLike, *, thread_lock: threading.Lock) -> Iterator[int | None]:
    """file_lock without waiting: yields the descriptor, or None when another thread or process holds it."""
    if not thread_lock.acquire(blocking=False):
        yield None
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield fd
        finally:
            os.close(fd)
    finally:
        thread_lock.release()


@contextmanager
def database_write_lock() -> Iterator[None]:
    """Hold this around a write transaction; it orders SQLite writers, elsewhere it does nothing."""
    path = _sqlite_lock_path()
    if path is None:
        yield
        return
    with held_write_lock(path):
        yield


@contextmanager
def held_write_lock(path: str) -> Iterator[None]:
    with _flock(path):
        _this_thread.deferred = []
        try:
            yield
        finally:
            deferred, _this_thread.deferred = _this_thread.deferred, None
    for callback in deferred:
        callback()


def after_write_lock(callback: Callable[[], object]) -> None:
    """Run `callback` once this thread's write lock is released (now if it holds none).

    A transaction's on-commit callbacks run while the lock around it is still held; work that
    takes seconds (processing, with the in-process task backend) must not hold up every writer.
    """
    deferred = getattr(_this_thread, "deferred", None)
    if deferred is None:
        callback()
    else:
        deferred.append(callback)
