"""Schemathesis against /swagger.json on a real gunicorn: no 5xx, every response matches the schema.

Two passes, each with schemathesis' own phases (examples, coverage, fuzzing, stateful) and every
check it has:
- anonymous: random ids and bodies; validation, 404s, start-recording and what follows from it;
- bound to live recordings: the upload token in the header, a recording that already holds a real
  WebM header as every body's `session_id`, a ready one for the media and delete paths. Generated
  chunks and finalize calls reach storage and processing. The schema cannot say "the first chunk
  starts with a WebM or MP4 header" or "without `is_final` a chunk is required", so this pass skips
  the one check that expects every schema-valid request to be accepted.

`make test` runs a bounded number of cases per operation (RECORDER_FUZZ_EXAMPLES, 10) with a fixed
seed; `make fuzz` runs 100 per operation with a random seed and requires 1,000 cases at least.
Figures go to test-artifacts/fuzz.json.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import gunicorn
from tests.browser import ARTIFACTS_DIR
from tests.conftest import load_chrome_set
from tests.live_client import call, start_session, upload_recording, wait_until_finished

pytestmark = [pytest.mark.live_server_process, pytest.mark.slow]

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
EXAMPLES_PER_OPERATION = int(os.environ.get("RECORDER_FUZZ_EXAMPLES", "10"))
MIN_CASES = int(os.environ.get("RECORDER_FUZZ_MIN_CASES", "1"))
SEED = os.environ.get("RECORDER_FUZZ_SEED", "1")  # "random": schemathesis picks one and reports it
SERVER_ERROR = re.compile(r'HTTP/1\.[01]" 5\d\d ')


def schemathesis(base_url: str, report_dir: Path, *args: str, config: Path | None = None) -> dict:
    """One `schemathesis run`; its JSON report, after checking that it found nothing."""
    command = [SCHEMATHESIS, "--no-color", *(["--config-file", str(config)] if config else [])]
    command += ["run", f"{base_url}/swagger.json", "--max-examples", str(EXAMPLES_PER_OPERATION)]
    command += ["--checks", "all", "--report", "json", "--report-dir", str(report_dir), *args]
    if SEED != "random":
        command += ["--seed", SEED]
    run = subprocess.run(command, cwd=report_dir.parent, capture_output=True, text=True, timeout=3600)
    report = json.loads(next(report_dir.glob("*.json")).read_text())
    assert (report["failures"], report["errors"], run.returncode) == ([], [], 0), run.stdout[-8000:]
    return report


def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(tmp_path):
    recording = load_chrome_set("vp8_opus")
    with gunicorn(tmp_path / "server", extra_env={"GUNICORN_ACCESS_LOG": "-"}) as server:
        anonymous = schemathesis(server.base_url, tmp_path / "anonymous")

        uploading_id, token = start_session(server.base_url)
        url = f"{server.base_url}/api/receive-video-chunk/?session_id={uploading_id}&chunk_index=0"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"}
        assert call("POST", url, recording.chunks[0], headers)[0] == 201
        ready_id, _ = upload_recording([server.base_url], recording.chunks)
        assert wait_until_finished(server.base_url, ready_id)["status"] == "ready"
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            "[parameters]\n"
            f'session_id = "{uploading_id}"\n'
            f'"body.session_id" = "{uploading_id}"\n\n'
            "[[operations]]\n"
            'include-path-regex = "^/recordings/"\n'
            f'parameters = {{ session_id = "{ready_id}" }}\n'
        )
        bound = schemathesis(
            server.base_url,
            tmp_path / "bound",
            "--header",
            f"Authorization: Bearer {token}",
            "--exclude-checks",
            "positive_data_acceptance",
            config=config,
        )
        _, ready = call("GET", f"{server.base_url}/api/get-recorded-data/{ready_id}/")
        log = (tmp_path / "server" / "gunicorn.log").read_text()

    assert ready["status"] == "ready" and ready["source_sha256"] == recording.joined_sha256  # the wrong token
    requests = log.count(" HTTP/1.")
    server_errors = len(SERVER_ERROR.findall(log))
    cases = anonymous["test_cases"]["generated"] + bound["test_cases"]["generated"]
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    figures = {
        "examples_per_operation": EXAMPLES_PER_OPERATION,
        "seeds": [anonymous["seed"], bound["seed"]],
        "cases_anonymous": anonymous["test_cases"]["generated"],
        "cases_bound_to_live_recordings": bound["test_cases"]["generated"],
        "requests_served": requests,
        "server_errors": server_errors,
    }
    (ARTIFACTS_DIR / "fuzz.json").write_text(json.dumps(figures, indent=2) + "\n")
    assert "Traceback" not in log
    assert server_errors == 0
    assert cases >= MIN_CASES, figures
