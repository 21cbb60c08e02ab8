"""The recording's MP3, encoded in pieces while its chunks arrive, that join into one continuous stream.

Separately encoded MP3 files do not join cleanly: each starts with the encoder's delay and ends
with padding (a gap and a click at every joint, and drift). So every piece is cut from one global
grid of MP3 frames (1,152 samples each at 48 kHz) counted from the recording's first audio sample:
the piece for frames [a, b) is encoded from the samples eight frames before frame a (the encoder's
warm-up, whose frames are dropped), with the bit reservoir off so no frame leans on another, and
its frames a..b-1 are appended to the file. The input is shifted by the encoder's delay (1,105
samples), so frame j decodes to exactly the samples of the recording's [1152·j, 1152·(j+1)): the
joined file decodes to the recording's audio without a gap or an offset, and needs no gapless tag.

Samples are counted as a decoder gives them (each Opus packet's count from its TOC byte, less the
stream's pre-skip), not from timestamps, which a browser rounds and jitters by milliseconds. Opus
is decoded from a Cluster at least 0.4 s before the piece's first sample (the decoder converges in
~0.1–0.2 s), so the samples cut are the same as a decode from the start gives. Only Opus in, MP3
out (the default `RECORDER_AUDIO_FORMAT`); anything else is encoded at Stop by the full pipeline.
"""

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import live_webm, utils

SAMPLE_RATE = 48_000  # what ffmpeg decodes Opus to, whatever the stream says
FRAME_SAMPLES = 1152
ENCODER_DELAY_SAMPLES = 1105  # LAME's 576 plus the decoder's 529: ffmpeg's libmp3lame initial padding
WARM_UP_FRAMES = 8  # 3 left frames unlike a continuous encode's (the psychoacoustic state); 8: 1 in 2,498
LOOKAHEAD_FRAMES = 2  # input past a piece's last frame, so the encoder does not treat it as the end
PIECE_FRAMES = 334  # ~8 s: the most audio left to encode at Stop
DECODE_PREROLL_SAMPLES = int(0.4 * SAMPLE_RATE)


@dataclass(frozen=True)
class Piece:
    first_frame: int
    end_frame: int | None  # None: to the end of the audio (the last piece)


def new_state(build_state: dict) -> dict | None:
    """The audio part of a build's state, once its Tracks are read: None when it has no Opus track."""
    audio = build_state.get("audio")
    if audio is None or audio["codec"] != "opus":
        return None
    return {"next_frame": 0, "bytes": 0, "decode_errors": 0}


def decoded_samples(build_state: dict) -> int:
    """The samples a decoder gives for the audio so far: the Opus packets' own counts, less the
    pre-skip it drops at the start (timestamps would not do: a browser's jitter by milliseconds)."""
    return max(0, build_state.get("audio_samples", 0) - build_state["audio"]["preskip"])


def encoded_seconds(audio_state: dict) -> float:
    """Seconds of the recording's audio in the MP3 so far (its frames are on the recording's grid)."""
    return audio_state["next_frame"] * FRAME_SAMPLES / SAMPLE_RATE


def next_piece(build_state: dict, audio_state: dict, *, final: bool) -> Piece | None:
    """The next piece to encode: a whole one once enough audio has arrived, or at the end the rest."""
    if build_state.get("audio_first_time") is None:
        return None
    first = audio_state["next_frame"]
    if final:
        return Piece(first, None)
    end_frame = first + PIECE_FRAMES
    return Piece(first, end_frame) if decoded_samples(build_state) >= _input_end(end_frame) else None


def _input_start(first_frame: int) -> int:
    """Relative to the first audio sample; negative for the first piece (made up with silence)."""
    return (first_frame - WARM_UP_FRAMES) * FRAME_SAMPLES + ENCODER_DELAY_SAMPLES


def _input_end(end_frame: int) -> int:
    return (end_frame + LOOKAHEAD_FRAMES) * FRAME_SAMPLES + ENCODER_DELAY_SAMPLES


def encode_piece(
    piece: Piece,
    build_state: dict,
    audio_state: dict,
    *,
    video_path: Path,
    index_path: Path,
    audio_path: Path,
    work_dir: Path,
    limits: utils.Limits,
    before_writing: Callable[[], None] = lambda: None,
) -> dict:
    """Encode `piece` from the build's video so far, append its frames to `audio_path` (cut back to
    what `audio_state` says first, after calling `before_writing`) and return the new audio state."""
    start = _input_start(piece.first_frame)
    lead_silence = max(0, -start)
    start = max(start, 0)
    end = None if piece.end_frame is None else _input_end(piece.end_frame)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="audio-piece-") as temporary:
        clip_path = Path(temporary) / "clip.webm"
        clip_start = _write_clip(
            build_state, video_path, index_path, clip_path, before=start - DECODE_PREROLL_SAMPLES, until=end
        )
        encoded_path = Path(temporary) / "piece.mp3"
        report = utils.encode_mp3_piece(
            clip_path,
            encoded_path,
            start_sample=start - clip_start,
            end_sample=None if end is None else end - clip_start,
            lead_silence_samples=lead_silence,
            limits=limits,
        )
        frames = mp3_frames(encoded_path)[WARM_UP_FRAMES:]
        if piece.end_frame is not None:
            wanted = piece.end_frame - piece.first_frame
            frames = frames[:wanted]
            if len(frames) != wanted:  # the audio has a gap: the grid no longer holds
                raise live_webm.NotLive(f"an audio piece gave {len(frames)} frames, not {wanted}")
        before_writing()
        with open(encoded_path, "rb") as encoded, open(audio_path, "r+b") as audio:
            audio.truncate(audio_state["bytes"])
            audio.seek(audio_state["bytes"])
            if frames:  # in blocks: the last piece of a build far behind may be an hour of MP3
                encoded.seek(frames[0][0])
                shutil.copyfileobj(_Limited(encoded, frames[-1][0] + frames[-1][1] - frames[0][0]), audio)
            size = audio.tell()
    return {
        "next_frame": piece.first_frame + len(frames),
        "bytes": size,
        "decode_errors": audio_state["decode_errors"] + report.errors,
    }


def _write_clip(
    build_state: dict, video_path: Path, index_path: Path, clip_path: Path, *, before: int, until: int | None
) -> int:
    """The build's header and its Clusters from the last one whose audio starts at or before decoded
    sample `before`, to the first one that starts past sample `until` (None: to the end): a clip
    of the piece's length, however far the build is ahead. Returns the decoded sample where its
    decode starts. A decoder drops the stream's pre-skip at the start of every clip, so a clip
    from a Cluster starts at the samples before it as the recording's decode counts them."""
    with open(index_path, "rb") as index:
        clusters = live_webm.cluster_starts(build_state, index)
    header_end = clusters[0][1]
    start, decoded_from = header_end, 0
    end = build_state["output_size"]
    for samples_before, position in clusters[1:]:
        if samples_before <= before:
            start, decoded_from = position, samples_before
        elif until is not None and samples_before > until:
            end = position
            break
    with open(video_path, "rb") as video, open(clip_path, "wb") as clip:
        clip.write(video.read(header_end))
        video.seek(start)
        shutil.copyfileobj(_Limited(video, end - start), clip)
    return decoded_from


class _Limited:
    def __init__(self, stream, size: int):
        self._stream = stream
        self._left = size

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        block = self._stream.read(size)
        self._left -= len(block)
        return block


# MPEG audio frame headers (ISO 11172-3 / 13818-3): bitrates in kb/s and sample rates by version.
_BITRATES = {
    "1": [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],
    "2": [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
}
_SAMPLE_RATES = {3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000]}


def mp3_frames(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each Layer III frame of a bare MP3 file (no tags), read from its headers."""
    frames = []
    with open(path, "rb") as mp3:
        offset = 0
        while header := mp3.read(4):
            if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
                raise live_webm.NotLive(f"no MP3 frame header at byte {offset} of an audio piece")
            version = (header[1] >> 3) & 0x3
            bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 0x3, (header[2] >> 1) & 0x1
            if version == 1 or not 0 < bitrate_index < 15 or rate_index == 3:
                raise live_webm.NotLive(f"an invalid MP3 frame header at byte {offset} of an audio piece")
            bitrate = _BITRATES["1" if version == 3 else "2"][bitrate_index] * 1000
            sample_rate = _SAMPLE_RATES[version][rate_index]
            length = (144 if version == 3 else 72) * bitrate // sample_rate + padding
            frames.append((offset, length))
            offset += length
            mp3.seek(offset)
    return frames
