"""Attacks on the production server (issue 12), against real gunicorn processes started as
`make serve` starts them (gunicorn.conf.py): each one as a stranger would send it."""

import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.harness import gunicorn
from tests.browser import ARTIFACTS_DIR
from tests.conftest import generate_media, load_chrome_set
from tests.live_client import call, start_session, wait_until_finished

pytestmark = [pytest.mark.live_server_process]


def send(base_url: str, method: str, path: str, body=None, headers=None, *, source: str | None = None, **options):
    """(status, headers, JSON or bytes) of one request on its own connection, from `source` if given."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30, source_address=(source, 0) if source else None
    )
    try:
        connection.request(method, path, body=body, headers=headers or {}, **options)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    try:
        payload = json.loads(payload)
    except ValueError:
        pass
    return response.status, dict(response.getheaders()), payload


def start_status(base_url: str, *, headers: dict | None = None, source: str | None = None) -> int:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return send(base_url, "POST", "/api/start-recording/", b"{}", headers, source=source)[0]


def upload(base_url: str, chunks: list[bytes]) -> tuple[str, str]:
    session_id, token = start_session(base_url)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"}
    for index, chunk in enumerate(chunks):
        url = f"{base_url}/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
        assert call("POST", url, chunk, auth)[0] == 201
    return session_id, token


def finalize(base_url: str, session_id: str, token: str, total_chunks: int) -> tuple[int, dict]:
    body = json.dumps({"session_id": session_id, "is_final": True, "total_chunks": total_chunks}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return call("POST", f"{base_url}/api/finalize-recording/", body, headers)


def record_figures(name: str, figures: dict) -> None:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    (ARTIFACTS_DIR / f"attack-{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


# --- 1. Throttles trust only the socket, or the proxies they are told of -----------------------------


def test_x_forwarded_for_does_not_give_a_client_new_throttle_budgets(tmp_path):
    with gunicorn(tmp_path, extra_env={"GUNICORN_WORKERS": "1", "RECORDER_THROTTLE_START": "10/minute"}) as server:
        statuses = [start_status(server.base_url, headers={"X-Forwarded-For": f"203.0.113.{n}"}) for n in range(100)]
    record_figures("x-forwarded-for", {"requests": 100, "created": statuses.count(201)})
    assert statuses.count(201) == 10  # before: 100, one budget per invented address
    assert statuses.count(429) == 90


def test_a_client_cannot_spend_another_clients_throttle_budget(tmp_path):
    with gunicorn(tmp_path, extra_env={"GUNICORN_WORKERS": "1", "RECORDER_THROTTLE_START": "5/minute"}) as server:
        framing = [
            start_status(server.base_url, headers={"X-Forwarded-For": "127.0.0.3"}, source="127.0.0.2")
            for _ in range(8)
        ]
        victim = [start_status(server.base_url, source="127.0.0.3") for _ in range(5)]
    assert framing == [201] * 5 + [429] * 3  # the sender's own budget
    assert victim == [201] * 5  # before: 429 from the first request


def test_behind_one_proxy_the_client_is_the_address_the_proxy_appended(tmp_path):
    environment = {"GUNICORN_WORKERS": "1", "RECORDER_THROTTLE_START": "5/minute", "DJANGO_NUM_PROXIES": "1"}
    with gunicorn(tmp_path, extra_env=environment) as server:
        # what nginx passes on: whatever the client claimed, then the address nginx saw
        spoofing = [
            start_status(server.base_url, headers={"X-Forwarded-For": f"10.0.0.{n}, 198.51.100.7"}) for n in range(7)
        ]
        other = start_status(server.base_url, headers={"X-Forwarded-For": "198.51.100.8"})
    assert spoofing == [201] * 5 + [429] * 2
    assert other == 201


# --- 5. Every 500 is logged, with its traceback ---------------------------------------------------


def test_a_server_error_is_logged_with_its_traceback(tmp_path):
    with gunicorn(tmp_path) as server:
        session_id, _ = start_session(server.base_url)
        with sqlite3.connect(tmp_path / "db.sqlite3") as database:  # the database breaks under the server
            database.execute("ALTER TABLE recordings_recordingsession RENAME TO recordings_moved_away")
        status, _, body = send(server.base_url, "GET", f"/api/get-recorded-data/{session_id}/")
        log = (tmp_path / "gunicorn.log").read_text()
    assert (status, body["code"]) == (500, "internal_error")
    assert "Traceback (most recent call last)" in log  # before: the 500 left nothing in the log
    assert "no such table: recordings_recordingsession" in log


# --- 7. Slow clients do not starve the server -----------------------------------------------------


SLOW_ENV = {"RECORDER_REQUEST_HEADER_TIMEOUT_SECONDS": "4", "RECORDER_REQUEST_BODY_IDLE_SECONDS": "4"}


def open_slowly(base_url: str, head: bytes) -> socket.socket:
    parts = urlsplit(base_url)
    connection = socket.create_connection((parts.hostname, parts.port))
    connection.sendall(head)
    return connection


def test_slow_bodies_and_slow_headers_do_not_starve_the_server(tmp_path):
    with gunicorn(tmp_path, extra_env=SLOW_ENV) as server:  # 2 workers x 8 threads, as `make serve`
        session_id, token = start_session(server.base_url)
        slow_bodies = [
            open_slowly(
                server.base_url,
                f"POST /api/receive-video-chunk/?session_id={session_id}&chunk_index={index} HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: 100000\r\n\r\nabc".encode(),
            )
            for index in range(16)
        ]
        slow_headers = [open_slowly(server.base_url, b"GET /api/get-recorded-data/ HTTP/1.1\r\nHo") for _ in range(16)]
        time.sleep(0.5)
        latencies = []
        for _ in range(6):
            started = time.monotonic()
            with urllib.request.urlopen(f"{server.base_url}/api/get-recorded-data/{session_id}/", timeout=5) as read:
                assert read.status == 200  # before: 5 of 6 timed out, every thread held by a slow body
            latencies.append(round(time.monotonic() - started, 4))
        first_lines = []
        for connection in slow_bodies + slow_headers:
            connection.settimeout(15)
            first_lines.append(connection.recv(4096).split(b"\r\n", 1)[0])
            connection.close()
        chunks_stored = send(server.base_url, "GET", f"/api/get-recorded-data/{session_id}/")[2]["received_chunks"]
    record_figures("slow-clients", {"slow_sockets": 32, "status_read_seconds": latencies})
    assert set(first_lines) == {b"HTTP/1.1 408 Request Timeout"}  # each cut off at its deadline
    assert chunks_stored == 0  # and none of the 3-byte bodies became a chunk


def test_clients_that_never_close_their_side_do_not_stall_the_server(tmp_path):
    with gunicorn(tmp_path, extra_env={"GUNICORN_WORKERS": "1"}) as server:
        session_id, _ = start_session(server.base_url)
        holders = [  # each answered and closed by the server; none reads or closes
            open_slowly(
                server.base_url,
                b"GET /api/get-recorded-data/nope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            for _ in range(20)
        ]
        time.sleep(0.5)
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            with urllib.request.urlopen(f"{server.base_url}/api/get-recorded-data/{session_id}/", timeout=5) as read:
                assert read.status == 200  # before: gunicorn's loop waited 2 s on each holder: 40 s
            latencies.append(round(time.monotonic() - started, 4))
        answers = [holder.recv(4096).split(b"\r\n", 1)[0] for holder in holders]
        for holder in holders:
            holder.close()
    record_figures("never-closing-clients", {"clients": 20, "status_read_seconds": latencies})
    assert set(answers) == {b"HTTP/1.1 404 Not Found"}


@pytest.fixture(scope="module")
def large_video(tmp_path_factory) -> list[bytes]:
    """About 24 MB of real VP8/Opus WebM (the 8-second Chrome recording, looped), in 8 chunks."""
    from bench.media import loop_recording

    work = tmp_path_factory.mktemp("large")
    base = work / "base.webm"
    base.write_bytes(b"".join(load_chrome_set("vp8_opus").chunks))
    data = loop_recording(base, work / "looped.webm", times=100).read_bytes()
    step = -(-len(data) // 8)
    return [data[offset : offset + step] for offset in range(0, len(data), step)]


def test_readers_that_stop_reading_do_not_starve_the_server(tmp_path, large_video):
    with gunicorn(tmp_path, extra_env={"RECORDER_RESPONSE_IDLE_SECONDS": "3"}) as server:
        session_id, token = upload(server.base_url, large_video)
        assert finalize(server.base_url, session_id, token, len(large_video))[0] in (200, 202)
        size = wait_until_finished(server.base_url, session_id)["size"]
        assert size > 20_000_000  # far more than the socket buffers between server and reader hold
        parts = urlsplit(server.base_url)
        readers = []
        for _ in range(16):  # 2 workers x 8 threads: one stuck reader per thread, as a paused <video> is
            reader = socket.socket()
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            reader.connect((parts.hostname, parts.port))
            reader.sendall(f"GET /api/recordings/{session_id}/video/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            readers.append(reader)
        time.sleep(1)
        latencies = []
        for _ in range(6):
            started = time.monotonic()
            with urllib.request.urlopen(f"{server.base_url}/api/get-recorded-data/{session_id}/", timeout=5) as read:
                assert read.status == 200  # before: every thread sat in sendfile for the stuck readers
            latencies.append(round(time.monotonic() - started, 4))
        with urllib.request.urlopen(f"{server.base_url}/api/recordings/{session_id}/video/", timeout=30) as whole:
            downloaded = whole.read()
        time.sleep(4.5)  # past the idle deadline: the stuck readers are let go
        received = []
        first_lines = set()
        for reader in readers:
            reader.settimeout(10)
            response = b""
            while block := reader.recv(1 << 20):
                response += block
            first_lines.add(response.split(b"\r\n", 1)[0])
            received.append(len(response) - response.index(b"\r\n\r\n") - 4)
            reader.close()
    record_figures("slow-readers", {"stuck_readers": 16, "video_bytes": size, "status_read_seconds": latencies})
    assert len(downloaded) == size and b"".join(large_video)[:4] == downloaded[:4]
    assert first_lines == {b"HTTP/1.1 200 OK"}  # each was being sent the video...
    assert all(0 < body_bytes < size for body_bytes in received)  # ...and was cut off, not served to the end


# --- The buffering worker's own refusals ------------------------------------------------------------

EDGE_ENV = {
    "GUNICORN_WORKERS": "1",
    "RECORDER_MAX_CHUNK_BYTES": str(1024 * 1024),  # so the largest request is 1.4 MB
    "RECORDER_REQUEST_MAX_HEADER_BYTES": "8192",
    "RECORDER_MAX_CONNECTIONS_PER_CLIENT": "8",
    "RECORDER_REQUEST_BODY_IDLE_SECONDS": "2",
    "RECORDER_REQUEST_BODY_MIN_BYTES_PER_SECOND": "100000",
}


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory):
    with gunicorn(tmp_path_factory.mktemp("edge-server"), extra_env=EDGE_ENV) as running:
        yield running


def first_answer(connection: socket.socket) -> bytes:
    connection.settimeout(15)
    answer = b""
    while b"\r\n\r\n" not in answer and (block := connection.recv(4096)):
        answer += block
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"POST /api/receive-video-chunk/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n", 400),
    ],
)
def test_the_server_refuses_what_it_will_not_buffer_before_reading_it(edge_server, head, expected):
    connection = open_slowly(edge_server.base_url, head)
    assert first_answer(connection).split(b" ")[1] == str(expected).encode()
    connection.close()


def test_expect_100_continue_is_answered_before_the_body_and_once(edge_server):
    session_id, token = start_session(edge_server.base_url)
    chunk = load_chrome_set("vp8_opus").chunks[0]
    connection = open_slowly(
        edge_server.base_url,
        f"POST /api/receive-video-chunk/?session_id={session_id}&chunk_index=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: video/webm\r\nContent-Length: {len(chunk)}\r\n"
        "Expect: 100-continue\r\n\r\n".encode(),
    )
    assert first_answer(connection) == b"HTTP/1.1 100 Continue"
    connection.sendall(chunk)
    assert first_answer(connection) == b"HTTP/1.1 201 Created"
    connection.close()


def test_pipelined_requests_get_the_first_answer_then_the_connection_closes(edge_server):
    request = b"GET /api/get-recorded-data/nope/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    connection = open_slowly(edge_server.base_url, request * 3)
    connection.settimeout(15)
    received = b""
    while block := connection.recv(65536):
        received += block
    assert received.count(b"HTTP/1.1 404 Not Found") == 1  # answered once, then closed: the client retries
    connection.close()


def test_a_body_trickled_just_under_the_idle_limit_is_cut_off_by_the_rate_floor(edge_server):
    session_id, token = start_session(edge_server.base_url)
    connection = open_slowly(
        edge_server.base_url,
        f"POST /api/receive-video-chunk/?session_id={session_id}&chunk_index=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: video/webm\r\nContent-Length: 1300000\r\n\r\n".encode(),
    )
    connection.settimeout(1.5)
    sent = 0
    answer = b""
    while not answer and sent < 30_000:  # 1 KB a second: never idle 2 s, far below 100 KB/s
        try:
            connection.sendall(b"x" * 1000)
            sent += 1000
            answer = connection.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
    # the floor applies all along: cut after about the 2 s grace (before: only at 2 s + 13 s, its
    # length at the floor rate, so a client could trickle a byte per idle period for a long body)
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout"
    assert sent <= 8_000
    connection.close()


def test_one_address_may_hold_only_so_many_connections(edge_server):
    parts = urlsplit(edge_server.base_url)
    held = []
    for _ in range(8):
        connection = socket.create_connection((parts.hostname, parts.port), source_address=("127.0.0.5", 0))
        held.append(connection)
    time.sleep(0.3)
    extra = socket.create_connection((parts.hostname, parts.port), source_address=("127.0.0.5", 0))
    assert first_answer(extra) == b"HTTP/1.1 503 Service Unavailable"  # too_many_connections, Retry-After
    extra.close()
    status, _, _ = send(edge_server.base_url, "GET", "/api/get-recorded-data/nope/", source="127.0.0.6")
    assert status == 404  # another address is served meanwhile
    for connection in held:
        connection.close()


DECLARED_BODY_ONLY = b"POST /api/receive-video-chunk/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"


def test_many_addresses_holding_idle_connections_do_not_fill_every_slot(tmp_path):
    # the tester's attack at a tenth of the defaults' scale: 40 connection slots, 5 per address,
    # 9 addresses that each keep 10 connections open with a declared body and send nothing
    environment = {
        "GUNICORN_WORKERS": "1",
        "GUNICORN_CMD_ARGS": "--worker-connections 40",  # works with any gunicorn.conf.py
        "RECORDER_MAX_CONNECTIONS_PER_CLIENT": "5",
    }
    with gunicorn(tmp_path, extra_env=environment) as server:
        session_id, _ = start_session(server.base_url)
        parts = urlsplit(server.base_url)
        stop = threading.Event()
        opened = [0]

        def hold(address: str) -> None:
            held: list[socket.socket] = []
            while not stop.is_set():
                for connection in list(held):  # one answered or closed by the server is replaced
                    try:
                        if connection.recv(4096, socket.MSG_DONTWAIT) is not None:
                            held.remove(connection)
                            connection.close()
                    except BlockingIOError:
                        pass
                    except OSError:
                        held.remove(connection)
                while len(held) < 10:
                    try:
                        connection = socket.create_connection((parts.hostname, parts.port), 2, (address, 0))
                        connection.sendall(DECLARED_BODY_ONLY)
                    except OSError:
                        break
                    held.append(connection)
                    opened[0] += 1
                stop.wait(0.2)
            for connection in held:
                connection.close()

        attackers = [threading.Thread(target=hold, args=(f"127.0.3.{n + 1}",)) for n in range(9)]
        for attacker in attackers:
            attacker.start()
        latencies = []
        try:
            time.sleep(3)
            for _ in range(6):
                started = time.monotonic()
                with urllib.request.urlopen(
                    f"{server.base_url}/api/get-recorded-data/{session_id}/", timeout=5
                ) as read:
                    assert read.status == 200  # before: every read timed out while the attack went on
                latencies.append(round(time.monotonic() - started, 3))
                time.sleep(1)
        finally:
            stop.set()
            for attacker in attackers:
                attacker.join()
    record_figures("connection-slots", {"attack_connections_opened": opened[0], "status_read_seconds": latencies})


# --- 9. Chunked bodies are refused with 411 ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with gunicorn(tmp_path_factory.mktemp("attack-server")) as running:
        yield running


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=xyz", "application/json", "video/webm"])
@pytest.mark.parametrize("endpoint", ["receive-video-chunk", "finalize-recording", "start-recording"])
def test_a_chunked_upload_is_answered_411(server, content_type, endpoint):
    session_id, token = start_session(server.base_url)
    pieces = iter([b'{"session_id": "', session_id.encode(), b'", "chunk_index": 0, "video_chunk": "GkXf"}'])
    status, _, body = send(
        server.base_url,
        "POST",
        f"/api/{endpoint}/?session_id={session_id}&chunk_index=0&is_final=true",
        pieces,
        {"Authorization": f"Bearer {token}", "Content-Type": content_type},
        encode_chunked=True,
    )
    assert (status, body["code"]) == (411, "length_required")  # before: 400 invalid_request for forms and JSON


# --- 6. A DELETE is seen by every reader at once -----------------------------------------------------


def test_reads_racing_a_delete_see_the_recording_or_a_404_never_a_500(server):
    chunks = load_chrome_set("vp8_opus").chunks
    statuses: list[int] = []
    for _ in range(4):
        session_id, token = upload(server.base_url, chunks)
        assert finalize(server.base_url, session_id, token, len(chunks))[0] in (200, 202)
        ready = wait_until_finished(server.base_url, session_id)
        stop = threading.Event()

        def read_until_stopped(session_id=session_id, size=ready["size"], stop=stop) -> list[int]:
            seen = []
            while not stop.is_set():
                start = random.randrange(size)  # noqa: S311 - not a secret
                headers = {"Range": f"bytes={start}-"}
                seen.append(send(server.base_url, "GET", f"/api/recordings/{session_id}/video/", None, headers)[0])
            return seen

        with ThreadPoolExecutor(max_workers=6) as readers:
            jobs = [readers.submit(read_until_stopped) for _ in range(6)]
            time.sleep(0.3)
            deleted = send(
                server.base_url, "DELETE", f"/api/recordings/{session_id}/", None, {"Authorization": f"Bearer {token}"}
            )
            time.sleep(0.3)
            stop.set()
            for job in jobs:
                statuses += job.result()
        assert deleted[0] == 204
        assert send(server.base_url, "GET", f"/api/recordings/{session_id}/video/")[0] == 404
    record_figures("delete-race", {"reads": len(statuses), "by_status": {s: statuses.count(s) for s in set(statuses)}})
    assert set(statuses) <= {206, 404}, sorted(set(statuses))  # before: 70 of 921 reads were 500s
    assert statuses.count(404) and statuses.count(206)


# --- 3 and 8. Processing off the request, one run at a time, no orphan ffmpeg ------------------------


@pytest.fixture(scope="module")
def slow_recording(tmp_path_factory) -> list[bytes]:
    """MPEG-4 Part 2 video, which neither WebM nor MP4 playback takes: processing re-encodes it to
    H.264, seconds of ffmpeg work (the slow path a hostile client would pick)."""
    path = tmp_path_factory.mktemp("slow") / "mpeg4.mkv"
    generate_media(
        path,
        seconds=12,
        size="1280x720",
        fps=30,
        output_args=["-c:v", "mpeg4", "-q:v", "5", "-c:a", "libopus", "-f", "matroska"],
    )
    data = path.read_bytes()
    step = -(-len(data) // 4)
    return [data[offset : offset + step] for offset in range(0, len(data), step)]


def ffmpeg_processes(under: Path) -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every ffmpeg working on files under `under`."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            command = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "ffmpeg" in command and str(under) in command:
            found[int(entry.name)] = (parent, command)
    return found


def wait_for(predicate, timeout_seconds: float, what: str):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_finalize_answers_at_once_while_processing_runs_in_the_background(tmp_path, slow_recording):
    with gunicorn(tmp_path) as server:
        session_id, token = upload(server.base_url, slow_recording)
        started = time.monotonic()
        status, body = finalize(server.base_url, session_id, token, len(slow_recording))
        answered_seconds = time.monotonic() - started
        assert (status, body["status"]) == (202, "processing")  # before: 200 `ready`, after the whole re-encode
        finished = wait_until_finished(server.base_url, session_id, timeout_seconds=180)
        ready_seconds = time.monotonic() - started
    record_figures(
        "finalize-answers", {"finalize_seconds": round(answered_seconds, 3), "ready_seconds": round(ready_seconds, 2)}
    )
    assert finished["status"] == "ready", finished["error"]
    assert finished["video_codec"] == "h264"


def view_id_of(base_url: str, session_id: str) -> str:
    return call("GET", f"{base_url}/api/get-recorded-data/{session_id}/")[1]["view_id"]


def test_a_process_runs_one_recording_at_a_time(tmp_path, slow_recording):
    environment = {"GUNICORN_WORKERS": "1", "RECORDER_PROCESSING_CONCURRENCY": "1"}
    with gunicorn(tmp_path, extra_env=environment) as server:
        sessions = [upload(server.base_url, slow_recording) for _ in range(3)]
        for session_id, token in sessions:
            assert finalize(server.base_url, session_id, token, len(slow_recording))[0] == 202
        # a run's work folder, which its ffmpeg commands name, is named by the recording's view id
        view_ids = [view_id_of(server.base_url, sid) for sid, _ in sessions]
        most_at_once = 0
        while any(
            call("GET", f"{server.base_url}/api/get-recorded-data/{sid}/")[1]["status"] == "processing"
            for sid, _ in sessions
        ):
            working_on = {
                view_id
                for view_id in view_ids
                for _, command in ffmpeg_processes(tmp_path).values()
                if view_id in command
            }
            most_at_once = max(most_at_once, len(working_on))
            time.sleep(0.05)
        final = [wait_until_finished(server.base_url, sid)["status"] for sid, _ in sessions]
    assert final == ["ready"] * 3
    assert most_at_once == 1


def test_a_killed_worker_leaves_no_ffmpeg_behind_and_the_next_run_cleans_its_folder(tmp_path, slow_recording):
    environment = {"GUNICORN_WORKERS": "1", "RECORDER_PROCESSING_STALE_SECONDS": "4"}
    with gunicorn(tmp_path, extra_env=environment) as server:
        session_id, token = upload(server.base_url, slow_recording)
        assert finalize(server.base_url, session_id, token, len(slow_recording))[0] == 202
        running = wait_for(lambda: ffmpeg_processes(tmp_path), 60, "processing to start ffmpeg")
        worker_pid = next(iter(running.values()))[0]
        os.kill(worker_pid, signal.SIGKILL)  # the worker process only; gunicorn starts another
        gone = wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in running) or None, 5, "ffmpeg to die")
        assert gone  # before: ffmpeg went on under PID 1, with no timeout
        work_dirs = list((tmp_path / "media" / ".tmp").glob(f"process-{view_id_of(server.base_url, session_id)}-*"))
        assert work_dirs, "the killed run's work folder"
        call("GET", f"{server.base_url}/api/get-recorded-data/{session_id}/")  # the new worker's first request
        finished = wait_until_finished(server.base_url, session_id, timeout_seconds=180)
        assert (finished["status"], finished["video_codec"]) == ("ready", "h264")
    assert not any(folder.exists() for folder in work_dirs)  # the recovered run removed the dead run's folder


# --- Found by a third attack: the finalize wait under the server that buffers bodies -------------------------


def test_a_finalize_without_a_count_waits_for_a_raw_chunk_still_arriving_at_the_buffering_server(tmp_path):
    """`make serve` reads each body whole before the app sees it: a chunk whose body was still on its
    way when the grace period ended got 409 and the video was cut short (7.05 s of 8.1 s)."""
    recording = load_chrome_set("vp8_opus")
    with gunicorn(tmp_path, extra_env={"RECORDER_FINALIZE_GRACE_SECONDS": "1"}) as server:
        session_id, token = upload(server.base_url, recording.chunks[:-1])
        body = json.dumps({"session_id": session_id, "is_final": True}).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        last = recording.chunks[-1]
        head = (
            f"POST /api/receive-video-chunk/?session_id={session_id}&chunk_index=7 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: video/webm\r\nContent-Length: {len(last)}\r\n\r\n"
        )
        connection = open_slowly(server.base_url, head.encode())
        connection.sendall(last[:1000])  # the upload has begun when the end call goes out
        assert call("POST", f"{server.base_url}/api/finalize-recording/", body, headers)[0] == 202
        for offset in range(1000, len(last), len(last) // 6):  # the rest over ~3 s: past the grace period
            time.sleep(0.5)
            connection.sendall(last[offset : offset + len(last) // 6])
        assert first_answer(connection).startswith(b"HTTP/1.1 201")
        connection.close()
        finished = wait_until_finished(server.base_url, session_id)
    assert finished["status"] == "ready", finished["error"]
    assert (finished["received_chunks"], finished["source_sha256"]) == (8, recording.joined_sha256)
