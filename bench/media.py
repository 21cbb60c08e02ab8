"""MediaRecorder-like test recordings made with the bundled ffmpeg: VP8 + Opus WebM written live."""

from pathlib import Path

from bench.harness import PROJECT_DIR  # noqa: F401  (puts the project on sys.path)
from recordings import utils

LIVE_WEBM = ["-c:a", "libopus", "-b:a", "64k", "-f", "webm", "-live", "1"]
BLOCK_BYTES = 1024 * 1024


def generate_base(path: Path, *, seconds: int, size: str = "640x360", fps: int = 20, video_bitrate: str = "1M") -> Path:
    """Encode `seconds` of test pattern and tone as a live stream (no Duration, no Cues), like MediaRecorder."""
    if not path.exists():
        utils.run_ffmpeg(
            [
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={size}:rate={fps}",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                str(seconds),
                "-map",
                "0:v",
                "-map",
                "1:a",
                "-c:v",
                "libvpx",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-b:v",
                video_bitrate,
                *LIVE_WEBM,
                str(path),
            ],
            limits=utils.Limits(timeout_seconds=1800),
        )
    return path


def loop_recording(base: Path, path: Path, *, times: int) -> Path:
    """`base` played `times` times in one live WebM, by stream copy: seconds, not an encode."""
    if not path.exists():
        utils.run_ffmpeg(
            ["-stream_loop", str(times - 1), "-i", str(base), "-map", "0", "-c", "copy", *LIVE_WEBM[4:], str(path)],
            limits=utils.Limits(timeout_seconds=1800),
        )
    return path


def split_to_files(path: Path, directory: Path, *, parts: int) -> list[Path]:
    """Cut `path` at even byte offsets into `parts` chunk files, streaming (a 1 s timeslice each)."""
    directory.mkdir(parents=True, exist_ok=True)
    step = -(-path.stat().st_size // parts)
    chunk_paths = []
    with open(path, "rb") as source:
        for index in range(parts):
            chunk_path = directory / f"chunk_{index:06d}.bin"
            remaining = step
            with open(chunk_path, "wb") as chunk_file:
                while remaining > 0 and (block := source.read(min(BLOCK_BYTES, remaining))):
                    chunk_file.write(block)
                    remaining -= len(block)
            chunk_paths.append(chunk_path)
    return chunk_paths
