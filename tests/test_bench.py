"""Smoke runs of every benchmark with a tiny size: they run and report sound numbers.

These check that `make bench-*` work on a clean checkout and that what they write is correct; they
assert nothing about speed (that is the benchmarks' job, not the test suite's).
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.live_server_process]


def run_bench(
    module: str, results_dir: Path, *arguments: str, timeout: float = 240, extra_env: dict | None = None
) -> str:
    environment = {**os.environ, "BENCH_RESULTS_DIR": str(results_dir), **(extra_env or {})}
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *arguments],
        cwd=PROJECT_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


@pytest.fixture(scope="module")
def ingest_result(results_dir) -> dict:
    run_bench("ingest", results_dir, "--smoke")
    return json.loads((results_dir / "ingest-smoke.json").read_text())


@pytest.fixture(scope="module")
def finalize_result(results_dir) -> dict:
    run_bench("finalize", results_dir, "--smoke")
    return json.loads((results_dir / "finalize-smoke.json").read_text())


def test_ingest_drives_service_and_baseline_without_errors(ingest_result):
    for name in ("service", "baseline"):
        runs = [*ingest_result[name]["paced"], ingest_result[name]["flat_out"]]
        for run in runs:
            assert run["errors"] == 0, (name, run)
            assert run["requests"] >= 3 and run["latency"]["count"] == run["requests"]
            assert run["throughput_mib_s"] > 0
            assert run["latency"]["p50_ms"] <= run["latency"]["p95_ms"] <= run["latency"]["p99_ms"]
        assert ingest_result[name]["peak_rss_mib"] > 10  # the sampler saw the server's processes
    assert ingest_result["service"]["paced"][0]["chunk_bytes"] == 32 * 1024
    assert ingest_result["summary"]["errors"] == 0
    pair = ingest_result["summary"]["paced_p95_ratios"][0]
    assert pair["p95_ratio"] == round(pair["service_p95_ms"] / pair["baseline_p95_ms"], 2)


def test_finalize_reaches_ready_and_times_the_floor(finalize_result):
    (length,) = finalize_result["lengths"]
    assert length["chunks"] == 15
    assert length["duration"] == pytest.approx(15, abs=0.2)
    assert set(length["service_steps"]) == {"live_finish", "probe", "thumbnail", "store"}
    (full,) = finalize_result["full_pipeline"]  # the same recording without the live build
    assert set(full["service_steps"]) == {"join", "probe", "remux", "audio", "thumbnail", "store"}
    assert full["duration"] == length["duration"]
    assert finalize_result["live_to_full_ratio"] == [round(length["service_seconds"] / full["service_seconds"], 2)]
    assert length["cpu_seconds_per_minute"] > 0 and full["cpu_seconds_per_minute"] > 0
    assert set(length["floor"]["steps"]) == {"cat", "remux", "audio", "thumbnail"}
    assert 0 < length["floor"]["two_core_seconds"] <= length["floor"]["sequential_seconds"]
    # the ratio comes from unrounded seconds, the reported seconds are rounded to milliseconds
    expected_ratio = length["service_seconds"] / length["floor"]["sequential_seconds"]
    assert length["ratio_to_floor"] == pytest.approx(expected_ratio, abs=0.011)


def test_range_answers_from_the_middle(results_dir):
    run_bench("range", results_dir, "--smoke")
    result = json.loads((results_dir / "range-smoke.json").read_text())
    assert result["requests"] == 20
    assert result["video_bytes"] > 2 * 1024 * 1024  # a 1 MiB range from the middle fits inside
    assert 0 < result["median_ms"] <= result["p95_ms"]
    assert result["pread_median_ms"] > 0


def test_json_memory_sets_json_uploads_beside_raw_ones(results_dir):
    run_bench("json_memory", results_dir, "--smoke")
    (measured,) = json.loads((results_dir / "json_memory-smoke.json").read_text())["rounds"]
    for form in ("raw", "json"):
        assert measured[form]["statuses"] == [201]  # every upload was stored
        assert 10 < measured[form]["rss_before_mib"] <= measured[form]["rss_peak_mib"]
    raw_growth = max(measured["raw"]["peak_growth_mib"], 1.0)
    assert measured["json_peak_growth_over_raw"] == round(measured["json"]["peak_growth_mib"] / raw_growth, 2)


def test_profile_names_the_chunk_view(tmp_path):
    output = tmp_path / "profile.txt"
    run_bench("profile_chunks", tmp_path, "--smoke", "--output", str(output))
    profile = output.read_text()
    assert profile.startswith("5 multipart chunks of 16 KiB")
    assert "receive_chunk" in profile


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_draws_both_plots(ingest_result, finalize_result, results_dir, tmp_path):
    run_bench("report", results_dir, "--results", str(results_dir), "--images", str(tmp_path), "--suffix=-smoke")
    assert png_size(tmp_path / "ingest-latency.png") == (770, 462)
    assert png_size(tmp_path / "finalize-time.png") == (770, 462)


@pytest.mark.postgres
def test_workers_bench_processes_every_recording_with_each_pool_size(results_dir):
    from bench.harness import PostgresUnreachable, throwaway_postgres_database
    from tests.conftest import POSTGRES_URL, skip_or_fail

    try:
        with throwaway_postgres_database(POSTGRES_URL, prefix="recorder_probe"):
            pass
    except PostgresUnreachable as error:
        skip_or_fail(str(error))
    output = run_bench("workers", results_dir, "--smoke", extra_env={"BENCH_POSTGRES_URL": POSTGRES_URL})
    result = json.loads((results_dir / "workers-smoke.json").read_text())
    assert [run["workers"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["recordings"] == 2 and run["seconds"] > 0
        # per minute comes from unrounded seconds; the reported seconds are rounded to 5 ms
        rounding = 0.005 / run["seconds"]
        assert run["recordings_per_minute"] == pytest.approx(2 * 60 / run["seconds"], rel=rounding + 0.001)
    assert [(row["workers"], row["rounds"]) for row in result["summary"]] == [(1, 1), (2, 1)]
    assert result["summary"][0]["ratio_to_fewest"] == 1.0
    expected_ratio = result["runs"][1]["recordings_per_minute"] / result["runs"][0]["recordings_per_minute"]
    assert result["summary"][1]["ratio_to_fewest"] == pytest.approx(expected_ratio, abs=0.011)
    assert "recordings/minute" in output


def test_captions_bench_measures_both_servers_with_real_speech(results_dir):
    from recordings import captions

    if not captions.is_installed():
        from tests.conftest import skip_or_fail

        skip_or_fail("the captions extra is not installed (make captions)")
    run_bench("captions", results_dir, "--smoke", timeout=600)
    result = json.loads((results_dir / "captions-smoke.json").read_text())
    [length] = result["summary"]["lengths"]
    assert length["word_error_rate"] <= 0.10, length
    assert 0 < length["stop_to_ready_seconds"] <= length["stop_to_captions_seconds"]
    assert result["summary"]["uploads_errors"] == 0
    assert len(result["summary"]["uploads_p95_ratios"]) == 2
    assert [run["captions_status_after"] for run in result["baseline"]["uploads"]] == ["off", "off"]


def test_renditions_bench_measures_every_source_kind_and_both_servers(results_dir):
    run_bench("renditions", results_dir, "--smoke", timeout=600)
    result = json.loads((results_dir / "renditions-smoke.json").read_text())
    costs = {cost["kind"]: cost for cost in result["costs"]}
    assert set(costs) == {"camera_vp8", "screen_vp8", "camera_vp9", "camera_h264", "audio_only"}
    assert costs["camera_h264"]["video_copied"] is True and costs["camera_vp8"]["video_copied"] is False
    assert costs["audio_only"]["codecs"] == "mp4a.40.2"
    for cost in costs.values():
        assert cost["cpu_seconds_per_recorded_minute"] > 0 and cost["baseline_cpu_seconds_per_recorded_minute"] > 0
    summary = result["summary"]
    assert summary["uploads_errors"] == 0 and len(summary["uploads_p95_ratios"]) == 2
    assert [run["rendition_status_after"] for run in result["uploads"]["baseline"]] == ["off", "off"]
    assert [run["rendition_status_at_idle"] for run in result["uploads"]["service"]] == ["ready", "ready"]
