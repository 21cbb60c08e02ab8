"""Playback seeks: time a 1 MiB Range request in the middle of a large served video.

    python -m bench.range                  # make bench-range: a 1 GiB video
    python -m bench.range --smoke          # a small one, for the test suite

The video is made and processed by the service itself (generated VP8 + Opus, uploaded, finalized).
The baseline, in the same run, is reading the same 1 MiB from the same file with one pread.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.finalize import finalize_until_ready, ingest
from bench.harness import Http, MiB, gunicorn, machine_description, work_directory, write_result
from bench.media import generate_base, loop_recording, split_to_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", default="range")
    args = parser.parse_args()
    if args.smoke:
        args.size_mib, args.requests, args.output = 0, 20, "range-smoke"

    with work_directory("bench-range-") as temporary:
        work_dir = Path(temporary)
        base = generate_base(work_dir / "base.webm", seconds=20 if args.smoke else 60, video_bitrate="8M")
        times = max(1, -(-args.size_mib * MiB // base.stat().st_size))
        recording = loop_recording(base, work_dir / "recording.webm", times=times)
        chunk_paths = split_to_files(recording, work_dir / "chunks", parts=20 * times if args.smoke else 60 * times)
        with gunicorn(work_dir / "server") as server:
            http = Http(server.base_url)
            session_id, token, _ = ingest(http, chunk_paths)
            for path in chunk_paths:
                path.unlink()
            _, body = finalize_until_ready(http, session_id, token, len(chunk_paths))
            size = body["size"]
            start = size // 2
            range_header = {"Range": f"bytes={start}-{start + MiB - 1}"}
            video_path = f"/api/recordings/{body['view_id']}/video/"
            http.request("GET", video_path, headers=range_header)  # warm the connection and the worker
            latencies = []
            for _ in range(args.requests):
                status, seconds, payload = http.request("GET", video_path, headers=range_header)
                assert status == 206 and len(payload) == min(MiB, size - start), (status, len(payload))
                latencies.append(seconds)
            stored = server.work_dir / "media" / f"outputs/{body['view_id']}/video.webm"
            pread_latencies = []
            fd = os.open(stored, os.O_RDONLY)
            try:
                for _ in range(args.requests):
                    began = time.perf_counter()
                    os.pread(fd, MiB, start)
                    pread_latencies.append(time.perf_counter() - began)
            finally:
                os.close(fd)
    median_ms = round(statistics.median(latencies) * 1000, 2)
    baseline_ms = round(statistics.median(pread_latencies) * 1000, 3)
    result = {
        "machine": machine_description(),
        "video_bytes": size,
        "requests": args.requests,
        "median_ms": median_ms,
        "p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))] * 1000, 2),
        "pread_median_ms": baseline_ms,
    }
    path = write_result(args.output, result)
    print(
        f"1 MiB from the middle of a {size / MiB:.0f} MiB video: median {median_ms} ms, p95 {result['p95_ms']} ms "
        f"(goal ≤ 20 ms); pread of the same bytes {baseline_ms} ms; written to {path}"
    )


if __name__ == "__main__":
    main()
