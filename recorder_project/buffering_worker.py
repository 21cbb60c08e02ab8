"""gunicorn's threaded worker whose event loop owns every slow part of a connection: threads only ever
handle a complete request, and never wait for a client.

gthread gives a connection to a thread as soon as it is readable, and the thread then reads the
headers and body with blocking calls and no deadline: 16 clients that send 3 bytes of their body
and stop hold all 16 threads of `make serve`, and nothing else is answered (issue 12). The same
holds on the way out (a thread sits in sendfile while a reader, or a paused <video>, does not
read) and at the end (gthread's loop itself waits up to 2 s for each closing client).

Here the event loop:
- reads each request whole, headers then body (spooled to a temporary file past a small in-memory
  size), at a rate no slower than a floor, within bounds of size, memory, disk and connections
  per client address; only then does a thread take it;
- sends a file body (media, with or without Range) as the socket drains, at a rate no slower than
  a floor: the thread sends the headers and hands over a duplicate of the file's descriptor;
- closes gracefully (FIN, then drain what the client still sends) without waiting.
A slow or silent client costs a socket and a buffer, never a thread: nginx's buffering, inside
the production command. The limits are Django settings (RECORDER_REQUEST_*, RECORDER_RESPONSE_*,
RECORDER_MAX_CONNECTIONS_PER_CLIENT; README).

Built on gthread's internals (accept, enqueue_req, finish_request, murder_keepalived, TConn,
the parser's source) as of gunicorn 27.0.1, which requirements.txt pins; tests/test_serving.py
fails on any other version until this module is reviewed against it. TLS and HTTP/2 connections
are left to gthread as it is: terminate those in a proxy in front.
"""

import errno
import json
import os
import resource
import selectors
import socket
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

_RECV_BYTES = 256 * 1024
_IN_MEMORY_BODY_BYTES = 1024 * 1024  # a body larger than this spools to disk as it arrives
_SEND_BYTES_PER_EVENT = 4 * 1024 * 1024  # a fast reader must not keep the loop from everyone else
# A closing connection: how long, and how much of what the client still sends, is read before the
# socket is closed (gunicorn's own figures for its graceful close).
_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 64 * 1024
_ACCEPT_PAUSE_SECONDS = 0.5  # out of file descriptors: connections wait in the backlog meanwhile
_PRESSED_SECONDS = 2  # every idle and header limit while half the connection slots are taken
_HEADER_END = b"\r\n\r\n"
_STATUS_TEXT = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class _Refused(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class _Limits:
    """The limits, read once from this project's settings (also when gunicorn serves another WSGI
    app, such as the benchmarks' baseline)."""

    def __init__(self):
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recorder_project.settings")
        from django.conf import settings

        self.header_seconds = settings.RECORDER_REQUEST_HEADER_TIMEOUT_SECONDS
        self.body_idle_seconds = settings.RECORDER_REQUEST_BODY_IDLE_SECONDS
        self.body_min_bytes_per_second = settings.RECORDER_REQUEST_BODY_MIN_BYTES_PER_SECOND
        self.max_header_bytes = settings.RECORDER_REQUEST_MAX_HEADER_BYTES
        self.max_body_bytes = settings.RECORDER_MAX_REQUEST_BYTES
        self.memory_bytes = settings.RECORDER_REQUEST_BUFFER_MEMORY_BYTES
        self.buffered_bytes = settings.RECORDER_REQUEST_BUFFER_BYTES
        self.buffered_bytes_per_client = settings.RECORDER_REQUEST_BUFFER_BYTES // 8
        # Behind a proxy every connection comes from the proxy: the per-address cap is the proxy's job.
        self.connections_per_client = (
            0 if settings.RECORDER_NUM_PROXIES else settings.RECORDER_MAX_CONNECTIONS_PER_CLIENT
        )
        self.response_idle_seconds = settings.RECORDER_RESPONSE_IDLE_SECONDS
        self.response_min_bytes_per_second = settings.RECORDER_RESPONSE_MIN_BYTES_PER_SECOND
        self.spool_dir = str(settings.RECORDER_TEMP_DIR)
        os.makedirs(self.spool_dir, exist_ok=True)


def _client_key(client) -> str:
    """One count per IPv4 address or IPv6 /64, as the throttles count clients."""
    from recordings.throttling import throttle_key

    return throttle_key(client[0]) if isinstance(client, tuple) and client else "local"


def _too_slow(done_bytes: int, elapsed_seconds: float, grace_seconds: float, min_bytes_per_second: int) -> bool:
    """Behind the floor rate once the grace time is over: checked all along, not only at the end,
    so a client cannot trickle one byte per idle period for the whole of a long body."""
    return done_bytes < (elapsed_seconds - grace_seconds) * min_bytes_per_second


class _Inbound:
    """One request being read: its head, then its body, and since when."""

    def __init__(self, now: float):
        self.started = now
        self.last_progress = now
        self.head = bytearray()
        self.head_bytes: bytes | None = None  # the head as the parser will see it, once complete
        self.body_started = now
        self.body_length = 0
        self.body: tempfile.SpooledTemporaryFile | None = None  # while the body arrives
        self.body_received = 0
        self.in_memory_bytes = 0  # what this body counts against the worker's memory for bodies
        self.close_after = False  # a body not read here (chunked), or bytes after the request
        self.upload_marker: Path | None = None  # recordings.inflight's marker while a chunk upload's body arrives

    @property
    def complete(self) -> bool:
        return self.head_bytes is not None and self.body_received >= self.body_length


class _BufferedSource:
    """What gunicorn's parser reads instead of the socket: the buffered head, then the body, then
    the end. Writes still go to the real socket."""

    def __init__(self, head: bytes, body):
        self._head = head
        self._body = body

    def recv(self, size: int) -> bytes:
        if self._head:
            piece, self._head = self._head[:size], self._head[size:]
            return piece
        return self._body.read(size) if self._body is not None else b""


class _Outbound:
    """A file body the event loop sends: a duplicate of the file's descriptor, where, how much."""

    def __init__(self, fd: int, offset: int, count: int, now: float, *, close_after: bool):
        self.fd, self.offset, self.remaining = fd, offset, count
        self.sent = 0
        self.started = self.last_progress = now
        self.close_after = close_after  # the response said so, or the request had bytes after it


class _HandOffSocket:
    """The socket a request's thread writes to: everything goes to the real socket, except a
    file body (gunicorn's sendfile), which is kept for the event loop. Anything written after it
    sends the kept body first, so the bytes always leave in order."""

    def __init__(self, sock):
        self.real = sock
        self.pending: tuple[int, int, int] | None = None

    def __getattr__(self, name):
        return getattr(self.real, name)

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        self._send_pending()
        count = os.fstat(file.fileno()).st_size - offset if count is None else count
        self.pending = (os.dup(file.fileno()), offset, count)  # the app closes its file; this stays open
        return count

    def sendall(self, data, *args) -> None:
        self._send_pending()
        self.real.sendall(data, *args)

    def send(self, data, *args) -> int:
        self._send_pending()
        return self.real.send(data, *args)

    def _send_pending(self) -> None:
        if self.pending is None:
            return
        fd, offset, count = self.pending
        self.pending = None
        with os.fdopen(fd, "rb") as file:
            self.real.sendfile(file, offset, count)

    def take_pending(self) -> tuple[int, int, int] | None:
        pending, self.pending = self.pending, None
        return pending


class _Conn(TConn):
    """gthread's connection, counted per client address, whose graceful close is handed to the
    worker's event loop (its final close is where the count goes down)."""

    worker: "BufferingThreadWorker"
    client_key = ""
    counted = False

    def close(self, graceful=False):
        if graceful and self.worker.buffers:
            self.worker.linger(self)
        else:
            super().close(graceful=graceful)
            self.worker.forget(self)


class BufferingThreadWorker(ThreadWorker):
    def init_process(self):
        self._buffering: dict = {}  # conn → _Inbound
        self._sending: dict = {}  # conn → (_Outbound, the finished future)
        self._lingering: dict = {}  # conn → (deadline, bytes drained)
        self._connections_by_client: Counter = Counter()
        self._buffered_by_client: Counter = Counter()
        self._memory_in_use = 0
        self._buffered_in_use = 0
        self._accept_paused_until = 0.0
        self._limits: _Limits | None = None
        self.buffers = not self.cfg.is_ssl and list(self.cfg.http_protocols) == ["h1"]
        # Each connection may hold a spool file too: room for two descriptors per connection.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 2 * self.cfg.worker_connections + 256
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        super().init_process()

    @property
    def limits(self) -> _Limits:
        if self._limits is None:
            self._limits = _Limits()
        return self._limits

    # --- connections in --------------------------------------------------------------------------

    def accept(self, listener):
        """gthread's, with connections of our class, counted per client address."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                self.log.warning("Out of file descriptors: not accepting for %.1f s", _ACCEPT_PAUSE_SECONDS)
                self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE_SECONDS
                self.set_accept_enabled(False)
            elif error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.worker = self
        allowed = self.limits.connections_per_client if self.buffers else 0  # the settings, loaded first
        conn.client_key = _client_key(client_addr)
        conn.counted = True
        self._connections_by_client[conn.client_key] += 1
        if allowed and self._connections_by_client[conn.client_key] > allowed:
            self._refuse(conn, _Refused(503, "too_many_connections", "Too many open connections from this address."))
            return
        self.enqueue_req(conn)

    def set_accept_enabled(self, enabled):
        if enabled and time.monotonic() < self._accept_paused_until:
            return
        super().set_accept_enabled(enabled)

    def forget(self, conn) -> None:
        """A connection is closed for good: it no longer counts against its client."""
        if conn.counted:
            conn.counted = False
            self._connections_by_client[conn.client_key] -= 1
            if self._connections_by_client[conn.client_key] <= 0:
                del self._connections_by_client[conn.client_key]

    # --- requests in: read whole before a thread takes them ---------------------------------------

    def enqueue_req(self, conn):
        """Called by gthread for a new connection, a kept-alive one that became readable, and one
        with bytes left over: read its request first, then give it to a thread."""
        if not self.buffers or getattr(conn, "buffered_request", False):
            conn.buffered_request = False
            return super().enqueue_req(conn)
        conn.sock.setblocking(False)
        self._buffering[conn] = _Inbound(time.monotonic())
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        return None

    def _on_readable(self, conn, _sock):
        try:
            self._read_more(conn)
        except Exception:  # a bug here must cost one connection, not the worker and all of its clients
            self.log.exception("Error buffering a request")
            self._drop(conn)

    def _read_more(self, conn) -> None:
        inbound = self._buffering.get(conn)
        if inbound is None:
            return
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(conn)
        if not data:
            return self._drop(conn)  # the client went away before its request was complete
        try:
            self._take(conn, inbound, data)
        except _Refused as refused:
            return self._refuse(conn, refused)
        if inbound.complete:
            self._hand_over(conn, inbound)

    def _take(self, conn, inbound: _Inbound, data: bytes) -> None:
        now = time.monotonic()
        inbound.last_progress = now
        if inbound.head_bytes is None:
            searched = max(0, len(inbound.head) - len(_HEADER_END) + 1)
            inbound.head += data
            end = inbound.head.find(_HEADER_END, searched)
            head_bytes = (end + len(_HEADER_END)) if end >= 0 else len(inbound.head)
            if head_bytes > self.limits.max_header_bytes:
                raise _Refused(431, "headers_too_large", "The request's headers are too large.")
            if end < 0:
                return
            data = bytes(inbound.head[head_bytes:])
            self._read_head(conn, inbound, bytes(inbound.head[:head_bytes]), now)
            inbound.head = bytearray()
        room = inbound.body_length - inbound.body_received
        if len(data) > room:
            inbound.close_after = True  # pipelined bytes: answer this request, then close
            data = data[:room]
        if data:
            self._store_body(conn, inbound, data)

    def _read_head(self, conn, inbound: _Inbound, head: bytes, now: float) -> None:
        lines = head.split(b"\r\n")
        kept = [lines[0]]
        lengths = set()
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding":
                inbound.close_after = True  # not buffered: Django reads no body without a length
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                continue  # answered here, below; gunicorn must not answer it again after the body
            kept.append(line)
        if len(lengths) > 1 or any(not length.isdigit() or len(length) > 18 for length in lengths):
            raise _Refused(400, "bad_request", "The request's Content-Length is invalid.")
        inbound.body_length = int(lengths.pop()) if lengths and not inbound.close_after else 0
        if inbound.body_length > self.limits.max_body_bytes:
            raise _Refused(
                413, "request_too_large", f"A request body may hold at most {self.limits.max_body_bytes} bytes."
            )
        if inbound.body_length and (
            self._buffered_in_use >= self.limits.buffered_bytes
            or self._buffered_by_client[conn.client_key] >= self.limits.buffered_bytes_per_client
        ):
            raise _Refused(503, "server_busy", "The server is reading as many uploads as it buffers at once.")
        inbound.head_bytes = b"\r\n".join(kept)
        inbound.body_started = now
        if inbound.body_length:
            self._mark_upload(inbound, lines[0])
        if inbound.body_length and len(kept) != len(lines):
            self._send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")

    def _mark_upload(self, inbound: _Inbound, request_line: bytes) -> None:
        """A chunk upload whose URL names its recording is marked in progress while its body
        arrives, so that a finalize waiting for late chunks waits for it (recordings/inflight.py)."""
        from recordings import inflight

        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[0] != b"POST":
            return
        session_id = inflight.session_id_of_upload(parts[1].decode("latin-1"))
        if session_id is not None:
            try:
                inbound.upload_marker = inflight.mark(session_id, self.limits.spool_dir)
            except OSError:
                pass  # the marker is a courtesy to a waiting finalize: a full disk is met by the upload itself

    def _store_body(self, conn, inbound: _Inbound, data: bytes) -> None:
        if inbound.body is None:
            in_memory = min(inbound.body_length, _IN_MEMORY_BODY_BYTES)
            if self._memory_in_use + in_memory > self.limits.memory_bytes:
                in_memory = 0
            inbound.in_memory_bytes = in_memory
            self._memory_in_use += in_memory
            inbound.body = tempfile.SpooledTemporaryFile(max_size=max(in_memory, 1), dir=self.limits.spool_dir)
        try:
            inbound.body.write(data)
        except OSError as error:
            from recordings.errors import storage_error

            failure = storage_error(error)
            if failure is None:
                raise _Refused(503, "server_busy", "The server cannot buffer this upload right now.") from error
            raise _Refused(failure.status, failure.code, failure.detail) from error
        inbound.body_received += len(data)
        self._buffered_in_use += len(data)
        self._buffered_by_client[conn.client_key] += len(data)

    def _hand_over(self, conn, inbound: _Inbound) -> None:
        self._stop_buffering(conn)
        if inbound.body is not None:
            inbound.body.seek(0)
        conn.inbound = inbound
        conn.sock.setblocking(True)
        conn.sock = _HandOffSocket(conn.sock)
        assert inbound.head_bytes is not None  # handed over once complete
        conn.parser = http.get_parser(self.cfg, _BufferedSource(inbound.head_bytes, inbound.body), conn.client)
        conn.initialized = True
        conn.data_ready = True
        conn.buffered_request = True
        self.enqueue_req(conn)

    def finish_request(self, conn, fs):
        pending = None
        if isinstance(conn.sock, _HandOffSocket):
            pending = conn.sock.take_pending()
            conn.sock = conn.sock.real
        inbound = getattr(conn, "inbound", None)
        if inbound is not None:
            conn.inbound = None
            self._release(conn, inbound)
        handled = not fs.cancelled() and fs.exception() is None  # its result: whether to keep the connection
        close_after = (inbound is not None and inbound.close_after) or not (handled and fs.result())
        if pending is not None:
            if handled:
                return self._start_sending(conn, _Outbound(*pending, time.monotonic(), close_after=close_after), fs)
            os.close(pending[0])
        if inbound is not None and inbound.close_after and handled:
            self.nr_conns -= 1
            conn.close(graceful=True)
            return
        super().finish_request(conn, fs)

    # --- file bodies out, sent as the socket drains -----------------------------------------------

    def _start_sending(self, conn, outbound: _Outbound, fs) -> None:
        conn.sock.setblocking(False)
        self._sending[conn] = (outbound, fs)
        self.poller.register(conn.sock, selectors.EVENT_WRITE, partial(self._on_writable, conn))
        self._on_writable(conn, conn.sock)

    def _on_writable(self, conn, _sock) -> None:
        entry = self._sending.get(conn)
        if entry is None:
            return
        outbound, _ = entry
        budget = _SEND_BYTES_PER_EVENT
        try:
            while outbound.remaining > 0 and budget > 0:
                sent = os.sendfile(conn.sock.fileno(), outbound.fd, outbound.offset, min(outbound.remaining, budget))
                if sent == 0:
                    raise BrokenPipeError("the file ended early")
                outbound.offset += sent
                outbound.remaining -= sent
                outbound.sent += sent
                budget -= sent
                outbound.last_progress = time.monotonic()
        except (BlockingIOError, InterruptedError):
            return  # the socket is full: on with the next writable event
        except OSError:
            return self._stop_sending(conn, finished=False)
        if outbound.remaining == 0:
            self._stop_sending(conn, finished=True)

    def _stop_sending(self, conn, *, finished: bool) -> None:
        outbound, fs = self._sending.pop(conn)
        os.close(outbound.fd)
        self._unregister(conn)
        if finished and not outbound.close_after:
            conn.sock.setblocking(True)
            super().finish_request(conn, fs)  # kept alive
        else:
            self.nr_conns -= 1
            conn.close(graceful=finished)

    # --- connections out: closed without waiting --------------------------------------------------

    def linger(self, conn) -> None:
        """Send FIN, then read and drop what the client still sends until it closes (or 2 s, 64 KiB),
        so the kernel does not answer unread bytes with an RST that cuts off the response's end."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            return self._close_for_good(conn)
        self._lingering[conn] = (time.monotonic() + _LINGER_SECONDS, 0)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering_readable, conn))

    def _on_lingering_readable(self, conn, _sock) -> None:
        deadline, drained = self._lingering[conn]
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data and drained + len(data) < _LINGER_MAX_BYTES:
            self._lingering[conn] = (deadline, drained + len(data))
            return
        self._close_for_good(conn)

    def _close_for_good(self, conn) -> None:
        if self._lingering.pop(conn, None) is not None:
            self._unregister(conn)
        conn.sock.close()
        self.forget(conn)

    # --- deadlines, refusals, bookkeeping ---------------------------------------------------------

    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        now = time.monotonic()
        limits = self.limits
        # Half the connection slots taken: slow clients get seconds, not tens of seconds, so that
        # many addresses holding idle connections cannot keep everyone else in the backlog.
        pressed = self.nr_conns >= self.worker_connections // 2
        header_seconds = min(limits.header_seconds, _PRESSED_SECONDS) if pressed else limits.header_seconds
        body_idle_seconds = min(limits.body_idle_seconds, _PRESSED_SECONDS) if pressed else limits.body_idle_seconds
        response_idle_seconds = (
            min(limits.response_idle_seconds, _PRESSED_SECONDS) if pressed else limits.response_idle_seconds
        )
        for conn, (deadline, _) in list(self._lingering.items()):
            if force or now > deadline:
                self._close_for_good(conn)
        for conn, (outbound, _) in list(self._sending.items()):
            idle = now - outbound.last_progress > response_idle_seconds
            slow = _too_slow(
                outbound.sent, now - outbound.started, response_idle_seconds, limits.response_min_bytes_per_second
            )
            if force or idle or slow:
                self._stop_sending(conn, finished=False)  # a reader that stopped reading, or reads too slowly
        for conn, inbound in list(self._buffering.items()):
            if force:
                self._drop(conn)
                continue
            if inbound.head_bytes is None:
                late = now - inbound.started > header_seconds
            else:
                late = now - inbound.last_progress > body_idle_seconds or _too_slow(
                    inbound.body_received,
                    now - inbound.body_started,
                    body_idle_seconds,
                    limits.body_min_bytes_per_second,
                )
            if late:
                what = "headers" if inbound.head_bytes is None else "body"
                self._refuse(conn, _Refused(408, "request_timeout", f"The request's {what} did not arrive in time."))

    def _refuse(self, conn, refused: _Refused) -> None:
        body = json.dumps({"code": refused.code, "detail": refused.detail}).encode()
        headers = [
            f"HTTP/1.1 {refused.status} {_STATUS_TEXT[refused.status]}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if refused.status in (503, 507):
            headers.append("Retry-After: 1")
        self._send_quietly(conn, ("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        self._drop(conn, graceful=True)  # so that the answer is not cut off by an RST

    def _send_quietly(self, conn, payload: bytes) -> None:
        try:
            conn.sock.send(payload)  # a few hundred bytes: the socket buffer takes them at once
        except OSError:
            pass

    def _drop(self, conn, *, graceful: bool = False) -> None:
        inbound = self._buffering.get(conn)
        self._stop_buffering(conn)
        if inbound is not None:
            self._release(conn, inbound)
        self.nr_conns -= 1
        conn.close(graceful=graceful)

    def _stop_buffering(self, conn) -> None:
        if self._buffering.pop(conn, None) is not None:
            self._unregister(conn)

    def _unregister(self, conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _release(self, conn, inbound: _Inbound) -> None:
        if inbound.upload_marker is not None:
            from recordings import inflight

            inflight.unmark(inbound.upload_marker)
            inbound.upload_marker = None
        self._memory_in_use -= inbound.in_memory_bytes
        self._buffered_in_use -= inbound.body_received
        self._buffered_by_client[conn.client_key] -= inbound.body_received
        if self._buffered_by_client[conn.client_key] <= 0:
            del self._buffered_by_client[conn.client_key]
        inbound.in_memory_bytes = inbound.body_received = 0
        if inbound.body is not None:
            inbound.body.close()  # a spooled body on disk is deleted with it
            inbound.body = None
