"""How background work behaves beside the uploads: slow work (captions, renditions) runs one job of
a kind at a time on a machine, on a thread at the lowest priority whose ffmpeg children inherit it;
a long run shows it is alive with a heartbeat."""

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from django.conf import settings
from django.db import DatabaseError, connections

from .locks import file_lock, file_lock_if_free

logger = logging.getLogger("recordings.background")

LOW_PRIORITY_NICENESS = 19
_Result = TypeVar("_Result")
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_lock = threading.Lock()


def at_low_priority(work: Callable[[], _Result], *, name: str) -> _Result:
    """Run `work` on a new thread at nice 19 and return what it returns (or raise what it raised):
    its ffmpeg, and any threads started from it, inherit that. Uploads and processing come first."""
    outcome: dict = {}

    def run() -> None:
        if hasattr(os, "setpriority"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY_NICENESS)
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@contextmanager
def one_per_machine(kind: str, *, wait: bool = True) -> Iterator[bool]:
    """One job of `kind` at a time on this machine: a lock file in RECORDER_TEMP_DIR (which the
    clean-up of stale temporary files leaves alone). Yields whether this job has the machine's
    turn: always once it comes with `wait`, else only if no other job of its kind runs."""
    with _thread_locks_lock:
        thread_lock = _thread_locks.setdefault(kind, threading.Lock())
    settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    path = settings.RECORDER_TEMP_DIR / f"{kind}.lock"
    with (file_lock if wait else file_lock_if_free)(path, thread_lock=thread_lock) as fd:
        yield fd is not None


class Heartbeat:
    """Calls `stamp` every `interval_seconds` from a thread while a run works (a processing run's
    heartbeat, a rendition's): a run whose stamp stops was lost with its worker."""

    def __init__(self, stamp: Callable[[], object], *, interval_seconds: float, name: str):
        self._stamp = stamp
        self._interval_seconds = interval_seconds
        self._name = name
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        try:
            while not self._stopped.wait(self._interval_seconds):
                try:
                    self._stamp()
                except DatabaseError:  # a missed beat is retried; only a stopped process stops beating
                    logger.warning("%s failed", self._name, exc_info=True)
        finally:
            connections.close_all()  # this thread's connections only
