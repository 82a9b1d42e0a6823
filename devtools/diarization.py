"""Diarization quality on built conversations (`devtools.conversations`), scored with pyannote.metrics.

DER with a 0.25 s collar (overlapped speech counted: a second voice missed is missed speech) and its
three parts (missed speech, false alarm, confusion); beside it the DER of the answer with every pause
left out (`doVad`) against the speech heard in each turn (a turn of a real call holds pauses of
several seconds that the reference counts as speech); the share of conversations whose speaker
count is right, and the share of turn changes (without overlap) found within 0.5 s: a hypothesis
change between two different voices whose end and start are both within 0.5 s of the reference's.
Runs the service's own front end, model and use case in process.
`--tune` sweeps the settings on half 0; the report is on half 1.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

from devtools.conversations import CONDITIONS, Conversation, build, conversations, telephone_source
from service.audio import MODEL_RATE
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import PreparedAudio, QualityLimits
from service.concurrency import Cancellation
from service.config import Settings
from service.diarization.service import DiarizationResult, DiarizationService, segments_of
from service.diarization.turns import TurnOptions, Turns, stretches, voices_of
from service.embedding import weights
from service.embedding.bounded import BoundedEmbedding
from service.embedding.ecapa import EcapaEmbedder
from service.enrollment.ports import EmbedWaves

COLLAR_S = 0.25
CHANGE_TOLERANCE_S = 0.5


def reference(c: Conversation, speech_only: bool = False) -> Annotation:
    """Who speaks when in `c`: its turns, or with `speech_only` the speech heard in them."""
    ref = Annotation(uri=c.name)
    for i, t in enumerate(c.speech if speech_only else c.turns):
        ref[Segment(t.start, t.end), i] = t.speaker
    return ref


def hypothesis(name: str, result: DiarizationResult) -> Annotation:
    hyp = Annotation(uri=name)
    for i, s in enumerate(result.segments):
        hyp[Segment(s.start, s.end), i] = s.speaker_id
    return hyp


def changes_found(
    c: Conversation, result: DiarizationResult, tolerance: float = CHANGE_TOLERANCE_S
) -> tuple[int, int]:
    """(reference changes found within `tolerance`, reference changes without overlap)."""
    segs = result.segments
    hyp = [(a.end, b.start) for a, b in itertools.pairwise(segs) if a.speaker_id != b.speaker_id]
    ref = c.changes()
    found = sum(any(abs(he - e) <= tolerance and abs(hs - s) <= tolerance for he, hs in hyp) for e, s in ref)
    return found, len(ref)


class CachedEmbedding:
    """The model's vectors memoised by waveform content: settings sweeps re-embed nothing twice."""

    def __init__(self, embed: EmbedWaves) -> None:
        self.embed = embed
        self.cache: dict[bytes, np.ndarray] = {}

    def __call__(self, waves: Sequence[np.ndarray], cancel: Cancellation | None = None) -> np.ndarray:
        keys = [hashlib.blake2b(w.tobytes(), digest_size=16).digest() for w in waves]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            for i, v in zip(todo, self.embed([waves[i] for i in todo], cancel), strict=True):
                self.cache[keys[i]] = v
        return np.stack([self.cache[k] for k in keys])

    def load(self, path: str) -> None:
        """Vectors memoised by an earlier run (same model and front end), if `path` exists."""
        try:
            with open(path, "rb") as fh:
                self.cache.update(pickle.load(fh))
        except FileNotFoundError:
            pass

    def save(self, path: str) -> None:
        with open(path, "wb") as fh:
            pickle.dump(self.cache, fh)


class CountedEmbedding:
    """Seconds of audio asked of the model (as the service would embed them, memoised or not)."""

    def __init__(self, embed: Any) -> None:
        self.embed = embed
        self.seconds = 0.0

    def __call__(self, waves: Sequence[np.ndarray], cancel: Cancellation | None = None) -> np.ndarray:
        self.seconds += sum(len(w) for w in waves) / MODEL_RATE
        return np.asarray(self.embed(waves, cancel))


@dataclass
class Harness:
    frontend: AudioFrontEnd
    embed: Any

    @classmethod
    def load(
        cls,
        embedder: EcapaEmbedder | None = None,
        cached: bool = False,
        calls: list[list[np.ndarray]] | None = None,
    ) -> Harness:
        """The service's front end and bounded model calls around `embedder` (the bundled model at
        the service's default precision if None); `cached` memoises vectors for settings sweeps;
        `calls`, if given, collects the waveforms of every model call."""
        if embedder is None:
            embedder = EcapaEmbedder(weights.resolve(None), "cpu", "auto")
            embedder.warmup()
        model = embedder.embed_batch
        if calls is not None:

            def model(waves: Sequence[np.ndarray], inner: Any = embedder.embed_batch) -> np.ndarray:
                calls.append(list(waves))
                return np.asarray(inner(waves))

        embed: Any = BoundedEmbedding(model)
        audio = Settings().audio  # the speech detector as the service's settings have it
        frontend = AudioFrontEnd(
            max_seconds=3600,
            decode_timeout_s=120,
            vad_threshold=audio.vad_threshold,
            vad_narrowband_threshold=audio.vad_narrowband_threshold,
        )
        return cls(frontend, CachedEmbedding(embed) if cached else embed)

    def service(self, options: TurnOptions) -> DiarizationService:
        return DiarizationService(self.frontend, self.embed, None, QualityLimits(0.0, 1.0, -np.inf), options)

    def prepare(self, c: Conversation) -> PreparedAudio:
        return self.frontend.load(AudioInput(c.flac(), "FLAC", c.rate))


def score(
    harness: Harness,
    items: Sequence[tuple[str, Conversation, PreparedAudio]],
    options: TurnOptions,
    known_count: bool = False,
) -> dict[str, Any]:
    """DER, speaker-count accuracy and turn changes found, per condition and pooled."""
    service = harness.service(options)
    results, heard = [], []
    for _, c, prepared in items:
        count = len(c.speakers) if known_count else None
        results.append(service.diarize(0, prepared, speakers=count, max_speakers=10))
        heard.append(service.diarize(0, prepared, speakers=count, max_speakers=10, do_vad=True))
    return tally(items, results, heard)


def tally(
    items: Sequence[tuple[str, Conversation, PreparedAudio]],
    results: Sequence[DiarizationResult],
    heard: Sequence[DiarizationResult] | None = None,
) -> dict[str, Any]:
    """The figures of `score` for the answers `results` to `items`; with `heard` (the same answers
    with every pause left out, `doVad`) also their DER against the speech heard in each turn."""
    by: dict[str, dict[str, Any]] = {}
    for k, ((condition, c, _), result) in enumerate(zip(items, results, strict=True)):
        for key in (condition, "all"):
            entry = by.setdefault(
                key,
                {
                    "der": DiarizationErrorRate(collar=COLLAR_S),
                    "der_speech": DiarizationErrorRate(collar=COLLAR_S),
                    "n": 0,
                    "count_ok": 0,
                    "changes": 0,
                    "found": 0,
                },
            )
            entry["der"](reference(c), hypothesis(c.name, result))
            if heard is not None:
                entry["der_speech"](reference(c, speech_only=True), hypothesis(c.name, heard[k]))
            entry["n"] += 1
            entry["count_ok"] += int(result.num_speakers == len(c.speakers))
            found, total = changes_found(c, result)
            entry["found"] += found
            entry["changes"] += total
    return {
        k: {
            "conversations": e["n"],
            "der": round(100 * abs(e["der"]), 2),
            **_components(e["der"]),
            **({"der_speech": round(100 * abs(e["der_speech"]), 2)} if heard is not None else {}),
            "count_right": round(100 * e["count_ok"] / e["n"], 1),
            "changes_within_0.5s": round(100 * e["found"] / max(1, e["changes"]), 1),
        }
        for k, e in by.items()
    }


def _components(der: DiarizationErrorRate) -> dict[str, float]:
    """DER's three parts, each in % of the reference speech: speech missed (a second voice in overlap
    included), speech where there is none, and speech given to the wrong voice."""
    total = max(float(der.accumulated_["total"]), 1e-9)
    return {
        name: round(100 * float(der.accumulated_[part]) / total, 2)
        for name, part in (
            ("missed", "missed detection"),
            ("false_alarm", "false alarm"),
            ("confusion", "confusion"),
        )
    }


def prepared_set(
    harness: Harness, half: int, per_condition: int
) -> list[tuple[str, Conversation, PreparedAudio]]:
    return [(cond.name, c, harness.prepare(c)) for cond, c in conversations(half, per_condition)]


def tune(harness: Harness, per_condition: int) -> list[dict[str, Any]]:
    """The voice rule's grid on half 0: the share of the clip's mean stretch vector removed, the stop
    distance between voices, a voice's least speech. The turns and the stretches' vectors do not
    depend on these (window groups at the calibrated stop distance), so they are found once per
    conversation and each setting only re-clusters them."""
    items = prepared_set(harness, 0, per_condition)
    found = [stretches(prepared, harness.embed, TurnOptions()) for _, _, prepared in items]
    rows = []
    for centring, stop, min_voice in itertools.product(
        [0.0, 0.2, 0.3, 0.4, 0.5], [0.65, 0.75, 0.8, 0.85, 0.875, 0.9, 0.95], [1.5, 2.0, 3.0]
    ):
        options = replace(TurnOptions(), centring=centring, stop_distance=stop, min_voice_s=min_voice)
        voices = [voices_of(f, options, count=None, max_count=10) for f in found]
        results = [answer(v) for v in voices]
        heard = [answer(v, join_pauses=False) for v in voices]
        rows.append(
            {
                "centring": centring,
                "stop_distance": stop,
                "min_voice_s": min_voice,
                **tally(items, results, heard),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def tune_windows(harness: Harness, per_condition: int, cache: str | None = None) -> list[dict[str, Any]]:
    """The first grouping's stop distance on half 0, the voice rule as calibrated. Every setting
    re-runs steps 1-4 (the stretches follow the window groups); the model's vectors are memoised (and
    kept in `cache` between runs), so a setting only embeds the stretches no setting before it had.
    Each row also gives the seconds of audio the model is asked for, as the service embeds them."""
    items = prepared_set(harness, 0, per_condition)
    counted = CountedEmbedding(harness.embed)
    rows = []
    for stop in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55):
        options = replace(TurnOptions(), window_stop_distance=stop)
        counted.seconds = 0.0
        found = [stretches(prepared, counted, options) for _, _, prepared in items]
        voices = [voices_of(f, options, count=None, max_count=10) for f in found]
        results = [answer(v) for v in voices]
        heard = [answer(v, join_pauses=False) for v in voices]
        rows.append(
            {
                "window_stop_distance": stop,
                "model_s": round(counted.seconds, 1),
                **tally(items, results, heard),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        if cache and isinstance(harness.embed, CachedEmbedding):
            harness.embed.save(cache)
    return rows


def answer(found: Turns, join_pauses: bool = True) -> DiarizationResult:
    """The use case's answer for `found` with no voice named (`DiarizationService.diarize`; every
    pause left out unless `join_pauses`, as `doVad` does)."""
    names = [f"speaker_{k + 1}" for k in range(found.count)]
    segments = segments_of(found, names, join_pauses=join_pauses)
    return DiarizationResult(num_speakers=len({s.speaker_id for s in segments}), segments=segments)


def long_call(half: int = 1, minutes: float = 10.0) -> Conversation:
    """A two-person telephone call of `minutes` (8 kHz, eval-telephone callers, no overlap), each
    caller's turns from one call of theirs (looped: no call in the set is that long)."""
    c = build(
        telephone_source(half), seed=0, speakers=2, overlap=False, turns=int(minutes * 20), one_call=True
    )
    end = int(minutes * 60 * c.rate)
    turns = [replace(t, end=min(t.end, minutes * 60)) for t in c.turns if t.start < minutes * 60]
    return Conversation(f"call-{minutes:g}min", c.samples[:end], c.rate, turns, c.loops)


def time_call(minutes: float) -> dict[str, Any]:
    """Wall time of one long call through the front end (decode, resample, VAD) and the use case;
    the baseline, in the same run: the model alone, called again on exactly the batches of audio
    the use case gave it (the ratio is what the rest of the work costs on top of the model)."""
    embedder = EcapaEmbedder(weights.resolve(None), "cpu", "auto")
    embedder.warmup()
    calls: list[list[np.ndarray]] = []
    harness = Harness.load(embedder, calls=calls)
    c = long_call(minutes=minutes)
    data = c.flac()
    started = time.perf_counter()
    prepared = harness.frontend.load(AudioInput(data, "FLAC", c.rate))
    loaded = time.perf_counter()
    result = harness.service(TurnOptions()).diarize(0, prepared)
    done = time.perf_counter()
    for waves in calls:
        embedder.embed_batch(waves)
    forward_s = time.perf_counter() - done
    der = DiarizationErrorRate(collar=COLLAR_S)(reference(c), hypothesis(c.name, result))
    return {
        "model_calls": len(calls),
        "model_audio_s": round(sum(len(w) for waves in calls for w in waves) / MODEL_RATE, 1),
        "model_alone_s": round(forward_s, 1),
        "total_over_model_alone": round((done - started) / forward_s, 2),
        "audio_s": round(c.duration_s, 1),
        "prepare_s": round(loaded - started, 1),
        "diarize_s": round(done - loaded, 1),
        "total_s": round(done - started, 1),
        "num_speakers": result.num_speakers,
        "calls_looped": c.loops,
        "der": round(100 * der, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-condition", type=int, default=8, help="conversations per condition")
    parser.add_argument("--tune", action="store_true", help="sweep the settings on half 0 instead")
    parser.add_argument("--tune-windows", action="store_true", help="sweep the first grouping on half 0")
    parser.add_argument("--cache", help="keep the model's vectors in this file between runs")
    parser.add_argument("--half", type=int, default=1, choices=(0, 1))
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--time-call", type=float, metavar="MINUTES", help="only time one call this long")
    args = parser.parse_args(argv)
    if args.time_call:
        print(json.dumps(time_call(args.time_call), indent=2))
        return 0
    if args.tune_windows:
        harness = Harness.load(cached=True)
        if args.cache:
            harness.embed.load(args.cache)
        tune_windows(harness, args.per_condition, args.cache)
        return 0
    if args.tune:
        harness = Harness.load(cached=True)
        tune(harness, args.per_condition)
        return 0
    # Cached: the pass with the count given re-embeds nothing (the turns are found before the count
    # matters).
    harness = Harness.load(cached=True)
    items = prepared_set(harness, args.half, args.per_condition)
    started = time.perf_counter()
    found = score(harness, items, TurnOptions())
    given = score(harness, items, TurnOptions(), known_count=True)
    loops: dict[str, int] = {}
    for condition, c, _ in items:
        loops[condition] = loops.get(condition, 0) + c.loops
    out = {
        "half": args.half,
        "conditions": [c.name for c in CONDITIONS],
        "calls_looped": loops,
        "count_found": found,
        "count_given": given,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0
