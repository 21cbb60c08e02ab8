"""What runs in the background: thin tasks that look the recording up and call `processing`."""

from django_tasks import task

from . import processing


@task()
def process_recording_task(session_id: str) -> str:
    """Process one recording; returns its final status. Safe to run twice."""
    return processing.process_recording(session_id).status
