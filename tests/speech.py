"""Speech with known words for the captions tests: phrases spoken by espeak-ng (Debian), placed at
known times, recorded as a browser would send it (VP8 + Opus WebM, cut into chunks)."""

import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy

from recordings import utils

if TYPE_CHECKING:
    from tests.conftest import Recording

PHRASES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please record your screen and talk about the new design.",
    "Every chunk the browser sends is kept safe on the server.",
    "When you stop the recording the video is ready to watch.",
    "We will meet again next week to talk about the plan.",
    "The weather today is warm and sunny with a light wind.",
    "Open the settings page and choose a different camera.",
    "Thank you for watching and have a great afternoon.",
]
SAMPLE_RATE = 22_050  # espeak-ng's


@dataclass
class Spoken:
    """Where one phrase is in the recording: the seconds its sound starts and ends."""

    text: str
    start_seconds: float
    end_seconds: float


@dataclass
class SpeechRecording:
    recording: "Recording"
    spoken: list[Spoken]

    @property
    def words(self) -> list[str]:
        return normalized_words(" ".join(phrase.text for phrase in self.spoken))


def normalized_words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).split()


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """(substitutions + deletions + insertions) / reference words: the edit distance over words."""
    previous = list(range(len(hypothesis) + 1))
    for row, reference_word in enumerate(reference, start=1):
        current = [row]
        for column, hypothesis_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[column] + 1,
                    current[column - 1] + 1,
                    previous[column - 1] + (reference_word != hypothesis_word),
                )
            )
        previous = current
    return previous[-1] / max(1, len(reference))


def _spoken_samples(text: str, directory: Path, number: int, words_per_minute: int = 140) -> numpy.ndarray:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        from tests.conftest import skip_or_fail  # here: the benchmarks use this module without pytest

        skip_or_fail("espeak-ng is not installed (apt-get install espeak-ng): the speech fixtures need it")
        raise AssertionError("unreachable")
    path = directory / f"phrase-{number}.wav"
    subprocess.run([espeak, "-v", "en-us", "-s", str(words_per_minute), "-w", str(path), text], check=True, timeout=60)
    with wave.open(str(path)) as spoken:
        assert spoken.getframerate() == SAMPLE_RATE and spoken.getnchannels() == 1
        return numpy.frombuffer(spoken.readframes(spoken.getnframes()), dtype=numpy.int16).astype(numpy.float32)


def speech_webm(
    directory: Path,
    *,
    phrases: list[str] = PHRASES,
    lead_seconds: float = 1.0,
    gap_seconds: float = 1.2,
    tail_seconds: float = 1.0,
    noise_level: float = 0.0,
    words_per_minute: int = 140,
    name: str = "speech",
) -> tuple[Path, list[Spoken], float]:
    """The phrases in order with silence between, as a live VP8 + Opus WebM (as MediaRecorder writes
    it): its path, where each phrase is, and its seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    pieces = [numpy.zeros(int(lead_seconds * SAMPLE_RATE), numpy.float32)]
    spoken, position = [], len(pieces[0])
    said: dict[str, numpy.ndarray] = {}
    for text in phrases:
        if text not in said:
            said[text] = _spoken_samples(text, directory, len(said), words_per_minute)
        samples = said[text]
        loud = numpy.flatnonzero(numpy.abs(samples) > 0.02 * numpy.abs(samples).max())
        spoken.append(Spoken(text, (position + loud[0]) / SAMPLE_RATE, (position + loud[-1]) / SAMPLE_RATE))
        gap = numpy.zeros(int(gap_seconds * SAMPLE_RATE), numpy.float32)
        pieces += [samples, gap]
        position += len(samples) + len(gap)
    pieces.append(numpy.zeros(int(tail_seconds * SAMPLE_RATE), numpy.float32))
    audio = numpy.concatenate(pieces)
    if noise_level:
        audio += numpy.random.default_rng(7).normal(0, noise_level * 32767, len(audio)).astype(numpy.float32)
    wav_path = directory / f"{name}.wav"
    with wave.open(str(wav_path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(numpy.clip(audio, -32768, 32767).astype(numpy.int16).tobytes())
    seconds = len(audio) / SAMPLE_RATE
    webm_path = directory / f"{name}.webm"
    utils.run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=10",
            "-i",
            str(wav_path),
            "-t",
            f"{seconds:.3f}",
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-b:v",
            "100k",
            "-c:a",
            "libopus",
            "-ar",
            "48000",
            "-f",
            "webm",
            "-live",
            "1",
            str(webm_path),
        ],
        limits=utils.Limits(timeout_seconds=1800),
    )
    wav_path.unlink()
    return webm_path, spoken, seconds


def speech_recording(directory: Path, *, chunk_seconds: float = 1.0, **options) -> SpeechRecording:
    """speech_webm's recording as a test client holds it: cut into chunks of ~`chunk_seconds`."""
    from tests.conftest import Recording, split_bytes

    webm_path, spoken, seconds = speech_webm(directory, **options)
    recording = Recording(
        name=options.get("name", "speech"),
        chunks=split_bytes(webm_path.read_bytes(), max(1, round(seconds / chunk_seconds))),
        mime_type="video/webm;codecs=vp8,opus",
        duration_seconds=seconds,
        has_audio=True,
        has_video=True,
    )
    return SpeechRecording(recording, spoken)
