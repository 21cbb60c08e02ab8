"""Status moves: only the legal ones, and only once when two processes race."""

import pytest

from recordings.models import ALLOWED_TRANSITIONS, IllegalTransition, RecordingSession, Status, transition

pytestmark = pytest.mark.django_db

ALL_STATUSES = list(Status)


def make_session(status: str) -> RecordingSession:
    return RecordingSession.objects.create(status=status, upload_token_hash="0" * 64)


@pytest.mark.parametrize("current", ALL_STATUSES)
@pytest.mark.parametrize("wanted", ALL_STATUSES)
def test_only_listed_transitions_are_allowed(current, wanted):
    session = make_session(current)
    if wanted in ALLOWED_TRANSITIONS[current]:
        transition(session, wanted)
        assert RecordingSession.objects.get(pk=session.pk).status == wanted
    else:
        with pytest.raises(IllegalTransition) as raised:
            transition(session, wanted)
        assert (raised.value.code, raised.value.status) == ("illegal_status_change", 409)
        assert RecordingSession.objects.get(pk=session.pk).status == current


def test_the_happy_path_is_recording_finalizing_processing_ready():
    session = make_session(Status.RECORDING)
    for status in (Status.FINALIZING, Status.PROCESSING, Status.READY):
        transition(session, status)
    assert RecordingSession.objects.get(pk=session.pk).status == Status.READY


def test_a_stale_copy_cannot_make_the_same_move_twice():
    session = make_session(Status.FINALIZING)
    first_copy = RecordingSession.objects.get(pk=session.pk)
    second_copy = RecordingSession.objects.get(pk=session.pk)
    transition(first_copy, Status.PROCESSING)
    with pytest.raises(IllegalTransition):
        transition(second_copy, Status.PROCESSING)


def test_fields_change_with_the_status():
    session = make_session(Status.PROCESSING)
    transition(session, Status.FAILED, error_code="media_undecodable", error_detail="bad")
    stored = RecordingSession.objects.get(pk=session.pk)
    assert (stored.status, stored.error_code, stored.error_detail) == ("failed", "media_undecodable", "bad")
