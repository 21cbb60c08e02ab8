"""gunicorn settings for the service (`make serve`) and the benchmarks, each overridable from the environment.

gthread workers: uploads are I/O-bound (network in, fsync out), so a few processes with several
threads each keep many recorders' chunks moving without one process per connection. Ours reads
each request whole in the event loop first (recorder_project/buffering_worker.py), so a slow or
silent client never holds one of those threads.
"""

import os

wsgi_app = "recorder_project.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}")
# `gthread` gives back gunicorn's own (no request buffering): only behind a proxy that buffers.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "recorder_project.buffering_worker.BufferingThreadWorker")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Open connections per worker, slow ones included: the buffering worker holds them in its event
# loop, and raises the process's file-descriptor limit to two per connection.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# gthread workers heartbeat from their main loop, so a long processing request in a thread does
# not trip this; it bounds a worker that is truly stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
backlog = int(os.environ.get("GUNICORN_BACKLOG", "2048"))
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
