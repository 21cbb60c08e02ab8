"""Settings from the environment: safe defaults, loud failures, production passes check --deploy."""

import os
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def run_manage(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "RECORDER_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=PROJECT_DIR,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_refuses_to_start_without_a_secret_key():
    completed = run_manage("check")
    assert completed.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in completed.stderr


def test_debug_runs_with_a_development_key():
    completed = run_manage("check", DJANGO_DEBUG="1")
    assert completed.returncode == 0, completed.stderr


def test_production_settings_pass_check_deploy():
    completed = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SECRET_KEY="a-long-random-production-secret-" + "x" * 40,
        DJANGO_ALLOWED_HOSTS="recorder.example.com",
    )
    assert completed.returncode == 0, completed.stderr
    assert "no issues" in completed.stdout


def test_bad_environment_values_fail_loudly():
    completed = run_manage("check", DJANGO_DEBUG="sometimes")
    assert completed.returncode != 0
    assert "DJANGO_DEBUG='sometimes' is not a boolean" in completed.stderr
    completed = run_manage("check", DJANGO_DEBUG="1", RECORDER_AUDIO_FORMAT="flac")
    assert completed.returncode != 0
    assert "recordings.E001" in completed.stderr


def test_storage_and_media_delivery_that_cannot_work_fail_the_checks():
    completed = run_manage("check", DJANGO_DEBUG="1", RECORDER_STORAGE="s3", AWS_STORAGE_BUCKET_NAME="")
    assert completed.returncode != 0
    assert "recordings.E003" in completed.stderr
    completed = run_manage("check", DJANGO_DEBUG="1", RECORDER_MEDIA_DELIVERY="redirect")  # local files
    assert completed.returncode != 0
    assert "recordings.E004" in completed.stderr
    completed = run_manage("check", DJANGO_DEBUG="1", RECORDER_STORAGE="ftp")
    assert completed.returncode != 0
    assert "RECORDER_STORAGE='ftp'" in completed.stderr
    completed = run_manage("check", DJANGO_DEBUG="1", RECORDER_STORAGE="s3", AWS_STORAGE_BUCKET_NAME="recordings")
    assert completed.returncode == 0, completed.stderr
