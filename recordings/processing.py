"""The pipeline for one recording: its outputs from the live build (recordings/live.py) when that
holds the whole recording, else join → check → (concat) → probe → remux → audio → thumbnail →
store, the reference. What each step may cost, and what is refused before it runs:
recordings/costs.py. The run around it (claim, heartbeat, status): recordings/runs.py."""

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from . import costs, files, live, streams, utils
from .models import Chunk, RecordingSession, chunk_storage_name

logger = logging.getLogger("recordings.processing")


@dataclass
class StepTimer:
    """Seconds taken by each named step (some run side by side), kept on the recording and logged."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)

    @property
    def total_seconds(self) -> float:
        """Wall-clock time since the run began: less than the sum of the steps when they overlap."""
        return round(time.perf_counter() - self.started, 3)


def build_outputs(session: RecordingSession, timer: StepTimer, *, use_live_build: bool) -> dict:
    """The outputs from the live build when it holds the whole recording, else the full pipeline."""
    settings.RECORDER_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    if use_live_build:
        with timer.step("live_finish"):
            built = live.finish(session)
        if built is not None:
            return _outputs_of_live_build(session, built, timer)
        del timer.seconds["live_finish"]
    return _full_pipeline(session, timer)


def _outputs_of_live_build(session: RecordingSession, built: live.LiveOutputs, timer: StepTimer) -> dict:
    """Check, probe and store what the live build made, and make the thumbnail: the same checks and
    limits as the full pipeline's, on the same packets. The SHA-256 of the chunks comes after `ready`.

    The build is served as the full pipeline would serve the recording (`utils.plan_remux`): a WebM
    as it is; H.264, which the build writes in Matroska, copied into MP4 (`+faststart`) first, the
    full pipeline's remux of the same packets, so Stop costs that stream copy and no more."""
    source_bytes = session.received_bytes
    container = built.container  # "webm", or "matroska" for H.264
    with timer.step("probe"):
        built_info = utils.probe(built.video_path, container=container, limits=costs.probe_limits(source_bytes))
    plan = utils.plan_remux(container, built_info)
    costs.check_probed(container, built_info, plan, source_bytes)
    video_limits = costs.video_limits(source_bytes)
    costs.check_output_size(built.video_bytes, video_limits)
    with tempfile.TemporaryDirectory(dir=settings.RECORDER_TEMP_DIR, prefix=files.work_dir_prefix(session)) as work:
        work_dir = Path(work)
        timestamps_out_of_order = 0
        if plan.output.extension == container and plan.copies_everything:
            video_path, video_container, info = built.video_path, container, built_info
        else:
            video_path, video_container = work_dir / f"video.{plan.output.extension}", plan.output.extension
            with timer.step("remux"):
                report = utils.remux(built.video_path, video_path, plan, container=container, limits=video_limits)
                info = utils.probe(video_path, container=video_container, limits=video_limits)
            timestamps_out_of_order = report.timestamps_out_of_order
        if not info.duration_seconds:
            raise utils.MediaError("media_undecodable", "The recording has no measurable duration.")
        costs.check_duration(info.duration_seconds)
        outputs = {"video": (video_path, plan.output.content_type)}
        if built.audio_path is not None:
            costs.check_output_size(built.audio_path.stat().st_size, costs.audio_limits("mp3", source_bytes))
            outputs["audio"] = (built.audio_path, utils.AUDIO_FORMATS["mp3"].content_type)
        if info.has_video:
            outputs["thumbnail"] = _thumbnail(video_path, video_container, info, source_bytes, work_dir, timer)
        with timer.step("store"):
            stored = files.store_outputs(session, outputs)
    return {
        "container": session.container or container,
        "source_bytes": source_bytes,
        "source_sha256": "",
        **_metadata(info),
        "warnings": _warnings(
            segments=1,
            segments_left_out=0,
            timestamps_out_of_order=timestamps_out_of_order,
            audio_decode_errors=built.audio_decode_errors,
        ),
        **stored,
    }


def _thumbnail(
    video_path: Path, container: str, info: utils.MediaInfo, source_bytes: int, work_dir: Path, timer: StepTimer
) -> tuple[Path, str]:
    """The thumbnail output (path, content type) of a finished video, in `work_dir`."""
    thumbnail_path = work_dir / "thumbnail.jpg"
    with timer.step("thumbnail"):
        utils.make_thumbnail(
            video_path,
            thumbnail_path,
            at_seconds=utils.thumbnail_time(info.duration_seconds),
            container=container,
            limits=costs.thumbnail_limits(source_bytes),
        )
    return thumbnail_path, "image/jpeg"


def _metadata(info: utils.MediaInfo) -> dict:
    return {
        "duration_seconds": info.duration_seconds,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "video_codec": info.video_codec,
        "audio_codec": info.audio_codec,
        "has_video": info.has_video,
        "has_audio": info.has_audio,
    }


def _full_pipeline(session: RecordingSession, timer: StepTimer) -> dict:
    """Join → check → (concat) → probe → remux → audio → thumbnail → store: the reference."""
    with tempfile.TemporaryDirectory(dir=settings.RECORDER_TEMP_DIR, prefix=files.work_dir_prefix(session)) as work:
        work_dir = Path(work)
        with timer.step("join"):
            joined = streams.join_streams(
                chunk_names(session), work_dir / "source", max_segments=costs.MAX_JOINED_STREAMS
            )
        container = _container_of(joined)
        for segment in joined.segments:
            costs.check_structure(container, segment.path)
        joinable = _joinable(joined, container, timer)
        source_path, concat_report = _single_source(joinable, container, work_dir, timer)
        with timer.step("probe"):
            source_info = utils.probe(source_path, container=container, limits=costs.probe_limits(joined.size))
        plan = utils.plan_remux(container, source_info)
        costs.check_probed(container, source_info, plan, joined.size)
        video_path = work_dir / f"video.{plan.output.extension}"
        video_limits = costs.video_limits(joined.size)
        # The audio comes from the source, not the remuxed file, so it runs on the other core while
        # the remux, probe and thumbnail run here.
        with ThreadPoolExecutor(max_workers=1) as audio_worker:
            audio_job = (
                audio_worker.submit(_extract_audio, source_path, container, joined.size, work_dir, timer)
                if source_info.has_audio
                else None
            )
            with timer.step("remux"):
                remux_report = utils.remux(source_path, video_path, plan, container=container, limits=video_limits)
                info = utils.probe(video_path, container=plan.output.extension, limits=video_limits)
            if not info.duration_seconds:
                raise utils.MediaError("media_undecodable", "The recording has no measurable duration.")
            costs.check_duration(info.duration_seconds)
            outputs = {"video": (video_path, plan.output.content_type)}
            if info.has_video:
                outputs["thumbnail"] = _thumbnail(video_path, plan.output.extension, info, joined.size, work_dir, timer)
            audio_decode_errors = 0
            if audio_job is not None:
                audio_path, audio_content_type, audio_decode_errors = audio_job.result()
                outputs["audio"] = (audio_path, audio_content_type)

        with timer.step("store"):
            stored = files.store_outputs(session, outputs)

    return {
        "container": container,
        "source_bytes": joined.size,
        "source_sha256": joined.sha256,
        **_metadata(info),
        "warnings": _warnings(
            segments=len(joinable),
            segments_left_out=len(joined.segments) - len(joinable),
            timestamps_out_of_order=concat_report.timestamps_out_of_order + remux_report.timestamps_out_of_order,
            audio_decode_errors=audio_decode_errors,
        ),
        **stored,
    }


def _container_of(joined: streams.JoinedStreams) -> str:
    """The container of the recording: its first stream's, which every other stream must share."""
    container = joined.segments[0].container
    if container is None:
        raise utils.MediaError(
            "unsupported_media", "The recording does not start with a WebM, Matroska, MP4 or Ogg header."
        )
    for number, segment in enumerate(joined.segments[1:], start=2):
        if segment.container != container:
            raise utils.MediaError(
                "unsupported_media",
                f"The recording's stream {number} is {segment.container}, its first is {container}: the recorder "
                "was restarted with another format, and streams of different formats are not joined.",
            )
    return container


def _single_source(
    segments: list[streams.Segment], container: str, work_dir: Path, timer: StepTimer
) -> tuple[Path, utils.StepReport]:
    """The one file the next steps read: the stream itself, or a restarted recorder's streams joined."""
    if len(segments) == 1:
        return segments[0].path, utils.StepReport()
    source_path = work_dir / "joined"
    with timer.step("concat"):
        report = utils.concat_segments(
            [segment.path for segment in segments],
            source_path,
            container,
            limits=costs.video_limits(sum(segment.size for segment in segments)),
        )
    costs.check_concatenated(container, report)
    return source_path, report


def _joinable(joined: streams.JoinedStreams, container: str, timer: StepTimer) -> list[streams.Segment]:
    """The streams that can be joined by stream copy: those with the first one's tracks and codecs,
    in its order. A restart that added or dropped the camera or microphone, or changed a codec,
    would otherwise put one stream's packets in another's track: it is left out (and said)."""
    if len(joined.segments) == 1:
        return joined.segments
    with timer.step("probe_streams"):
        layouts = [_layout(segment, container) for segment in joined.segments]
    if not layouts[0]:
        raise utils.MediaError("media_undecodable", "The recording's first stream holds no readable audio or video.")
    return [segment for segment, layout in zip(joined.segments, layouts, strict=True) if layout == layouts[0]]


def _layout(segment: streams.Segment, container: str) -> tuple[str, ...]:
    try:
        return utils.probe(segment.path, container=container, limits=costs.probe_limits(segment.size)).stream_layout
    except utils.MediaError as error:
        if error.code != "media_undecodable":
            raise
        return ()  # unreadable: not joined


def _warnings(
    *, segments: int, segments_left_out: int, timestamps_out_of_order: int, audio_decode_errors: int
) -> list[dict]:
    """What the recording's steps played past, for its owner to see: stable codes, counts, words."""
    warnings = []
    if segments_left_out:
        warnings.append(
            {
                "code": "streams_left_out",
                "detail": f"{segments_left_out} of the recorder's {segments + segments_left_out} streams had other "
                "tracks or codecs than the first (a camera or microphone added or removed, another codec) and "
                "were left out of the video.",
                "count": segments_left_out,
            }
        )
    if segments > 1:
        warnings.append(
            {
                "code": "streams_joined",
                "detail": f"The recorder was restarted during the recording: its {segments} streams were joined "
                "end to end.",
                "count": segments,
            }
        )
    if timestamps_out_of_order:
        warnings.append(
            {
                "code": "timestamps_out_of_order",
                "detail": f"{timestamps_out_of_order} packets had a timestamp earlier than the packet before them "
                "(chunks sent or joined out of order); playback may jump or stall there.",
                "count": timestamps_out_of_order,
            }
        )
    if audio_decode_errors:
        warnings.append(
            {
                "code": "decode_errors",
                "detail": f"Decoding the audio reported {audio_decode_errors} errors (packets that could not be "
                "read or decoded); the audio has gaps there.",
                "count": audio_decode_errors,
            }
        )
    return warnings


def _extract_audio(
    source_path: Path, container: str, source_bytes: int, work_dir: Path, timer: StepTimer
) -> tuple[Path, str, int]:
    audio_format = settings.RECORDER_AUDIO_FORMAT
    audio_path = work_dir / f"audio.{utils.AUDIO_FORMATS[audio_format].extension}"
    limits = costs.audio_limits(audio_format, source_bytes)
    with timer.step("audio"):
        extracted = utils.extract_audio(source_path, audio_path, audio_format, container=container, limits=limits)
    return audio_path, extracted.content_type, extracted.decode_errors


def chunk_names(session: RecordingSession) -> list[str]:
    """The stored chunks, in order: exactly the indices from `first_chunk_index` (0, or 1 for
    clients that count from 1) to one before `expected_chunks`, or `chunks_missing`."""
    indices = list(Chunk.objects.filter(session=session).order_by("index").values_list("index", flat=True))
    first = session.first_chunk_index
    end = session.expected_chunks if session.expected_chunks is not None else first + len(indices)
    if indices != list(range(first, end)):
        raise utils.MediaError("chunks_missing", "Some chunks of the recording are missing; it cannot be joined.")
    return [chunk_storage_name(session.id, index) for index in indices]
