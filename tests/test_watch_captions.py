"""The watch page's captions and transcript in Chromium: spoken words (espeak-ng) uploaded to
`make run`, shown on the video as a <track>, listed beside it, searchable, and a word plays from it."""

import json
import time
import urllib.request

import pytest

from recordings import captions
from tests.browser import ARTIFACTS_DIR
from tests.conftest import make_target_server, run_server_environment, skip_or_fail
from tests.speech import speech_recording
from tests.test_recorder_page import chromium, wait_until

pytestmark = [pytest.mark.live_server_process, pytest.mark.browser]


def call(base_url: str, path: str, *, body: bytes = b"", headers: dict | None = None, method: str = "POST") -> dict:
    request = urllib.request.Request(f"{base_url}{path}", data=body if method == "POST" else None, method=method)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def upload(base_url: str, chunks: list[bytes], mime_type: str) -> dict:
    started = call(
        base_url,
        "/api/start-recording/",
        body=json.dumps({"mime_type": mime_type}).encode(),
        headers={"Content-Type": "application/json"},
    )
    auth = {"Authorization": f"Bearer {started['upload_token']}", "Content-Type": "application/octet-stream"}
    session = started["session_id"]
    for index, chunk in enumerate(chunks):
        call(base_url, f"/api/receive-video-chunk/?session_id={session}&chunk_index={index}", body=chunk, headers=auth)
    call(
        base_url,
        f"/api/finalize-recording/?session_id={session}&is_final=true&total_chunks={len(chunks)}",
        headers=auth,
    )
    return started


@pytest.fixture(scope="module")
def captions_server(tmp_path_factory):
    """`make run` as a newcomer gets it, captions on (the default)."""
    if not captions.is_installed():
        skip_or_fail("the captions extra is not installed (make captions)")
    work = tmp_path_factory.mktemp("watch-captions")
    with make_target_server("run", work, run_server_environment(work, RECORDER_CAPTIONS="1")) as (base_url, _):
        yield base_url


def test_the_watch_page_shows_captions_and_a_transcript_that_seeks_and_searches(captions_server, tmp_path):
    base_url = captions_server
    speech = speech_recording(tmp_path)
    started = upload(base_url, speech.recording.chunks, speech.recording.mime_type)
    deadline = time.monotonic() + 120
    while (body := call(base_url, f"/api/get-recorded-data/{started['session_id']}/", method="GET"))[
        "captions_status"
    ] == "pending" or body["status"] != "ready":
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    assert body["captions_status"] == "ready", body

    with chromium() as context:
        page = context.new_page()
        page.goto(started["watch_url"])
        wait_until(page, "document.querySelectorAll('#transcript .word').length > 0")
        wait_until(page, "(document.querySelector('#video').textTracks[0]?.cues?.length || 0) > 0")
        track = page.evaluate(
            """() => { const track = document.querySelector('#video').textTracks[0];
                       return {kind: track.kind, mode: track.mode, language: track.language,
                               first: track.cues[0].text, start: track.cues[0].startTime}; }"""
        )
        assert track["kind"] == "captions" and track["mode"] == "showing" and track["language"] == "en"
        assert "quick" in track["first"].lower() and abs(track["start"] - speech.spoken[0].start_seconds) <= 0.5

        # Searching marks the words in the transcript and says how many matched.
        page.fill("#transcript-search", "weather today")
        wait_until(page, "document.querySelector('#transcript-matches').textContent === '1 match'")
        marked = page.evaluate("[...document.querySelectorAll('#transcript .word.match')].map(w => w.textContent)")
        assert [word.lower().strip(".,") for word in marked] == ["weather", "today"]

        # Clicking a word plays the video from it.
        weather = page.locator("#transcript .word.match").first
        word_start = float(weather.get_attribute("data-start"))
        weather.click()
        wait_until(page, f"Math.abs(document.querySelector('#video').currentTime - {word_start}) < 1.0")
        assert abs(word_start - speech.spoken[5].start_seconds) <= 0.5  # "The weather today ..." is phrase 6
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS_DIR / "watch-captions.png"), full_page=True)
