"""Shared fixtures: a private media root per test, the real Chrome fixture sets, generated media."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from recordings import utils

FIXTURES_DIR = Path(__file__).parent / "fixtures"
# Every recorded set: the four shared ones and those made by tests/fixtures/record_chrome_sets.py.
CHROME_SETS = tuple(sorted(path.parent.name for path in FIXTURES_DIR.glob("*/manifest.json")))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip on a laptop that lacks a service; under CI=true a missing service is a failure."""
    if IN_CI:
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


@dataclass
class Recording:
    """A recording as a client holds it: the chunk bytes in order, and what it should become."""

    name: str
    chunks: list[bytes]
    mime_type: str
    duration_seconds: float
    has_audio: bool
    has_video: bool
    extra: dict = field(default_factory=dict)

    @property
    def joined_sha256(self) -> str:
        return hashlib.sha256(b"".join(self.chunks)).hexdigest()


def load_chrome_set(name: str) -> Recording:
    folder = FIXTURES_DIR / name
    manifest = json.loads((folder / "manifest.json").read_text())
    chunks = []
    for entry in manifest["chunks"]:
        data = (folder / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name}/{entry['file']} is corrupt"
        chunks.append(data)
    return Recording(
        name=name,
        chunks=chunks,
        mime_type=manifest["mimeType_actual"],
        duration_seconds=manifest["duration_recorded_s"],
        has_audio=manifest["has_audio"],
        has_video=manifest["has_video"],
    )


def recording_files(media_root: Path, session_id: str) -> list[str]:
    """Every stored file of a recording: its chunks (under its session id), its outputs (under its view id)."""
    from recordings.models import RecordingSession

    view_id = RecordingSession.objects.filter(pk=session_id).values_list("view_id", flat=True).first()
    folders = [media_root / "recordings" / session_id, media_root / "outputs" / str(view_id)]
    return sorted(str(path.relative_to(folder)) for folder in folders for path in folder.rglob("*") if path.is_file())


def output_path(media_root: Path, session_id: str, file_name: str) -> Path:
    from recordings.models import RecordingSession

    return media_root / "outputs" / str(RecordingSession.objects.get(pk=session_id).view_id) / file_name


def split_bytes(data: bytes, parts: int) -> list[bytes]:
    """Cut a file at arbitrary byte offsets, as MediaRecorder's timeslice does."""
    step = -(-len(data) // parts)
    return [data[offset : offset + step] for offset in range(0, len(data), step)]


# name: (ffmpeg output arguments, mime type a browser would report, has_audio, has_video)
GENERATED_KINDS = {
    "h264_opus_matroska": (
        [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "libopus",
            "-f",
            "matroska",
            "-live",
            "1",
        ],
        "video/x-matroska;codecs=avc1,opus",
        True,
        True,
    ),
    "vp8_pcm_webm": (
        ["-c:v", "libvpx", "-deadline", "realtime", "-c:a", "pcm_f32le", "-f", "matroska", "-live", "1"],
        "video/webm;codecs=vp8,pcm",
        True,
        True,
    ),
    "audio_only_opus_webm": (
        ["-vn", "-c:a", "libopus", "-f", "webm", "-live", "1"],
        "audio/webm;codecs=opus",
        True,
        False,
    ),
    "vp9_opus_fmp4": (
        [
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-row-mt",
            "1",
            "-c:a",
            "libopus",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
            "-f",
            "mp4",
        ],
        "video/mp4",
        True,
        True,
    ),
    "audio_only_opus_fmp4": (
        ["-vn", "-c:a", "libopus", "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4"],
        "audio/mp4;codecs=opus",
        True,
        False,
    ),
}


def generate_media(
    destination: Path, *, seconds: float, output_args: list[str], size: str = "320x240", fps: int = 15
) -> None:
    utils.run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={fps}",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            f"{seconds}",
            "-map",
            "0:v",
            "-map",
            "1:a",
            *output_args,
            str(destination),
        ],
        limits=utils.Limits(timeout_seconds=600),
    )


def generate_recording(kind: str, directory: Path, *, seconds: float = 4.0, parts: int = 5) -> Recording:
    output_args, mime_type, has_audio, has_video = GENERATED_KINDS[kind]
    path = directory / f"{kind}.bin"
    if not path.exists():
        generate_media(path, seconds=seconds, output_args=output_args)
    return Recording(
        name=kind,
        chunks=split_bytes(path.read_bytes(), parts),
        mime_type=mime_type,
        duration_seconds=seconds,
        has_audio=has_audio,
        has_video=has_video,
    )


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generated-media")


def use_media_root(settings, root: Path) -> Path:
    """Point MEDIA_ROOT, and the temporary and live-build directories inside it, at `root` for this test."""
    temp_dir = root / ".tmp"
    temp_dir.mkdir(parents=True)
    settings.MEDIA_ROOT = root
    settings.RECORDER_TEMP_DIR = temp_dir
    settings.RECORDER_LIVE_DIR = root / ".live"
    settings.FILE_UPLOAD_TEMP_DIR = str(temp_dir)
    return root


@pytest.fixture(autouse=True)
def media_root(tmp_path, settings) -> Iterator[Path]:
    """Each test gets its own MEDIA_ROOT and temporary directory; nothing leaks between tests."""
    root = use_media_root(settings, tmp_path / "media")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def decode_errors(path: Path) -> tuple[int, str]:
    """Decode every frame with the bundled ffmpeg: (exit code, error output)."""
    completed = subprocess.run(
        [utils.ffmpeg_executable(), "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    return completed.returncode, completed.stderr.decode("utf-8", "replace")


# --- A real server process, started the way the README says -----------------------------------------

PROJECT_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    media_root: Path
    log_path: Path


@contextmanager
def make_target_server(target: str, work: Path, extra_env: dict[str, str], *, ready_path: str = "/swagger.json"):
    """`make <target>` on a free port with `extra_env`; yields its base URL once `ready_path` answers 200."""
    import time
    import urllib.request

    if shutil.which("make") is None:
        skip_or_fail("`make` is not installed")
    port = free_port()
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "RECORDER_"))},
        **extra_env,
        "PORT": str(port),
    }
    log_path = work / f"make-{target}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            ["make", "--no-print-directory", target],
            cwd=PROJECT_DIR,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}{ready_path}", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(f"`make {target}` did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield base_url, log_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def run_server_environment(work: Path, **overrides: str) -> dict[str, str]:
    """What `make run` gets in the tests: its own database and media root, chunks kept, no throttles."""
    return {
        "DJANGO_DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "MEDIA_ROOT": str(work / "media"),
        "RECORDER_KEEP_CHUNKS": "1",  # the tests compare the stored chunks with what clients sent
        "RECORDER_CAPTIONS": "0",  # tests/test_watch_captions.py starts its own with captions
        "RECORDER_RENDITIONS": "0",  # tests/test_renditions.py turns them on where it tests them
        # the whole run's clients share one address; tests/test_throttling.py tests the limits
        **dict.fromkeys(
            [
                "RECORDER_THROTTLE_START",
                "RECORDER_THROTTLE_CHUNK",
                "RECORDER_THROTTLE_FINALIZE",
                "RECORDER_THROTTLE_READ",
            ],
            "off",
        ),
        **overrides,
    }


@pytest.fixture(scope="session")
def make_run_server(tmp_path_factory):
    """`make run` on a free port, with its own database and media root; stopped after the session."""
    work = tmp_path_factory.mktemp("make-run")
    with make_target_server("run", work, run_server_environment(work)) as (base_url, log_path):
        yield LiveServer(base_url=base_url, media_root=work / "media", log_path=log_path)


# --- A real S3 API server (moto's server mode) on loopback ---------------------------------------------


@dataclass
class S3Server:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="recorder-test",
            aws_secret_access_key="recorder-test-secret",  # noqa: S106 - moto accepts any key
            region_name="us-east-1",
        )

    def new_bucket(self) -> tuple[str, dict[str, str]]:
        """A fresh bucket, and the environment that points the service at it."""

        bucket = f"recorder-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket, {
            "RECORDER_STORAGE": "s3",
            "AWS_STORAGE_BUCKET_NAME": bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "recorder-test",
            "AWS_SECRET_ACCESS_KEY": "recorder-test-secret",
            "AWS_S3_REGION_NAME": "us-east-1",
            "AWS_S3_ADDRESSING_STYLE": "path",
            "RECORDER_KEEP_CHUNKS": "1",  # so the tests can compare the chunk objects once processed
        }

    def objects(self, bucket: str) -> dict[str, bytes]:
        s3 = self.client()
        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {item["Key"]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server, a separate process speaking the real S3 HTTP API; stopped after the session."""
    import time
    import urllib.request

    moto_server = Path(sys.executable).parent / "moto_server"
    if not moto_server.exists():
        skip_or_fail("moto_server is not installed (pip install -r requirements-dev.txt)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    endpoint_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"moto_server did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
    try:
        yield S3Server(endpoint_url=endpoint_url)
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- PostgreSQL and db_worker processes -----------------------------------------------------------------

POSTGRES_URL = os.environ.get("RECORDER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh, empty database on the PostgreSQL server; dropped after the module."""
    from bench.harness import PostgresUnreachable, throwaway_postgres_database

    try:
        with throwaway_postgres_database(POSTGRES_URL, prefix="recorder_test") as url:
            yield url
    except PostgresUnreachable as error:
        skip_or_fail(f"{error}; set RECORDER_TEST_POSTGRES_URL")
