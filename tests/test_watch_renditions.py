"""The MP4 rendition in a real browser: `make run` with renditions on, a real Chrome recording
uploaded, and Chromium's <video> on the watch page picking the MP4, playing it to its end and
seeking in it."""

import time

import pytest

from tests.conftest import load_chrome_set, make_target_server, run_server_environment
from tests.test_recorder_page import chromium, wait_until
from tests.test_watch_captions import call, upload

pytestmark = [pytest.mark.live_server_process, pytest.mark.browser]


@pytest.fixture(scope="module")
def renditions_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("watch-renditions")
    with make_target_server("run", work, run_server_environment(work, RECORDER_RENDITIONS="1")) as (base_url, _):
        yield base_url


def ready_with_rendition(base_url: str, set_name: str) -> tuple[dict, dict]:
    recording = load_chrome_set(set_name)
    started = upload(base_url, recording.chunks, recording.mime_type)
    deadline = time.monotonic() + 120
    while True:
        body = call(base_url, f"/api/get-recorded-data/{started['session_id']}/", method="GET")
        mp4 = next((item for item in body["renditions"] if item["name"] == "mp4"), None)
        if body["status"] == "ready" and mp4 is not None and mp4["status"] != "pending":
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    assert mp4["status"] == "ready", body
    return body, mp4


PLAY_TO_THE_END_AND_SEEK = """async () => {
    const video = document.getElementById('video');
    while (!video.currentSrc || video.readyState < 1) await new Promise((r) => setTimeout(r, 20));
    const waitFor = (name) => new Promise((resolve, reject) => {
        video.addEventListener(name, resolve, {once: true});
        video.addEventListener('error', () => reject(new Error('media error ' + video.error?.code)), {once: true});
    });
    video.muted = true;
    video.playbackRate = 2;
    const ended = waitFor('ended');
    await video.play();
    await ended;
    const endedAt = video.currentTime;
    const seeked = waitFor('seeked');
    video.currentTime = video.duration / 2;
    await seeked;
    return {currentSrc: video.currentSrc, duration: video.duration, endedAt, afterSeek: video.currentTime,
            width: video.videoWidth, height: video.videoHeight,
            canPlayMp4: video.canPlayType('video/mp4; codecs="avc1.64001E, mp4a.40.2"')};
}"""


@pytest.mark.parametrize("set_name", ["vp8_opus", "h264_opus_webm"])
def test_chromium_picks_the_mp4_plays_it_to_its_end_and_seeks(renditions_server, set_name):
    body, mp4 = ready_with_rendition(renditions_server, set_name)
    with chromium() as context:
        page = context.new_page()
        page.goto(body["watch_url"])
        wait_until(page, "document.querySelectorAll('#video source').length === 2")
        sources = page.evaluate(
            "() => [...document.querySelectorAll('#video source')].map((s) => ({src: s.src, type: s.type}))"
        )
        assert sources == [{"src": item["url"], "type": item["type"]} for item in body["renditions"]], sources
        assert sources[0]["type"].startswith('video/mp4; codecs="avc1.')
        played = page.evaluate(PLAY_TO_THE_END_AND_SEEK)
        downloads = {name: page.get_attribute(f"#download-{name}", "href") for name in ("video", "mp4")}
        assert page.locator("#download-mp4").is_visible()
    assert played["currentSrc"] == mp4["url"]  # the first <source>: the MP4
    assert played["duration"] == pytest.approx(body["duration"], abs=0.3)
    assert played["endedAt"] == pytest.approx(played["duration"], abs=0.1)
    assert played["afterSeek"] == pytest.approx(played["duration"] / 2, abs=0.5)
    assert (played["width"], played["height"]) == (body["width"], body["height"])
    assert played["canPlayMp4"] == "probably"
    assert downloads == {"video": body["video_url"] + "?download=1", "mp4": mp4["url"] + "?download=1"}


# WebKit's media element is flaky seeking once it has ended (no `seeked` until play() is called
# again), so here the seek comes first, while paused, and the play runs from there to the end.
SEEK_THEN_PLAY_TO_THE_END = """
const done = arguments[arguments.length - 1];
(async () => {
    const video = document.getElementById('video');
    while (!video.currentSrc || video.readyState < 1) await new Promise((r) => setTimeout(r, 50));
    const waitFor = (name) => new Promise((resolve, reject) => {
        video.addEventListener(name, resolve, {once: true});
        video.addEventListener('error', () => reject(new Error('media error ' + video.error?.code)), {once: true});
    });
    const seeked = waitFor('seeked');
    video.currentTime = video.duration / 2;
    await seeked;
    const afterSeek = video.currentTime;
    video.muted = true;
    const ended = waitFor('ended');
    await video.play();
    await new Promise((r) => setTimeout(r, 1000));
    const framesWhilePlaying = video.getVideoPlaybackQuality().totalVideoFrames;  // it stops counting at the end
    await ended;
    return {currentSrc: video.currentSrc, duration: video.duration, afterSeek, endedAt: video.currentTime,
            width: video.videoWidth, height: video.videoHeight, frames: framesWhilePlaying,
            canPlayMp4: video.canPlayType('video/mp4; codecs="avc1.64001E, mp4a.40.2"'),
            userAgent: navigator.userAgent};
})().then(done, (error) => done({error: String(error)}));
"""


@pytest.mark.parametrize("set_name", ["vp8_opus", "h264_opus_webm"])
def test_webkit_plays_the_mp4_to_its_end_after_a_seek(renditions_server, set_name):
    from tests import webkit
    from tests.conftest import skip_or_fail

    if reason := webkit.missing():
        skip_or_fail(f"WebKitGTK cannot play H.264 here: {reason}")
    body, mp4 = ready_with_rendition(renditions_server, set_name)
    with webkit.webkit() as browser:
        browser.go(body["watch_url"])
        played = browser.run(SEEK_THEN_PLAY_TO_THE_END, timeout_seconds=60)
    assert "error" not in played, played
    assert "AppleWebKit" in played["userAgent"] and "Chrome" not in played["userAgent"]
    assert played["currentSrc"] == mp4["url"]
    assert played["canPlayMp4"] == "probably"
    assert played["duration"] == pytest.approx(body["duration"], abs=0.3)
    assert played["afterSeek"] == pytest.approx(played["duration"] / 2, abs=0.5)
    assert played["endedAt"] == pytest.approx(played["duration"], abs=0.1)
    assert (played["width"], played["height"]) == (body["width"], body["height"])
    assert played["frames"] >= 10  # a second of 20 fps video decoded and shown


def test_a_page_opened_before_the_mp4_is_made_loads_it_when_the_recording_cannot_play(renditions_server):
    """An iPhone opening the link at `ready`: the recorded video does not play there, so the page
    waits for the MP4 and loads it. Stood in for in Chromium by a recorded video it cannot play
    (its URL answering 404): the page must switch to the MP4 once that is listed."""
    recording = load_chrome_set("vp8_opus_60s")
    started = upload(renditions_server, recording.chunks, recording.mime_type)
    with chromium() as context:
        page = context.new_page()
        # the recorded video fails to load, as an unplayable format would; the MP4 is not hidden
        page.route("**/video/", lambda route: route.fulfill(status=404, body=""))
        page.route("**/api/get-recorded-data/**", hide_mp4_the_first_time)
        page.goto(started["watch_url"])
        wait_until(page, "document.querySelector('#status').textContent.includes('being made')", timeout_seconds=60)
        wait_until(page, "document.querySelector('#video').currentSrc.endsWith('/mp4/')", timeout_seconds=90)
        played = page.evaluate(PLAY_TO_THE_END_AND_SEEK.replace("video.playbackRate = 2;", "video.playbackRate = 16;"))
    assert played["currentSrc"].endswith("/mp4/")
    assert played["duration"] == pytest.approx(60, abs=1.5)


_hidden = {"times": 0}


def hide_mp4_the_first_time(route) -> None:
    """The first ready answer the page gets lists the MP4 as pending, as it is at `ready`."""
    fetched = route.fetch()
    route.fulfill(response=fetched, json=hide_mp4_once(fetched.json()))


def hide_mp4_once(body: dict) -> dict:
    if body.get("status") == "ready" and _hidden["times"] == 0:
        _hidden["times"] += 1
        body["renditions"] = [
            {**item, "status": "pending", "url": None, "size": None} if item["name"] == "mp4" else item
            for item in body["renditions"]
        ]
        body["renditions"].sort(key=lambda item: item["url"] is None)
        if not any(item["name"] == "mp4" for item in body["renditions"]):
            body["renditions"].append(
                {
                    "name": "mp4",
                    "status": "pending",
                    "url": None,
                    "content_type": "video/mp4",
                    "codecs": None,
                    "type": "video/mp4",
                    "size": None,
                }
            )
    return body
