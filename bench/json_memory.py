"""Memory of JSON chunk uploads: 16 at once, each a maximum-size chunk as base64, against the same
chunks as raw bodies (streamed to disk: the floor), on the same server, in the same run.

    python -m bench.json_memory                    # 16 x 11.5 MiB chunks (issue 12's attack), then 16 x 64 MiB
    python -m bench.json_memory --smoke            # one small round, for the test suite

Reported per form: the server's RSS before, its peak while the uploads run, and after they are
answered (what the process keeps), with the JSON peak growth as a ratio of the raw one.
"""

import argparse
import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import Http, MiB, RssSampler, gunicorn, machine_description, work_directory, write_result
from bench.ingest import real_chunk_bytes


def upload_all(server, http: Http, chunk: bytes, form: str, clients: int) -> list[int]:
    sessions = [http.json("POST", "/api/start-recording/", {}) for _ in range(clients)]
    encoded = base64.b64encode(chunk).decode("ascii") if form == "json" else None
    barrier = threading.Barrier(clients)

    def post(session: dict) -> int:
        headers = {"Authorization": f"Bearer {session['upload_token']}"}
        if form == "json":
            body = json.dumps({"session_id": session["session_id"], "chunk_index": 0, "video_chunk": encoded}).encode()
            path = "/api/receive-video-chunk/"
            headers["Content-Type"] = "application/json"
        else:
            body = chunk
            path = f"/api/receive-video-chunk/?session_id={session['session_id']}&chunk_index=0"
            headers["Content-Type"] = "application/octet-stream"
        barrier.wait()  # all at once
        return http.request("POST", path, body, headers)[0]

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(post, sessions))


def chunk_of(work_dir: Path, chunk_bytes: int) -> bytes:
    """A first chunk of `chunk_bytes`: a real recording's header and media, repeated to the size."""
    recording = real_chunk_bytes(work_dir, chunk_bytes, count=1)[0]
    media = recording[64 * 1024 :]
    repeats = -(-(chunk_bytes - len(recording)) // len(media)) if len(recording) < chunk_bytes else 0
    return (recording + media * repeats)[:chunk_bytes]


def measure(chunk_bytes: int, clients: int, work_dir) -> dict:
    chunk = chunk_of(work_dir, chunk_bytes)
    result: dict = {"chunk_mib": round(len(chunk) / MiB, 2), "clients": clients}
    extra_env = {"GUNICORN_WORKERS": "1", "GUNICORN_THREADS": str(clients), "RECORDER_MAX_CHUNK_BYTES": str(96 * MiB)}
    for form in ("raw", "json"):
        with gunicorn(work_dir / f"server-{form}-{chunk_bytes}", extra_env=extra_env) as server:
            http = Http(server.base_url)
            http.json("POST", "/api/start-recording/", {})  # warm: Django and DRF loaded
            with RssSampler(server.pid) as rss:
                time.sleep(0.3)
                before = rss.peak_python_bytes
                rss.reset()
                statuses = upload_all(server, http, chunk, form, clients)
                peak = rss.peak_python_bytes
                time.sleep(1.0)
                rss.reset()
                time.sleep(0.3)
                after = rss.peak_python_bytes
        result[form] = {
            "statuses": sorted(set(statuses)),
            "rss_before_mib": round(before / MiB, 1),
            "rss_peak_mib": round(peak / MiB, 1),
            "rss_after_mib": round(after / MiB, 1),
            "peak_growth_mib": round((peak - before) / MiB, 1),
        }
    raw_growth = max(result["raw"]["peak_growth_mib"], 1.0)
    result["json_peak_growth_over_raw"] = round(result["json"]["peak_growth_mib"] / raw_growth, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--chunk-mib", default="11.5,64", help="comma-separated chunk sizes in MiB")
    parser.add_argument("--smoke", action="store_true")
    options = parser.parse_args()
    sizes = [1.0] if options.smoke else [float(size) for size in options.chunk_mib.split(",")]
    clients = 2 if options.smoke else options.clients
    with work_directory("json-memory-") as work:
        rounds = [measure(int(size * MiB), clients, Path(work)) for size in sizes]
    name = "json_memory-smoke" if options.smoke else "json_memory"
    path = write_result(name, {"machine": machine_description(), "rounds": rounds})
    print(json.dumps(rounds, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
