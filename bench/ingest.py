"""Chunk ingest: the service under gunicorn against a bare write-and-fsync WSGI app, same load, same run.

    python -m bench.ingest                 # make bench-ingest
    python -m bench.ingest --smoke         # a few seconds, for the test suite

Paced mode: N recorders each post one chunk a second (multipart), each the next chunk of a real
VP8/Opus recording encoded at about a chunk a second, starting at random moments within the first
second, as independent browsers do (so the live build works on them meanwhile). Flat-out mode: N clients post
back to back. Each run starts once the server is idle again. Reported for both servers: throughput,
latency p50/p95/p99, errors, peak RSS, the server's CPU time in each run and what it spent after it
(background work the run left).
"""

import argparse
import random
import threading
import time
from pathlib import Path

from bench.harness import (
    Http,
    MiB,
    RssSampler,
    cpu_seconds_of_group,
    db_workers,
    gunicorn,
    latency_summary,
    machine_description,
    multipart_body,
    service_environment,
    wait_until_idle,
    work_directory,
    write_result,
)
from bench.media import generate_base


def recording_chunks(work_dir: Path, chunk_bytes: int, count: int) -> list[bytes]:
    """`count` consecutive chunks of `chunk_bytes` of one real recording encoded at about a chunk a
    second: what a paced recorder sends, so that the service's background work on it (the live
    build: the video appended, the MP3 encoded in pieces) runs beside the uploads as it would."""
    bitrate = f"{chunk_bytes * 8 // 1000}k"
    source = generate_base(work_dir / f"paced-source-{count}-{bitrate}.webm", seconds=2 * count, video_bitrate=bitrate)
    data = source.read_bytes()
    assert len(data) >= count * chunk_bytes, "the source is too short for its chunks"
    return [data[index * chunk_bytes : (index + 1) * chunk_bytes] for index in range(count)]


def real_chunk_bytes(work_dir: Path, chunk_bytes: int, count: int = 16) -> list[bytes]:
    """`count` slices of a real recording: the first holds the WebM header, the others media data."""
    seconds = max(8, 2 * count * chunk_bytes // MiB)  # the source runs at about 1 MiB a second
    data = generate_base(work_dir / f"ingest-source-{seconds}s.webm", seconds=seconds, video_bitrate="8M").read_bytes()
    span = len(data) - chunk_bytes
    return [data[:chunk_bytes]] + [data[(index * chunk_bytes) % span :][:chunk_bytes] for index in range(1, count)]


class Target:
    """How one recorder talks to a server: the service (with a session) or the baseline (none)."""

    def __init__(self, base_url: str, *, is_service: bool):
        self.http = Http(base_url)
        self.is_service = is_service

    def new_recorder(self) -> dict:
        if not self.is_service:
            return {}
        started = self.http.json("POST", "/api/start-recording/", {"mime_type": "video/webm;codecs=vp8,opus"})
        return {"session_id": started["session_id"], "token": started["upload_token"]}

    def finalize(self, recorder: dict, total_chunks: int) -> int:
        """Stop: the recording is processed (the service) while the recorder starts its next one."""
        if not self.is_service:
            return 200
        payload = {"session_id": recorder["session_id"], "is_final": True, "total_chunks": total_chunks}
        status, _ = self.http.json_status(
            "POST", "/api/finalize-recording/", payload, {"Authorization": f"Bearer {recorder['token']}"}
        )
        return status

    def prepared_chunk(self, recorder: dict, index: int, chunk: bytes) -> tuple[str, bytes, dict]:
        fields = {"session_id": recorder.get("session_id", "baseline"), "chunk_index": str(index)}
        body, content_type = multipart_body(fields, "video_chunk", chunk)
        headers = {"Content-Type": content_type}
        if self.is_service:
            headers["Authorization"] = f"Bearer {recorder['token']}"
        return "/api/receive-video-chunk/", body, headers


def run_load(
    target: Target, *, recorders: int, chunks: list[bytes], seconds: float, paced: bool, chunks_per_recording: int = 0
) -> dict:
    """Drive `recorders` clients for `seconds`; each posts a chunk every second (paced) or back to back.
    With `chunks_per_recording`, a recorder stops after that many chunks (finalize: the recording is
    processed) and starts a new recording at once, as people record one after another: the steady
    state, in which the service does all of its work (not only the uploads) within the run."""
    latencies: list[float] = []
    statuses: list[int] = []
    finalize_statuses: list[int] = []
    acknowledged_bytes = [0]
    lock = threading.Lock()
    sessions = [target.new_recorder() for _ in range(recorders)]
    randomizer = random.Random(5)
    offsets = [randomizer.random() if paced else 0.0 for _ in range(recorders)]
    started_at = time.perf_counter() + 0.5

    def recorder_loop(number: int) -> None:
        recorder = sessions[number]
        index = 0
        next_at = started_at + offsets[number]
        while True:
            now = time.perf_counter()
            if now - started_at >= seconds:
                return
            if paced and now < next_at:
                time.sleep(next_at - now)
            path, body, headers = target.prepared_chunk(recorder, index, chunks[index % len(chunks)])
            status, elapsed, _ = target.http.request("POST", path, body, headers)
            with lock:
                latencies.append(elapsed)
                statuses.append(status)
                if status in (200, 201):
                    acknowledged_bytes[0] += len(chunks[index % len(chunks)])
            index += 1
            next_at += 1.0
            if chunks_per_recording and index == chunks_per_recording:
                finalize_status = target.finalize(recorder, index)
                with lock:
                    finalize_statuses.append(finalize_status)
                recorder, index = target.new_recorder(), 0

    threads = [threading.Thread(target=recorder_loop, args=(number,)) for number in range(recorders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_seconds = time.perf_counter() - started_at
    errors = sum(1 for status in statuses if status not in (200, 201))
    errors += sum(1 for status in finalize_statuses if status not in (200, 202))
    return {
        "recorders": recorders,
        "chunks_per_recording": chunks_per_recording,
        "recordings_finalized": len(finalize_statuses),
        "chunk_bytes": len(chunks[1]) if len(chunks) > 1 else len(chunks[0]),
        "mode": "paced" if paced else "flat_out",
        "seconds": round(wall_seconds, 2),
        "requests": len(statuses),
        "errors": errors,
        "throughput_mib_s": round(acknowledged_bytes[0] / MiB / wall_seconds, 2),
        "latency": latency_summary(latencies),
    }


def measured_run(process_groups: list[int], target: Target, **load) -> dict:
    """One load run, its server CPU time (task workers and ffmpeg children included), and the background
    work it left: the next run starts once the server is idle again, so each measures its own load only."""
    cpu_before = cpu_seconds_of_group(*process_groups)
    run = run_load(target, **load)
    cpu_at_end = cpu_seconds_of_group(*process_groups)
    began_settling = time.perf_counter()
    wait_until_idle(*process_groups, timeout_seconds=300)
    run["server_cpu_seconds"] = round(cpu_at_end - cpu_before, 1)
    run["left_over"] = {
        "seconds": round(time.perf_counter() - began_settling, 1),
        "cpu_seconds": round(cpu_seconds_of_group(*process_groups) - cpu_at_end, 1),
    }
    return run


def measure_server(name: str, work_dir: Path, args, paced_chunks, flat_chunks) -> dict:
    app = None if name == "service" else "bench.baseline_app:application"
    extra_env = {"BASELINE_DIR": str(work_dir / "baseline-bodies")} if app else dict(args.service_env)
    task_workers = args.workers if name == "service" else 0
    if task_workers:
        extra_env["RECORDER_TASKS_BACKEND"] = "database"
    (work_dir / "baseline-bodies").mkdir(parents=True, exist_ok=True)
    result: dict = {"paced": [], "flat_out": None}
    with (
        gunicorn(work_dir, app=app, extra_env=extra_env) as server,
        db_workers(
            {**service_environment(work_dir), **extra_env}, work_dir, task_workers, niceness=args.workers_niceness
        ) as workers,
        RssSampler(server.pid) as rss,
    ):
        process_groups = [server.pid, *(worker.pid for worker in workers)]
        target = Target(server.base_url, is_service=(name == "service"))
        measured_run(process_groups, target, recorders=4, chunks=paced_chunks, seconds=2, paced=False)  # warm up
        rss.reset()
        for recorders in args.paced_recorders:
            load = {"recorders": recorders, "chunks": paced_chunks, "seconds": args.seconds, "paced": True}
            run = measured_run(process_groups, target, **load, chunks_per_recording=args.recording_seconds)
            print(
                f"{name:8} paced    {recorders:4} × {len(paced_chunks[1]) // 1024} KiB/s: "
                f"p95 {run['latency'].get('p95_ms')} ms, errors {run['errors']}, CPU {run['server_cpu_seconds']} s "
                f"+ {run['left_over']['cpu_seconds']} s in the {run['left_over']['seconds']} s after"
            )
            result["paced"].append(run)
        run = measured_run(
            process_groups, target, recorders=args.recorders, chunks=flat_chunks, seconds=args.seconds, paced=False
        )
        print(
            f"{name:8} flat-out {args.recorders:4} × {len(flat_chunks[1]) // 1024} KiB: "
            f"{run['throughput_mib_s']} MiB/s, p95 {run['latency'].get('p95_ms')} ms, errors {run['errors']}, "
            f"CPU {run['server_cpu_seconds']} s + {run['left_over']['cpu_seconds']} s after"
        )
        result["flat_out"] = run
        result["peak_rss_mib"] = round(rss.peak_total_bytes / MiB, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recorders", type=int, default=50, help="clients in flat-out mode")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="chunk size in flat-out mode")
    parser.add_argument(
        "--paced-recorders",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[10, 25, 50, 100],
        help="recorder counts for the paced runs",
    )
    parser.add_argument("--paced-chunk-kib", type=int, default=256, help="chunk size in paced mode")
    parser.add_argument(
        "--recording-seconds",
        type=int,
        default=0,
        help="paced mode: each recorder stops after this many chunks (a second each) and starts a new "
        "recording, so the service processes recordings within the run; 0: one recording per recorder",
    )
    parser.add_argument("--seconds", type=float, default=20, help="length of each run")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)),
        help="NAME=VALUE for the service's environment, e.g. RECORDER_LIVE_BUILD=0 (repeatable)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the service with RECORDER_TASKS_BACKEND=database and this many `db_worker` processes "
        "(their CPU counts as the server's, their memory not in peak_rss_mib); 0: the default embedded backend",
    )
    parser.add_argument("--workers-niceness", type=int, default=10, help="the workers' niceness (`nice -n`)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--output", default="ingest", help="result name under bench/results/")
    args = parser.parse_args()
    if args.smoke:
        args.recorders, args.chunk_kib, args.paced_recorders, args.paced_chunk_kib, args.seconds = 3, 64, [3], 32, 2
        args.output = "ingest-smoke"

    with work_directory("bench-ingest-") as temporary:
        work_dir = Path(temporary)
        paced_chunks = recording_chunks(work_dir, args.paced_chunk_kib * 1024, int(args.seconds) + 2)
        flat_chunks = real_chunk_bytes(work_dir, args.chunk_kib * 1024)
        results = {
            name: measure_server(name, work_dir / name, args, paced_chunks, flat_chunks)
            for name in ("baseline", "service")
        }

    service, baseline = results["service"], results["baseline"]
    paced_pairs = [
        {
            "recorders": mine["recorders"],
            "service_p95_ms": mine["latency"]["p95_ms"],
            "baseline_p95_ms": theirs["latency"]["p95_ms"],
            "p95_ratio": round(mine["latency"]["p95_ms"] / theirs["latency"]["p95_ms"], 2),
        }
        for mine, theirs in zip(service["paced"], baseline["paced"], strict=True)
    ]
    summary = {
        "flat_out_throughput_ratio": round(
            service["flat_out"]["throughput_mib_s"] / max(baseline["flat_out"]["throughput_mib_s"], 1e-9), 2
        ),
        "paced_p95_ratios": paced_pairs,
        "errors": sum(run["errors"] for server in results.values() for run in [*server["paced"], server["flat_out"]]),
        "peak_rss_mib": {name: server["peak_rss_mib"] for name, server in results.items()},
    }
    path = write_result(
        args.output, {"machine": machine_description(), "arguments": vars(args), **results, "summary": summary}
    )
    print(f"flat-out throughput: service/baseline = {summary['flat_out_throughput_ratio']}")
    for pair in paced_pairs:
        print(
            f"paced {pair['recorders']:4}: p95 service {pair['service_p95_ms']} ms / baseline "
            f"{pair['baseline_p95_ms']} ms = {pair['p95_ratio']}"
        )
    print(f"errors: {summary['errors']}; peak RSS MiB: {summary['peak_rss_mib']}; written to {path}")


if __name__ == "__main__":
    main()
