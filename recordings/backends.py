"""The `embedded` task backend: tasks run on a few background threads of the web process itself.

Nothing to install, and no request waits for processing: finalize answers at once, whatever the
recording's length. At most RECORDER_PROCESSING_CONCURRENCY tasks run at once per process; the rest
wait in memory, each distinct task once. A killed process loses what was waiting; the recovery
sweep (tasks.keep_recovering) queues those recordings again from the database.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connections
from django_tasks.backends.immediate import ImmediateBackend
from django_tasks.base import Task, TaskResult, TaskResultStatus
from django_tasks.utils import get_random_id


class EmbeddedBackend(ImmediateBackend):
    supports_defer = False
    supports_async_task = False

    def __init__(self, alias: str, params: dict):
        super().__init__(alias, params)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: set[str] = set()

    def enqueue(self, task: Task, args, kwargs) -> TaskResult:
        self.validate_task(task)
        task_result = TaskResult(
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
        with self._lock:
            if key in self._waiting:
                return task_result  # the same task already waits here: it will do this work
            self._waiting.add(key)
            if self._executor is None:  # created lazily: after gunicorn forks, in each worker
                self._executor = ThreadPoolExecutor(
                    max_workers=settings.RECORDER_PROCESSING_CONCURRENCY, thread_name_prefix="recorder-task"
                )
            executor = self._executor
        executor.submit(self._run, key, task_result)
        return task_result

    def _run(self, key: str, task_result: TaskResult) -> None:
        with self._lock:
            self._waiting.discard(key)  # from now on, an equal task is new work and queues again
        try:
            self._execute_task(task_result)  # ImmediateBackend's: runs it, records and logs a failure
        finally:
            connections.close_all()  # this thread's connections only
