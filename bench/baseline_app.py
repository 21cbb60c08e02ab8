"""The physical floor for chunk ingest: a bare WSGI app that streams each body to a file and fsyncs it."""

import os
import tempfile

DESTINATION = os.environ.get("BASELINE_DIR", tempfile.gettempdir())
BLOCK_BYTES = 1024 * 1024


def application(environ, start_response):
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"]
    fd, _ = tempfile.mkstemp(dir=DESTINATION, prefix="body-")
    with os.fdopen(fd, "wb") as destination:
        while remaining > 0:
            block = body.read(min(BLOCK_BYTES, remaining))
            if not block:
                break
            destination.write(block)
            remaining -= len(block)
        destination.flush()
        os.fsync(destination.fileno())
    start_response("201 Created", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
