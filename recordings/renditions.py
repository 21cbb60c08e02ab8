"""What the MP4 rendition of a recording is, how it is made from the stored video, and how a ready
recording's video files are listed for players (the MP4 first).

The file Safari and iPhones play, where the recording's own video (Chrome's VP8/VP9 WebM, or H.264
with Opus audio) may not: H.264 (a profile and level iPhones decode, 4:2:0, 8 bits, even frame
size) and AAC-LC in MP4, `moov` first. An H.264 recording's video is copied and only its audio
encoded; any other video is encoded with libx264. When and where it is made:
recordings/rendition_runs.py. docs/renditions.md.
"""

import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from . import utils
from .models import RecordingSession, Rendition, Status

MP4 = "mp4"  # the one rendition: its name, and its media kind in URLs
ORIGINAL = "original"  # the recorded video, as processing made it (media kind `video`)

# What iPhones decode (Apple's HLS authoring spec, and every iOS device since 2015): Baseline,
# Main and High profile, progressive, 4:2:0 at 8 bits, up to level 5.1.
PLAYS_EVERYWHERE_PROFILES = {66: "Baseline", 77: "Main", 100: "High"}
MAX_LEVEL_IDC = 51
# The largest frame each level allows, in macroblocks (H.264 Table A-1): a stream whose frame is
# larger than its level says is not what it claims to be, and is encoded again.
MAX_FRAME_MACROBLOCKS = {
    9: 99, 10: 99, 11: 396, 12: 396, 13: 396, 20: 396, 21: 792, 22: 1620, 30: 1620, 31: 3600, 32: 5120,
    40: 8192, 41: 8192, 42: 8704, 50: 22080, 51: 36864,
}  # fmt: skip
# A re-encode keeps frames at least 25 ms apart (at most 40 a second): level 4.0 holds up to 720p,
# 4.2 to 1080p (its 522,240 macroblocks a second), both decoded by every iPhone.
LEVEL_4_0_MACROBLOCKS_PER_SECOND = 245_760
# A re-encode fits the frame in 1920x1080 (1080x1920 upright): level 4.0 at 30 fps, which every
# iPhone decodes, at a quarter of a 4K screen's encoding time.
MAX_LONG_SIDE, MAX_SHORT_SIDE = 1920, 1080
AAC_LC = "mp4a.40.2"

# What one encode may cost. Time: 4 s per recorded second (a slower encode, e.g. on a machine never
# idle for the nice-19 thread, fails), and at most SECONDS_PER_MIB per MiB of the stored video: a
# small file claiming hours of frames (skipped, or one repeated) buys no hours of encoding. Output:
# the bit rates' worth (the encoder's rate cap, the audio's fixed rate), and at most OUTPUT_GROWTH
# times the stored video (x264 at CRF 23 needs 1.4 times Chrome's VP8 on camera video, measured).
SECONDS_PER_RECORDED_SECOND = 4
SECONDS_PER_MIB = 60
BASE_SECONDS = 60
OUTPUT_GROWTH = 8
OUTPUT_SLACK_BYTES = 16 * 1024 * 1024


def is_on() -> bool:
    return settings.RECORDER_RENDITIONS


# --- Making it -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Made:
    path: Path
    content_type: str
    codecs: str  # RFC 6381
    video_copied: bool | None  # None: audio only


def encode_file(
    video_path: Path,
    container: str,
    work_dir: Path,
    *,
    fallback_duration_seconds: float | None = None,
    cancel: threading.Event | None = None,
) -> Made | None:
    """The rendition of a processed video (`webm` or `mp4`) in `work_dir`, or None if that video
    plays everywhere as it is (H.264 iPhones decode, and AAC or no audio, in MP4)."""
    info = utils.probe(video_path, container=container, limits=_probe_limits())
    duration_seconds = info.duration_seconds or fallback_duration_seconds or 0.0
    copy_video = (
        info.has_video and info.video_codec == "h264" and _h264_plays_everywhere(video_path, container, info, work_dir)
    )
    video_plays = not info.has_video or copy_video
    if container == "mp4" and video_plays and (not info.has_audio or info.audio_codec == "aac"):
        return None
    encoding = encoding_for(info, copy_video=copy_video)
    output_path = work_dir / f"video-{secrets.token_hex(8)}.mp4"
    utils.encode_rendition(
        video_path,
        output_path,
        encoding,
        container=container,
        has_video=info.has_video,
        has_audio=info.has_audio,
        limits=encode_limits(duration_seconds, encoding, video_bytes=video_path.stat().st_size),
        cancel=cancel,
    )
    codecs = []
    if info.has_video:
        codecs.append(utils.h264_parameters(output_path, container="mp4", limits=_probe_limits())[0].codecs)
    if info.has_audio:
        codecs.append(AAC_LC)
    return Made(
        path=output_path,
        content_type="video/mp4" if info.has_video else "audio/mp4",
        codecs=", ".join(codecs),
        video_copied=copy_video if info.has_video else None,
    )


def _h264_plays_everywhere(video_path: Path, container: str, info: utils.MediaInfo, work_dir: Path) -> bool:
    """Whether an H.264 video is copied as it is: one sequence parameter set all through, the
    container's and the stream's alike (a picture that changes size mid-way, a resized window, is
    encoded again at one size), which iPhones decode."""
    try:
        sent_in_stream = utils.distinct_h264_parameter_sets(
            video_path, container=container, work_path=work_dir / "parameter-sets.h264", limits=_scan_limits()
        )
    except utils.MediaError as error:
        if error.code != "output_too_large":
            raise
        return False  # parameter sets by the megabyte: no recorder's
    if len(sent_in_stream) > 1:
        return False
    parameter_sets = utils.h264_parameters(video_path, container=container, limits=_probe_limits())
    return len(parameter_sets) == 1 and plays_everywhere(parameter_sets[0], info)


def plays_everywhere(h264: utils.H264Parameters, info: utils.MediaInfo) -> bool:
    """Whether an H.264 stream decodes on every iPhone as it is."""
    width, height = info.width or 0, info.height or 0
    frame_macroblocks = h264.width_macroblocks * h264.height_macroblocks
    return (
        h264.profile_idc in PLAYS_EVERYWHERE_PROFILES
        and h264.level_idc <= MAX_LEVEL_IDC
        and frame_macroblocks <= MAX_FRAME_MACROBLOCKS.get(h264.level_idc, 0)
        and h264.is_progressive
        and h264.chroma_format_idc == 1
        and h264.bit_depth == h264.bit_depth_chroma == 8
        and width > 0
        and height > 0
        and width % 2 == 0
        and height % 2 == 0
    )


def level_for(width: int, height: int) -> str:
    """The H.264 level a re-encode declares: what its frame size at 40 frames a second needs."""
    macroblocks = -(-width // 16) * -(-height // 16)
    return "4.0" if macroblocks * 40 <= LEVEL_4_0_MACROBLOCKS_PER_SECOND else "4.2"


def frame_size(width: int, height: int) -> tuple[int, int]:
    """The re-encoded frame: the source's, scaled down to fit 1920x1080 (1080x1920 upright) with its
    shape kept, each side even (4:2:0 has one colour sample per 2x2 pixels)."""
    long_max, short_max = (MAX_LONG_SIDE, MAX_SHORT_SIDE) if width >= height else (MAX_SHORT_SIDE, MAX_LONG_SIDE)
    scale = min(1.0, long_max / width, short_max / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def encoding_for(info: utils.MediaInfo, *, copy_video: bool) -> utils.RenditionEncoding:
    width, height = frame_size(info.width or 2, info.height or 2)
    return utils.RenditionEncoding(
        copy_video=copy_video,
        width=width,
        height=height,
        preset=settings.RECORDER_RENDITION_PRESET,
        crf=settings.RECORDER_RENDITION_CRF,
        max_video_bits_per_second=settings.RECORDER_RENDITION_MAX_BITRATE,
        threads=settings.RECORDER_RENDITION_THREADS,
        level=level_for(width, height),
    )


def encode_limits(duration_seconds: float, encoding: utils.RenditionEncoding, *, video_bytes: int) -> utils.Limits:
    """What one encode may cost: in proportion to the recording's duration, and to its stored bytes."""
    video_mib = video_bytes / (1024 * 1024)
    # the audio at its fixed rate, for as long as the recording lasts (processing's MP3 is allowed
    # as much); the video at most its rate cap, and at most OUTPUT_GROWTH times the stored video
    audio_bytes = int(1.25 * encoding.audio_bits_per_second / 8 * duration_seconds)
    if encoding.copy_video:
        video_bound = video_bytes
    else:
        rate_bytes = int(1.25 * encoding.max_video_bits_per_second / 8 * duration_seconds)
        video_bound = min(rate_bytes, OUTPUT_GROWTH * video_bytes)
    output_bytes = video_bound + audio_bytes + OUTPUT_SLACK_BYTES
    return utils.Limits(
        timeout_seconds=BASE_SECONDS
        + min(SECONDS_PER_RECORDED_SECOND * duration_seconds, SECONDS_PER_MIB * max(1.0, video_mib)),
        memory_bytes=settings.RECORDER_FFMPEG_MAX_MEMORY_BYTES or None,
        output_bytes=output_bytes,
        max_frame_pixels=settings.RECORDER_MAX_FRAME_PIXELS or None,
    )


def _scan_limits() -> utils.Limits:
    """For the parameter-set scan: a recorder's SPS is ~20 bytes a keyframe, 1 MiB is ~50,000."""
    return utils.Limits(
        timeout_seconds=60, output_bytes=1024 * 1024, max_frame_pixels=settings.RECORDER_MAX_FRAME_PIXELS or None
    )


def _probe_limits() -> utils.Limits:
    return utils.Limits(
        timeout_seconds=60, output_bytes=16 * 1024 * 1024, max_frame_pixels=settings.RECORDER_MAX_FRAME_PIXELS or None
    )


# --- Listing them --------------------------------------------------------------------------------------

# RFC 6381 names of what browsers record into WebM, and of audio in MP4; H.264's needs its SPS.
_WEBM_CODECS = {"vp8": "vp8", "vp9": "vp9", "opus": "opus", "vorbis": "vorbis"}
_MP4_AUDIO_CODECS = {"aac": AAC_LC, "opus": "opus", "mp3": "mp3", "flac": "flac"}


@dataclass(frozen=True)
class Listed:
    """One file of a ready recording's video, in the order a player should try them."""

    name: str  # `mp4`, or `original`
    media_kind: str  # its kind in media URLs: /recordings/<view id>/<kind>/
    status: str
    content_type: str
    codecs: str  # RFC 6381, for a `type`'s codecs parameter; empty when not known exactly
    size: int | None

    @property
    def is_served(self) -> bool:
        return self.status == Rendition.Status.READY

    @property
    def type(self) -> str:
        """What goes in a <source>'s type: a browser skips a file whose type it says it cannot play."""
        return f'{self.content_type}; codecs="{self.codecs}"' if self.codecs else self.content_type


def listed(session: RecordingSession) -> list[Listed]:
    """A ready recording's video files, best first: the MP4 (which plays everywhere) once it is
    ready, then the recorded video; an MP4 still being made (or failed) last, with no file served."""
    if session.status != Status.READY or not session.video_name:
        return []
    original = Listed(
        name=ORIGINAL,
        media_kind="video",
        status=Rendition.Status.READY,
        content_type=session.video_content_type,
        codecs=_codecs_of_original(session),
        size=session.video_bytes,
    )
    if not is_on():
        return [original]
    made = [
        Listed(
            name=rendition.name,
            media_kind=rendition.name,
            status=rendition.status,
            content_type=rendition.content_type or ("video/mp4" if session.has_video else "audio/mp4"),
            codecs=rendition.codecs if rendition.status == Rendition.Status.READY else "",
            size=rendition.size if rendition.status == Rendition.Status.READY else None,
        )
        for rendition in session.renditions.all()
        if rendition.status != Rendition.Status.NONE
    ]
    return [item for item in made if item.is_served] + [original] + [item for item in made if not item.is_served]


def _codecs_of_original(session: RecordingSession) -> str:
    """The recorded video's codecs where their RFC 6381 names are known from the codec names alone."""
    known = _WEBM_CODECS if session.video_content_type.endswith("/webm") else _MP4_AUDIO_CODECS
    names = [codec for codec in (session.video_codec, session.audio_codec) if codec]
    if not names or any(codec not in known for codec in names):
        return ""
    return ", ".join(known[codec] for codec in names)


def served_rendition(session: RecordingSession, name: str) -> Rendition | None:
    """The ready rendition `name` of a ready recording, if it has one and renditions are on."""
    if not is_on():
        return None
    return session.renditions.filter(name=name, status=Rendition.Status.READY).exclude(storage_name="").first()
