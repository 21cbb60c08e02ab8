"""RECORDER_MEDIA_DELIVERY=x-accel-redirect behind a real nginx: Python names the file, nginx sends it.

Django still answers the conditionals (304) and the errors; nginx serves the bytes and the ranges
from an `internal` location that no client can reach directly.
"""

import hashlib
import os
import pwd
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.harness import free_port, gunicorn
from tests.conftest import load_chrome_set, skip_or_fail
from tests.live_client import upload_recording, wait_until_finished

pytestmark = pytest.mark.live_server_process

NGINX_CONFIG = """
daemon off;
user {user};
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{}}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    client_max_body_size 64m;
    server {{
        listen 127.0.0.1:{port};
        location /protected-media/ {{
            internal;
            alias {media_root}/;
        }}
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


def request(url: str, headers: dict | None = None) -> tuple[int, object, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _answers(url: str) -> bool:
    try:
        return request(url)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def nginx_in_front(tmp_path_factory):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        skip_or_fail("nginx is not installed (apt-get install nginx-light; .ci/run does it)")
    work = tmp_path_factory.mktemp("offload")
    with gunicorn(work / "service", extra_env={"RECORDER_MEDIA_DELIVERY": "x-accel-redirect"}) as server:
        port = free_port()
        upstream_port = server.base_url.rsplit(":", 1)[1]
        config = work / "nginx.conf"
        media_root = work / "service" / "media"
        # the test's files are private to this user, so nginx's workers run as it (ignored when not root)
        user = pwd.getpwuid(os.geteuid()).pw_name
        config.write_text(
            NGINX_CONFIG.format(work=work, user=user, port=port, upstream_port=upstream_port, media_root=media_root)
        )
        process = subprocess.Popen([nginx, "-c", str(config), "-e", str(work / "nginx-error.log")])
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not _answers(f"{base_url}/swagger.json"):
            assert process.poll() is None and time.monotonic() < deadline, (work / "nginx-error.log").read_text()
            time.sleep(0.2)
        try:
            yield base_url, server, media_root
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_nginx_sends_the_file_and_its_ranges_named_by_the_service(nginx_in_front):
    base_url, server, media_root = nginx_in_front
    recording = load_chrome_set("vp8_opus")
    session_id, _ = upload_recording([base_url], recording.chunks)
    finished = wait_until_finished(base_url, session_id)
    assert finished["status"] == "ready", finished["error"]
    video = (media_root / "outputs" / finished["view_id"] / "video.webm").read_bytes()
    video_path = f"/api/recordings/{finished['view_id']}/video/"
    assert finished["video_url"] == f"{base_url}{video_path}"

    # The service itself answers with a name and no body ...
    status, headers, content = request(f"{server.base_url}{video_path}")
    assert (status, content) == (200, b"")
    assert headers["X-Accel-Redirect"] == f"/protected-media/outputs/{finished['view_id']}/video.webm"
    # ... and through nginx the client gets the bytes, whole or by range.
    status, headers, content = request(f"{base_url}{video_path}")
    assert status == 200
    assert hashlib.sha256(content).digest() == hashlib.sha256(video).digest()
    assert headers["Content-Type"] == "video/webm"
    assert "X-Accel-Redirect" not in headers
    status, headers, content = request(f"{base_url}{video_path}", {"Range": "bytes=1000-1999"})
    assert (status, content) == (206, video[1000:2000])
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(video)}"
    # Conditionals are still the service's: a matching ETag gets 304 without touching the file.
    etag = request(f"{server.base_url}{video_path}")[1]["ETag"]
    assert request(f"{base_url}{video_path}", {"If-None-Match": etag})[0] == 304
    # The internal location is not reachable from outside.
    assert request(f"{base_url}/protected-media/outputs/{finished['view_id']}/video.webm")[0] == 404
