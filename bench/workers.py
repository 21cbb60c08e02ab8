"""Processing throughput against the number of db_worker processes: recordings per minute, 1 vs 2.

    python -m bench.workers                          # make bench-workers: 1,2,1,2 workers, 24 recordings each
    python -m bench.workers --recordings 8 --workers 1,2,3
    python -m bench.workers --smoke                  # seconds, for the test suite

The service runs as in production (gunicorn, PostgreSQL, RECORDER_TASKS_BACKEND=database). Every
recording is uploaded first, one chunk per second of a VP8 + Opus live WebM; then M workers are
started and left to boot, all recordings are finalized at once, and the clock runs until the last
one is ready. Pool sizes alternate over rounds in one run; the smallest pool is the baseline and
the ratio of the means is the scaling.
"""

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import (
    Http,
    db_workers,
    gunicorn,
    machine_description,
    service_environment,
    throwaway_postgres_database,
    work_directory,
    write_result,
)
from bench.media import generate_base, split_to_files

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WORKER_BOOT_SECONDS = 3.0


def upload(http: Http, chunk_paths: list[Path]) -> tuple[str, str]:
    started = http.json("POST", "/api/start-recording/", {"mime_type": "video/webm;codecs=vp8,opus"})
    session_id, token = started["session_id"], started["upload_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"}
    for index, path in enumerate(chunk_paths):
        url = f"/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
        status, _, body = http.request("POST", url, path.read_bytes(), headers)
        assert status == 201, body[:300]
    return session_id, token


def process_batch(http: Http, sessions: list[tuple[str, str]], total_chunks: int) -> float:
    """Finalize every recording at once; seconds until the last is ready."""

    def finalize(session: tuple[str, str]) -> None:
        session_id, token = session
        payload = {"session_id": session_id, "is_final": True, "total_chunks": total_chunks}
        http.json("POST", "/api/finalize-recording/", payload, {"Authorization": f"Bearer {token}"})

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(finalize, sessions))
    pending = {session_id for session_id, _ in sessions}
    while pending:
        for session_id in list(pending):
            body = http.json("GET", f"/api/get-recorded-data/{session_id}/")
            if body["status"] == "failed":
                raise RuntimeError(f"{session_id} failed: {body['error']}")
            if body["status"] == "ready":
                pending.discard(session_id)
        time.sleep(0.05)
    return time.perf_counter() - began


def measure(worker_counts: list[int], recordings: int, base_seconds: int, work_dir: Path) -> list[dict]:
    base = generate_base(work_dir / "base.webm", seconds=base_seconds)
    chunk_paths = split_to_files(base, work_dir / "chunks", parts=base_seconds)
    runs = []
    with throwaway_postgres_database(POSTGRES_URL, prefix="recorder_bench") as database_url:
        environment = {"DATABASE_URL": database_url, "RECORDER_TASKS_BACKEND": "database"}
        with gunicorn(work_dir / "server", extra_env=environment) as server:
            http = Http(server.base_url)
            worker_environment = {**service_environment(server.work_dir), **environment}
            for round_number, count in enumerate(worker_counts):
                sessions = [upload(http, chunk_paths) for _ in range(recordings)]
                log_dir = work_dir / f"round-{round_number}-workers-{count}"
                log_dir.mkdir()
                with db_workers(worker_environment, log_dir, count, interval_seconds=0.05):
                    time.sleep(WORKER_BOOT_SECONDS)  # Django's start-up is not processing
                    seconds = process_batch(http, sessions, total_chunks=len(chunk_paths))
                runs.append(
                    {
                        "workers": count,
                        "recordings": recordings,
                        "seconds": round(seconds, 2),
                        "recordings_per_minute": round(recordings * 60 / seconds, 1),
                        "recorded_minutes_per_minute": round(recordings * base_seconds / seconds, 1),
                    }
                )
                print(f"{count} worker(s): {recordings} recordings in {seconds:.2f} s")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 1, 2])
    parser.add_argument("--recordings", type=int, default=24)
    parser.add_argument("--seconds", type=int, default=60, help="length of each recording")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", default="workers")
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.recordings, args.seconds, args.output = [1, 2], 2, 5, "workers-smoke"

    with work_directory("bench-workers-") as temporary:
        runs = measure(args.workers, args.recordings, args.seconds, Path(temporary))
    path = write_result(
        args.output,
        {
            "machine": machine_description(),
            "recording_seconds": args.seconds,
            "runs": runs,
            "summary": summarize(runs),
        },
    )
    print(f"{summarize(runs)} (recordings/minute); written to {path}")


def summarize(runs: list[dict]) -> list[dict]:
    """Per pool size: the mean of its rounds, and its ratio to the smallest pool's mean."""
    by_count: dict[int, list[float]] = {}
    for run in runs:
        by_count.setdefault(run["workers"], []).append(run["recordings_per_minute"])
    means = {count: statistics.fmean(values) for count, values in sorted(by_count.items())}
    baseline = next(iter(means.values()))
    return [
        {
            "workers": count,
            "rounds": len(by_count[count]),
            "recordings_per_minute": round(mean, 1),
            "ratio_to_fewest": round(mean / baseline, 2),
        }
        for count, mean in means.items()
    ]


if __name__ == "__main__":
    main()
