"""Captions: their cost, their quality, how soon after Stop they are ready, and what they do to uploads.

    python -m bench.captions                    # make bench-captions: 1 and 10 minutes of speech
    python -m bench.captions --minutes 1,10,60  # add the hour
    python -m bench.captions --smoke            # seconds, for the test suite

Two servers in one run, identical but for RECORDER_CAPTIONS (1: the service; 0: the baseline, the
same service without captions), each under gunicorn with the embedded backend. Recordings are
known phrases spoken by espeak-ng (Debian) with pauses between, as live VP8 + Opus WebM in one
chunk a second. Each is uploaded as bench/finalize does (all but the last chunks flat out; once the
server is idle again the last LAST_CHUNKS_PACED one a second, as a browser sends them, so the work
left at Stop is what a real recording leaves), then finalized. Reported per length: Stop → ready
and Stop → captions ready, the word error rate, and the CPU seconds per recorded minute of each
server (the difference is what captions cost). Then uploads under load: paced recorders (a chunk a
second each) on each server while it also processes a speech recording just finalized, interleaved
baseline, service, baseline, service: the service transcribes meanwhile, the baseline does not.
"""

import argparse
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

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
from bench.media import split_to_files
from tests.speech import PHRASES, normalized_words, speech_webm, word_error_rate

LAST_CHUNKS_PACED = 30  # a whole transcription window arrives in real time before Stop
PHRASES_SECONDS = 36  # the eight phrases with their pauses take about this long


def speech_chunks(work_dir: Path, minutes: float) -> tuple[list[Path], list[str], float]:
    """A speech recording of about `minutes`, cut into a chunk a second: the chunk files, the words said, seconds."""
    repeats = max(1, round(minutes * 60 / PHRASES_SECONDS))
    webm_path, spoken, seconds = speech_webm(work_dir / f"speech-{minutes}", phrases=PHRASES * repeats)
    chunk_paths = split_to_files(webm_path, work_dir / f"chunks-{minutes}", parts=max(2, round(seconds)))
    webm_path.unlink()
    return chunk_paths, normalized_words(" ".join(phrase.text for phrase in spoken)), seconds


def counting_chunks(work_dir: Path, minutes: float) -> tuple[list[Path], list[str], float]:
    """Counting aloud at 350 words a minute, without pauses: audio a stranger can make that the model
    finds doubtful (faster-whisper's default would decode each window up to six times over)."""
    numbers = " ".join(str(number) for number in range(1, 401))
    repeats = max(1, round(minutes * 60 / 70))
    webm_path, _, seconds = speech_webm(
        work_dir / f"counting-{minutes}", phrases=[numbers] * repeats, gap_seconds=0.2, words_per_minute=350
    )
    chunk_paths = split_to_files(webm_path, work_dir / f"counting-chunks-{minutes}", parts=max(2, round(seconds)))
    webm_path.unlink()
    return chunk_paths, [], seconds


def upload(http: Http, chunk_paths: list[Path], server_pid: int, *, paced_last: int) -> tuple[str, str]:
    started = http.json("POST", "/api/start-recording/", {"mime_type": "video/webm;codecs=vp8,opus"})
    session_id, token = started["session_id"], started["upload_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "video/webm"}
    paced_from = max(0, len(chunk_paths) - paced_last)
    for index, path in enumerate(chunk_paths):
        if index == paced_from and paced_last:
            time.sleep(6)  # the live build's advance waits 5 s (RECORDER_LIVE_BUILD_DELAY_SECONDS)
            wait_until_idle(server_pid, timeout_seconds=1800)  # caught up, as with a recording made in real time
        if index >= paced_from and paced_last:
            time.sleep(1.0)
        url = f"/api/receive-video-chunk/?session_id={session_id}&chunk_index={index}"
        status, _, _ = http.request("POST", url, path.read_bytes(), headers)
        assert status == 201, status
    return session_id, token


def stop_and_wait(http: Http, session_id: str, token: str, total_chunks: int, *, captions: bool) -> dict:
    """Finalize; the seconds until `ready` and (the service) until the captions are ready."""
    began = time.perf_counter()
    ready_seconds, body = finalize_until_ready(http, session_id, token, total_chunks)
    while captions and body["captions_status"] == "pending":
        time.sleep(0.05)
        body = http.json("GET", f"/api/get-recorded-data/{session_id}/")
    return {
        "stop_to_ready_seconds": round(ready_seconds, 3),
        "stop_to_captions_seconds": round(time.perf_counter() - began, 3) if captions else None,
        "body": body,
    }


def measure_length(http: Http, server, chunk_paths: list[Path], words: list[str], seconds: float, *, captions: bool):
    cpu_before = cpu_seconds_of_group(server.pid)
    session_id, token = upload(http, chunk_paths, server.pid, paced_last=LAST_CHUNKS_PACED)
    stopped = stop_and_wait(http, session_id, token, len(chunk_paths), captions=captions)
    wait_until_idle(server.pid, timeout_seconds=1800)
    cpu_seconds = cpu_seconds_of_group(server.pid) - cpu_before
    result = {
        "recorded_seconds": round(seconds, 1),
        "stop_to_ready_seconds": stopped["stop_to_ready_seconds"],
        "stop_to_captions_seconds": stopped["stop_to_captions_seconds"],
        "cpu_seconds": round(cpu_seconds, 1),
        "cpu_seconds_per_recorded_minute": round(cpu_seconds / (seconds / 60), 2),
    }
    body = stopped["body"]
    if captions:
        assert body["captions_status"] == "ready", body["captions_status"]
        status, _, transcript_bytes = http.request("GET", urlsplit(body["transcript_url"]).path)
        assert status == 200, status
        heard = normalized_words(" ".join(word["word"] for word in json.loads(transcript_bytes)["words"]))
        if words:
            result["word_error_rate"] = round(word_error_rate(words, heard), 4)
        result["words"] = len(words)
    return result


def uploads_while_processing(http: Http, server, load_chunks, speech: list[Path], *, recorders: int, seconds: float):
    """Paced uploads right after a speech recording is uploaded flat out and finalized: what the
    server does meanwhile (both: finish its build; the service: transcribe all of it, since the
    windows had no time to run while it was uploaded) is what the uploads compete with."""
    session_id, token = upload(http, speech, server.pid, paced_last=0)
    began = time.perf_counter()
    finalize_until_ready(http, session_id, token, len(speech))
    target = Target(server.base_url, is_service=True)
    cpu_before = cpu_seconds_of_group(server.pid)
    run = run_load(target, recorders=recorders, chunks=load_chunks, seconds=seconds, paced=True)
    run["server_cpu_seconds"] = round(cpu_seconds_of_group(server.pid) - cpu_before, 1)
    run["captions_status_after"] = http.json("GET", f"/api/get-recorded-data/{session_id}/")["captions_status"]
    run["since_stop_seconds"] = round(time.perf_counter() - began, 1)
    wait_until_idle(server.pid, timeout_seconds=1800)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--minutes",
        type=lambda text: [float(n) for n in text.split(",") if n],
        default=[1, 10],
        help="recording lengths; empty: the upload runs only",
    )
    parser.add_argument("--rounds", type=int, default=2, help="upload runs per server, interleaved")
    parser.add_argument(
        "--hostile-minutes", type=float, default=2, help="counting aloud at 350 words a minute; 0: none"
    )
    parser.add_argument("--recorders", type=int, default=25, help="paced recorders in the upload runs")
    parser.add_argument("--load-seconds", type=float, default=15, help="length of each upload run")
    parser.add_argument("--load-speech-minutes", type=float, default=10, help="the recording transcribed meanwhile")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--output", default="captions", help="result name under bench/results/")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.recorders, args.load_seconds, args.load_speech_minutes = [0.5], 3, 2, 0.5
        args.hostile_minutes = 0
        args.output = "captions-smoke"

    with work_directory("bench-captions-") as temporary:
        work_dir = Path(temporary)
        recordings = {f"{minutes} min": speech_chunks(work_dir, minutes) for minutes in args.minutes}
        if args.hostile_minutes:
            recordings["counting"] = counting_chunks(work_dir, args.hostile_minutes)
        load_speech = speech_chunks(work_dir, args.load_speech_minutes)[0]
        load_chunks = recording_chunks(work_dir, 256 * 1024, int(args.load_seconds) + 2)
        servers = {"baseline": {"RECORDER_CAPTIONS": "0"}, "service": {"RECORDER_CAPTIONS": "1"}}
        results: dict = {name: {"lengths": [], "uploads": []} for name in servers}
        for name, extra_env in servers.items():
            with gunicorn(work_dir / name, extra_env=extra_env) as server:
                http = Http(server.base_url)
                for label, (chunk_paths, words, seconds) in recordings.items():
                    length = measure_length(
                        http, server, chunk_paths, words, seconds, captions=extra_env["RECORDER_CAPTIONS"] == "1"
                    )
                    length["name"] = label
                    print(f"{name:8} {label:8}: {length}")
                    results[name]["lengths"].append(length)
        # uploads: baseline, service, baseline, service (a server each time, so neither warms the other)
        for _ in range(args.rounds):
            for name, extra_env in servers.items():
                with gunicorn(work_dir / f"{name}-uploads", extra_env=extra_env) as server:
                    http = Http(server.base_url)
                    run = uploads_while_processing(
                        http, server, load_chunks, load_speech, recorders=args.recorders, seconds=args.load_seconds
                    )
                    print(
                        f"{name:8} uploads: p95 {run['latency'].get('p95_ms')} ms, errors {run['errors']}, "
                        f"captions {run['captions_status_after']} at the end"
                    )
                    results[name]["uploads"].append(run)

    summary = {
        "lengths": [
            {
                "name": mine["name"],
                "recorded_seconds": mine["recorded_seconds"],
                "stop_to_ready_seconds": mine["stop_to_ready_seconds"],
                "stop_to_captions_seconds": mine["stop_to_captions_seconds"],
                "word_error_rate": mine.get("word_error_rate"),
                "captions_cpu_seconds_per_recorded_minute": round(
                    mine["cpu_seconds_per_recorded_minute"] - theirs["cpu_seconds_per_recorded_minute"], 2
                ),
                "cpu_ratio": round(mine["cpu_seconds"] / max(theirs["cpu_seconds"], 1e-9), 2),
            }
            for mine, theirs in zip(results["service"]["lengths"], results["baseline"]["lengths"], strict=True)
        ],
        "uploads_p95_ms": {
            name: [run["latency"].get("p95_ms") for run in results[name]["uploads"]] for name in servers
        },
        "uploads_errors": sum(run["errors"] for name in servers for run in results[name]["uploads"]),
    }
    pairs = zip(summary["uploads_p95_ms"]["service"], summary["uploads_p95_ms"]["baseline"], strict=True)
    summary["uploads_p95_ratios"] = [round(mine / max(theirs, 1e-9), 2) for mine, theirs in pairs]
    path = write_result(
        args.output, {"machine": machine_description(), "arguments": vars(args), **results, "summary": summary}
    )
    for length in summary["lengths"]:
        print(length)
    print(f"uploads p95 (ms): {summary['uploads_p95_ms']}, ratios {summary['uploads_p95_ratios']}")
    print(f"errors: {summary['uploads_errors']}; written to {path}")


if __name__ == "__main__":
    main()
