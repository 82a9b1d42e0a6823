"""Conversations built from real utterances, with their reference of who speaks when.

Each conversation takes 2 to 5 speakers of one set and one half of its speakers
(`devtools.decisions.half_of`): turns of 1-15 s cut from the speakers' utterances (each cut to the
speech silero-vad finds in the utterance alone, levels evened), pauses of 0.1-1.5 s between turns
and, where asked, some turns starting 0.2-1 s before the previous one ends (both voices mixed).
Deterministic from a seed.
Sets: eval-speech at 16 kHz and resampled to 8 kHz, and eval-telephone's callers (8 kHz, only the
labels whose clips all agree on one voice). Telephone conversations are built two ways: with each
caller's turns cut in order from one call of theirs (their longest; one line and handset per
speaker, as in a real call; the call loops when the conversation needs more of it than it holds),
or, the harder condition, with every turn drawn from any of the caller's calls. The reference is
an RTTM text or a pyannote Annotation; beside it, the turns cut to the speech heard in each piece.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from devtools.clips import encode
from devtools.decisions import half_of
from devtools.sets import EVAL_SPEECH, EVAL_TELEPHONE, manifest_rows
from service.audio.pipeline import SpeechDetector

LEVEL_RMS = 0.05  # every turn's speech at about -26 dBFS
OVERLAP_SHARE = 0.3  # of turn changes in an overlapping conversation


@dataclass(frozen=True)
class RefTurn:
    speaker: str
    start: float  # seconds
    end: float


@dataclass(frozen=True)
class Conversation:
    name: str
    samples: np.ndarray  # int16 mono at `rate`
    rate: int
    turns: list[RefTurn]
    loops: int = 0  # times a speaker's one call started again from the top (`build(one_call=True)`)
    # The turns cut to the speech silero-vad hears in each piece alone: a turn of a real call holds
    # pauses of several seconds (the caller listening), which `turns` counts as speech.
    speech: list[RefTurn] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate

    @property
    def speakers(self) -> list[str]:
        return list(dict.fromkeys(t.speaker for t in self.turns))

    def flac(self) -> bytes:
        return encode(self.samples, self.rate, "flac", "flac", self.rate)

    def rttm(self) -> str:
        return "".join(
            f"SPEAKER {self.name} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
            for t in self.turns
        )

    def changes(self) -> list[tuple[float, float]]:
        """``(end of a turn, start of the next)`` at each change of speaker that has no overlap."""
        return [
            (a.end, b.start)
            for a, b in zip(self.turns, self.turns[1:], strict=False)
            if a.speaker != b.speaker and b.start >= a.end
        ]


@dataclass(frozen=True)
class Source:
    """Utterances of a set's speakers: name, the files' sample rate, speaker -> files, and where
    the set has calls, speaker -> the files of their longest call in order."""

    name: str
    rate: int
    speakers: dict[str, list[Path]]
    calls: dict[str, list[Path]] = field(default_factory=dict)


def speech_source(half: int) -> Source:
    rows = [r for r in manifest_rows(EVAL_SPEECH) if half_of(r.speaker) == half]
    return Source("speech", 16_000, _by_speaker((r.speaker, r.path) for r in rows))


def telephone_source(half: int) -> Source:
    rows = [
        r
        for r in manifest_rows(EVAL_TELEPHONE)
        if half_of(r.speaker) == half and r.extra.get("consistent") == "1"
    ]
    seconds: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r.speaker, r.extra["session"])
        seconds[key] = seconds.get(key, 0.0) + float(r.extra["duration_s"])
    longest: dict[str, str] = {}
    for (speaker, session), total in sorted(seconds.items()):
        if total > seconds.get((speaker, longest.get(speaker, "")), 0.0):
            longest[speaker] = session
    calls = _by_speaker(
        (r.speaker, r.path)
        for r in sorted(rows, key=lambda r: _chunk(r.path))
        if longest[r.speaker] == r.extra["session"]
    )
    return Source("telephone", 8_000, _by_speaker((r.speaker, r.path) for r in rows), calls)


def _chunk(path: Path) -> int:
    """The piece's place in its call: the set names pieces ``<call>_c<N>.wav``."""
    return int(path.stem.rsplit("_c", 1)[1])


def _by_speaker(pairs: object) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for speaker, path in pairs:  # type: ignore[attr-defined]
        out.setdefault(speaker, []).append(path)
    return out


@cache
def _detector() -> SpeechDetector:
    return SpeechDetector()


@cache
def _utterance(path: Path) -> tuple[np.ndarray, int, tuple[tuple[float, float], ...]]:
    """float32 mono samples, rate, and the speech regions silero-vad finds in the clip alone."""
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = samples[:, 0]
    regions = _detector().regions(_resample(wave, int(rate), 16_000))
    return wave, int(rate), tuple(regions)


def _speech_piece(
    path: Path, rate: int, seconds: float, rng: random.Random
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """About `seconds` of the utterance at `rate`, from a random point, cut to the speech in it (the
    reference's turn edges are where the speaker is heard, not where the recording starts), and
    the speech regions in it (seconds from its start)."""
    wave, source_rate, regions = _utterance(path)
    duration = len(wave) / source_rate
    start = rng.uniform(0.0, max(0.0, duration - seconds))
    inside = [
        (max(a, start), min(b, start + seconds)) for a, b in regions if b > start and a < start + seconds
    ]
    if not inside or inside[-1][1] - inside[0][0] < 0.5:
        inside = list(regions) or [(0.0, duration)]
    a, b = inside[0][0], inside[-1][1]
    piece = _resample(wave[int(a * source_rate) : int(b * source_rate)], source_rate, rate)
    return piece, [(ra - a, rb - a) for ra, rb in inside]


class CallStream:
    """One speaker's call as a stream of speech: each piece from its first to its last speech, in
    order; turns are cut from it one after another and it starts again from the top when used up."""

    def __init__(self, paths: Sequence[Path], rate: int) -> None:
        waves: list[np.ndarray] = []
        self.regions: list[tuple[float, float]] = []
        offset = 0.0
        for path in paths:
            wave, source_rate, regions = _utterance(path)
            if not regions:
                continue
            a, b = regions[0][0], regions[-1][1]
            waves.append(_resample(wave[int(a * source_rate) : int(b * source_rate)], source_rate, rate))
            self.regions += [(offset + ra - a, offset + rb - a) for ra, rb in regions]
            offset += len(waves[-1]) / rate
        self.wave = np.concatenate(waves)
        self.rate = rate
        self.cursor = 0.0
        self.loops = 0

    def _speech(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(max(a, start), min(b, end)) for a, b in self.regions if b > start and a < end]

    def next_turn(self, seconds: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """The next `seconds` of the call, cut to the speech in them (shorter at the call's end), and
        the speech regions in it (seconds from its start)."""
        inside = self._speech(self.cursor, self.cursor + seconds)
        if not inside or inside[-1][1] - inside[0][0] < 0.5:
            self.cursor, self.loops = 0.0, self.loops + 1
            inside = self._speech(0.0, seconds)
        if not inside or inside[-1][1] - inside[0][0] < 0.5:
            # A call whose first speech is short and followed by a long pause: from the top, the
            # turn runs on to the first region that makes it 0.5 s long.
            first = self.regions[0][0]
            end = next((b for _, b in self.regions if b - first >= 0.5), None)
            if end is None:
                raise ValueError("a call with under 0.5 s of speech")
            inside = self._speech(0.0, end)
        self.cursor = inside[-1][1]
        a, b = inside[0][0], inside[-1][1]
        return self.wave[int(a * self.rate) : int(b * self.rate)], [(ra - a, rb - a) for ra, rb in inside]


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return wave
    from scipy.signal import resample_poly

    g = np.gcd(rate, target)
    return np.asarray(resample_poly(wave, target // g, rate // g), dtype=np.float32)


def build(
    source: Source,
    seed: int,
    speakers: int,
    *,
    overlap: bool,
    rate: int | None = None,
    turns: int = 10,
    one_call: bool = False,
) -> Conversation:
    """One conversation of `speakers` voices and at least `turns` turns (each speaker two or more);
    `one_call`: each speaker's turns come in order from their longest call (`source.calls`)."""
    rng = random.Random(f"{source.name}:{seed}:{speakers}:{overlap}:{rate}")
    rate = rate or source.rate
    chosen = rng.sample(sorted(source.speakers), speakers)
    order = list(chosen)
    rng.shuffle(order)
    while len(order) < max(turns, 2 * speakers):
        order.append(rng.choice([s for s in chosen if s != order[-1]]))
    calls = {s: CallStream(source.calls[s], rate) for s in chosen} if one_call else {}
    pieces: list[tuple[str, np.ndarray]] = []
    regions: list[list[tuple[float, float]]] = []
    for speaker in order:
        if one_call:
            piece, heard = calls[speaker].next_turn(rng.uniform(1.0, 15.0))
        else:
            piece, heard = _speech_piece(
                rng.choice(source.speakers[speaker]), rate, rng.uniform(1.0, 15.0), rng
            )
        rms = float(np.sqrt(np.mean(piece**2))) or 1.0
        pieces.append((speaker, piece * (LEVEL_RMS / rms)))
        regions.append(heard)
    placed: list[tuple[str, int, np.ndarray]] = []
    t = int(rng.uniform(0.3, 1.0) * rate)
    for i, (speaker, piece) in enumerate(pieces):
        if i and overlap and rng.random() < OVERLAP_SHARE:
            prev_start, prev = placed[-1][1], placed[-1][2]
            back = int(rng.uniform(0.2, 1.0) * rate)
            t = max(prev_start + int(0.5 * rate), prev_start + len(prev) - back)
        elif i:
            t = placed[-1][1] + len(placed[-1][2]) + int(rng.uniform(0.1, 1.5) * rate)
        placed.append((speaker, t, piece))
    total = max(s + len(p) for _, s, p in placed) + int(0.5 * rate)
    mix = np.zeros(total, dtype=np.float32)
    for _, s, p in placed:
        mix[s : s + len(p)] += p
    samples = (np.clip(mix, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    ref = [RefTurn(spk, s / rate, (s + len(p)) / rate) for spk, s, p in placed]
    speech = [
        RefTurn(spk, s / rate + a, min(s / rate + b, (s + len(p)) / rate))
        for (spk, s, p), heard in zip(placed, regions, strict=True)
        for a, b in heard
    ]
    kind = f"{'1call-' if one_call else ''}{'ov' if overlap else 'no'}"
    name = f"{source.name}{rate // 1000}k-{kind}-{speakers}spk-{seed}"
    return Conversation(name, samples, rate, ref, sum(c.loops for c in calls.values()), speech)


@dataclass(frozen=True)
class Condition:
    name: str
    source: str  # "speech" or "telephone"
    rate: int
    overlap: bool
    one_call: bool = False


CONDITIONS = (
    Condition("speech 16 kHz", "speech", 16_000, False),
    Condition("speech 16 kHz, overlap", "speech", 16_000, True),
    Condition("speech 8 kHz", "speech", 8_000, False),
    Condition("telephone 8 kHz, one call per speaker", "telephone", 8_000, False, True),
    Condition("telephone 8 kHz, one call per speaker, overlap", "telephone", 8_000, True, True),
    Condition("telephone 8 kHz, turns from several calls", "telephone", 8_000, False),
    Condition("telephone 8 kHz, turns from several calls, overlap", "telephone", 8_000, True),
)


def conversations(
    half: int, per_condition: int, conditions: Sequence[Condition] = CONDITIONS, seed: int = 0
) -> list[tuple[Condition, Conversation]]:
    """`per_condition` conversations of each condition from `half`'s speakers, 2-5 speakers in turn."""
    sources = {"speech": speech_source(half), "telephone": telephone_source(half)}
    out = []
    for c in conditions:
        source = sources[c.source]
        for k in range(per_condition):
            speakers = min(2 + k % 4, len(source.speakers))
            conversation = build(
                source, seed + k, speakers, overlap=c.overlap, rate=c.rate, one_call=c.one_call
            )
            out.append((c, conversation))
    return out
