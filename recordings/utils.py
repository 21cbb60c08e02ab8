"""Where ffmpeg and moviepy run: probe, remux, audio, thumbnail. Paths in, small dataclasses out.

Everything here drives the ffmpeg that imageio-ffmpeg bundles (as resolved by moviepy), at the
command level: no frame ever passes through Python, so memory stays flat whatever the length.
moviepy's own `ffmpeg -i` parser reads the metadata. See docs/processing.md for why moviepy's
clip classes are not used on the hot path. Every ffmpeg runs under `Limits` the kernel enforces.
"""

import ctypes
import functools
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Importing moviepy loads a `.env` file found above its install directory into os.environ, which
# could silently change this service's settings. Switch that off before the first import.
os.environ["PYTHON_DOTENV_DISABLED"] = "1"

from moviepy.config import FFMPEG_BINARY  # noqa: E402
from moviepy.video.io.ffmpeg_reader import FFmpegInfosParser  # noqa: E402

DEFAULT_TIMEOUT_SECONDS = 3600
_QUIET = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
# For the steps whose report is counted (StepReport): warnings too, each line tagged with its level
# ("[error] "), and no "Last message repeated n times" folding, so one line is one occurrence.
_COUNTED = ["-hide_banner", "-nostdin", "-loglevel", "repeat+level+warning", "-y"]


class MediaError(Exception):
    """The media cannot be processed; `code` is stable and `detail` says why in words."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class MediaInfo:
    format_name: str
    duration_seconds: float | None
    has_video: bool
    has_audio: bool
    video_codec: str
    audio_codec: str
    width: int | None
    height: int | None
    fps: float | None
    # What the demuxer said of a damaged structure (it skips and resyncs, so what it then reads is
    # not what the file's structure declares); empty when it read the file cleanly.
    damage: str = ""
    audio_sample_rate: int | None = None
    # Its audio and video streams in file order, e.g. ("audio:opus", "video:vp8"): what a join of
    # two streams by stream copy needs to be equal.
    stream_layout: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputFormat:
    extension: str
    muxer: str
    content_type: str
    codec_args: tuple[str, ...]


@dataclass(frozen=True)
class RemuxPlan:
    output: OutputFormat
    copies_everything: bool

    @property
    def reencodes_video(self) -> bool:
        return "libx264" in self.output.codec_args


def ffmpeg_executable() -> str:
    return FFMPEG_BINARY


# --- Running ffmpeg under limits ---------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one ffmpeg child may cost. The kernel enforces memory, CPU time and file size (setrlimit
    in the child), so no file can talk ffmpeg past them; a decoder refuses larger pictures."""

    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    memory_bytes: int | None = None  # RLIMIT_DATA: heap, thread stacks, anonymous mappings
    output_bytes: int | None = None  # RLIMIT_FSIZE: the largest file it may write, its error report too
    max_frame_pixels: int | None = None  # ffmpeg's -max_pixels, for every decoder, probing included
    cpu_seconds: int | None = None  # RLIMIT_CPU across its threads; None: every core for the whole timeout

    @property
    def cpu_limit_seconds(self) -> int:
        # ffmpeg starts a thread per core, so a busy machine-wide encode is no reason to stop it
        return self.cpu_seconds or int(self.timeout_seconds * max(2, os.cpu_count() or 1)) + 1


# Room for ffmpeg's error report, which goes to a file (never a pipe held in memory).
_REPORT_BYTES = 1024 * 1024
_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: the child between fork and exec must not look symbols up (dlsym
# takes the loader's lock, which another thread may have held at the fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
if _PRCTL is not None:
    _PRCTL.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    _PRCTL.restype = ctypes.c_int


def _limit_child(limits: Limits, parent_pid: int) -> Callable[[], None]:
    """What the child runs between fork and exec: system calls only, nothing that takes a lock."""
    cpu_seconds = limits.cpu_limit_seconds

    def apply() -> None:
        if _PRCTL is not None:
            # Die with the thread that started us: a SIGKILLed worker leaves no ffmpeg running.
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:
                os._exit(1)  # the parent died before prctl took effect
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        if limits.memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
        if limits.output_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))

    return apply


@dataclass(frozen=True)
class _LimitWrappers:
    """util-linux's setpriv and prlimit, which apply the limits and exec what follows them."""

    setpriv: str
    prlimit: str

    def command(self, command: list[str], limits: Limits) -> list[str]:
        cpu_seconds = limits.cpu_limit_seconds
        wrapped = [self.setpriv, "--pdeathsig", "KILL", "--", self.prlimit, "--core=0:0"]
        wrapped.append(f"--cpu={cpu_seconds}:{cpu_seconds}")
        if limits.memory_bytes is not None:
            wrapped.append(f"--data={limits.memory_bytes}:{limits.memory_bytes}")
        if limits.output_bytes is not None:
            wrapped.append(f"--fsize={limits.output_bytes}:{limits.output_bytes}")
        wrapped.append("--")
        return wrapped + command


@functools.cache
def limit_wrappers() -> _LimitWrappers | None:
    """The exec wrappers, when this system has them and they work (util-linux 2.33+: every Debian
    and Ubuntu). With them a child starts by vfork; otherwise by fork and `_limit_child`, which
    copies this process: ~10 ms during which a web process's request threads wait (docs/performance.md)."""
    found = [shutil.which(name) for name in ("setpriv", "prlimit", "true")]
    if None in found or not sys.platform.startswith("linux"):
        return None
    setpriv, prlimit, true = (str(path) for path in found)
    wrappers = _LimitWrappers(setpriv, prlimit)
    every_limit = Limits(timeout_seconds=5, memory_bytes=1 << 30, output_bytes=1 << 20)
    try:
        trial = subprocess.run(wrappers.command([true], every_limit), capture_output=True, timeout=10, check=False)
        works = trial.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        works = False
    return wrappers if works else None


def _spawn_arguments(command: list[str], limits: Limits) -> dict:
    """Popen's arguments that start `command` under `limits`."""
    wrappers = limit_wrappers()
    if wrappers is not None:
        return {"args": wrappers.command(command, limits)}
    return {"args": command, "preexec_fn": _limit_child(limits, os.getpid())}  # system calls only


@dataclass(frozen=True)
class _Finished:
    returncode: int
    report: str  # what ffmpeg wrote to stderr, at most _REPORT_BYTES of it (and, when counted, its end)
    counts: dict[bytes, int] = field(default_factory=dict)  # each counted phrase, in the whole report


# What ffmpeg and its libraries print, or how they die, when an allocation (or a thread's stack)
# fails under RLIMIT_DATA; anywhere in the report, since the last line is often a consequence.
_OUT_OF_MEMORY_WORDS = ("Cannot allocate memory", "Resource temporarily unavailable", "malloc of size", "out of memory")
# What a decoder says when -max_pixels refuses a picture (it then goes on without the stream).
_OVERSIZED_PICTURE = re.compile(r"Picture size (\d+x\d+) exceeds specified max pixel count")
_CRASH_SIGNALS = frozenset({-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS})


def _run(
    command: list[str],
    *,
    limits: Limits,
    what: str,
    counted: tuple[bytes, ...] = (),
    cancel: threading.Event | None = None,
) -> _Finished:
    """Run `command` under `limits`. A limit that stopped it is a MediaError with its own code.

    With `counted` phrases, the report is read through a pipe as it is written and each phrase is
    counted in all of it, however long: a report in a file would count against RLIMIT_FSIZE, the
    output's own bound, and one warning per packet can outgrow the output.
    """
    try:
        if counted:
            returncode, report, counts = _run_counting(command, limits, counted)
        else:
            returncode, report, counts = *_run_to_file(command, limits, cancel), {}
    except subprocess.TimeoutExpired as error:
        raise MediaError("processing_timeout", f"{what} took longer than {limits.timeout_seconds:.0f} s.") from error
    finished = _Finished(returncode, report, counts)
    if oversized := _OVERSIZED_PICTURE.search(report):
        raise MediaError(
            "frame_too_large",
            f"The video has {oversized.group(1)} frames; at most {limits.max_frame_pixels} pixels a frame are "
            "processed (RECORDER_MAX_FRAME_PIXELS).",
        )
    if finished.returncode in (-signal.SIGKILL, -signal.SIGXCPU):
        raise MediaError(
            "processing_timeout",
            f"{what} was stopped after {limits.cpu_limit_seconds} s of CPU time (or killed by the system).",
        )
    if finished.returncode == -signal.SIGXFSZ:
        raise MediaError(
            "output_too_large", f"{what} wrote more than the {limits.output_bytes} bytes this recording may produce."
        )
    if finished.returncode != 0 and limits.memory_bytes is not None and _out_of_memory(finished):
        raise MediaError(
            "memory_limit_exceeded",
            f"{what} needed more than {limits.memory_bytes} bytes of memory (RECORDER_FFMPEG_MAX_MEMORY_BYTES).",
        )
    return finished


def _run_to_file(command: list[str], limits: Limits, cancel: threading.Event | None = None) -> tuple[int, str]:
    with tempfile.TemporaryFile() as report_file:
        with subprocess.Popen(
            **_spawn_arguments(command, limits),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=report_file,
        ) as process:
            _wait(process, limits.timeout_seconds, cancel)
        report_file.seek(0)
        return process.returncode, report_file.read(_REPORT_BYTES).decode("utf-8", "replace")


# How often a cancellable run looks at its cancel event: a cancelled encode stops within this.
_CANCEL_POLL_SECONDS = 0.5


def _wait(process: subprocess.Popen, timeout_seconds: float, cancel: threading.Event | None) -> None:
    """Wait for `process`; kill it and raise TimeoutExpired past the timeout, MediaError when cancelled."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        left_seconds = deadline - time.monotonic()
        try:
            process.wait(timeout=max(0.0, min(left_seconds, _CANCEL_POLL_SECONDS) if cancel else left_seconds))
            return
        except subprocess.TimeoutExpired:
            cancelled = cancel is not None and cancel.is_set()
            if not cancelled and time.monotonic() < deadline:
                continue
            process.kill()
            process.wait()
            if cancelled:
                raise MediaError("cancelled", "The work was cancelled: its result is no longer wanted.") from None
            raise


# The end of a counted report is kept too: when a step fails after a flood of warnings, the line
# that says why comes last.
_REPORT_TAIL_BYTES = 64 * 1024
_PIPE_READ_BYTES = 64 * 1024


class _CountedReport:
    """The first _REPORT_BYTES and the last _REPORT_TAIL_BYTES of a report, and how often each phrase
    occurs in all of it: counted block by block, so memory stays bounded whatever ffmpeg writes."""

    def __init__(self, phrases: tuple[bytes, ...]):
        self.counts = dict.fromkeys(phrases, 0)
        self._overlap = max(len(phrase) for phrase in phrases) - 1  # a phrase cut by a block boundary
        self._carry = b""
        self._head = bytearray()
        self._tail = bytearray()
        self._left_out_bytes = 0

    def feed(self, block: bytes) -> None:
        room = _REPORT_BYTES - len(self._head)
        self._head += block[:room]
        if len(block) > room:
            self._tail += block[room:]
            if len(self._tail) > _REPORT_TAIL_BYTES:
                self._left_out_bytes += len(self._tail) - _REPORT_TAIL_BYTES
                del self._tail[:-_REPORT_TAIL_BYTES]
        window = self._carry + block
        for phrase in self.counts:
            # the carry is shorter than any phrase, so no occurrence is counted twice
            self.counts[phrase] += window.count(phrase) - self._carry.count(phrase)
        self._carry = window[-self._overlap :] if self._overlap else b""

    @property
    def text(self) -> str:
        report = self._head.decode("utf-8", "replace")
        if self._left_out_bytes:
            report += f"\n[... {self._left_out_bytes} bytes of the report left out ...]\n"
        return report + self._tail.decode("utf-8", "replace")


def _run_counting(command: list[str], limits: Limits, phrases: tuple[bytes, ...]) -> tuple[int, str, dict[bytes, int]]:
    report = _CountedReport(phrases)
    deadline = time.monotonic() + limits.timeout_seconds
    with subprocess.Popen(
        **_spawn_arguments(command, limits),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as process:
        stderr = process.stderr
        assert stderr is not None  # stderr=PIPE
        try:
            with selectors.DefaultSelector() as selector:  # not select(): a server's fds pass 1024
                selector.register(stderr, selectors.EVENT_READ)
                while True:
                    remaining_seconds = deadline - time.monotonic()
                    if remaining_seconds <= 0:
                        raise subprocess.TimeoutExpired(command, limits.timeout_seconds)
                    if not selector.select(remaining_seconds):
                        continue
                    block = os.read(stderr.fileno(), _PIPE_READ_BYTES)
                    if not block:
                        break
                    report.feed(block)
            returncode = process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            process.kill()
            process.wait()
            raise
    return returncode, report.text, report.counts


def _frame_limit(limits: Limits) -> list[str]:
    return ["-max_pixels", str(limits.max_frame_pixels)] if limits.max_frame_pixels else []


def _out_of_memory(finished: _Finished) -> bool:
    report = finished.report.lower()
    return finished.returncode in _CRASH_SIGNALS or any(words.lower() in report for words in _OUT_OF_MEMORY_WORDS)


def run_ffmpeg(arguments: list[str], *, limits: Limits, cancel: threading.Event | None = None) -> None:
    """Run the bundled ffmpeg with an argument list (never a shell); MediaError when it fails.

    The frame limit goes in front, so it binds the decoders of the first input. A failed run's
    output is left to the caller's work directory, which goes with it; it is never served.
    """
    finished = _run(
        [FFMPEG_BINARY, *_QUIET, *_frame_limit(limits), *arguments], limits=limits, what="ffmpeg", cancel=cancel
    )
    _raise_if_failed(finished)


def _raise_if_failed(finished: _Finished) -> None:
    if finished.returncode != 0:
        raise MediaError("media_undecodable", "ffmpeg failed: " + _failure_line(finished.report))


_LEVEL_TAG = re.compile(r"\[(?:panic|fatal|error|warning|info|verbose|debug|trace)\] ")


def _failure_line(report: str) -> str:
    """The last error in a report (a counted one also holds warnings), without its level tag."""
    lines = report.strip().splitlines()
    errors = [line for line in lines if "[error] " in line or "[fatal] " in line or "[panic] " in line]
    line = (errors or lines or ["no message"])[-1]
    return _LEVEL_TAG.sub("", line, count=1)


# --- What a step reported and played past ----------------------------------------------------------

# One line per packet whose timestamp goes backwards: the command line's fix-up before a stream
# copy, and a muxer refusing one.
_TIMESTAMP_PHRASES = (b"Non-monotonic DTS", b"non monotonically increasing dts")
_ERROR_TAG = b"[error] "  # every error-level line carries it under the _COUNTED log level
# What the Matroska demuxer says when it skips damaged bytes and resyncs (the probe looks for them too).
_DAMAGE_WORDS = (
    "Invalid length",
    "Duplicate element",
    "exceeds containing master element",
    "Invalid EBML",
    "EBML header parsing failed",
    "resync",
)
_DAMAGE_PHRASES = tuple(words.encode() for words in _DAMAGE_WORDS)
_COUNTED_PHRASES = (*_TIMESTAMP_PHRASES, _ERROR_TAG, *_DAMAGE_PHRASES)


@dataclass(frozen=True)
class StepReport:
    """What one ffmpeg step reported and played past, counted in its whole report (not only the
    part kept): a step that fails raises MediaError instead."""

    timestamps_out_of_order: int = 0  # packets whose timestamps went backwards
    errors: int = 0  # other error lines: in the audio step, packets it could not read or decode
    damage: int = 0  # places where the demuxer skipped damaged structure (Matroska)


def _run_ffmpeg_counted(arguments: list[str], *, limits: Limits) -> StepReport:
    """`run_ffmpeg`, counting what the report says it played past."""
    finished = _run(
        [FFMPEG_BINARY, *_COUNTED, *_frame_limit(limits), *arguments],
        limits=limits,
        what="ffmpeg",
        counted=_COUNTED_PHRASES,
    )
    _raise_if_failed(finished)
    timestamp_errors = finished.counts[b"non monotonically increasing dts"]  # error-level lines
    return StepReport(
        timestamps_out_of_order=sum(finished.counts[phrase] for phrase in _TIMESTAMP_PHRASES),
        errors=finished.counts[_ERROR_TAG] - timestamp_errors,
        damage=sum(finished.counts[phrase] for phrase in _DAMAGE_PHRASES),
    )


# --- Inputs ----------------------------------------------------------------------------------------

# Each container is read with its own demuxer, named, never guessed: ffmpeg's guess scores a file
# accepted as MP4 (`ftyp` at byte 4) below the DASH manifest or MPEG-TS it may really be, and would
# read that instead (a DASH manifest opens other files of the server). `file` is the only protocol.
DEMUXERS = {"webm": "matroska", "matroska": "matroska", "mp4": "mov", "ogg": "ogg"}
# The names ffmpeg gives those demuxers, for the concat demuxer's whitelist of what its files may be.
_DEMUXER_NAMES = {"matroska": "matroska,webm", "mov": "mov,mp4,m4a,3gp,3g2,mj2", "ogg": "ogg"}


def input_args(path: Path, container: str | None) -> list[str]:
    """`-i path`, read as `container` (webm, matroska, mp4, ogg) only; None: ffmpeg guesses (tests)."""
    forced = ["-f", DEMUXERS[container]] if container is not None else []
    return ["-protocol_whitelist", "file", *forced, "-i", str(path)]


# --- Probe ---------------------------------------------------------------------------------------

_INPUT_FORMAT = re.compile(r"^Input #0, ([^,]+(?:,[^,\s]+)*), from", re.MULTILINE)
_DAMAGE = re.compile(r"^\[[^\]]+\] .*(?:" + "|".join(map(re.escape, _DAMAGE_WORDS)) + ").*$", re.MULTILINE)
_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_AUDIO_CODEC = re.compile(r"Stream #0:\d+.*?: Audio: ([\w-]+)")
_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio): ([\w-]+)", re.MULTILINE)
_AUDIO_SAMPLE_RATE = re.compile(r"Stream #0:\d+.*?: Audio: [^\n]*?, (\d+) Hz")


PROBE_LIMITS = Limits(timeout_seconds=60)
# Reading headers and a first frame needs little; an MP4 whose tables claim 25 million samples
# made ffmpeg index them in 1.7 GiB (a 1 KB upload).
PROBE_MEMORY_BYTES = 512 * 1024 * 1024


def probe(path: Path, *, container: str | None = None, limits: Limits = PROBE_LIMITS) -> MediaInfo:
    """Read container, duration, codecs, size and fps with `ffmpeg -i` and moviepy's parser.

    Works on raw MediaRecorder files too, which have no Duration: `duration_seconds` is then None.
    The probe writes no file, so its only file (the report) is capped at what is parsed.
    """
    try:
        finished = _run(
            [FFMPEG_BINARY, "-hide_banner", "-nostdin", *_frame_limit(limits), *input_args(path, container)],
            limits=Limits(
                limits.timeout_seconds,
                min(limits.memory_bytes or PROBE_MEMORY_BYTES, PROBE_MEMORY_BYTES),
                _REPORT_BYTES,
                limits.max_frame_pixels,
            ),
            what="Reading the media's metadata",
        )
    except MediaError as error:
        if error.code != "output_too_large":
            raise
        raise MediaError(
            "media_undecodable", f"The recording's metadata report is larger than {_REPORT_BYTES} bytes."
        ) from error
    report = finished.report
    input_format = _INPUT_FORMAT.search(report)
    if input_format is None:
        last_line = report.strip().splitlines()[-1] if report.strip() else "no output"
        raise MediaError("media_undecodable", f"The recording is not readable media ({last_line}).")
    try:
        infos = FFmpegInfosParser(report, str(path), check_duration=False).parse()
    except Exception as error:  # moviepy's parser assumes what ffmpeg prints for sane files
        raise MediaError("media_undecodable", f"The recording's metadata cannot be read ({error!r:.200}).") from error
    if not infos["video_found"] and not infos["audio_found"]:
        raise MediaError("media_undecodable", "The recording holds no audio or video stream.")
    duration = _DURATION.search(report)
    audio_codec = _AUDIO_CODEC.search(report)
    size = infos.get("video_size") if infos["video_found"] else None
    return MediaInfo(
        format_name=input_format.group(1),
        duration_seconds=(
            int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3)) if duration else None
        ),
        has_video=infos["video_found"],
        has_audio=infos["audio_found"],
        video_codec=(infos.get("video_codec_name") or "") if infos["video_found"] else "",
        audio_codec=audio_codec.group(1) if (infos["audio_found"] and audio_codec) else "",
        width=size[0] if size else None,
        height=size[1] if size else None,
        fps=infos.get("video_fps") if infos["video_found"] else None,
        damage=damage.group(0) if (damage := _DAMAGE.search(report)) else "",
        audio_sample_rate=int(rate.group(1)) if (rate := _AUDIO_SAMPLE_RATE.search(report)) else None,
        stream_layout=tuple(f"{kind.lower()}:{codec}" for kind, codec in _STREAM.findall(report)),
    )


# --- Remux -----------------------------------------------------------------------------------------

_WEBM_VIDEO = frozenset({"vp8", "vp9", "av1"})
_WEBM_AUDIO = frozenset({"opus", "vorbis"})
_MP4_VIDEO = frozenset({"h264", "hevc", "av1", "vp9"})
_MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac", "alac"})

_WEBM = ("webm", "webm", _WEBM_VIDEO, _WEBM_AUDIO, ("-c:a", "libopus", "-b:a", "128k"), ("-cues_to_front", "1"))
_MP4 = ("mp4", "mp4", _MP4_VIDEO, _MP4_AUDIO, ("-c:a", "aac", "-b:a", "160k"), ("-movflags", "+faststart"))


def plan_remux(container: str, info: MediaInfo) -> RemuxPlan:
    """Pick the output that plays and seeks in browsers with the least work.

    Stream copy into WebM (with Duration and Cues, which raw MediaRecorder WebM lacks) or MP4
    (`+faststart`), preferring the family the recording came in; H.264 in Matroska becomes MP4.
    Audio the chosen container cannot hold (e.g. PCM) is re-encoded; video is re-encoded only
    when neither container can hold it.
    """
    families = (_MP4, _WEBM) if container == "mp4" else (_WEBM, _MP4)
    for family in families:
        extension, muxer, video_codecs, audio_codecs, _, container_args = family
        video_fits = not info.has_video or info.video_codec in video_codecs
        audio_fits = not info.has_audio or info.audio_codec in audio_codecs
        if video_fits and audio_fits:
            return RemuxPlan(_output(family, info, copy_audio=True), copies_everything=True)
    for family in families:
        if not info.has_video or info.video_codec in family[2]:
            return RemuxPlan(_output(family, info, copy_audio=False), copies_everything=False)
    return RemuxPlan(
        OutputFormat(
            "mp4",
            "mp4",
            "video/mp4",
            (
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "23",
                "-pix_fmt",
                "yuv420p",
                *_MP4[4],
                "-movflags",
                "+faststart",
            ),
        ),
        copies_everything=False,
    )


def _output(family: tuple, info: MediaInfo, *, copy_audio: bool) -> OutputFormat:
    extension, muxer, _, _, audio_encode_args, container_args = family
    audio_args = ("-c:a", "copy") if copy_audio else audio_encode_args
    kind = "video" if info.has_video else "audio"
    return OutputFormat(extension, muxer, f"{kind}/{extension}", ("-c:v", "copy", *audio_args, *container_args))


# No random ids, dates or encoder versions in the outputs: processing a recording twice, on any
# worker, gives the same bytes (and the same ETag-worthy file).
BITEXACT_ARGS = ("-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact")
# The first video and the first audio stream, whichever exist; no data or subtitle streams.
_FIRST_VIDEO_AND_AUDIO = ("-map", "0:v:0?", "-map", "0:a:0?", "-dn", "-sn")


def remux(
    source_path: Path, destination_path: Path, plan: RemuxPlan, *, container: str | None = None, limits: Limits
) -> StepReport:
    """Write `source_path` into `destination_path` per `plan`: first video and audio stream only.
    Its report counts the packets whose timestamps went backwards (chunks joined out of order)."""
    return _run_ffmpeg_counted(
        [
            *input_args(source_path, container),
            *_FIRST_VIDEO_AND_AUDIO,
            *plan.output.codec_args,
            *BITEXACT_ARGS,
            "-f",
            plan.output.muxer,
            str(destination_path),
        ],
        limits=limits,
    )


# --- Audio -----------------------------------------------------------------------------------------

AUDIO_FORMATS: dict[str, OutputFormat] = {
    "mp3": OutputFormat("mp3", "mp3", "audio/mpeg", ("-c:a", "libmp3lame", "-b:a", "128k")),
    "m4a": OutputFormat("m4a", "ipod", "audio/mp4", ("-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart")),
    "ogg": OutputFormat("ogg", "ogg", "audio/ogg", ("-c:a", "libopus", "-b:a", "96k")),
    "wav": OutputFormat("wav", "wav", "audio/wav", ("-c:a", "pcm_s16le")),
}


@dataclass(frozen=True)
class ExtractedAudio:
    output: OutputFormat
    decode_errors: int  # packets of the source's audio that could not be read or decoded

    @property
    def content_type(self) -> str:
        return self.output.content_type


def extract_audio(
    source_path: Path, destination_path: Path, audio_format: str, *, container: str | None = None, limits: Limits
) -> ExtractedAudio:
    """Encode the first audio track of `source_path` alone (`-vn`) into `audio_format`. It decodes
    every audio packet anyway, so its report counts the ones that could not be decoded."""
    output = AUDIO_FORMATS[audio_format]
    report = _run_ffmpeg_counted(
        [
            *input_args(source_path, container),
            "-map",
            "0:a:0",
            "-vn",
            "-sn",
            "-dn",
            *output.codec_args,
            *BITEXACT_ARGS,
            "-f",
            output.muxer,
            str(destination_path),
        ],
        limits=limits,
    )
    return ExtractedAudio(output, decode_errors=report.errors)


def encode_mp3_piece(
    clip_path: Path,
    destination_path: Path,
    *,
    start_sample: int,
    end_sample: int | None,
    lead_silence_samples: int,
    limits: Limits,
) -> StepReport:
    """Encode samples [start_sample, end_sample) of the first audio track of `clip_path` (counted
    from the first sample its decoder gives; None: to the end), after `lead_silence_samples` of
    silence, into bare MP3 frames: no bit reservoir (each frame stands alone, so pieces can be cut
    between frames and joined), no Xing or ID3 header; the `mp3` audio format's codec and bitrate."""
    end = f":end_sample={end_sample}" if end_sample is not None else ""
    filters = f"atrim=start_sample={start_sample}{end}"
    if lead_silence_samples:
        filters += f",adelay={lead_silence_samples}S:all=1"
    return _run_ffmpeg_counted(
        [
            *input_args(clip_path, "webm"),
            "-map",
            "0:a:0",
            "-vn",
            "-sn",
            "-dn",
            "-af",
            filters,
            *AUDIO_FORMATS["mp3"].codec_args,
            "-reservoir",
            "0",
            *BITEXACT_ARGS,
            "-write_xing",
            "0",
            "-id3v2_version",
            "0",
            "-f",
            "mp3",
            str(destination_path),
        ],
        limits=limits,
    )


# --- Speech for captions ------------------------------------------------------------------------

SPEECH_SAMPLE_RATE = 16_000  # what Whisper listens to: mono, float32


def decode_speech(
    source_path: Path, destination_path: Path, *, start_seconds: float, duration_seconds: float, limits: Limits
) -> int:
    """Decode `duration_seconds` of the first audio track of `source_path` (one of our own outputs or
    live files), from `start_seconds`, to raw 16 kHz mono float32 samples in `destination_path`:
    a window's worth, never the whole recording. How many samples it holds."""
    run_ffmpeg(
        [
            "-protocol_whitelist",
            "file",
            "-ss",
            f"{max(0.0, start_seconds):.3f}",
            "-t",
            f"{duration_seconds:.3f}",
            "-i",
            str(source_path),
            "-map",
            "0:a:0",
            "-vn",
            "-sn",
            "-dn",
            "-ac",
            "1",
            "-ar",
            str(SPEECH_SAMPLE_RATE),
            "-f",
            "f32le",
            str(destination_path),
        ],
        limits=limits,
    )
    return destination_path.stat().st_size // 4


# --- Joining segments ------------------------------------------------------------------------------


def concat_segments(segment_paths: list[Path], destination_path: Path, container: str, *, limits: Limits) -> StepReport:
    """Join whole recordings (a restarted recorder's streams) end to end into one file, stream copy.

    ffmpeg's concat demuxer starts each segment where the one before ended; a segment with no
    Duration (raw MediaRecorder WebM) is measured by its last packet, so the timestamps run on
    without a gap or an overlap. Matroska in (WebM or not), Matroska out: it holds every codec a
    browser records, PCM included; MP4 in, MP4 out. The remux then makes what is served.
    """
    list_path = destination_path.with_name(f"{destination_path.name}.ffconcat")
    list_path.write_text("ffconcat version 1.0\n" + "".join(f"file {_concat_quoted(path)}\n" for path in segment_paths))
    return _run_ffmpeg_counted(
        [
            "-xerror",  # a segment it cannot open (not of `container`) fails the join, not shortens it
            "-f",
            "concat",
            "-safe",
            "0",  # absolute paths, all of them in the run's work folder
            "-protocol_whitelist",
            "file",
            "-format_whitelist",
            f"concat,{_DEMUXER_NAMES[DEMUXERS[container]]}",  # what the segments may be read as
            "-i",
            str(list_path),
            *_FIRST_VIDEO_AND_AUDIO,
            "-c",
            "copy",
            *BITEXACT_ARGS,
            "-f",
            "mp4" if container == "mp4" else "matroska",
            str(destination_path),
        ],
        limits=limits,
    )


def _concat_quoted(path: Path) -> str:
    text = str(path.resolve())
    if "\n" in text or "\r" in text:
        raise ValueError(f"{text!r}: a concat list holds one path a line")
    return "'" + text.replace("'", "'\\''") + "'"


# --- Thumbnail ---------------------------------------------------------------------------------------

THUMBNAIL_MAX_WIDTH = 1280


def thumbnail_time(duration_seconds: float | None) -> float:
    """One second in, or the middle of clips shorter than two seconds."""
    if not duration_seconds:
        return 0.0
    return min(1.0, duration_seconds / 2)


def make_thumbnail(
    video_path: Path, destination_path: Path, *, at_seconds: float, container: str | None = None, limits: Limits
) -> None:
    """A JPEG of the frame at `at_seconds` (the first frame if that lands past the end)."""
    for seek_seconds in (at_seconds, 0.0):
        run_ffmpeg(
            [
                "-ss",
                f"{seek_seconds:.3f}",
                *input_args(video_path, container),
                "-map",
                "0:v:0",
                "-frames:v",
                "1",
                "-vf",
                f"scale='min({THUMBNAIL_MAX_WIDTH},iw)':-2",
                "-q:v",
                "3",
                *BITEXACT_ARGS,
                "-f",
                "image2",
                "-update",
                "1",
                str(destination_path),
            ],
            limits=limits,
        )
        if destination_path.exists() and destination_path.stat().st_size > 0:
            return
    raise MediaError("thumbnail_failed", "No video frame could be read for the thumbnail.")


# --- The MP4 rendition (recordings/renditions.py) --------------------------------------------------

# One line per syntax element of the parameter sets, as ffmpeg's trace_headers filter prints them:
# "[trace_headers @ 0x...] 8   profile_idc   01000010 = 66".
_TRACED_FIELD = re.compile(r"^\[trace_headers[^\]]*\]\s+\d+\s+(\w+)\s+[01]+ = (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class H264Parameters:
    """What one H.264 sequence parameter set declares (ITU-T H.264, 7.3.2.1.1)."""

    profile_idc: int
    constraint_flags: int  # constraint_set0..5 as the byte after profile_idc (set0 in its top bit)
    level_idc: int
    chroma_format_idc: int  # 1: 4:2:0
    bit_depth: int  # luma
    bit_depth_chroma: int
    is_progressive: bool  # frame_mbs_only_flag: no fields (interlacing)
    width_macroblocks: int
    height_macroblocks: int  # of a frame

    @property
    def codecs(self) -> str:
        """Its RFC 6381 name, as in a `type`'s codecs parameter: avc1.PPCCLL."""
        return f"avc1.{self.profile_idc:02X}{self.constraint_flags:02X}{self.level_idc:02X}"


def h264_parameters(path: Path, *, container: str | None, limits: Limits) -> list[H264Parameters]:
    """The first video stream's sequence parameter sets, the container's (avcC, CodecPrivate) first,
    then those in the stream, each distinct one once (as many as ffmpeg's trace_headers reports in
    1 MiB: ~150), read from the parameter-set NAL units alone: no frame is decoded."""
    finished = _run(
        [
            FFMPEG_BINARY,
            "-hide_banner",
            "-nostdin",
            *input_args(path, container),
            *("-map", "0:v:0", "-c", "copy", "-bsf:v", "filter_units=pass_types=7,trace_headers"),
            *("-f", "null", "-"),
        ],
        limits=Limits(limits.timeout_seconds, limits.memory_bytes, _REPORT_BYTES, limits.max_frame_pixels),
        what="Reading the H.264 parameters",
    )
    found: dict[H264Parameters, None] = {}
    for block in re.split(r"(?=^\[trace_headers[^\]]*\]\s+\d+\s+profile_idc\s)", finished.report, flags=re.MULTILINE):
        fields: dict[str, int] = {}
        for name, value in _TRACED_FIELD.findall(block):
            fields.setdefault(name, int(value))
        if "profile_idc" in fields and "pic_height_in_map_units_minus1" in fields:
            found[_parameters_of(fields)] = None
    if finished.returncode != 0 or not found:
        raise MediaError("media_undecodable", "The H.264 stream has no readable sequence parameter set.")
    return list(found)


def _parameters_of(fields: dict[str, int]) -> H264Parameters:
    flags = 0
    for bit in range(6):
        flags |= fields.get(f"constraint_set{bit}_flag", 0) << (7 - bit)
    is_progressive = bool(fields.get("frame_mbs_only_flag", 1))
    map_units = fields["pic_height_in_map_units_minus1"] + 1
    return H264Parameters(
        profile_idc=fields["profile_idc"],
        constraint_flags=flags,
        level_idc=fields.get("level_idc", 0),
        chroma_format_idc=fields.get("chroma_format_idc", 1),  # absent below High: 4:2:0
        bit_depth=8 + fields.get("bit_depth_luma_minus8", 0),
        bit_depth_chroma=8 + fields.get("bit_depth_chroma_minus8", 0),
        is_progressive=is_progressive,
        width_macroblocks=fields.get("pic_width_in_mbs_minus1", 0) + 1,
        height_macroblocks=map_units if is_progressive else 2 * map_units,
    )


# Annex B start codes: what the h264 muxer writes before each NAL unit.
_START_CODE = re.compile(b"\x00\x00\x00?\x01")
# More parameter sets than this in one recording is no browser's: they are not compared further.
MAX_PARAMETER_SETS = 64


def distinct_h264_parameter_sets(path: Path, *, container: str | None, work_path: Path, limits: Limits) -> list[bytes]:
    """Every distinct sequence parameter set in the first video stream, in order of appearance (at
    most MAX_PARAMETER_SETS + 1): a recorder re-sends its SPS with each keyframe, and sends another
    when the picture changes size (a captured window resized). Read by stream copy into `work_path`
    (the SPS NAL units alone: a few bytes a keyframe); no frame is decoded."""
    run_ffmpeg(
        [
            *input_args(path, container),
            *("-map", "0:v:0", "-c", "copy", "-bsf:v", "filter_units=pass_types=7"),
            *("-f", "h264", str(work_path)),
        ],
        limits=limits,
    )
    found: dict[bytes, None] = {}
    with work_path.open("rb") as stream:
        for unit in _START_CODE.split(stream.read()):
            if unit and unit not in found:
                found[unit] = None
                if len(found) > MAX_PARAMETER_SETS:
                    break
    return list(found)


@dataclass(frozen=True)
class RenditionEncoding:
    """How the MP4 rendition is made from a recording's video (recordings/renditions.py decides)."""

    copy_video: bool
    width: int  # the frame size a re-encode scales to (even)
    height: int
    preset: str
    crf: int
    max_video_bits_per_second: int
    threads: int  # for decoding, filtering and encoding alike; 0: ffmpeg's choice (a thread per core)
    level: str = "4.0"  # H.264 level written (x264 would guess one from the source's nominal rate)
    max_fps: int = 30
    audio_bits_per_second: int = 128_000

    @property
    def min_frame_gap_seconds(self) -> float:
        """Frames closer than this to the one kept before are dropped: at most max_fps a second
        on average, with room for a 30 fps recorder's jitter (its frames come 25-40 ms apart)."""
        return 0.75 / self.max_fps


def encode_rendition(
    source_path: Path,
    destination_path: Path,
    encoding: RenditionEncoding,
    *,
    container: str | None,
    has_video: bool,
    has_audio: bool,
    limits: Limits,
    cancel: threading.Event | None = None,
) -> None:
    """Write the MP4 every browser plays: H.264 High (or the source's own H.264, copied) in yuv420p
    and AAC-LC, `moov` at the front. `cancel` set: ffmpeg is stopped (MediaError `cancelled`)."""
    if has_video and encoding.copy_video:
        video_args = ["-c:v", "copy"]
    elif has_video:
        video_args = [
            "-vf",
            # at most max_fps frames a second, each kept at its own time: MediaRecorder's frame times
            # vary (a still screen sends few), and a constant rate would add copies of frames
            f"select='isnan(prev_selected_t)+gte(t-prev_selected_t,{encoding.min_frame_gap_seconds:.4f})',"
            f"scale={encoding.width}:{encoding.height}:flags=bicubic,setsar=1,format=yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            encoding.preset,
            "-crf",
            str(encoding.crf),
            "-profile:v",
            "high",
            "-level:v",
            encoding.level,
            # a noisy picture cannot make the file larger than this rate allows
            "-maxrate",
            str(encoding.max_video_bits_per_second),
            "-bufsize",
            str(2 * encoding.max_video_bits_per_second),
            "-fps_mode",
            "vfr",
            "-threads",
            str(encoding.threads),
        ]
    else:
        video_args = ["-vn"]
    audio_args = (
        [
            "-c:a",
            "aac",
            "-profile:a",
            "aac_low",
            "-b:a",
            str(encoding.audio_bits_per_second),
            "-ac",
            "2",
            "-ar",
            "48000",
        ]
        if has_audio
        else ["-an"]
    )
    run_ffmpeg(
        [
            *("-threads", str(encoding.threads)),  # the decoder's (before -i); the encoder's is below
            *input_args(source_path, container),
            *("-filter_threads", str(encoding.threads)),
            *_FIRST_VIDEO_AND_AUDIO,
            *video_args,
            *audio_args,
            "-movflags",
            "+faststart",
            *BITEXACT_ARGS,
            "-f",
            "mp4",
            str(destination_path),
        ],
        limits=limits,
        cancel=cancel,
    )
