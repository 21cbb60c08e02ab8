"""The embedded task backend: one queue and its threads per process, whatever thread enqueues, and
a task equal to one still waiting is queued once."""

import threading

from django_tasks import task

from recordings import backends

blocker_started = threading.Event()
release_blocker = threading.Event()
ran: list[tuple[str, str]] = []


@task()
def block() -> None:
    blocker_started.set()
    release_blocker.wait(30)


@task()
def note(name: str) -> None:
    ran.append((name, threading.current_thread().name))


def test_equal_tasks_from_any_thread_wait_once_in_one_queue(settings):
    settings.TASKS = {"default": {"BACKEND": "recordings.backends.EmbeddedBackend"}}
    block.enqueue()
    assert blocker_started.wait(10)  # the process's one processing thread is busy from here on

    def enqueue_from_a_request_thread(name: str) -> None:
        note.enqueue(name)  # django-tasks gives each thread its own backend object

    threads = [threading.Thread(target=enqueue_from_a_request_thread, args=("x",)) for _ in range(3)]
    threads.append(threading.Thread(target=enqueue_from_a_request_thread, args=("y",)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(args for args in backends.waiting_arguments()) == [["x"], ["y"]]
    release_blocker.set()
    backends.wait_until_idle()
    assert [name for name, _ in ran] == ["x", "y"]  # each once, in the order they were queued
    assert {thread_name for _, thread_name in ran} == {"recorder-task-0"}
    assert backends.waiting_arguments() == []
