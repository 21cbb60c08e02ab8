"""`make serve`: the production server (gunicorn, gunicorn.conf.py) with static files from WhiteNoise."""

import gzip
import urllib.request
from pathlib import Path

import drf_yasg
import pytest

from tests.conftest import make_target_server

pytestmark = pytest.mark.live_server_process

SWAGGER_BUNDLE = "drf-yasg/swagger-ui-dist/swagger-ui-bundle.js"


def get(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


@pytest.fixture(scope="module")
def make_serve(tmp_path_factory):
    work = tmp_path_factory.mktemp("make-serve")
    environment = {
        "DJANGO_SECRET_KEY": "test-only-secret-key-for-make-serve-0123456789abcdef",
        "DJANGO_SECURE_SSL_REDIRECT": "0",  # plain HTTP on loopback; a TLS proxy sits in front in production
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "MEDIA_ROOT": str(work / "media"),
        "DJANGO_STATIC_ROOT": str(work / "static"),
        "GUNICORN_WORKERS": "2",
    }
    with make_target_server("serve", work, environment) as (base_url, log_path):
        yield base_url, work, log_path


def test_make_serve_runs_gunicorn_with_debug_off(make_serve):
    base_url, _, log_path = make_serve
    status, headers, body = get(f"{base_url}/swagger/")
    assert status == 200 and b"swagger-ui" in body
    log = log_path.read_text()
    assert "Using worker: recorder_project.buffering_worker.BufferingThreadWorker" in log
    assert log.count("Booting worker with pid") == 2
    assert headers.get("X-Frame-Options") == "DENY"  # production security headers are on


def test_static_files_are_served_by_whitenoise_and_collected_compressed(make_serve):
    base_url, work, _ = make_serve
    original = (Path(drf_yasg.__file__).parent / "static" / SWAGGER_BUNDLE).read_bytes()
    status, headers, body = get(f"{base_url}/static/{SWAGGER_BUNDLE}")
    assert status == 200 and body == original
    assert headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
    status, headers, body = get(f"{base_url}/static/{SWAGGER_BUNDLE}", {"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == original
    assert (work / "static" / f"{SWAGGER_BUNDLE}.gz").is_file()  # make serve ran collectstatic


def test_the_buffering_worker_was_reviewed_against_the_installed_gunicorn():
    import gunicorn

    # recorder_project/buffering_worker.py overrides gthread's internals (accept, enqueue_req,
    # finish_request, murder_keepalived, TConn, the parser's source): upgrading gunicorn means
    # reading gthread.py again, then moving this pin with requirements.txt's.
    assert gunicorn.__version__ == "27.0.1"
