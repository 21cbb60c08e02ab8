"""Plots for docs/performance.md, made from the benchmarks' JSON in bench/results/.

    python -m bench.report          # make bench-report

Writes docs/img/ingest-latency.png (chunk latency vs recorders, service vs baseline) and
docs/img/finalize-time.png (last chunk → ready vs recording length: live build, full pipeline, S3, floor).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from bench.harness import PROJECT_DIR, RESULTS_DIR  # noqa: E402

IMAGE_DIR = PROJECT_DIR / "docs" / "img"


def plot_ingest(result: dict, destination: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, style in (("service", "o-"), ("baseline", "s--")):
        runs = result[name]["paced"]
        recorders = [run["recorders"] for run in runs]
        axes.plot(recorders, [run["latency"]["p95_ms"] for run in runs], style, label=f"{name} p95")
        axes.plot(recorders, [run["latency"]["p50_ms"] for run in runs], style, alpha=0.45, label=f"{name} p50")
    chunk_kib = result["service"]["paced"][0]["chunk_bytes"] // 1024
    axes.set(
        xlabel="recorders, one chunk a second each",
        ylabel="chunk latency (ms)",
        yscale="log",
        title=f"Chunk upload latency, {chunk_kib} KiB multipart chunks (gunicorn, same run)",
    )
    axes.yaxis.set_major_formatter(ticker.ScalarFormatter())
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_yticks([2, 5, 10, 20, 50, 100, 200])
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(destination)
    plt.close(figure)


def plot_finalize(result: dict, destination: Path) -> None:
    lengths = result["lengths"]
    minutes = [length["minutes"] for length in lengths]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    axes.plot(minutes, [length["service_seconds"] for length in lengths], "o-", label="live build: last chunk → ready")
    if "full_pipeline" in result:
        axes.plot(
            minutes,
            [length["service_seconds"] for length in result["full_pipeline"]],
            "x-",
            label="full pipeline at Stop: last chunk → ready",
        )
    if result.get("live_build_s3"):
        axes.plot(
            minutes,
            [length["service_seconds"] for length in result["live_build_s3"]],
            "d-.",
            label="live build, S3 storage (the video uploaded at Stop)",
        )
    axes.plot(
        minutes,
        [length["floor"]["sequential_seconds"] for length in lengths],
        "s--",
        label="floor: cat + remux + audio + thumbnail, one after another",
    )
    axes.plot(
        minutes,
        [length["floor"]["two_core_seconds"] for length in lengths],
        "^:",
        label="floor with audio on the second core",
    )
    axes.set(xlabel="recording length (minutes)", ylabel="seconds", title="Time from the last chunk to ready")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(destination)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--images", default=str(IMAGE_DIR))
    parser.add_argument("--suffix", default="", help="read ingest<suffix>.json and finalize<suffix>.json")
    args = parser.parse_args()
    results, images = Path(args.results), Path(args.images)
    images.mkdir(parents=True, exist_ok=True)
    ingest = json.loads((results / f"ingest{args.suffix}.json").read_text())
    finalize = json.loads((results / f"finalize{args.suffix}.json").read_text())
    plot_ingest(ingest, images / "ingest-latency.png")
    plot_finalize(finalize, images / "finalize-time.png")
    print(f"wrote {images / 'ingest-latency.png'} and {images / 'finalize-time.png'}")


if __name__ == "__main__":
    main()
