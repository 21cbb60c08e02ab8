"""The MP4 rendition: what it costs per recorded minute by source kind, and what it does to uploads.

    python -m bench.renditions              # make bench-renditions: 2-minute recordings, 720p30
    python -m bench.renditions --minutes 5
    python -m bench.renditions --smoke      # seconds, for the test suite

Part 1, cost by source kind: each source is a processed video as the service stores it (what the
rendition task reads): camera-like motion (testsrc2) and a screen-like still picture with a small
part changing (testsrc), each as VP8 and as VP9 WebM; H.264 in MP4 with Opus (Chrome's H.264
recordings, served as MP4); audio only (Opus). The rendition is made by recordings/renditions.py's
`encode_file`, in this process, and timed by the CPU time of its ffmpeg children. Beside it, in the
same run, the baseline: the plain ffmpeg command a person would type for the same job
(`-c:v libx264 -preset veryfast -crf 23 -c:a aac -movflags +faststart`, video copied for H.264).
Reported: CPU seconds per recorded minute, wall seconds per recorded minute at nice 19 on an idle
machine, and the ratio to the baseline's CPU.

Part 2, uploads while a rendition runs: two servers, identical but for RECORDER_RENDITIONS (1: the
service; 0: the baseline), under gunicorn with the embedded backend. On each, a VP8 recording of
LOAD_SOURCE_MINUTES is uploaded flat out and finalized; at `ready` the service starts its rendition
(nice 19, RECORDER_RENDITION_THREADS) and paced recorders (a 256 KiB chunk a second each) upload
meanwhile, interleaved baseline, service, baseline, service. Reported: p95 of the uploads on each,
the ratio, errors, and whether the rendition was still running when the load ended.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.captions import upload
from bench.finalize import finalize_until_ready
from bench.harness import (
    Http,
    cpu_seconds_of_group,
    gunicorn,
    machine_description,
    wait_until_idle,
    work_directory,
    write_result,
)
from bench.ingest import Target, recording_chunks, run_load
from bench.media import generate_base, split_to_files

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recorder_project.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "benchmark-only-secret-key-not-for-production-0123456789")

import django  # noqa: E402

django.setup()

from recordings import background, renditions, utils  # noqa: E402

LOAD_SOURCE_MINUTES = 3


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_source(kind: str, path: Path, *, seconds: int, size: str) -> Path:
    """A processed video of `kind` as the service stores it."""
    if path.exists():
        return path
    pattern = "testsrc" if kind.startswith("screen") else "testsrc2"
    video_args = {
        "camera_vp8": ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "2M"],
        "screen_vp8": ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"],
        "camera_vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "2M", "-row-mt", "1"],
        "camera_h264": ["-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "baseline", "-b:v", "2M"],
        "audio_only": ["-vn"],
    }[kind]
    container = ["-f", "mp4", "-movflags", "+faststart"] if kind.endswith("h264") else ["-f", "webm"]
    utils.run_ffmpeg(
        [
            *("-f", "lavfi", "-i", f"{pattern}=size={size}:rate=30"),
            *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
            *("-t", str(seconds), "-map", "0:v", "-map", "1:a", "-pix_fmt", "yuv420p"),
            *video_args,
            *("-c:a", "libopus", "-b:a", "64k"),
            *container,
            str(path),
        ],
        limits=utils.Limits(timeout_seconds=3600),
    )
    return path


def baseline_command(source: Path, destination: Path, *, copy_video: bool, has_video: bool) -> list[str]:
    video = ["-c:v", "copy"] if copy_video else ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"]
    return [
        "-i",
        str(source),
        *(video if has_video else ["-vn"]),
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        str(destination),
    ]


def measure_kind(kind: str, source: Path, seconds: int, work_dir: Path) -> dict:
    container = "mp4" if kind.endswith("h264") else "webm"
    before = _children_cpu_seconds()
    began = time.perf_counter()
    # on a nice-19 thread, as the service runs it (its ffmpeg inherits that); this process, and the
    # servers of part 2 it starts, stay at nice 0
    made = background.at_low_priority(lambda: renditions.encode_file(source, container, work_dir), name="bench")
    wall = time.perf_counter() - began
    service_cpu = _children_cpu_seconds() - before
    assert made is not None, kind
    size = made.path.stat().st_size
    made.path.unlink()

    baseline_output = work_dir / f"baseline-{kind}.mp4"
    before = _children_cpu_seconds()
    began = time.perf_counter()
    command = baseline_command(
        source, baseline_output, copy_video=bool(made.video_copied), has_video=kind != "audio_only"
    )
    background.at_low_priority(
        lambda: utils.run_ffmpeg(command, limits=utils.Limits(timeout_seconds=3600)), name="bench-baseline"
    )
    baseline_wall = time.perf_counter() - began
    baseline_cpu = _children_cpu_seconds() - before
    baseline_size = baseline_output.stat().st_size
    baseline_output.unlink()
    minutes = seconds / 60
    return {
        "kind": kind,
        "recorded_seconds": seconds,
        "video_copied": made.video_copied,
        "codecs": made.codecs,
        "cpu_seconds_per_recorded_minute": round(service_cpu / minutes, 2),
        "wall_seconds_per_recorded_minute": round(wall / minutes, 2),
        "bytes_per_recorded_minute": round(size / minutes),
        "baseline_cpu_seconds_per_recorded_minute": round(baseline_cpu / minutes, 2),
        "baseline_wall_seconds_per_recorded_minute": round(baseline_wall / minutes, 2),
        "baseline_bytes_per_recorded_minute": round(baseline_size / minutes),
        "cpu_ratio_to_baseline": round(service_cpu / baseline_cpu, 2) if baseline_cpu else None,
    }


def rendition_status(http: Http, session_id: str) -> str:
    body = http.json("GET", f"/api/get-recorded-data/{session_id}/")
    mp4 = next((item for item in body["renditions"] if item["name"] == "mp4"), None)
    return mp4["status"] if mp4 else "off"


def uploads_while_rendering(
    server, load_chunks: list[bytes], source_chunks: list[Path], *, recorders: int, seconds: float
):
    http = Http(server.base_url)
    session_id, token = upload(http, source_chunks, server.pid, paced_last=0)  # flat out, as bench/captions does
    finalize_until_ready(http, session_id, token, len(source_chunks))
    cpu_before = cpu_seconds_of_group(server.pid)
    run = run_load(
        Target(server.base_url, is_service=True), recorders=recorders, chunks=load_chunks, seconds=seconds, paced=True
    )
    run["server_cpu_seconds"] = round(cpu_seconds_of_group(server.pid) - cpu_before, 1)
    run["rendition_status_after"] = rendition_status(http, session_id)
    wait_until_idle(server.pid, timeout_seconds=3600)
    run["rendition_status_at_idle"] = rendition_status(http, session_id)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2, help="length of each source in part 1")
    parser.add_argument("--size", default="1280x720", help="frame size of the sources")
    parser.add_argument("--rounds", type=int, default=2, help="upload runs per server, interleaved")
    parser.add_argument("--recorders", type=int, default=25, help="paced recorders in the upload runs")
    parser.add_argument("--load-seconds", type=float, default=20, help="length of each upload run")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--output", default="renditions", help="result name under bench/results/")
    args = parser.parse_args()
    load_source_minutes: float = LOAD_SOURCE_MINUTES
    if args.smoke:
        args.minutes, args.size, args.recorders, args.load_seconds = 0.1, "320x240", 3, 3
        load_source_minutes = 0.2
        args.output = "renditions-smoke"
    seconds = max(2, round(args.minutes * 60))

    kinds = ["camera_vp8", "screen_vp8", "camera_vp9", "camera_h264", "audio_only"]
    with work_directory("bench-renditions-") as temporary:
        work_dir = Path(temporary)
        costs = []
        for kind in kinds:
            source = make_source(
                kind, work_dir / f"{kind}.{'mp4' if kind.endswith('h264') else 'webm'}", seconds=seconds, size=args.size
            )
            with tempfile.TemporaryDirectory(dir=work_dir) as encode_dir:
                measured = measure_kind(kind, source, seconds, Path(encode_dir))
            print(measured, flush=True)
            costs.append(measured)

        load_source = generate_base(
            work_dir / "load-source.webm",
            seconds=round(load_source_minutes * 60),
            size=args.size,
            fps=30,
            video_bitrate="2M",
        )
        source_chunks = split_to_files(
            load_source, work_dir / "load-source-chunks", parts=round(load_source_minutes * 60)
        )
        load_chunks = recording_chunks(work_dir, 256 * 1024, int(args.load_seconds) + 2)
        servers = {"baseline": {"RECORDER_RENDITIONS": "0"}, "service": {"RECORDER_RENDITIONS": "1"}}
        uploads: dict[str, list] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, extra_env in servers.items():
                with gunicorn(work_dir / f"{name}-uploads", extra_env=extra_env) as server:
                    run = uploads_while_rendering(
                        server, load_chunks, source_chunks, recorders=args.recorders, seconds=args.load_seconds
                    )
                print(
                    f"{name:8} uploads: p95 {run['latency'].get('p95_ms')} ms, errors {run['errors']}, "
                    f"rendition {run['rendition_status_after']} at the end of the load",
                    flush=True,
                )
                uploads[name].append(run)

    ratios = [
        round(service["latency"]["p95_ms"] / baseline["latency"]["p95_ms"], 2)
        for baseline, service in zip(uploads["baseline"], uploads["service"], strict=True)
        if baseline["latency"].get("p95_ms") and service["latency"].get("p95_ms")
    ]
    summary = {
        "cpu_seconds_per_recorded_minute": {cost["kind"]: cost["cpu_seconds_per_recorded_minute"] for cost in costs},
        "cpu_ratio_to_baseline": {cost["kind"]: cost["cpu_ratio_to_baseline"] for cost in costs},
        "uploads_p95_ms": {name: [run["latency"].get("p95_ms") for run in runs] for name, runs in uploads.items()},
        "uploads_p95_ratios": ratios,
        "uploads_errors": sum(run["errors"] for runs in uploads.values() for run in runs),
        "rendition_running_during_load": [run["rendition_status_after"] for run in uploads["service"]],
    }
    print(summary)
    write_result(
        args.output,
        {
            "machine": machine_description(),
            "settings": {
                "minutes": args.minutes,
                "size": args.size,
                "recorders": args.recorders,
                "load_seconds": args.load_seconds,
                "load_source_minutes": load_source_minutes,
                "python": sys.version.split()[0],
            },
            "costs": costs,
            "uploads": uploads,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
