"""What processing one recording may cost, and the checks that refuse a recording that would cost
more before ffmpeg spends it. Every bound grows with what the client uploaded, never with what the
file claims about itself (its duration, its frame count, its sample tables)."""

from pathlib import Path

from django.conf import settings

from . import ebml, utils

MiB = 1024 * 1024

STEP_BASE_SECONDS = 20
# A stream copy barely changes the size (and a re-encode shrinks what browsers do not send); the
# audio is re-encoded at a fixed bitrate (MP3 at 128 kb/s is 21 x Opus at its lowest, 6 kb/s), WAV
# uncompressed (256 x); a thumbnail is one JPEG at most 1280 wide. The slack is for the tiniest
# uploads; it is small, or a 2 KB file claiming a long duration would still make megabytes.
VIDEO_GROWTH = 2
AUDIO_GROWTH = {"wav": 256}
DEFAULT_AUDIO_GROWTH = 24
OUTPUT_SLACK_BYTES = 256 * 1024
THUMBNAIL_MAX_BYTES = 16 * MiB
# A video re-encode (only for codecs no browser records) costs in proportion to the pixels it
# decodes and encodes. MJPEG, the least compressed codec a camera sends, carries about 10 pixels
# per byte; a file claiming far more (a few static frames repeated for hours) is refused.
REENCODE_MAX_PIXELS_PER_BYTE = 1000
# A recorder restarted mid-recording sends a second stream with its own header; the streams are
# joined end to end, and each one costs the join an open and a demuxer. A client restarts its
# recorder a few times (a camera switch, a pause done as stop and start); one with a header in
# every chunk that extends no stream before it is refused (`too_many_streams`). Streams that a
# cumulative client re-sends whole are dropped as they come, whatever their number: what comparing
# them costs is bounded by the bytes stored (RECORDER_MAX_RECORDING_BYTES).
MAX_JOINED_STREAMS = 64


def step_limits(source_bytes: int, *, output_bytes: int | None) -> utils.Limits:
    """The limits of one ffmpeg step of a recording of `source_bytes` that may write `output_bytes`."""
    timeout_seconds = min(
        settings.RECORDER_FFMPEG_TIMEOUT_SECONDS,
        STEP_BASE_SECONDS + settings.RECORDER_FFMPEG_SECONDS_PER_MIB * source_bytes / MiB,
    )
    return utils.Limits(
        timeout_seconds=timeout_seconds,
        memory_bytes=settings.RECORDER_FFMPEG_MAX_MEMORY_BYTES or None,
        output_bytes=output_bytes,
        max_frame_pixels=settings.RECORDER_MAX_FRAME_PIXELS or None,
    )


def check_structure(container: str, source_path: Path) -> None:
    """Refuse Matroska files whose frames ffmpeg would inflate (ContentEncoding) before it reads them."""
    if container not in ("webm", "matroska"):
        return
    try:
        with open(source_path, "rb") as source:
            layout = ebml.read_layout(source)
    except ebml.NotMatroska as error:
        raise utils.MediaError("media_undecodable", f"The recording's Matroska header cannot be read: {error}.")
    if not layout.has_tracks:
        raise utils.MediaError("media_undecodable", "The recording declares no tracks before its first cluster.")
    if layout.stray_tracks_ids:
        raise utils.MediaError(
            "unsupported_media",
            "The recording's header holds a second Tracks element inside another element, where a player "
            "that resyncs after damage would find it; such recordings are not processed.",
        )
    if layout.encoded_tracks:
        raise utils.MediaError(
            "unsupported_media",
            f"Track {layout.encoded_tracks[0]} declares a ContentEncoding (compressed or encrypted frames), "
            "which no browser writes; such recordings are not processed.",
        )


def _check_reencode_cost(plan: utils.RemuxPlan, info: utils.MediaInfo, source_bytes: int) -> None:
    if not plan.reencodes_video or not (info.width and info.height and info.fps and info.duration_seconds):
        return
    pixels = info.width * info.height * info.fps * info.duration_seconds
    if pixels > REENCODE_MAX_PIXELS_PER_BYTE * source_bytes:
        raise utils.MediaError(
            "unsupported_media",
            f"The video is {info.video_codec}, which no browser plays: re-encoding {pixels:.3g} pixels from "
            f"{source_bytes} bytes is more than a recording of that size can need.",
        )


# Every recorder samples audio between telephone quality and studio quality. A file that claims 1 Hz
# makes the resampler to 48 kHz (Opus, MP3) turn each sample into 48,000: seconds of encoding
# for every few bytes uploaded.
AUDIO_SAMPLE_RATES = range(8000, 192_001)


def _check_audio_sample_rate(info: utils.MediaInfo) -> None:
    if info.audio_sample_rate is not None and info.audio_sample_rate not in AUDIO_SAMPLE_RATES:
        raise utils.MediaError(
            "unsupported_media",
            f"The audio is sampled at {info.audio_sample_rate} Hz; recordings are sampled at 8,000 to 192,000 Hz.",
        )


def _check_frame_size(info: utils.MediaInfo) -> None:
    limit = settings.RECORDER_MAX_FRAME_PIXELS
    if limit and info.width and info.height and info.width * info.height > limit:
        raise utils.MediaError(
            "frame_too_large",
            f"The video is {info.width}x{info.height}; at most {limit} pixels a frame are processed "
            "(RECORDER_MAX_FRAME_PIXELS).",
        )


def probe_limits(source_bytes: int) -> utils.Limits:
    return step_limits(source_bytes, output_bytes=None)


def video_limits(source_bytes: int) -> utils.Limits:
    return step_limits(source_bytes, output_bytes=int(VIDEO_GROWTH * source_bytes) + OUTPUT_SLACK_BYTES)


def check_output_size(size: int, limits: utils.Limits) -> None:
    """An output made without ffmpeg (the live build) is held to the bound its ffmpeg step has."""
    if limits.output_bytes is not None and size > limits.output_bytes:
        raise utils.MediaError(
            "output_too_large",
            f"The video is {size} bytes, more than the {limits.output_bytes} this recording may produce.",
        )


def audio_limits(audio_format: str, source_bytes: int) -> utils.Limits:
    growth = AUDIO_GROWTH.get(audio_format, DEFAULT_AUDIO_GROWTH)
    return step_limits(source_bytes, output_bytes=int(growth * source_bytes) + OUTPUT_SLACK_BYTES)


def thumbnail_limits(source_bytes: int) -> utils.Limits:
    return step_limits(source_bytes, output_bytes=THUMBNAIL_MAX_BYTES)


def check_probed(container: str, info: utils.MediaInfo, plan: utils.RemuxPlan, source_bytes: int) -> None:
    """Refuse what the probe shows would cost too much, or was not read as declared."""
    _check_frame_size(info)
    _check_audio_sample_rate(info)
    if info.damage and container in ("webm", "matroska"):
        raise utils.MediaError("media_undecodable", f"The recording's structure is damaged: {info.damage}")
    _check_reencode_cost(plan, info, source_bytes)


def check_concatenated(container: str, report: utils.StepReport) -> None:
    """Refuse joined streams in which the demuxer met damaged structure: the probe checks only the
    first stream's header, and the join read every stream (as `check_probed` refuses damage)."""
    if report.damage and container in ("webm", "matroska"):
        raise utils.MediaError(
            "media_undecodable",
            f"A stream of the recording has a damaged structure: ffmpeg skipped damaged bytes {report.damage} "
            "times while joining the streams.",
        )


def check_duration(duration_seconds: float) -> None:
    limit_seconds = settings.RECORDER_MAX_DURATION_SECONDS
    if limit_seconds and duration_seconds > limit_seconds:
        raise utils.MediaError(
            "recording_too_long",
            f"The recording lasts {duration_seconds:.0f} s; at most {limit_seconds} s are processed "
            "(RECORDER_MAX_DURATION_SECONDS).",
        )
