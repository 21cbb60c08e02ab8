"""A real WebKit engine for the tests: Debian's WebKitGTK (MiniBrowser) on an Xvfb display, driven
through WebKitWebDriver with the W3C WebDriver protocol (plain HTTP, no client library).

WebKitGTK is not Safari: it decodes media with GStreamer (gst-libav's H.264 and AAC), Safari with
Apple's decoders. But it is the same engine's media element, source selection and canPlayType
rules, and it refuses what WebKit refuses. Packages: webkit2gtk-driver, xvfb, gstreamer1.0-libav.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

DRIVER = "/usr/bin/WebKitWebDriver"
MINIBROWSER = "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser"
GST_LIBAV = "/usr/lib/x86_64-linux-gnu/gstreamer-1.0/libgstlibav.so"
PACKAGES = "webkit2gtk-driver xvfb gstreamer1.0-libav"


def missing() -> str | None:
    """What is not installed, in words; None when WebKit can play H.264 and AAC here."""
    for path in (DRIVER, MINIBROWSER, GST_LIBAV):
        if not Path(path).exists():
            return f"no {path} (apt-get install --no-install-recommends {PACKAGES})"
    if not shutil.which("Xvfb"):
        return f"no Xvfb (apt-get install --no-install-recommends {PACKAGES})"
    return None


class WebKitSession:
    """One MiniBrowser window: navigate, run a script (sync or async), read back JSON."""

    def __init__(self, driver_url: str, session_id: str):
        self._base = f"{driver_url}/session/{session_id}"

    def go(self, url: str) -> None:
        _call("POST", f"{self._base}/url", {"url": url})

    def run(self, script: str, *args, timeout_seconds: float = 120):
        """The result of an async script: it calls its last argument with the value."""
        _call("POST", f"{self._base}/timeouts", {"script": int(timeout_seconds * 1000)})
        return _call(
            "POST", f"{self._base}/execute/async", {"script": script, "args": list(args)}, timeout=timeout_seconds + 30
        )


@contextmanager
def webkit() -> Iterator[WebKitSession]:
    """Xvfb, WebKitWebDriver and a MiniBrowser session; all of them stopped afterwards."""
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="webkit-")))
        runtime = work / "runtime"
        runtime.mkdir(mode=0o700)
        log = stack.enter_context(open(work / "log.txt", "wb"))  # noqa: SIM115 - closed by the stack
        environment = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(runtime),
            "HOME": str(work),  # GStreamer's plugin registry cache
            "NO_AT_BRIDGE": "1",
            "GDK_BACKEND": "x11",
        }
        environment.pop("WAYLAND_DISPLAY", None)
        read_end, write_end = os.pipe()
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
            pass_fds=(write_end,),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        stack.callback(_stop, xvfb)
        os.close(write_end)
        with os.fdopen(read_end) as display_number:
            environment["DISPLAY"] = ":" + display_number.readline().strip()
        port = _free_port()
        driver = subprocess.Popen(
            [DRIVER, f"--port={port}"], env=environment, stdout=log, stderr=log, start_new_session=True
        )
        stack.callback(_stop, driver)
        driver_url = f"http://127.0.0.1:{port}"
        _wait_for_port(port, driver)
        capabilities = {"webkitgtk:browserOptions": {"binary": MINIBROWSER, "args": ["--automation"]}}
        session = _call("POST", f"{driver_url}/session", {"capabilities": {"alwaysMatch": capabilities}})
        stack.callback(_quietly, "DELETE", f"{driver_url}/session/{session['sessionId']}")
        yield WebKitSession(driver_url, session["sessionId"])


def _call(method: str, url: str, body: dict | None = None, *, timeout: float = 60):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}").get("value")
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"WebDriver {method} {url}: {error.code} {error.read()[:2000]!r}") from error


def _quietly(method: str, url: str) -> None:
    try:
        _call(method, url, timeout=15)
    except (OSError, RuntimeError):
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"WebKitWebDriver exited ({process.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"WebKitWebDriver is not listening on {port} after {seconds} s")


def _stop(process: subprocess.Popen) -> None:
    """The process and its group (MiniBrowser's web and network processes)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
