"""The recorder and watch pages in a real Chromium with the fake camera and microphone, against `make run`.

The page records with MediaRecorder and uploads through recordings/static/recordings/uploader.js:
a real client of the API in every CI run. Screenshots go to test-artifacts/.
"""

import hashlib
import http.server
import json
import shutil
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from tests.browser import ARTIFACTS_DIR, CHROMIUM, CHROMIUM_FLAGS, chromium_playwright
from tests.conftest import PROJECT_DIR, free_port
from tests.live_client import call

pytestmark = [pytest.mark.live_server_process, pytest.mark.browser]

UPLOADER_JS = PROJECT_DIR / "recordings" / "static" / "recordings" / "uploader.js"
FINISHED = "['done', 'failed'].includes(window.recorderPage.phase)"


@contextmanager
def chromium(viewport: dict | None = None):
    sync_playwright = chromium_playwright()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport=viewport or {"width": 1100, "height": 900})
        try:
            yield context
        finally:
            browser.close()


def wait_until(page, expression: str, timeout_seconds: float = 30) -> None:
    """Poll `expression` in the page. Playwright's wait_for_function evaluates its predicate with
    eval, which the pages' Content-Security-Policy (rightly) forbids; evaluate() does not need it."""
    deadline = time.monotonic() + timeout_seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still not true after {timeout_seconds} s: {expression}"
        time.sleep(0.05)


def record_on_the_page(page, base_url: str, seconds: float) -> dict:
    """Record `seconds` from the fake camera on the recorder page; the page's state once finished."""
    page.goto(f"{base_url}/")
    page.get_by_label("Camera and microphone").check()
    page.get_by_role("button", name="Record").click()
    wait_until(page, "window.recorderPage.phase === 'recording'")
    page.wait_for_timeout(seconds * 1000)
    page.get_by_role("button", name="Stop").click()
    wait_until(page, FINISHED, timeout_seconds=90)
    return page.evaluate(
        """() => ({
            phase: window.recorderPage.phase,
            sessionId: window.recorderPage.sessionId,
            recordedMs: window.recorderPage.recordedMs,
            chunkDigests: window.recorderPage.uploader.chunkDigests,
            retries: window.recorderPage.uploader.retries,
            status: document.getElementById('status').textContent,
        })"""
    )


def stored_chunk_digests(media_root: Path, session_id: str) -> list[str]:
    folder = media_root / "recordings" / session_id / "chunks"
    count = len(list(folder.iterdir()))
    return [hashlib.sha256((folder / str(index)).read_bytes()).hexdigest() for index in range(count)]


def test_record_five_seconds_stop_and_watch_it(make_run_server):
    base_url = make_run_server.base_url
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    with chromium() as context:
        page = context.new_page()
        recorded = record_on_the_page(page, base_url, seconds=5)
        assert recorded["phase"] == "done", recorded["status"]
        page.screenshot(path=ARTIFACTS_DIR / "recorder.png", full_page=True)

        page.get_by_role("link", name="Open the watch page").click()
        _, recording = call("GET", f"{base_url}/api/get-recorded-data/{recorded['sessionId']}/")
        page.wait_for_url(f"{base_url}/r/{recording['view_id']}/")  # the view id: never the session id
        page.locator("#media").wait_for(state="visible")
        assert page.locator("#warnings").is_hidden()  # a clean recording says nothing
        playback = page.evaluate(
            """async () => {
                const video = document.getElementById('video');
                const audio = document.getElementById('audio');
                const once = (element, name) => new Promise((resolve, reject) => {
                    element.addEventListener(name, resolve, {once: true});
                    element.addEventListener('error', () => reject(new Error('media error')), {once: true});
                });
                if (video.readyState < 1) await once(video, 'loadedmetadata');
                const duration = video.duration;
                const seeked = once(video, 'seeked');
                video.currentTime = duration / 2;
                await seeked;
                const afterSeek = video.currentTime;
                await audio.play();
                await new Promise((resolve) => setTimeout(resolve, 700));
                audio.pause();
                return {duration, afterSeek, audioPlayedTo: audio.currentTime, poster: video.poster,
                        details: document.querySelector('.metadata').innerText};
            }"""
        )
        page.screenshot(path=ARTIFACTS_DIR / "watch.png", full_page=True)

    _, body = call("GET", f"{base_url}/api/get-recorded-data/{recorded['sessionId']}/")
    assert body["status"] == "ready"
    recorded_seconds = recorded["recordedMs"] / 1000
    assert recorded_seconds == pytest.approx(5, abs=0.5)
    assert playback["duration"] == pytest.approx(recorded_seconds, rel=0.10)
    assert body["duration"] == pytest.approx(recorded_seconds, rel=0.10)
    assert playback["afterSeek"] == pytest.approx(playback["duration"] / 2, abs=0.5)
    assert playback["audioPlayedTo"] > 0.2
    assert playback["poster"] == body["thumbnail_url"]
    assert f"{body['width']} × {body['height']}" in playback["details"]
    assert recorded["chunkDigests"] == stored_chunk_digests(make_run_server.media_root, recorded["sessionId"])
    assert (ARTIFACTS_DIR / "recorder.png").stat().st_size > 10_000
    assert (ARTIFACTS_DIR / "watch.png").stat().st_size > 10_000


def test_the_watch_page_plays_within_a_second_of_stop(make_run_server):
    """The live build made the video and audio while the page recorded: from the click on Stop to
    the watch page's video playing (the last chunk's upload, finalize, the page's polling, the
    navigation, loading): the goal is under a second. 12 s recorded: longer than one audio piece.
    The time is measured and written to test-artifacts/stop-to-playing.json, not asserted: speed
    is a benchmark's figure on a shared machine (0.56 and 0.78 s on one day, 1.01–1.04 s on a slower
    one, when the code before it gave 1.11–1.24 s; 0.58 and 0.53 s on a faster one)."""
    base_url = make_run_server.base_url
    with chromium() as context:
        page = context.new_page()
        page.goto(f"{base_url}/")
        page.get_by_label("Camera and microphone").check()
        page.get_by_role("button", name="Record").click()
        wait_until(page, "window.recorderPage.phase === 'recording'")
        page.wait_for_timeout(12_000)
        stopped = time.monotonic()
        page.get_by_role("button", name="Stop").click()
        wait_until(page, FINISHED, timeout_seconds=30)
        ready_after = time.monotonic() - stopped
        page.get_by_role("link", name="Open the watch page").click()
        page.wait_for_url(f"{base_url}/r/**")
        playing = page.evaluate(
            """async () => {
                const video = document.getElementById('video');
                while (video.closest('[hidden]') || !video.currentSrc) await new Promise((r) => setTimeout(r, 10));
                video.muted = true;  // autoplay with sound needs a user gesture
                await video.play();
                while (video.currentTime === 0) await new Promise((r) => setTimeout(r, 10));
                return {currentTime: video.currentTime, duration: video.duration};
            }"""
        )
        seconds_to_playing = time.monotonic() - stopped
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    (ARTIFACTS_DIR / "stop-to-playing.json").write_text(
        json.dumps({"stop_to_ready_seconds": ready_after, "stop_to_playing_seconds": seconds_to_playing, **playing})
    )
    assert playing["currentTime"] > 0
    assert playing["duration"] == pytest.approx(12, abs=1.0)
    assert 0 < ready_after < seconds_to_playing < 30


def test_uploads_that_fail_for_a_while_are_retried_until_the_recording_is_complete(make_run_server):
    base_url = make_run_server.base_url
    failures = {"answered_503": 0, "aborted": 0}

    def flaky_network(route):
        if failures["answered_503"] + failures["aborted"] >= 6:
            return route.continue_()
        if failures["answered_503"] <= failures["aborted"]:
            failures["answered_503"] += 1
            return route.fulfill(status=503, content_type="application/json", body='{"code": "unavailable"}')
        failures["aborted"] += 1
        return route.abort("connectionreset")

    with chromium() as context:
        page = context.new_page()
        page.route("**/api/receive-video-chunk/", flaky_network)
        page.goto(f"{base_url}/")
        page.get_by_label("Camera and microphone").check()
        page.get_by_role("button", name="Record").click()
        wait_until(page, "window.recorderPage.phase === 'recording'")
        page.wait_for_timeout(2500)
        context.set_offline(True)  # the connection drops mid-recording ...
        page.wait_for_timeout(2000)
        offline_text = page.locator("#progress-text").inner_text()
        context.set_offline(False)  # ... and comes back: the queue asks the server and resumes
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Stop").click()
        wait_until(page, FINISHED, timeout_seconds=90)
        recorded = page.evaluate(
            """() => ({phase: window.recorderPage.phase, sessionId: window.recorderPage.sessionId,
                       chunkDigests: window.recorderPage.uploader.chunkDigests,
                       retries: window.recorderPage.uploader.retries,
                       status: document.getElementById('status').textContent})"""
        )

    assert recorded["phase"] == "done", recorded["status"]
    assert failures == {"answered_503": 3, "aborted": 3}
    assert recorded["retries"] >= 6
    assert "Offline" in offline_text
    _, body = call("GET", f"{base_url}/api/get-recorded-data/{recorded['sessionId']}/")
    assert body["status"] == "ready"
    assert body["received_chunks"] == len(recorded["chunkDigests"]) >= 5
    # byte-exact: every chunk MediaRecorder made is stored as it was made, in its place
    assert recorded["chunkDigests"] == stored_chunk_digests(make_run_server.media_root, recorded["sessionId"])


CROSS_ORIGIN_PAGE = """<!doctype html>
<meta charset="utf-8"><title>An extension's page</title>
<script type="module">
import { ChunkUploader, startRecording } from "./uploader.js";
window.recordFor = async (apiBase, seconds) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const recorder = new MediaRecorder(stream, { mimeType: "video/webm;codecs=vp8,opus" });
  const session = await startRecording(apiBase, { title: "From another origin", mimeType: recorder.mimeType });
  const uploader = new ChunkUploader({ apiBase, ...session });
  recorder.ondataavailable = (event) => uploader.add(event.data);
  const stopped = new Promise((resolve) => (recorder.onstop = resolve));
  recorder.start(1000);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  recorder.stop();
  await stopped;
  stream.getTracks().forEach((track) => track.stop());
  return { origin: location.origin, recording: await uploader.finish() };
};
window.pageReady = true;
</script>
"""


@contextmanager
def static_site(directory: Path):
    """A second web server on another port: another origin, as an extension's page would be."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_on_another_origin_records_through_the_api_with_cors(make_run_server, tmp_path):
    site = tmp_path / "extension"
    site.mkdir()
    (site / "index.html").write_text(CROSS_ORIGIN_PAGE)
    shutil.copy(UPLOADER_JS, site / "uploader.js")  # copied as it is, as an extension would
    log_before = make_run_server.log_path.read_text()

    with static_site(site) as site_url, chromium() as context:
        page = context.new_page()
        page.goto(f"{site_url}/index.html")
        wait_until(page, "window.pageReady === true")
        result = page.evaluate("(api) => window.recordFor(api, 3)", make_run_server.base_url)

    assert result["origin"] == site_url != make_run_server.base_url
    assert result["recording"]["status"] == "ready", result["recording"]["error"]
    assert result["recording"]["title"] == "From another origin"
    assert result["recording"]["duration"] == pytest.approx(3, abs=0.6)
    new_log = make_run_server.log_path.read_text()[len(log_before) :]
    assert 'OPTIONS /api/receive-video-chunk/ HTTP/1.1" 200' in new_log  # the preflight, answered


def test_the_recorder_works_from_the_keyboard_and_fits_a_phone(make_run_server):
    base_url = make_run_server.base_url
    with chromium(viewport={"width": 360, "height": 740}) as context:
        page = context.new_page()
        page.goto(f"{base_url}/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        for name in ("Record", "Pause", "Stop"):
            assert page.get_by_role("button", name=name, exact=True).count() == 1
        assert page.get_attribute("#status", "aria-live") == "polite"
        page.get_by_label("Camera and microphone").check()

        for _ in range(20):  # Tab to the Record button, then press it with Enter
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "record":
                break
        assert page.evaluate("document.activeElement.id") == "record"
        page.keyboard.press("Enter")
        wait_until(page, "window.recorderPage.phase === 'recording'")
        assert "Recording" in page.locator("#status").inner_text()
        page.wait_for_timeout(2000)
        page.keyboard.press("Tab")  # Pause
        page.keyboard.press("Tab")  # Stop
        assert page.evaluate("document.activeElement.id") == "stop"
        page.keyboard.press("Enter")
        wait_until(page, FINISHED, timeout_seconds=90)
        assert page.evaluate("window.recorderPage.phase") == "done"
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        page.screenshot(path=ARTIFACTS_DIR / "recorder-360px.png", full_page=True)

        page.get_by_role("link", name="Open the watch page").click()
        page.locator("#media").wait_for(state="visible")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        assert page.get_by_role("button", name="Copy link").count() == 1
        page.screenshot(path=ARTIFACTS_DIR / "watch-360px.png", full_page=True)
