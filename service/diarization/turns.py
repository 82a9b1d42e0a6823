"""Speaker turns of a clip from its audio alone: who speaks when, voices numbered, not named.

1. Windows of `window_s` every `hop_s` over each speech region (a region shorter than a window
   and half a hop is one window),
   each embedded (bounded model calls, cancellable between them).
2. The windows' vectors are grouped finely (`service.diarization.clustering`, a short stop
   distance): enough to tell where turns change, seldom two voices in one group.
3. Boundaries: the speech is cut into `frame_s` frames; each frame takes the group that the windows
   covering it resemble most, the windows weighted by how close their centre is to the frame (a
   window straddling a turn change is half one voice and half the other; its centre tells on which
   side the frame lies). A change therefore lands where the windows' likeness crosses over, not at
   a window's edge, and a pause between regions is a boundary by itself. Runs shorter than
   `min_turn_s` inside a region are the blur of a change and join their longer neighbour.
4. Voices: each stretch (consecutive turns of one group, across pauses) of `rescore_min_s` of
   speech or more is embedded as a whole (a stretch of several seconds is a far surer sample of a
   voice than any of its windows) and the stretches, less part of the clip's mean (`centring`),
   are clustered into voices, the count given or found (`stop_distance`, `min_voice_s`); a shorter
   stretch follows its group.

Pure numpy: the model is the `embed` port (``(waves, cancel) -> (n, dim)``, bounded model calls).
A caller scoring overlapping stretches of one stream (realtime) passes `SpanVectors`: a window or
stretch whose exact samples an earlier call embedded is not embedded again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service import calibration as cal
from service.audio import MODEL_RATE
from service.audio.pipeline import PreparedAudio
from service.concurrency import Cancellation
from service.diarization.clustering import centroids, cluster
from service.enrollment.ports import EmbedWaves
from service.enrollment.scoring import unit_rows


@dataclass(frozen=True)
class TurnOptions:
    window_s: float = cal.DIARIZATION_WINDOW_S
    hop_s: float = cal.DIARIZATION_HOP_S
    frame_s: float = 0.1
    min_region_s: float = 0.25  # speech regions shorter than this are left out (clicks, breaths)
    min_turn_s: float = 0.5  # a run of frames shorter than this inside a region joins a neighbour
    window_stop_distance: float = cal.DIARIZATION_WINDOW_STOP_DISTANCE  # first grouping of windows
    stop_distance: float = cal.DIARIZATION_STOP_DISTANCE  # between voices, from whole stretches
    centring: float = cal.DIARIZATION_CENTRING  # share of the clip's mean stretch vector removed
    min_voice_s: float = cal.DIARIZATION_MIN_VOICE_S  # a found voice holds at least this much speech
    rescore_min_s: float = 1.0  # stretches with this much speech are embedded whole and clustered


@dataclass(frozen=True)
class Turn:
    voice: int
    start: float  # seconds from the clip's start
    end: float


def in_centiseconds(start: float, end: float, duration_s: float = math.inf) -> tuple[float, float]:
    """A span's times as the answers give them: to 10 ms, never past the end of the clip (a turn
    that runs to the last sample of a 7.3355 s clip ends at 7.33, not 7.34)."""
    # round() first: 1.13 * 100 is 112.99999999999999, and a 1.13 s clip must keep its last 10 ms.
    last = math.floor(round(duration_s * 100, 6)) / 100 if math.isfinite(duration_s) else math.inf
    return min(round(start, 2), last), min(round(end, 2), last)


@dataclass(frozen=True)
class Turns:
    turns: list[Turn]  # speech only, in time order; voices 0..k-1 in order of first appearance
    voices: np.ndarray  # (k, dim): unit vector of each voice, from all of its speech

    @property
    def count(self) -> int:
        return len(self.voices)

    @property
    def seconds(self) -> np.ndarray:
        """``(k,)``: each voice's speech in seconds (what the decision rule's duration term reads)."""
        out = np.zeros(self.count)
        for turn in self.turns:
            out[turn.voice] += turn.end - turn.start
        return out


class SpanVectors:
    """Vectors of spans of one stream's audio, keyed by their sample bounds in the stream, so that
    audio scored again (a realtime chunk's context) is not embedded again. `origin` is the stream
    sample where the clip being scored starts, `answered` the one before which the stream's audio
    was answered already; the owner moves them and forgets what has gone by."""

    def __init__(self) -> None:
        self.origin = 0
        self.answered = 0
        self.vectors: dict[tuple[int, int], np.ndarray] = {}

    def settled(self, end_s: float) -> bool:
        """Whether audio of the clip that ends at `end_s` was answered before."""
        return self.origin + round(end_s * MODEL_RATE) <= self.answered

    def key(self, start_s: float, end_s: float) -> tuple[int, int]:
        # round as PreparedAudio.segment does, so a key names exactly the samples embedded.
        return self.origin + round(start_s * MODEL_RATE), self.origin + round(end_s * MODEL_RATE)

    def forget_before(self, sample: int) -> None:
        """Drop the spans that start before stream sample `sample` (no longer in any clip)."""
        self.vectors = {k: v for k, v in self.vectors.items() if k[0] >= sample}


def _embed_spans(
    prepared: PreparedAudio,
    spans: Sequence[tuple[float, float]],
    embed: EmbedWaves,
    known: SpanVectors,
    cancel: Cancellation | None,
) -> np.ndarray:
    """Raw vectors of the clip's `spans`, each embedded unless `known` has it (then kept there)."""
    keys = [known.key(a, b) for a, b in spans]
    new = list(dict.fromkeys(k for k in keys if k not in known.vectors))
    if new:
        first = {k: (a, b) for k, (a, b) in zip(keys, spans, strict=True)}
        found = embed([prepared.segment(*first[k]) for k in new], cancel)
        known.vectors.update(zip(new, found, strict=True))
    return np.stack([known.vectors[k] for k in keys])


def windows(speech: Sequence[tuple[float, float]], o: TurnOptions) -> list[tuple[int, float, float]]:
    """``(region number, start, end)`` of each window over the speech regions kept. A region shorter
    than a window and half a hop is one window, all of it: a second window would be nearly the first
    again (the model's time for nothing, and one voice's sample counted twice)."""
    out = []
    for r, (start, end) in enumerate(speech):
        if end - start < o.min_region_s:
            continue
        if end - start < o.window_s + o.hop_s / 2:
            out.append((r, start, end))
            continue
        t = start
        while t + o.window_s < end:
            out.append((r, t, t + o.window_s))
            t += o.hop_s
        out.append((r, end - o.window_s, end))
    return out


def find_turns(
    prepared: PreparedAudio,
    embed: EmbedWaves,
    options: TurnOptions | None = None,
    *,
    count: int | None = None,
    max_count: int = 10,
    cancel: Cancellation | None = None,
    known: SpanVectors | None = None,
) -> Turns:
    """The turns of `prepared`'s speech; `count` voices if given, else as many as found (at most
    `max_count`). `known`: vectors of spans embedded before (read and added to)."""
    o = options or TurnOptions()
    found = stretches(prepared, embed, o, max_count=max_count, cancel=cancel, known=known)
    return voices_of(found, o, count=count, max_count=max_count)


@dataclass(frozen=True)
class Stretches:
    """What the voices are found from (steps 1-3 and the whole-stretch vectors of step 4)."""

    turns: list[Turn]  # frame-level turns, `voice` = the window group
    groups: np.ndarray  # (g, dim): unit vector of each window group
    members: list[list[int]]  # each stretch: indices into `turns`
    long: list[int]  # the stretches embedded whole
    whole: np.ndarray  # (len(long), dim): their unit vectors
    seconds: np.ndarray  # (len(long),): their speech


def stretches(
    prepared: PreparedAudio,
    embed: EmbedWaves,
    o: TurnOptions,
    *,
    max_count: int = 10,
    cancel: Cancellation | None = None,
    known: SpanVectors | None = None,
) -> Stretches | None:
    """Steps 1-3 and the model calls of step 4; None where there is no speech to embed. `known`:
    vectors of spans embedded before (read and added to)."""
    spans = windows(prepared.speech, o)
    if not spans:
        return None
    # Within one call too: a stretch that is exactly one window is not embedded twice.
    known = known if known is not None else SpanVectors()
    # Views into the clip, not copies; the model sees them a bounded batch at a time.
    vectors = unit_rows(_embed_spans(prepared, [(a, b) for _, a, b in spans], embed, known, cancel))
    share = _own_seconds(spans)
    # A fine first grouping: enough to place the boundaries, seldom two voices in one group.
    labels = cluster(vectors, stop_distance=o.window_stop_distance, max_count=4 * max_count, weights=share)
    groups = centroids(vectors, labels, share)
    turns = _frame_turns(prepared.speech, spans, vectors @ groups.T, o)
    return _whole_stretches(prepared, turns, groups, embed, o, cancel, known)


def _own_seconds(spans: list[tuple[int, float, float]]) -> np.ndarray:
    """The speech each window stands for: its region's length shared among the region's windows."""
    regions: dict[int, list[int]] = {}
    for i, (r, _, _) in enumerate(spans):
        regions.setdefault(r, []).append(i)
    share = np.zeros(len(spans))
    for members in regions.values():
        first, last = spans[members[0]], spans[members[-1]]
        share[members] = (last[2] - first[1]) / len(members)
    return share


def _frame_turns(
    speech: Sequence[tuple[float, float]],
    spans: list[tuple[int, float, float]],
    likeness: np.ndarray,
    o: TurnOptions,
) -> list[Turn]:
    """Frame-level voices inside each region (see the module docstring), as runs."""
    by_region: dict[int, list[int]] = {}
    for i, (r, _, _) in enumerate(spans):
        by_region.setdefault(r, []).append(i)
    turns: list[Turn] = []
    for r, members in by_region.items():
        start, end = speech[r]
        frames = max(1, math.ceil((end - start) / o.frame_s - 1e-9))
        centres = start + (np.arange(frames) + 0.5) * (end - start) / frames
        a = np.array([spans[i][1] for i in members])
        b = np.array([spans[i][2] for i in members])
        mid, half = (a + b) / 2, np.maximum((b - a) / 2, 1e-3)
        # (frames, windows): triangular weight of each covering window, 0 outside it.
        weight = np.clip(1.0 - np.abs(centres[:, None] - mid[None, :]) / half[None, :], 0.0, None) + 1e-3
        weight *= (centres[:, None] >= a[None, :] - 1e-9) & (centres[:, None] <= b[None, :] + 1e-9)
        weight[weight.sum(axis=1) == 0] = 1.0  # cannot happen with windows spanning the region
        voice = ((weight @ likeness[members]) / weight.sum(axis=1, keepdims=True)).argmax(axis=1)
        bounds = start + np.arange(frames + 1) * (end - start) / frames
        runs = _runs(voice)
        runs = _absorb_short(runs, bounds, o.min_turn_s)
        turns += [Turn(int(v), float(bounds[i]), float(bounds[j])) for v, i, j in runs]
    return turns


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """``(label, first, end)`` of each run of equal labels."""
    out: list[tuple[int, int, int]] = []
    for i, v in enumerate(labels.tolist()):
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1], i + 1)
        else:
            out.append((v, i, i + 1))
    return out


def _absorb_short(
    runs: list[tuple[int, int, int]], bounds: np.ndarray, min_s: float
) -> list[tuple[int, int, int]]:
    """Runs shorter than `min_s` join the longer neighbour (repeatedly, shortest first)."""
    runs = list(runs)
    while len(runs) > 1:
        lengths = [bounds[j] - bounds[i] for _, i, j in runs]
        k = int(np.argmin(lengths))
        if lengths[k] >= min_s:
            break
        left = lengths[k - 1] if k > 0 else -1.0
        right = lengths[k + 1] if k + 1 < len(runs) else -1.0
        n = k - 1 if left >= right else k + 1
        v = runs[n][0]
        lo, hi = min(k, n), max(k, n)
        runs[lo : hi + 1] = [(v, runs[lo][1], runs[hi][2])]
        runs = _merge_runs(runs)
    return runs


def _merge_runs(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for v, i, j in runs:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1], j)
        else:
            out.append((v, i, j))
    return out


def _whole_stretches(
    prepared: PreparedAudio,
    turns: list[Turn],
    groups: np.ndarray,
    embed: EmbedWaves,
    o: TurnOptions,
    cancel: Cancellation | None,
    known: SpanVectors,
) -> Stretches:
    """Stretches embedded whole: a stretch of several seconds is a far surer sample of a voice than
    a 1.5 s window (on 8 kHz calls, windows of one caller agree hardly more than windows of two). A
    stretch is a run of consecutive turns of one first group, across the pauses between them (read
    speech pauses every second or two); those of at least `rescore_min_s` of speech are embedded."""
    members: list[list[int]] = []
    for i, t in enumerate(turns):
        if members and turns[members[-1][-1]].voice == t.voice:
            members[-1].append(i)
        else:
            members.append([i])
    speech = np.array([sum(turns[i].end - turns[i].start for i in st) for st in members])
    # A stretch wholly in audio answered before (a stream's context) is not embedded: its voice
    # is not asked for again, and it follows its group as a short one does.
    fresh = [k for k in range(len(members)) if not known.settled(turns[members[k][-1]].end)]
    long = [k for k in fresh if speech[k] >= o.rescore_min_s] or fresh or list(range(len(members)))
    whole = unit_rows(
        _embed_stretches(prepared, [[turns[i] for i in members[k]] for k in long], embed, known, cancel)
    )
    return Stretches(turns, groups, members, long, whole, speech[long])


def voices_of(found: Stretches | None, o: TurnOptions, *, count: int | None, max_count: int) -> Turns:
    """The stretches clustered into voices; a shorter stretch follows its first group's majority
    (or the voice nearest that group). Before clustering, `centring` of the clip's own mean stretch
    vector (weighted by speech) is taken from every stretch: what all of a clip's voices share (a
    telephone line, a handset) makes them alike, and removing part of it spreads them apart (all of
    it spreads one voice's own stretches too; see service/calibration.py). Voices are renumbered by
    first appearance, each with the unit mean of its stretches' own vectors (weighted by length)."""
    if found is None:
        return Turns([], np.zeros((0, 0)))
    mean = found.seconds @ found.whole / max(float(found.seconds.sum()), 1e-9)
    labels = cluster(
        found.whole - o.centring * mean,
        stop_distance=o.stop_distance,
        count=count,
        max_count=max_count,
        min_weight=o.min_voice_s,
        weights=found.seconds,
    )
    return assign(found, labels)


def assign(found: Stretches, labels: np.ndarray) -> Turns:
    """Every turn's voice from the long stretches' `labels` (see `voices_of`)."""
    turns, long, seconds = found.turns, found.long, found.seconds
    voices = centroids(found.whole, labels, seconds)
    # Each first group's voice: where most of its long stretches' speech went.
    votes = np.zeros((len(found.groups), len(voices)))
    for k, v, s in zip(long, labels.tolist(), seconds, strict=True):
        votes[turns[found.members[k][0]].voice, v] += s
    group_voice = np.where(votes.any(axis=1), votes.argmax(axis=1), (found.groups @ voices.T).argmax(axis=1))
    voice_of = dict(zip(long, labels.tolist(), strict=True))
    moved = [0] * len(turns)
    for k, members in enumerate(found.members):
        for i in members:
            moved[i] = voice_of.get(k, int(group_voice[turns[i].voice]))
    order = {old: new for new, old in enumerate(dict.fromkeys(moved))}
    out = [Turn(order[v], t.start, t.end) for t, v in zip(turns, moved, strict=True)]
    return Turns(_join(out), voices[list(order)])


def _embed_stretches(
    prepared: PreparedAudio,
    stretches: list[list[Turn]],
    embed: EmbedWaves,
    known: SpanVectors,
    cancel: Cancellation | None,
) -> np.ndarray:
    """Raw vectors of the stretches, each its turns' audio joined; one of a single turn whose span
    was embedded before (a window) is not embedded again."""
    vectors: list[np.ndarray | None] = [
        known.vectors.get(known.key(st[0].start, st[0].end)) if len(st) == 1 else None for st in stretches
    ]
    todo = [k for k, v in enumerate(vectors) if v is None]
    if todo:
        waves = [np.concatenate([prepared.segment(t.start, t.end) for t in stretches[k]]) for k in todo]
        for k, vector in zip(todo, embed(waves, cancel), strict=True):
            vectors[k] = vector
    return np.stack([v for v in vectors if v is not None])


def _join(turns: list[Turn]) -> list[Turn]:
    """Touching turns of one voice (within a region, after re-scoring) become one."""
    out: list[Turn] = []
    for t in sorted(turns, key=lambda t: t.start):
        if out and out[-1].voice == t.voice and t.start - out[-1].end <= 1e-6:
            out[-1] = Turn(t.voice, out[-1].start, t.end)
        else:
            out.append(t)
    return out
