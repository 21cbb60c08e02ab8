"""The README's curl walkthrough, pasted into bash against a real `make run` server."""

import json
import re
import subprocess

import pytest

from tests.conftest import PROJECT_DIR, load_chrome_set

pytestmark = pytest.mark.live_server_process


def walkthrough_script() -> str:
    readme = (PROJECT_DIR / "README.md").read_text()
    block = re.search(r"<!-- walkthrough:start -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", readme, re.S)
    assert block, "README lost its walkthrough markers"
    return block.group(1)


def test_readme_starts_with_the_two_commands():
    readme = (PROJECT_DIR / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make run", "make test"]


def test_curl_walkthrough_gives_a_ready_recording(make_run_server, tmp_path):
    tmp_path = tmp_path / "walkthrough"
    tmp_path.mkdir()
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough_script()],
        cwd=PROJECT_DIR,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "BASE": make_run_server.base_url, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "206 Partial Content" in completed.stdout
    work_dir = next(path for path in tmp_path.iterdir() if path.is_dir())
    status = json.loads((work_dir / "status.json").read_text())
    assert status["status"] == "ready", status
    assert status["received_chunks"] == 3
    assert status["source_sha256"] == load_chrome_set("vp8_opus").joined_sha256
    assert (work_dir / "video.webm").stat().st_size == status["size"]
    assert (work_dir / "first-kib.bin").stat().st_size == 1024
    assert (work_dir / "audio.mp3").read_bytes()[:2] in (b"ID", b"\xff\xfb")  # an ID3 tag, or an MP3 frame
