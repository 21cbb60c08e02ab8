"""What every benchmark shares: a gunicorn server in a throw-away directory, its RSS, HTTP calls, stats."""

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
# BENCH_RESULTS_DIR lets the test suite's smoke runs write somewhere throw-away.
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR") or PROJECT_DIR / "bench" / "results")
# Throw-away databases and media roots go here, on the disk the service's media would use, not in
# /tmp: on this machine creating a file in /tmp costs about 1 ms against 0.04 ms elsewhere on the
# same ext4 disk (docs/performance.md), which would tax the service's extra files unfairly.
WORK_ROOT = Path(os.environ.get("BENCH_WORK_DIR") or PROJECT_DIR / "bench" / ".work")
PYTHON = sys.executable
MiB = 1024 * 1024

sys.path.insert(0, str(PROJECT_DIR))


def work_directory(prefix: str) -> tempfile.TemporaryDirectory:
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=WORK_ROOT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_environment(work_dir: Path) -> dict[str, str]:
    """Production-like settings on a throw-away SQLite database and media root."""
    keep = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "RECORDER_"))}
    return {
        **keep,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "benchmark-only-secret-key-not-for-production-0123456789",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{work_dir / 'db.sqlite3'}"),
        "MEDIA_ROOT": str(work_dir / "media"),
        "RECORDER_LOG_LEVEL": "WARNING",
        # bench/captions.py and bench/renditions.py measure those, with and without; the others
        # measure the rest alone
        "RECORDER_CAPTIONS": "0",
        "RECORDER_RENDITIONS": "0",
        "RECORDER_MAX_RECORDING_BYTES": str(64 * 1024 * MiB),
        # benchmarks load the service from one address, far past one client's abuse limits
        **dict.fromkeys(
            [
                "RECORDER_THROTTLE_START",
                "RECORDER_THROTTLE_CHUNK",
                "RECORDER_THROTTLE_FINALIZE",
                "RECORDER_THROTTLE_READ",
            ],
            "off",
        ),
        "RECORDER_MAX_CONNECTIONS_PER_CLIENT": "0",
    }


def _proportional_bytes(pid: int, rss_bytes: int) -> int:
    """The process's PSS: its pages, each shared one divided among the processes that share it. A
    child forked to run ffmpeg shares all of the server's pages until it execs; RSS would count
    them twice for that moment (and a 20 ms sampler catches such moments when ffmpeg runs often)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss_bytes


def _executable(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None  # gone, or a kernel thread


def process_tree_rss_bytes(root_pid: int) -> tuple[int, int]:
    """(Memory of the root and its Python descendants, of everything else below it, e.g. ffmpeg):
    proportional set sizes, so that pages shared between them count once."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue
        pid = int(entry.name)
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        parents[pid] = int(rest[1])
        rss[pid] = int(rest[21]) * os.sysconf("SC_PAGE_SIZE")
        names[pid] = name
    tree = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                changed = True
    # Below the server's workers, a child between its fork and its exec still runs its parent's
    # executable. Started by vfork (every spawn with util-linux's wrappers) it runs in its parent's
    # memory, whose pages it would count a second time (a 20 ms sampler catches such moments when
    # ffmpeg starts every few seconds); forked, it shares them copy-on-write. It holds nothing of its
    # own, and leaving it out can only lower a sample for that moment, never raise the peak. (Not
    # by name: a child is named after the thread that spawned it, which Python 3.14 names.)
    counted = {
        pid
        for pid in tree
        if pid == root_pid or parents[pid] == root_pid or _executable(pid) != _executable(parents[pid])
    }
    memory = {pid: _proportional_bytes(pid, rss.get(pid, 0)) for pid in counted}
    python_bytes = sum(memory[pid] for pid in counted if "ffmpeg" not in names.get(pid, ""))
    other_bytes = sum(memory[pid] for pid in counted if "ffmpeg" in names.get(pid, ""))
    return python_bytes, other_bytes


@dataclass
class RssSampler:
    """Samples a process tree's RSS every few milliseconds in a thread; keeps the peaks."""

    root_pid: int
    interval_seconds: float = 0.02
    peak_python_bytes: int = 0
    peak_total_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "RssSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        self.peak_python_bytes = self.peak_total_bytes = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            python_bytes, other_bytes = process_tree_rss_bytes(self.root_pid)
            self.peak_python_bytes = max(self.peak_python_bytes, python_bytes)
            self.peak_total_bytes = max(self.peak_total_bytes, python_bytes + other_bytes)
            self._stop.wait(self.interval_seconds)


@dataclass
class Server:
    base_url: str
    pid: int
    work_dir: Path


@contextmanager
def gunicorn(work_dir: Path, *, app: str | None = None, extra_env: dict | None = None) -> Iterator[Server]:
    """The repository's gunicorn.conf.py serving `app` (default: the service) on a free port."""
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = {**service_environment(work_dir), "PORT": str(port), **(extra_env or {})}
    if app is None:
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=PROJECT_DIR, env=environment, check=True
        )
    command = [PYTHON, "-m", "gunicorn", "-c", str(PROJECT_DIR / "gunicorn.conf.py")]
    if app is not None:
        command.append(app)
    log = open(work_dir / "gunicorn.log", "ab")  # noqa: SIM115 - closed below; a restart appends
    process = subprocess.Popen(
        command, cwd=PROJECT_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work_dir / "gunicorn.log").read_text()[-2000:]) from None
            time.sleep(0.1)
    try:
        yield Server(base_url=base_url, pid=process.pid, work_dir=work_dir)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass  # already gone: a test killed it
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


class Http:
    """One keep-alive connection per thread; returns (status, seconds, body bytes)."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = http.client.HTTPConnection(self._host, self._port, timeout=300)
        return self._local.connection

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """One request; a keep-alive connection the server closed while idle is reopened once, as browsers do."""
        started = time.perf_counter()
        for attempt in (1, 2):
            reused = getattr(self._local, "connection", None) is not None
            try:
                connection = self._connection()
                connection.request(method, path, body=body, headers=headers or {})
                response = connection.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    self._local.connection = None
                return response.status, time.perf_counter() - started, payload
            except (OSError, http.client.HTTPException):
                self._local.connection = None
                if not (reused and attempt == 1):
                    return 599, time.perf_counter() - started, b""
        raise AssertionError("unreachable")

    def json_status(
        self, method: str, path: str, payload: dict | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        """A JSON request: the status and the body, whatever the status."""
        body = json.dumps(payload or {}).encode()
        status, _, content = self.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        return status, content

    def json(self, method: str, path: str, payload: dict | None = None, headers: dict | None = None) -> dict:
        """A JSON request that must succeed: the body, decoded."""
        status, content = self.json_status(method, path, payload, headers)
        if status >= 400:
            raise RuntimeError(f"{method} {path} → {status}: {content[:300]!r}")
        return json.loads(content)


def multipart_body(fields: dict[str, str], file_field: str, file_bytes: bytes) -> tuple[bytes, str]:
    boundary = "benchboundary7d1f0c"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="blob"\r\n'
        "Content-Type: video/webm\r\n\r\n".encode()
        + file_bytes
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def latency_summary(seconds: list[float]) -> dict:
    if not seconds:
        return {"count": 0}
    ordered = sorted(seconds)

    def percentile(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]

    return {
        "count": len(ordered),
        "p50_ms": round(percentile(0.50) * 1000, 2),
        "p95_ms": round(percentile(0.95) * 1000, 2),
        "p99_ms": round(percentile(0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def write_result(name: str, result: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def machine_description() -> dict:
    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class PostgresUnreachable(RuntimeError):
    pass


@contextmanager
def throwaway_postgres_database(server_url: str, *, prefix: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at `server_url`; its URL; dropped afterwards."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(server_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        raise PostgresUnreachable(f"PostgreSQL is not reachable at {server_url} ({error})") from error
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def db_workers(
    environment: dict,
    log_dir: Path,
    count: int,
    *,
    interval_seconds: float = 0.2,
    niceness: int = 0,
    queue_names: str = "default",
) -> Iterator[list]:
    """`count` processes of `manage.py db_worker` taking `queue_names` (comma-separated), logging to
    log_dir/worker-<n>.log (worker-<queues>-<n>.log for other queues than `default`); stopped with
    SIGTERM. Each leads its own process group (cpu_seconds_of_group(worker.pid) counts it with its ffmpeg)."""
    processes = []
    prefix = "worker" if queue_names == "default" else f"worker-{queue_names.replace(',', '-')}"
    for number in range(count):
        log = open(log_dir / f"{prefix}-{number}.log", "wb")  # noqa: SIM115 - closed below
        command = [PYTHON, "manage.py", "db_worker", "--interval", str(interval_seconds), "--no-startup-delay"]
        command += ["--queue-name", queue_names]
        if niceness:
            command = ["nice", "-n", str(niceness), *command]
        process = subprocess.Popen(
            command, cwd=PROJECT_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        processes.append((process, log))
    try:
        yield [process for process, _ in processes]
    finally:
        for process, log in processes:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


@contextmanager
def moto_s3(log_dir: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with a fresh bucket: the environment that points the service at it."""
    import urllib.request

    import boto3

    moto_server = Path(sys.executable).parent / "moto_server"
    port = free_port()
    endpoint_url = f"http://127.0.0.1:{port}"
    with open(log_dir / "moto.log", "wb") as log:
        server = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        credentials = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}  # noqa: S106
        boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", **credentials).create_bucket(
            Bucket="recorder-bench"
        )
        yield {
            "RECORDER_STORAGE": "s3",
            "AWS_STORAGE_BUCKET_NAME": "recorder-bench",
            "AWS_S3_ENDPOINT_URL": endpoint_url,
            "AWS_ACCESS_KEY_ID": credentials["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": credentials["aws_secret_access_key"],
            "AWS_S3_REGION_NAME": "us-east-1",
            "AWS_S3_ADDRESSING_STYLE": "path",
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def cpu_seconds_of_group(*process_groups: int) -> float:
    """CPU time of every process in `process_groups` (gunicorn and its workers, task workers), with the
    children they have waited for (ffmpeg): from /proc, in seconds."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in process_groups:  # pgrp
            ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until_idle(*process_groups: int, quiet_cpu_seconds: float = 0.05, timeout_seconds: float = 600) -> None:
    """Until the server's processes spend less than `quiet_cpu_seconds` of CPU in half a second."""
    deadline = time.monotonic() + timeout_seconds
    before = cpu_seconds_of_group(*process_groups)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds_of_group(*process_groups)
        if now - before < quiet_cpu_seconds:
            return
        before = now
