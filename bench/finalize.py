"""Last chunk → ready, against the floor: the same work done by direct commands, in the same run.

    python -m bench.finalize                      # make bench-finalize: 1 and 10 minutes, and memory
    python -m bench.finalize --minutes 1,10,60    # add the hour
    python -m bench.finalize --smoke              # seconds, for the test suite

Recordings are VP8 + Opus WebM written as a live stream (no Duration, no Cues, like MediaRecorder),
cut into one chunk per second, uploaded to the service under gunicorn, then finalized. The floor
runs, on the same chunk files: `cat`, `ffmpeg -c copy` remux, ffmpeg's own MP3 extraction, one
frame to JPEG. Each length is measured with the live build (RECORDER_LIVE_BUILD=1, the video
built while the chunks arrive) and without it (the full pipeline at Stop), with the CPU seconds the
service's processes spent per recorded minute (upload and processing together: the live build moves
work from after Stop to while recording). All but the last three chunks are uploaded flat out, four
at a time; once the server is idle again the last three follow one a second, as a browser sends
them, and finalize comes right after the last: the time measured is last chunk → ready. Memory: the
service's peak RSS for a 1 GiB recording against an 8-second one.
"""

import argparse
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import (
    Http,
    MiB,
    RssSampler,
    cpu_seconds_of_group,
    gunicorn,
    machine_description,
    moto_s3,
    wait_until_idle,
    work_directory,
    write_result,
)
from bench.media import generate_base, loop_recording, split_to_files
from recordings import utils

BASE_SECONDS = 60


# The last chunks are sent as a browser sends them, one a second, after the server has caught up
# with the ones before (sent flat out, to save the hour): "last chunk → ready" is then what a
# person who presses Stop waits, not how fast the service digests an hour uploaded in 20 s.
PACED_LAST_CHUNKS = 3
LIVE_BUILD_DELAY_SECONDS = 5  # RECORDER_LIVE_BUILD_DELAY_SECONDS's default


def ingest(http: Http, chunk_paths: list[Path], server=None) -> tuple[str, str, float]:
    """Upload every chunk (raw bodies, four at a time, as a browser's queue would); returns the ids
    and seconds. With `server`, all but the last PACED_LAST_CHUNKS flat out, then, once the
    server is idle, those one a second."""
    started = http.json("POST", "/api/start-recording/", {"mime_type": "video/webm;codecs=vp8,opus"})
    session_id, token = started["session_id"], started["upload_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"}

    def upload(item: tuple[int, Path]) -> int:
        index, path = item
        url = f"/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
        status, _, _ = http.request("POST", url, path.read_bytes(), headers)
        return status

    paced = PACED_LAST_CHUNKS if server is not None and len(chunk_paths) > PACED_LAST_CHUNKS else 0
    items = list(enumerate(chunk_paths))
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(upload, items[: len(items) - paced]))
    if paced:
        time.sleep(LIVE_BUILD_DELAY_SECONDS + 1)  # the build's last advance waits that long before it runs
        wait_until_idle(server.pid)
        for item in items[len(items) - paced :]:
            time.sleep(1.0)
            statuses.append(upload(item))
    assert set(statuses) == {201}, sorted(set(statuses))
    return session_id, token, time.perf_counter() - began


def finalize_until_ready(http: Http, session_id: str, token: str, total_chunks: int) -> tuple[float, dict]:
    began = time.perf_counter()
    http.json(
        "POST",
        "/api/finalize-recording/",
        {"session_id": session_id, "is_final": True, "total_chunks": total_chunks},
        {"Authorization": f"Bearer {token}"},
    )
    while (body := http.json("GET", f"/api/get-recorded-data/{session_id}/"))["status"] not in ("ready", "failed"):
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    assert body["status"] == "ready", body["error"]
    return elapsed, body


def timed(command: list[str], **kwargs) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)
    return time.perf_counter() - began


def floor_seconds(chunk_paths: list[Path], work_dir: Path) -> dict:
    """The same work by direct commands: what nothing but the tools themselves would take."""
    ffmpeg = [utils.ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    joined, remuxed = work_dir / "floor-joined.webm", work_dir / "floor-remuxed.webm"
    with open(joined, "wb") as joined_file:
        steps = {"cat": timed(["cat", *map(str, chunk_paths)], stdout=joined_file)}
    steps["remux"] = timed([*ffmpeg, "-i", str(joined), "-map", "0", "-c", "copy", "-f", "webm", str(remuxed)])
    steps["audio"] = timed(
        [*ffmpeg, "-i", str(joined), "-vn", "-c:a", "libmp3lame", "-b:a", "128k", str(work_dir / "floor-audio.mp3")]
    )
    steps["thumbnail"] = timed(
        [*ffmpeg, "-ss", "1", "-i", str(remuxed), "-frames:v", "1", str(work_dir / "floor-thumbnail.jpg")]
    )
    for path in (joined, remuxed):
        path.unlink()
    return {
        "steps": {name: round(seconds, 3) for name, seconds in steps.items()},
        "sequential_seconds": round(sum(steps.values()), 3),
        "two_core_seconds": round(steps["cat"] + max(steps["remux"] + steps["thumbnail"], steps["audio"]), 3),
    }


def measure_length(http: Http, server, work_dir: Path, base: Path, minutes: float, *, with_floor: bool) -> dict:
    recording = loop_recording(base, work_dir / f"recording-{minutes}min.webm", times=max(1, round(minutes)))
    seconds = minutes * 60
    chunk_paths = split_to_files(recording, work_dir / f"chunks-{minutes}", parts=int(seconds))
    cpu_before = cpu_seconds_of_group(server.pid)
    session_id, token, ingest_seconds = ingest(http, chunk_paths, server)
    service_seconds, body = finalize_until_ready(http, session_id, token, len(chunk_paths))
    time.sleep(0.5)  # the workers' accounting of their last ffmpeg
    cpu_seconds = cpu_seconds_of_group(server.pid) - cpu_before
    floor = floor_seconds(chunk_paths, work_dir) if with_floor else None
    for path in chunk_paths:
        path.unlink()
    if floor is None:
        print(f"{minutes:>5} min: last chunk → ready {service_seconds:.2f} s; steps {body['processing_steps']}")
        return {
            "minutes": minutes,
            "chunks": len(chunk_paths),
            "service_seconds": round(service_seconds, 3),
            "service_steps": body["processing_steps"],
            "cpu_seconds_per_minute": round(cpu_seconds / minutes, 2),
            "duration": body["duration"],
        }
    result = {
        "cpu_seconds_per_minute": round(cpu_seconds / minutes, 2),
        "minutes": minutes,
        "bytes": recording.stat().st_size,
        "chunks": len(chunk_paths),
        "ingest_seconds": round(ingest_seconds, 2),
        "service_seconds": round(service_seconds, 3),
        "service_steps": body["processing_steps"],
        "floor": floor,
        "ratio_to_floor": round(service_seconds / floor["sequential_seconds"], 2),
        "ratio_to_two_core_floor": round(service_seconds / floor["two_core_seconds"], 2),
        "duration": body["duration"],
    }
    print(
        f"{minutes:>5} min ({result['bytes'] / MiB:.0f} MiB, {len(chunk_paths)} chunks): service "
        f"{service_seconds:.2f} s, floor {floor['sequential_seconds']:.2f} s (two cores "
        f"{floor['two_core_seconds']:.2f} s): ratio {result['ratio_to_floor']}; steps {body['processing_steps']}"
    )
    return result


def peak_rss_for(server, http: Http, work_dir: Path, recording: Path, label: str) -> dict:
    """Peak RSS of the service's processes while it ingests and processes `recording`."""
    seconds = max(1, round(utils.probe(_remuxed_copy(recording, work_dir)).duration_seconds or 1))
    chunk_paths = split_to_files(recording, work_dir / f"chunks-{label}", parts=seconds)
    with RssSampler(server.pid) as rss:
        session_id, token, _ = ingest(http, chunk_paths)
        finalize_until_ready(http, session_id, token, len(chunk_paths))
    for path in chunk_paths:
        path.unlink()
    return {
        "bytes": recording.stat().st_size,
        "chunks": len(chunk_paths),
        "peak_python_mib": round(rss.peak_python_bytes / MiB, 1),
        "peak_with_ffmpeg_mib": round(rss.peak_total_bytes / MiB, 1),
    }


def _remuxed_copy(recording: Path, work_dir: Path) -> Path:
    remuxed = work_dir / f"{recording.stem}-probe.webm"
    utils.run_ffmpeg(
        ["-i", str(recording), "-map", "0", "-c", "copy", "-f", "webm", str(remuxed)],
        limits=utils.Limits(timeout_seconds=1800),
    )
    return remuxed


def memory_comparison(server, http: Http, work_dir: Path, large_mib: int) -> dict:
    small = generate_base(work_dir / "memory-small.webm", seconds=8)
    big_base = generate_base(work_dir / "memory-base.webm", seconds=BASE_SECONDS, video_bitrate="8M")
    big = loop_recording(
        big_base, work_dir / "memory-large.webm", times=max(1, -(-large_mib * MiB // big_base.stat().st_size))
    )
    small_result = peak_rss_for(server, http, work_dir, small, "small")
    large_result = peak_rss_for(server, http, work_dir, big, "large")
    growth = round(large_result["peak_python_mib"] - small_result["peak_python_mib"], 1)
    print(
        f"memory: 8 s recording peak {small_result['peak_python_mib']} MiB, {large_result['bytes'] / MiB:.0f} MiB "
        f"recording peak {large_result['peak_python_mib']} MiB: growth {growth} MiB (goal < 64); with ffmpeg "
        f"{small_result['peak_with_ffmpeg_mib']} → {large_result['peak_with_ffmpeg_mib']} MiB"
    )
    return {"small": small_result, "large": large_result, "growth_mib": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=lambda text: [float(n) for n in text.split(",")], default=[1, 10])
    parser.add_argument("--memory-mib", type=int, default=1024, help="size of the large recording; 0 to skip")
    parser.add_argument("--s3", action="store_true", help="also with S3 storage (a moto server on loopback)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", default="finalize")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.memory_mib, args.output = [0.25], 0, "finalize-smoke"

    with work_directory("bench-finalize-") as temporary:
        work_dir = Path(temporary)
        base = generate_base(work_dir / "base.webm", seconds=15 if args.smoke else BASE_SECONDS)
        with gunicorn(work_dir / "server", extra_env={"RECORDER_LIVE_BUILD": "1"}) as server:
            http = Http(server.base_url)
            print("live build:")
            lengths = [
                measure_length(http, server, work_dir, base, minutes, with_floor=True) for minutes in args.minutes
            ]
            memory = memory_comparison(server, http, work_dir, args.memory_mib) if args.memory_mib else None
        with gunicorn(work_dir / "server-full", extra_env={"RECORDER_LIVE_BUILD": "0"}) as server:
            http = Http(server.base_url)
            print("full pipeline at Stop:")
            full = [measure_length(http, server, work_dir, base, minutes, with_floor=False) for minutes in args.minutes]
        s3 = None
        if args.s3:
            with moto_s3(work_dir) as s3_env, gunicorn(work_dir / "server-s3", extra_env=s3_env) as server:
                http = Http(server.base_url)
                print("live build, S3 storage (moto on loopback):")
                s3 = [
                    measure_length(http, server, work_dir, base, minutes, with_floor=False) for minutes in args.minutes
                ]
    per_minute = [round(length["service_seconds"] / length["minutes"], 3) for length in lengths]
    path = write_result(
        args.output,
        {
            "machine": machine_description(),
            "lengths": lengths,
            "full_pipeline": full,
            "live_build_s3": s3,
            "live_to_full_ratio": [
                round(live["service_seconds"] / other["service_seconds"], 2)
                for live, other in zip(lengths, full, strict=True)
            ],
            "memory": memory,
            "service_seconds_per_minute": per_minute,
        },
    )
    print(f"service seconds per recorded minute: {per_minute}; written to {path}")


if __name__ == "__main__":
    main()
