"""Captions and transcripts, made offline: real speech (espeak-ng) through the real pipeline and the
real model (requirements-captions.txt); the cue rules and WebVTT without the model."""

import datetime
import json
import re

import pytest
from django.core.management import call_command
from django.utils import timezone

from recordings import captions, transcription
from recordings.models import RecordingSession, Transcription, TranscriptSegment
from tests.conftest import skip_or_fail
from tests.recorder_client import finalize, post_chunk, start, upload_all
from tests.speech import PHRASES, normalized_words, speech_recording, word_error_rate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def captions_on(settings):
    if not captions.is_installed():
        skip_or_fail("the captions extra is not installed (make captions)")
    settings.RECORDER_CAPTIONS = True
    return settings


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_recording(tmp_path_factory.mktemp("speech"))


def record(api, recording) -> str:
    started = start(api, mime_type=recording.mime_type)
    upload_all(api, started, recording.chunks)
    response = finalize(api, started, is_final=True, total_chunks=len(recording.chunks))
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "ready"
    return started.session_id


def transcript_of(api, session_id: str) -> dict:
    body = api.get(f"/api/get-recorded-data/{session_id}/").json()
    assert body["captions_status"] == "ready", body
    response = api.get(body["transcript_url"])
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return json.loads(b"".join(response.streaming_content) if response.streaming else response.content)


def served(api, url: str, **headers):
    response = api.get(url, headers=headers)
    body = b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content
    return response, body


# --- With the model ----------------------------------------------------------------------------


def test_spoken_words_become_captions_a_person_can_read(api, captions_on, speech):
    session_id = record(api, speech.recording)
    transcript = transcript_of(api, session_id)
    heard = normalized_words(" ".join(word["word"] for word in transcript["words"]))
    error_rate = word_error_rate(speech.words, heard)
    assert error_rate <= 0.10, (error_rate, " ".join(heard))
    assert transcript["language"] == "en"
    assert normalized_words(transcript["text"]) == heard

    body = api.get(f"/api/get-recorded-data/{session_id}/").json()
    response, vtt = served(api, body["captions_url"])
    assert response.status_code == 200
    assert response["Content-Type"] == "text/vtt; charset=utf-8"
    cues = parse_vtt(vtt.decode())
    assert cues, vtt
    for start_seconds, end_seconds, lines in cues:
        assert 1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines), lines
        assert 0 < end_seconds - start_seconds <= 5.0 + 0.05, (start_seconds, end_seconds, lines)
    # Every phrase starts a cue within 0.5 s of where its sound starts, and the cue's words are its.
    for phrase in speech.spoken:
        nearest = min(cues, key=lambda cue: abs(cue[0] - phrase.start_seconds))
        assert abs(nearest[0] - phrase.start_seconds) <= 0.5, (phrase, nearest)
        first_words = normalized_words(" ".join(nearest[2]))[:2]
        assert word_error_rate(normalized_words(phrase.text)[:2], first_words) <= 0.5, (phrase.text, nearest)
    # Every word lies inside the phrase it belongs to, give or take 0.5 s.
    for word in transcript["words"]:
        assert any(
            phrase.start_seconds - 0.5 <= word["start"] and word["end"] <= phrase.end_seconds + 0.5
            for phrase in speech.spoken
        ), word


def parse_vtt(text: str) -> list[tuple[float, float, list[str]]]:
    assert text.startswith("WEBVTT\n")
    cues = []
    for block in text.split("\n\n")[1:]:
        lines = block.strip("\n").split("\n")
        timing = re.fullmatch(r"(\d\d):(\d\d):(\d\d\.\d\d\d) --> (\d\d):(\d\d):(\d\d\.\d\d\d)", lines[1])
        assert timing, block
        hours, minutes, seconds, end_hours, end_minutes, end_seconds = timing.groups()
        cues.append(
            (
                int(hours) * 3600 + int(minutes) * 60 + float(seconds),
                int(end_hours) * 3600 + int(end_minutes) * 60 + float(end_seconds),
                lines[2:],
            )
        )
    return cues


def test_captions_are_served_like_the_other_media(api, captions_on, speech):
    session_id = record(api, speech.recording)
    url = api.get(f"/api/get-recorded-data/{session_id}/").json()["captions_url"]
    whole_response, whole = served(api, url)
    etag = whole_response["ETag"]
    part_response, part = served(api, url, Range="bytes=0-6")
    assert part_response.status_code == 206 and part == whole[:7] == b"WEBVTT\n"
    not_modified, _ = served(api, url, If_None_Match=etag)
    assert not_modified.status_code == 304
    download, _ = served(api, url + "?download=1")
    assert download["Content-Disposition"].startswith("attachment;") and ".vtt" in download["Content-Disposition"]


def test_silence_gives_empty_captions_not_a_failure(api, captions_on, tmp_path):
    silent = speech_recording(tmp_path, phrases=[], lead_seconds=6.0, name="silence")
    session_id = record(api, silent.recording)
    assert transcript_of(api, session_id)["words"] == []
    url = api.get(f"/api/get-recorded-data/{session_id}/").json()["captions_url"]
    assert served(api, url)[1] == b"WEBVTT\n"


def test_captions_are_made_while_it_records_and_only_the_rest_after_stop(api, captions_on, tmp_path):
    longer = speech_recording(tmp_path, phrases=PHRASES * 2, name="longer")  # ~70 s
    started = start(api, mime_type=longer.recording.mime_type)
    upload_all(api, started, longer.recording.chunks)  # the live build and its windows run per chunk here
    while_recording = Transcription.objects.get(session_id=started.session_id)
    assert while_recording.next_seconds >= longer.recording.duration_seconds - 30 - captions.WINDOW_SECONDS
    assert while_recording.windows >= 1
    windows_before = while_recording.windows

    response = finalize(api, started, is_final=True, total_chunks=len(longer.recording.chunks))
    assert response.json()["status"] == "ready"
    session = RecordingSession.objects.get(pk=started.session_id)
    assert session.captions_status == "ready"
    assert Transcription.objects.get(session_id=started.session_id).windows - windows_before <= 2
    heard = normalized_words(" ".join(word["word"] for word in transcript_of(api, started.session_id)["words"]))
    assert word_error_rate(longer.words, heard) <= 0.10, " ".join(heard)


def test_the_transcript_stops_at_the_longest_length_transcribed(api, captions_on, speech):
    captions_on.RECORDER_CAPTIONS_MAX_SECONDS = 10
    transcript = transcript_of(api, record(api, speech.recording))
    assert transcript["transcribed_seconds"] == 10
    assert transcript["words"] and all(word["end"] <= 10 for word in transcript["words"])


def test_a_model_that_is_not_the_packaged_one_fails_the_captions_not_the_recording(api, captions_on, speech):
    captions_on.RECORDER_CAPTIONS_MODEL_SHA256 = "0" * 64
    session_id = record(api, speech.recording)
    body = api.get(f"/api/get-recorded-data/{session_id}/").json()
    assert body["status"] == "ready" and body["video_url"]
    assert body["captions_status"] == "failed" and body["captions_url"] is None
    assert RecordingSession.objects.get(pk=session_id).captions_error_code == "captions_unavailable"


# --- Without the model ---------------------------------------------------------------------------


def test_without_a_model_recordings_say_captions_are_unavailable(api, settings, tmp_path, speech):
    settings.RECORDER_CAPTIONS = True
    settings.RECORDER_CAPTIONS_MODEL_DIR = str(tmp_path / "no-model-here")
    started = start(api)
    assert api.get(f"/api/get-recorded-data/{started.session_id}/").json()["captions_status"] == "unavailable"


def test_captions_turned_off_say_so(api, settings):
    settings.RECORDER_CAPTIONS = False
    started = start(api)
    body = api.get(f"/api/get-recorded-data/{started.session_id}/").json()
    assert body["captions_status"] == "off" and body["captions_url"] is None and body["transcript_url"] is None


@pytest.mark.parametrize("kind", ["captions", "transcript"])
def test_captions_of_a_recording_not_ready_are_a_clear_404(api, kind):
    started = start(api)
    post_chunk(api, started, b"\x1a\x45\xdf\xa3", index=0)
    response = api.get(f"/api/recordings/{started.body['view_id']}/{kind}/")
    assert response.status_code == 404 and response.json()["code"] == "media_not_ready"


def word(text: str, start_seconds: float, end_seconds: float) -> captions.Word:
    return captions.Word(text, start_seconds, end_seconds, 0.9)


def test_cues_break_at_pauses_sentences_five_seconds_and_two_lines_of_42():
    words = [word(f"word{number:02d}", number * 0.4, number * 0.4 + 0.3) for number in range(40)]
    words += [word("This", 30.0, 30.2), word("sentence", 30.3, 30.6), word("ends here.", 30.7, 31.0)]
    words += [word("Next", 31.1, 31.3)]
    cues = list(captions.cues(words))
    for cue in cues:
        assert len(cue.lines) <= 2 and all(len(line) <= 42 for line in cue.lines), cue
        assert cue.end_seconds - cue.start_seconds <= 5.0, cue
    # a pause starts a cue, and so does a sentence's end
    assert [cue.lines for cue in cues[-2:]] == [["This sentence ends here."], ["Next"]]
    assert len(cues) == 4 + 2  # 12 of those words a cue: two lines of six (in 4.7 s)


def test_webvtt_escapes_what_a_model_might_write():
    lines = "".join(captions.webvtt_lines([captions.Cue(3661.5, 3662.25, ["a <b> & c --> d"])]))
    assert lines == "WEBVTT\n\n1\n01:01:01.500 --> 01:01:02.250\na &lt;b&gt; &amp; c --&gt; d\n"


def test_a_new_recording_with_captions_off_never_gets_a_transcription_task(api, settings, speech):
    settings.RECORDER_CAPTIONS = False
    session_id = record(api, speech.recording)
    assert not Transcription.objects.filter(session_id=session_id).exists()
    assert transcription.stale_requests() == []


def test_captions_made_for_a_recording_deleted_meanwhile_leave_no_files(api, captions_on, speech, media_root):
    session_id = record(api, speech.recording)
    session = RecordingSession.objects.get(pk=session_id)
    outputs = (media_root / session.captions_name).parent
    files_before = sorted(path.name for path in outputs.iterdir())
    # the transcription read the recording as ready; the owner's DELETE changed its status since
    RecordingSession.objects.filter(pk=session_id).update(status="deleting", captions_status="pending")
    transcription._store(session, transcription._Audio(media_root / session.audio_name, 1.0, True))
    assert sorted(path.name for path in outputs.iterdir()) == files_before  # its own files went again


def test_captions_are_stored_only_once_the_whole_audio_is_transcribed(api, captions_on, speech, media_root):
    """A task whose window another process committed first must not store what there is so far."""
    session_id = record(api, speech.recording)
    session = RecordingSession.objects.get(pk=session_id)
    RecordingSession.objects.filter(pk=session_id).update(captions_status="pending")
    Transcription.objects.filter(session_id=session_id).update(next_seconds=10.0, finished_at=None)
    outputs = (media_root / session.captions_name).parent
    files_before = sorted(path.name for path in outputs.iterdir())
    audio = transcription._Audio(media_root / session.audio_name, session.duration_seconds, True)
    transcription._store(session, audio)
    assert RecordingSession.objects.get(pk=session_id).captions_status == "pending"
    assert sorted(path.name for path in outputs.iterdir()) == files_before  # nothing written either


def test_captions_being_made_again_are_a_clear_404(api, captions_on, speech):
    session_id = record(api, speech.recording)
    view_id = RecordingSession.objects.get(pk=session_id).view_id
    assert api.get(f"/api/recordings/{view_id}/captions/").status_code == 200
    RecordingSession.objects.filter(pk=session_id).update(captions_status="pending")
    for kind in ("captions", "transcript"):
        response = api.get(f"/api/recordings/{view_id}/{kind}/")
        assert response.status_code == 404 and response.json()["code"] == "captions_not_ready"
    body = api.get(f"/api/get-recorded-data/{session_id}/").json()
    assert body["captions_url"] is None and body["transcript_url"] is None


def test_a_window_keeps_whole_words_and_the_next_one_hears_the_cut_word_again():
    words = [word("one", 1.0, 1.5), word("two", 20.0, 25.9), word("three", 25.8, 26.4), word("four", 28.0, 29.0)]
    kept, next_start = captions.split_at_tail(words, start_seconds=0.0, end_seconds=30.0)
    assert [each.text for each in kept] == ["one", "two"]  # "three" ends in the tail: cut, maybe
    assert next_start == pytest.approx(25.9)  # from the last kept word's end: "three" heard whole again
    kept, next_start = captions.split_at_tail([word("long", 2.0, 29.5)], start_seconds=0.0, end_seconds=30.0)
    assert kept == [] and next_start == captions.MIN_ADVANCE_SECONDS  # a window always moves on
    kept, next_start = captions.split_at_tail([word("x", 1.0, 1.2)], start_seconds=0.0, end_seconds=30.0)
    assert next_start == 30.0 - captions.WINDOW_TAIL_SECONDS  # silence after: from the tail on


def test_a_long_recording_chains_its_windows_without_nesting(api, captions_on, tmp_path):
    """The `immediate` backend runs a task inside the call that queues it; 23 windows in a row
    (as an hour would have 150) must not nest 23 deep."""
    captions_on.RECORDER_LIVE_BUILD = False  # every window after `ready`, one task queueing the next
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(250)  # above one window's depth; below 23 windows nested (fails without the loop)
    try:
        long_silence = speech_recording(
            tmp_path, phrases=PHRASES[:1], lead_seconds=1.0, tail_seconds=600.0, name="long"
        )
        session_id = record(api, long_silence.recording)
    finally:
        sys.setrecursionlimit(limit)
    assert RecordingSession.objects.get(pk=session_id).captions_status == "ready"


def test_a_recording_processed_again_gets_its_captions_again(api, captions_on, speech):
    captions_on.RECORDER_KEEP_CHUNKS = True
    session_id = record(api, speech.recording)
    first = transcript_of(api, session_id)
    call_command("process_recording", session_id)
    assert RecordingSession.objects.get(pk=session_id).captions_status == "ready"
    again = transcript_of(api, session_id)
    # the full pipeline's MP3 is another encode of the same audio: the same words, at the same times
    assert [word["word"] for word in again["words"]] == [word["word"] for word in first["words"]]
    for before, after in zip(first["words"], again["words"], strict=True):
        assert abs(before["start"] - after["start"]) <= 0.1 and abs(before["end"] - after["end"]) <= 0.1


def test_noise_costs_windows_in_proportion_to_its_length_not_its_content(api, captions_on, tmp_path):
    noisy = speech_recording(tmp_path, phrases=[], lead_seconds=70.0, noise_level=0.3, name="noise")
    session_id = record(api, noisy.recording)
    transcript = transcript_of(api, session_id)
    windows = Transcription.objects.get(session_id=session_id).windows
    # each window moves on by MIN_ADVANCE_SECONDS at least, whatever the model heard
    assert windows <= -(-70 // captions.MIN_ADVANCE_SECONDS) + 1
    assert len(transcript["words"]) <= 448 * windows
    assert all(len(word["word"]) <= captions.MAX_WORD_CHARACTERS for word in transcript["words"])


def test_a_failed_recording_says_no_captions_will_come(api, captions_on):
    started = start(api)
    assert api.get(f"/api/get-recorded-data/{started.session_id}/").json()["captions_status"] == "pending"
    post_chunk(api, started, b"\x1a\x45\xdf\xa3" + b"garbage" * 100, index=0)  # a header, then nothing decodable
    response = finalize(api, started, is_final=True, total_chunks=1)
    assert response.json()["status"] == "failed"
    assert response.json()["captions_status"] == "none"


def test_words_heard_while_recording_go_when_the_upload_expires(api, captions_on, speech):
    from recordings import services

    started = start(api, mime_type=speech.recording.mime_type)
    upload_all(api, started, speech.recording.chunks)  # ~43 s: one window is transcribed meanwhile
    assert TranscriptSegment.objects.filter(transcription__session_id=started.session_id).exists()
    captions_on.RECORDER_SESSION_TTL = 0
    services.expire_recordings(now=timezone.now() + datetime.timedelta(seconds=1))
    session = RecordingSession.objects.get(pk=started.session_id)
    assert (session.status, session.captions_status) == ("expired", "none")
    assert not TranscriptSegment.objects.filter(transcription__session_id=started.session_id).exists()


def test_a_failing_transcription_is_tried_again_then_says_failed(api, captions_on, speech, media_root):
    captions_on.RECORDER_CAPTIONS = False  # made ready without captions, then asked for them by hand
    session_id = record(api, speech.recording)
    session = RecordingSession.objects.get(pk=session_id)
    (media_root / session.audio_name).unlink()  # the stored audio is gone (a storage outage, say)
    (media_root / session.video_name).unlink()
    RecordingSession.objects.filter(pk=session_id).update(captions_status="pending")
    transcription.request_final(session_id)
    queued = []
    statuses = [transcription.advance(session_id, enqueue_again=queued.append) for _ in range(3)]
    assert statuses == ["pending", "pending", "failed"] and queued == []
    session = RecordingSession.objects.get(pk=session_id)
    assert (session.captions_status, session.captions_error_code) == ("failed", "captions_failed")
