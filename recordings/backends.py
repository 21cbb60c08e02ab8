"""The `embedded` task backend: tasks run on a few background threads of the web process itself.

Nothing to install, and no request waits for processing: finalize answers at once, whatever the
recording's length. One queue and RECORDER_PROCESSING_CONCURRENCY threads per process (django-tasks
makes a backend object per thread, so they live in this module, not on the object); a task equal
to one still waiting is not queued twice. The threads are daemons: a stopping process does not
wait for a run to finish (gunicorn would kill it after its graceful timeout anyway); the run is
handed back (runs.release_active_runs) and the recovery sweep of a live process takes it up.
"""

import atexit
import json
import os
import queue
import threading

from django.conf import settings
from django.db import connections
from django_tasks.backends.immediate import ImmediateBackend
from django_tasks.base import Task, TaskResult, TaskResultStatus
from django_tasks.utils import get_random_id

from . import runs

_lock = threading.Lock()
_queue: "queue.Queue[tuple[str, ImmediateBackend, TaskResult]]" = queue.Queue()
# Captions and renditions (the `captions` and `renditions` queues) have a thread each, so neither
# holds up processing (`ready` does not wait behind them) nor the other. Both run at the lowest
# priority (recordings/background.py).
CAPTIONS_QUEUE_NAME, RENDITIONS_QUEUE_NAME = "captions", "renditions"
SLOW_QUEUE_NAMES = (CAPTIONS_QUEUE_NAME, RENDITIONS_QUEUE_NAME)
_slow_queues: "dict[str, queue.Queue[tuple[str, ImmediateBackend, TaskResult]]]" = {
    name: queue.Queue() for name in SLOW_QUEUE_NAMES
}
_waiting: dict[str, TaskResult] = {}  # key → the task waiting under it, not yet started
_started_in_pid: int | None = None


class EmbeddedBackend(ImmediateBackend):
    supports_defer = False
    supports_async_task = False

    def enqueue(self, task: Task, args, kwargs) -> TaskResult:
        self.validate_task(task)
        task_result: TaskResult = TaskResult(
            task=task,
            id=get_random_id(),
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        key = json.dumps([task.module_path, args, kwargs], sort_keys=True, default=str)
        with _lock:
            _start_threads()
            if key in _waiting:
                return _waiting[key]  # the same task already waits here: it will do this work
            _waiting[key] = task_result
        _slow_queues.get(task.queue_name, _queue).put((key, self, task_result))
        return task_result


def waiting_arguments() -> list[list]:
    """The arguments of the tasks waiting in this process (not yet started)."""
    with _lock:
        return [task_result.args for task_result in _waiting.values()]


def wait_until_idle() -> None:
    """Block until every task queued in this process has run (for commands that queue and exit)."""
    _queue.join()
    for slow_queue in _slow_queues.values():
        slow_queue.join()


def _start_threads() -> None:
    """Once per process: after a fork (gunicorn's workers), each process has its own queue and threads."""
    global _started_in_pid, _queue
    if _started_in_pid == os.getpid():
        return
    if _started_in_pid is not None:  # forked from a process that had started them: its state is not ours
        _queue = queue.Queue()
        for name in SLOW_QUEUE_NAMES:
            _slow_queues[name] = queue.Queue()
        _waiting.clear()
    _started_in_pid = os.getpid()
    for number in range(settings.RECORDER_PROCESSING_CONCURRENCY):
        threading.Thread(target=_work, args=(_queue,), name=f"recorder-task-{number}", daemon=True).start()
    for name in SLOW_QUEUE_NAMES:
        threading.Thread(target=_work, args=(_slow_queues[name],), name=f"recorder-{name}-task", daemon=True).start()
    atexit.register(runs.release_active_runs)


# Background work yields the CPU to the web process's request threads: uploads keep their latency
# while recordings are built and processed beside them (docs/performance.md). Linux niceness is per
# thread, and ffmpeg children inherit it.
BACKGROUND_NICENESS = 10


def _work(tasks: "queue.Queue[tuple[str, ImmediateBackend, TaskResult]]") -> None:
    if hasattr(os, "setpriority"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    while True:
        key, backend, task_result = tasks.get()
        with _lock:
            _waiting.pop(key, None)  # from now on, an equal task is new work and queues again
        try:
            backend._execute_task(task_result)  # ImmediateBackend's: runs it, records and logs a failure
        finally:
            connections.close_all()  # this thread's connections only
            tasks.task_done()
