"""Measure the audio and enrollment thresholds of `service/calibration.py` on real speech.

Every clip of an eval-speech manifest goes through the service's own decoder, audio pipeline and
ECAPA model, exactly as a request would, under three channel conditions:

* ``16k``      the original file (16 kHz);
* ``8k-flac``  resampled to 8 kHz and sent as 8 kHz FLAC (the hosted API's example format);
* ``8k-mulaw`` resampled to 8 kHz, band-limited to 300-3400 Hz and sent as raw G.711 mu-law.

The first clips of every enrollable speaker also get near-copies (MP3, added white noise, a trimmed
start, lower gain) for the duplicate and spread checks. The report covers:

1. same- versus different-speaker cosine and EER, per condition;
2. (the enrollment voice check is the decision rule's: see scripts/calibrate_decisions.py);
3. the near-duplicate gate (near-copies versus the closest distinct utterances of a speaker);
4. the spread that `Complete` asks of a speaker's samples;
5. the audio gates (speech seconds, SNR, clipping) over every clip;

with a proposed value for each threshold. The speakers are split in two halves by a hash of their
label (`devtools.decisions.half_of`, as for the decision rule): sections 3-5 propose each value on
half 0 only, and section 6 reports the current defaults and those proposals on half 1, the
speakers that chose nothing. Embeddings are cached in ``--cache-dir`` (keyed by the
model's checksum and each file's content), so a rerun only redoes the statistics.

    python -m scripts.calibrate [--manifest PATH] [--out results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from devtools.channels import TELEPHONE_RATE, encode, resample
from devtools.clips import SetClip, set_clips
from devtools.decisions import half_of
from devtools.sets import EVAL_SPEECH
from service import calibration as cal
from service.audio.band import band_pass
from service.audio.decode import DecodedAudio, decode
from service.audio.pipeline import PreparedAudio, SpeechDetector, prepare
from service.config import AudioSettings
from service.embedding.ecapa import EcapaEmbedder
from service.embedding.weights import resolve
from service.enrollment.scoring import unit_rows
from service.tools import metrics
from service.tools.inputs import InputError


def distribution(values: ArrayLike, percentiles: Sequence[float] = (1, 5, 50, 95, 99)) -> dict[str, float]:
    """n, min, the given percentiles (as "p5"...), max and mean of the finite values; {"n": 0} if none."""
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    if not data.size:
        return {"n": 0}
    out: dict[str, float] = {"n": int(data.size), "min": float(data.min())}
    for p in percentiles:
        out[f"p{p:g}"] = float(np.percentile(data, p))
    out["max"] = float(data.max())
    out["mean"] = float(data.mean())
    return out


log = logging.getLogger("calibrate")

DEFAULT_MANIFEST = EVAL_SPEECH / "manifest.csv"
DEFAULT_CACHE = Path("/tmp/calib-cache")

CONDITIONS = ("16k", "8k-flac", "8k-mulaw")
COPIES = ("mp3", "8k-flac", "noise-20db", "noise-10db", "trim-0.5s", "gain-0.5")
PAIR_SCENARIOS = (
    ("16k", "16k"),
    ("8k-flac", "8k-flac"),
    ("8k-mulaw", "8k-mulaw"),
    ("16k", "8k-flac"),
    ("16k", "8k-mulaw"),
)
# (condition of the enrolled samples, condition of the new sample)
GATE_SCENARIOS = (
    ("16k", "16k"),
    ("8k-flac", "8k-flac"),
    ("8k-mulaw", "8k-mulaw"),
    ("16k", "8k-flac"),
    ("8k-flac", "16k"),
    ("16k", "8k-mulaw"),
    ("8k-mulaw", "16k"),
)
ENROLLED_COUNTS = (1, 2)
MISMATCH_GRID = tuple(round(0.10 + 0.05 * i, 2) for i in range(9))

MIN_CLIPS_ENROLLABLE = 3
SPREAD_SET_SIZE = 3
SPREAD_MIN_SPEECH_S = 4.0
MP3_BIT_RATE = 64_000
TRIM_S = 0.5
GAIN = 0.5
MAX_GENUINE_REFUSAL = 0.01  # the mismatch gate may refuse at most this share of genuine samples
DUPLICATE_MARGIN = 0.02  # the duplicate gate sits this far above the closest distinct utterances
SPREAD_MARGIN = 0.9  # MIN_SPREAD at most this share of the narrowest set of distinct utterances
CACHE_SAVE_EVERY = 20


# --- data ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    vector: np.ndarray  # L2-normalised embedding; NaN where no speech was found
    speech_seconds: float
    snr_db: float
    clipped_fraction: float


def enrollable_speakers(clips: Sequence[SetClip]) -> dict[str, list[int]]:
    """Speaker -> clip indices in manifest order, for speakers with enough clips to enroll."""
    by_speaker: dict[str, list[int]] = {}
    for index, clip in enumerate(clips):
        by_speaker.setdefault(clip.speaker, []).append(index)
    return {spk: idx for spk, idx in by_speaker.items() if len(idx) >= MIN_CLIPS_ENROLLABLE}


# --- channel simulation ------------------------------------------------------------------------------


def mulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 mu-law (the 14-bit segment encoder with bias 0x84) of float samples in [-1, 1]."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return bytes(np.asarray(~(sign | (exponent << 4) | mantissa) & 0xFF, dtype=np.uint8).tobytes())


Request = tuple[bytes, str, int | None]  # payload, stated encoding, stated sample rate


def as_flac(samples: np.ndarray, rate: int) -> Request:
    return encode(samples, rate, "flac", "flac"), "FLAC", None


def flac_8k(samples: np.ndarray, rate: int, speech_power: float, seed: int) -> Request:
    return as_flac(resample(samples, rate, TELEPHONE_RATE), TELEPHONE_RATE)


def mulaw_8k(samples: np.ndarray, rate: int, speech_power: float, seed: int) -> Request:
    narrow = band_pass(resample(samples, rate, TELEPHONE_RATE), TELEPHONE_RATE)
    return mulaw_encode(narrow), "MULAW", TELEPHONE_RATE


def mp3(samples: np.ndarray, rate: int, speech_power: float, seed: int) -> Request:
    return encode(samples, rate, "mp3", "libmp3lame", MP3_BIT_RATE), "MP3", None


def white_noise(samples: np.ndarray, rate: int, speech_power: float, seed: int, snr_db: float) -> Request:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(samples)) * math.sqrt(speech_power / 10 ** (snr_db / 10))
    return as_flac(samples + noise.astype(np.float32), rate)


def trimmed(samples: np.ndarray, rate: int, speech_power: float, seed: int) -> Request:
    return as_flac(samples[int(TRIM_S * rate) :], rate)


def quieter(samples: np.ndarray, rate: int, speech_power: float, seed: int) -> Request:
    return as_flac(samples * GAIN, rate)


VARIANTS: dict[str, Callable[[np.ndarray, int, float, int], Request]] = {
    "8k-flac": flac_8k,
    "8k-mulaw": mulaw_8k,
    "mp3": mp3,
    "noise-20db": partial(white_noise, snr_db=20.0),
    "noise-10db": partial(white_noise, snr_db=10.0),
    "trim-0.5s": trimmed,
    "gain-0.5": quieter,
}
# Part of every cache key, so changing how a variant is made invalidates its cached vectors.
VARIANT_TAGS = {
    "16k": "16k",
    "8k-flac": "8k-flac",
    "8k-mulaw": "8k-mulaw-bp300-3400",
    "mp3": f"mp3-{MP3_BIT_RATE // 1000}k",
    "noise-20db": "noise-20db-speech",
    "noise-10db": "noise-10db-speech",
    "trim-0.5s": f"trim-{TRIM_S}s",
    "gain-0.5": f"gain-{GAIN}",
}


# --- measuring -------------------------------------------------------------------------------------


class EmbeddingCache:
    """Measurements keyed by '<file sha1>:<variant tag>' in one .npz file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Measurement] = {}
        self._unsaved = 0
        if path.is_file():
            with np.load(path) as data:
                for key, vector, stats in zip(data["keys"], data["vectors"], data["stats"], strict=True):
                    self.entries[str(key)] = Measurement(vector, *(float(s) for s in stats))

    def get(self, key: str) -> Measurement | None:
        return self.entries.get(key)

    def put(self, key: str, measurement: Measurement) -> None:
        self.entries[key] = measurement
        self._unsaved += 1
        if self._unsaved >= CACHE_SAVE_EVERY:
            self.save()

    def save(self) -> None:
        if not self._unsaved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.entries)
        temporary = self.path.with_name(self.path.stem + ".partial.npz")
        np.savez(
            temporary,
            keys=np.array(keys),
            vectors=np.stack([self.entries[k].vector for k in keys]).astype(np.float32),
            stats=np.array(
                [(m.speech_seconds, m.snr_db, m.clipped_fraction) for m in (self.entries[k] for k in keys)],
                dtype=np.float64,
            ),
        )
        os.replace(temporary, self.path)
        self._unsaved = 0


class Measurer:
    """Runs clips and their variants through decode -> prepare -> ECAPA, through the cache."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        self.root = root
        self.settings = AudioSettings()
        self.detector = SpeechDetector(self.settings.vad_threshold, self.settings.vad_narrowband_threshold)
        files = resolve(None)
        self.model_sha256 = files.sha256
        self.embedder = EcapaEmbedder(files, "cpu", "fp32")
        self.cache = EmbeddingCache(cache_dir / f"embeddings-{files.sha256[:16]}.npz")
        self.computed = 0

    def measure(self, clip: SetClip, variants: Sequence[str]) -> dict[str, Measurement]:
        data = (self.root / clip.path).read_bytes()
        digest = hashlib.sha1(data).hexdigest()[:20]
        keys = {v: f"{digest}:{VARIANT_TAGS[v]}" for v in variants}
        found = {v: m for v, k in keys.items() if (m := self.cache.get(k)) is not None}
        missing = [v for v in variants if v not in found]
        if not missing:
            return found
        encoding = "WAV" if clip.path.lower().endswith(".wav") else "FLAC"
        original = self._decode((data, encoding, None))
        prepared = prepare(original, self.detector)
        samples = original.samples.mean(axis=0).astype(np.float32)
        power = speech_power(samples, original.sample_rate, prepared)
        for variant in missing:
            if variant == "16k":
                result = self._measure_prepared(prepared)
            else:
                request = VARIANTS[variant](samples, original.sample_rate, power, int(digest[:8], 16))
                result = self._measure_prepared(prepare(self._decode(request), self.detector))
            self.cache.put(keys[variant], result)
            found[variant] = result
            self.computed += 1
        return found

    def _decode(self, request: Request) -> DecodedAudio:
        payload, encoding, rate = request
        return decode(
            payload,
            encoding,
            rate,
            max_seconds=self.settings.max_seconds,
            timeout_s=self.settings.decode_timeout_s,
        )

    def _measure_prepared(self, prepared: PreparedAudio) -> Measurement:
        wave = prepared.speech_wave()
        if len(wave) < self.embedder.sample_rate // 10:
            vector = np.full(self.embedder.dim, np.nan, dtype=np.float32)
        else:
            raw = self.embedder.embed(wave).astype(np.float64)
            vector = (raw / np.linalg.norm(raw)).astype(np.float32)
        return Measurement(vector, prepared.speech_seconds, prepared.snr_db, prepared.clipped_fraction)


def speech_power(samples: np.ndarray, rate: int, prepared: PreparedAudio) -> float:
    """Mean power of the clip inside its speech regions (the whole clip if none were found)."""
    parts = [samples[int(start * rate) : int(end * rate)] for start, end in prepared.speech]
    speech = np.concatenate(parts) if parts else samples
    centred = speech.astype(np.float64) - float(samples.mean())
    return float(np.mean(centred**2)) if centred.size else 0.0


def measure_all(
    measurer: Measurer, clips: Sequence[SetClip], indices: Sequence[int], variants: Sequence[str], label: str
) -> dict[str, dict[int, Measurement]]:
    out: dict[str, dict[int, Measurement]] = {v: {} for v in variants}
    started = time.monotonic()
    for done, index in enumerate(indices, start=1):
        for variant, measurement in measurer.measure(clips[index], variants).items():
            out[variant][index] = measurement
        if done % 25 == 0 or done == len(indices):
            log.info(
                "%s: %d/%d clips, %d new embeddings, %.0f s",
                label,
                done,
                len(indices),
                measurer.computed,
                time.monotonic() - started,
            )
    measurer.cache.save()
    return out


def matrix(measurements: dict[int, Measurement], count: int, dim: int) -> np.ndarray:
    """Row i = clip i's vector; NaN rows for clips not measured or without speech."""
    rows = np.full((count, dim), np.nan, dtype=np.float64)
    for index, measurement in measurements.items():
        rows[index] = measurement.vector
    return rows


# --- statistics ------------------------------------------------------------------------------------


def spread(vectors: np.ndarray) -> float:
    """Mean over samples of 1 - cosine(sample, normalised centroid)."""
    centroid = unit_rows(vectors.mean(axis=0))
    return float(np.mean(1.0 - vectors @ centroid))


def pair_scores(
    first: np.ndarray, second: np.ndarray, clips: Sequence[SetClip], same_condition: bool
) -> dict[str, np.ndarray]:
    """Cosines of pairs of different clips: same speaker, same speaker across sessions, different."""
    speakers = np.array([c.speaker for c in clips])
    sessions = np.array([c.session for c in clips])
    scores = first @ second.T
    if same_condition:
        pairs = np.triu(np.ones_like(scores, dtype=bool), k=1)
    else:
        pairs = ~np.eye(len(clips), dtype=bool)
    pairs &= np.isfinite(scores)
    same = speakers[:, None] == speakers[None, :]
    other_session = sessions[:, None] != sessions[None, :]
    return {
        "same": scores[pairs & same],
        "same_cross_session": scores[pairs & same & other_session],
        "different": scores[pairs & ~same],
    }


def pairwise_section(vectors: dict[str, np.ndarray], clips: Sequence[SetClip]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for enrol, probe in PAIR_SCENARIOS:
        scores = pair_scores(vectors[enrol], vectors[probe], clips, enrol == probe)
        section[scenario_name(enrol, probe)] = {
            "same_speaker": distribution(scores["same"]),
            "same_speaker_cross_session": distribution(scores["same_cross_session"]),
            "different_speaker": distribution(scores["different"]),
            **asdict(metrics.eer(scores["same"], scores["different"])),
            "eer_cross_session": (
                metrics.eer(scores["same_cross_session"], scores["different"]).eer
                if scores["same_cross_session"].size
                else None
            ),
        }
    return section


def scenario_name(enrol: str, probe: str) -> str:
    return enrol if enrol == probe else f"{enrol} vs {probe}"


def gate_trials(
    enrolled: np.ndarray,
    probes: np.ndarray,
    clips: Sequence[SetClip],
    speakers: dict[str, list[int]],
    count: int,
) -> dict[str, np.ndarray]:
    """Cosines to the centroid of a speaker's first `count` clips: later own clips vs other speakers."""
    genuine: list[float] = []
    cross_session: list[float] = []
    impostor: list[float] = []
    for speaker, indices in speakers.items():
        centroid = unit_rows(enrolled[indices[:count]].mean(axis=0))
        sessions = {clips[i].session for i in indices[:count]}
        for index in indices[count:]:
            score = float(probes[index] @ centroid)
            genuine.append(score)
            if clips[index].session not in sessions:
                cross_session.append(score)
        others = [i for i, c in enumerate(clips) if c.speaker != speaker]
        impostor.extend((probes[others] @ centroid).tolist())
    return {
        "genuine": finite(genuine),
        "genuine_cross_session": finite(cross_session),
        "impostor": finite(impostor),
    }


def finite(values: Sequence[float]) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64)
    return data[np.isfinite(data)]


def gate_rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict[str, Any]:
    """The gate at `threshold`: genuine samples it refuses (FR), impostor samples it lets in (FA)."""
    return metrics.rates_at(genuine, impostor, threshold).as_dict()


def long_clips(speakers: dict[str, list[int]], original: dict[int, Measurement]) -> dict[str, list[int]]:
    """Each speaker's clips with enough speech for the spread check, in manifest order."""
    return {
        speaker: [i for i in indices if original[i].speech_seconds >= SPREAD_MIN_SPEECH_S]
        for speaker, indices in speakers.items()
    }


def spread_clips(speakers: dict[str, list[int]], original: dict[int, Measurement]) -> dict[str, list[int]]:
    """Each speaker's first clips with enough speech (topped up with its longest others)."""
    chosen: dict[str, list[int]] = {}
    usable_by_speaker = long_clips(speakers, original)
    for speaker, indices in speakers.items():
        usable = usable_by_speaker[speaker]
        picked = usable[:SPREAD_SET_SIZE]
        rest = sorted((i for i in indices if i not in picked), key=lambda i: -original[i].speech_seconds)
        chosen[speaker] = (picked + rest)[:SPREAD_SET_SIZE]
    return chosen


def duplicate_section(
    vectors: dict[str, np.ndarray],
    copies: dict[str, dict[int, Measurement]],
    clips: Sequence[SetClip],
    speakers: dict[str, list[int]],
    copy_clips: dict[str, list[int]],
    report_at: Sequence[float] = (),
) -> dict[str, Any]:
    """Near-copies against distinct utterances of one speaker; a proposed DUPLICATE_COSINE, and how
    the current value and each of `report_at` fare on these speakers."""
    original = vectors["16k"]
    copy_scores: dict[str, list[float]] = {v: [] for v in COPIES}
    for indices in copy_clips.values():
        for index in indices:
            for variant in COPIES:
                copy_scores[variant].append(float(copies[variant][index].vector @ original[index]))
    every_copy = finite([s for scores in copy_scores.values() for s in scores])
    distinct: dict[str, Any] = {}
    closest: list[dict[str, Any]] = []
    pairs: list[float] = []  # every pair of different clips of one speaker, every condition
    for condition in CONDITIONS:
        maxima: dict[str, float] = {}
        for speaker, indices in speakers.items():
            block = vectors[condition][indices] @ vectors[condition][indices].T
            rows, cols = np.triu_indices(len(indices), k=1)
            upper = np.where(np.isfinite(block[rows, cols]), block[rows, cols], -np.inf)
            pairs.extend(float(v) for v in upper if np.isfinite(v))
            best = int(np.argmax(upper))
            if not np.isfinite(upper[best]):
                continue
            maxima[speaker] = float(upper[best])
            a, b = rows[best], cols[best]
            closest.append(
                {
                    "condition": condition,
                    "speaker": speaker,
                    "cosine": maxima[speaker],
                    "clips": [clips[indices[a]].path, clips[indices[b]].path],
                }
            )
        distinct[condition] = {
            "per_speaker_max": distribution(list(maxima.values())),
            "by_speaker": maxima,
        }
    highest_distinct = max(d["per_speaker_max"]["max"] for d in distinct.values())
    lowest_copy = float(every_copy.min())
    if lowest_copy - highest_distinct > 2 * DUPLICATE_MARGIN:
        value = math.floor((lowest_copy + highest_distinct) / 2 * 200) / 200
        rule = "midpoint between the highest distinct-utterance cosine and the lowest near-copy cosine"
    else:
        value = math.ceil((highest_distinct + DUPLICATE_MARGIN) * 200) / 200
        rule = (
            f"highest distinct-utterance cosine + {DUPLICATE_MARGIN:g}, rounded up to 0.005 "
            "(the distributions overlap)"
        )

    def caught(threshold: float) -> dict[str, float]:
        return {v: float(np.mean(np.asarray(s) >= threshold)) for v, s in copy_scores.items()}

    def at(threshold: float) -> dict[str, Any]:
        refused = int(np.sum(np.asarray(pairs) >= threshold))
        return {
            "value": threshold,
            "near_copies_caught": caught(threshold),
            "distinct_pairs_refused": metrics.Rate(refused, len(pairs)).as_dict(),
        }

    return {
        "near_copy": {v: distribution(s) for v, s in copy_scores.items()},
        "near_copy_all": distribution(every_copy),
        "distinct_same_speaker": distinct,
        "closest_distinct_pairs": sorted(closest, key=lambda c: -c["cosine"])[:5],
        "highest_distinct": highest_distinct,
        "lowest_near_copy": lowest_copy,
        "current": at(cal.DUPLICATE_COSINE),
        "proposal": {**at(value), "rule": rule},
        "at": [at(v) for v in report_at],
    }


def spread_section(
    vectors: dict[str, np.ndarray],
    copies: dict[str, dict[int, Measurement]],
    copy_clips: dict[str, list[int]],
    long_clips: dict[str, list[int]],
    duplicate_cosine: float,
    report_at: Sequence[float] = (),
) -> dict[str, Any]:
    """Spread of distinct utterances (first clips, and every triple of long clips) vs near-copy sets.

    A near-copy set counts as passing the duplicate gate at `duplicate_cosine` when every pairwise
    cosine in it is below that value: for such sets the spread is the last check.
    """
    distinct: dict[str, Any] = {}
    triples: list[float] = []  # every triple of long clips, all conditions
    for condition in CONDITIONS:
        rows = vectors[condition]
        first = {
            speaker: spread(rows[indices])
            for speaker, indices in copy_clips.items()
            if np.isfinite(rows[indices]).all()
        }
        every = [
            spread(rows[list(group)])
            for indices in long_clips.values()
            for group in combinations(indices, SPREAD_SET_SIZE)
            if np.isfinite(rows[list(group)]).all()
        ]
        triples.extend(every)
        distinct[condition] = {
            "first_clips": distribution(list(first.values())),
            "every_triple": distribution(every),
            "by_speaker": first,
        }
    by_pair: dict[str, list[float]] = {}
    past_gate: list[float] = []
    for indices in copy_clips.values():
        for index in indices:
            for a, b in combinations(COPIES, 2):
                group = np.stack([vectors["16k"][index], copies[a][index].vector, copies[b][index].vector])
                value = spread(group)
                by_pair.setdefault(f"{a}+{b}", []).append(value)
                if np.max((group @ group.T)[np.triu_indices(len(group), k=1)]) < duplicate_cosine:
                    past_gate.append(value)
    copy_sets = np.asarray([s for values in by_pair.values() for s in values])
    distinct_sets = np.asarray(triples + [s for d in distinct.values() for s in d["by_speaker"].values()])
    distinct_min, copy_max = float(distinct_sets.min()), float(copy_sets.max())
    if distinct_min > copy_max:
        value = math.floor((copy_max + distinct_min) / 2 * 1000) / 1000
        rule = "midpoint between the widest near-copy set and the narrowest set of distinct utterances"
    else:
        value = math.floor(distinct_min * SPREAD_MARGIN * 1000) / 1000
        rule = f"{SPREAD_MARGIN:.0%} of the narrowest set of distinct utterances (the distributions overlap)"

    def verdict(threshold: float) -> dict[str, float]:
        return {
            "value": threshold,
            "distinct_sets_refused": int(np.sum(distinct_sets < threshold)),
            "distinct_sets": int(distinct_sets.size),
            "near_copy_sets_passing": int(np.sum(copy_sets >= threshold)),
            "near_copy_sets": int(copy_sets.size),
            "near_copy_sets_passing_both_gates": int(np.sum(np.asarray(past_gate) >= threshold)),
        }

    return {
        "distinct_sets": distinct,
        "near_copy_sets": distribution(copy_sets),
        "near_copy_sets_by_pair": {pair: distribution(v) for pair, v in by_pair.items()},
        "near_copy_sets_past_duplicate_gate": distribution(past_gate),
        "duplicate_cosine": duplicate_cosine,
        "current": verdict(cal.MIN_SPREAD),
        "proposal": {**verdict(value), "rule": rule},
        "at": [verdict(v) for v in report_at],
    }


def audio_section(
    measured: dict[str, dict[int, Measurement]],
    clips: Sequence[SetClip],
    report_at: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The audio gates over every clip measured; with `report_at` (limits of the same keys), the
    clips of each variant those limits refuse too."""
    limits = {
        "min_speech_seconds": cal.MIN_SPEECH_SECONDS,
        "min_snr_db": cal.MIN_SNR_DB,
        "max_clipped_fraction": cal.MAX_CLIPPED_FRACTION,
    }
    section: dict[str, Any] = {"current_defaults": limits}
    lowest = {"speech_seconds": math.inf, "snr_db": math.inf}
    highest_clipped = 0.0
    for variant, by_clip in measured.items():
        items = sorted(by_clip.items())
        refused: list[dict[str, Any]] = []
        for index, m in items:
            reasons = []
            if m.speech_seconds < limits["min_speech_seconds"]:
                reasons.append(f"speech {m.speech_seconds:.2f} s")
            if m.clipped_fraction > limits["max_clipped_fraction"]:
                reasons.append(f"clipped {100 * m.clipped_fraction:.2f} %")
            if m.snr_db < limits["min_snr_db"]:
                reasons.append(f"SNR {m.snr_db:.1f} dB")
            if reasons:
                refused.append({"clip": clips[index].path, "why": reasons})
        if variant in CONDITIONS:
            lowest["speech_seconds"] = min(lowest["speech_seconds"], *(m.speech_seconds for _, m in items))
            lowest["snr_db"] = min(lowest["snr_db"], *(m.snr_db for _, m in items))
            highest_clipped = max(highest_clipped, *(m.clipped_fraction for _, m in items))
        other = report_at or limits
        refused_at = sum(
            m.speech_seconds < other["min_speech_seconds"]
            or m.clipped_fraction > other["max_clipped_fraction"]
            or m.snr_db < other["min_snr_db"]
            for _, m in items
        )
        section[variant] = {
            "refused_at_report_limits": refused_at if report_at else None,
            "clips": len(items),
            "speech_seconds": distribution([m.speech_seconds for _, m in items]),
            "snr_db": distribution([m.snr_db for _, m in items]),
            "clipped_fraction": distribution([m.clipped_fraction for _, m in items]),
            "refused_by_defaults": refused,
        }
    section["proposal"] = {
        "min_speech_seconds": min(cal.MIN_SPEECH_SECONDS, math.floor(lowest["speech_seconds"] * 10) / 10),
        "min_snr_db": min(cal.MIN_SNR_DB, math.floor(lowest["snr_db"]) - 1.0),
        "max_clipped_fraction": max(cal.MAX_CLIPPED_FRACTION, math.ceil(highest_clipped * 1000) / 1000),
        "lowest_speech_seconds": lowest["speech_seconds"],
        "lowest_snr_db": lowest["snr_db"],
        "highest_clipped_fraction": highest_clipped,
    }
    return section


# --- report ----------------------------------------------------------------------------------------


def fmt(d: dict[str, float], keys: Sequence[str] = ("min", "p1", "p5", "p50", "p95", "p99", "max")) -> str:
    if not d.get("n"):
        return "(no trials)"
    return " ".join(f"{d[k]:6.3f}" for k in keys)


def pct(rate: dict[str, Any]) -> float:
    """A rate entry of `metrics.Rate.as_dict()` in percent (0 for no trials)."""
    return 100 * (rate["rate"] or 0.0)


def rate_cell(rate: dict[str, Any]) -> str:
    """A rate entry of `metrics.Rate.as_dict()` as "count/of (x.xx % [low, high])"."""
    if not rate["of"]:
        return "0/0"
    low, high = rate["ci95"]
    return f"{rate['count']}/{rate['of']} ({100 * rate['rate']:.2f} % [{100 * low:.2f}, {100 * high:.2f}])"


def render(results: dict[str, Any]) -> list[str]:
    meta = results["data"]
    lines = [
        "Speaker enrollment calibration",
        f"model sha256 {meta['model_sha256'][:16]}..., manifest {meta['manifest']}",
        f"{meta['clips']} clips, {meta['speakers']} speakers, {meta['enrollable_speakers']} enrollable "
        f"({meta['enrollable_clips']} clips)",
        "conditions: 16k = original file; 8k-flac = resampled to 8 kHz, 8 kHz FLAC; "
        "8k-mulaw = 8 kHz, 300-3400 Hz, G.711 mu-law",
        "distributions below: min p1 p5 p50 p95 p99 max",
        "",
        "1. Same- vs different-speaker cosine (pairs of different clips)",
    ]
    for name, row in results["pairwise"].items():
        lines.append(f"  {name}")
        for label, key in (
            ("same speaker", "same_speaker"),
            ("same, other session", "same_speaker_cross_session"),
            ("different speaker", "different_speaker"),
        ):
            lines.append(f"    {label:20s} n={row[key]['n']:6d}  {fmt(row[key])}")
        lines.append(
            f"    EER {100 * row['eer']:.2f} % at cosine {row['threshold']:.3f}; "
            + (
                f"cross-session EER {100 * row['eer_cross_session']:.2f} %"
                if row["eer_cross_session"] is not None
                else "no cross-session pairs"
            )
        )

    halves = meta["speakers_by_half"]
    lines += [
        "",
        f"Sections 3-5: half 0 ({len(halves[0])} speakers), which proposes each value; "
        f"section 6: half 1 ({len(halves[1])} speakers), which reports them",
    ]
    dup = results["duplicate"]
    lines += ["", "3. Near-duplicate gate: cosine of a clip (16k) to a near-copy of itself"]
    for variant, d in dup["near_copy"].items():
        lines.append(f"    {variant:12s} n={d['n']:4d}  {fmt(d)}")
    lines.append(f"    {'all copies':12s} n={dup['near_copy_all']['n']:4d}  {fmt(dup['near_copy_all'])}")
    lines.append("  highest cosine between two different clips of one speaker (one value per speaker)")
    for condition, d in dup["distinct_same_speaker"].items():
        lines.append(f"    {condition:12s} n={d['per_speaker_max']['n']:4d}  {fmt(d['per_speaker_max'])}")
    for pair in dup["closest_distinct_pairs"][:3]:
        lines.append(f"    closest: {pair['cosine']:.3f} {pair['condition']} {' / '.join(pair['clips'])}")
    lines.append(
        f"  highest distinct {dup['highest_distinct']:.3f}, lowest near-copy {dup['lowest_near_copy']:.3f}"
    )
    for label, row in (("current ", dup["current"]), ("proposed", dup["proposal"])):
        lines.append(
            f"  {label} DUPLICATE_COSINE = {row['value']:.3f}: refuses "
            + ", ".join(f"{v} {100 * r:.0f} %" for v, r in row["near_copies_caught"].items())
            + (f"  ({row['rule']})" if "rule" in row else "")
        )

    spr = results["spread"]
    lines += [
        "",
        f"4. Complete spread: mean(1 - cos(sample, centroid)) over {SPREAD_SET_SIZE} samples",
        f"  distinct utterances, each speaker's first clips with >= {SPREAD_MIN_SPEECH_S:g} s speech",
    ]
    for condition, d in spr["distinct_sets"].items():
        lines.append(f"    {condition:12s} n={d['first_clips']['n']:4d}  {fmt(d['first_clips'])}")
    lines.append(
        f"  distinct utterances, every triple of a speaker's clips with >= {SPREAD_MIN_SPEECH_S:g} s speech"
    )
    for condition, d in spr["distinct_sets"].items():
        lines.append(f"    {condition:12s} n={d['every_triple']['n']:4d}  {fmt(d['every_triple'])}")
    lines.append("  one clip (16k) + two of its near-copies (every pair of copy kinds)")
    lines.append(f"    {'all':12s} n={spr['near_copy_sets']['n']:4d}  {fmt(spr['near_copy_sets'])}")
    past = spr["near_copy_sets_past_duplicate_gate"]
    lines.append(
        f"    {'past gate':12s} n={past.get('n', 0):4d}  {fmt(past)}"
        f"  (no pair at or above DUPLICATE_COSINE {spr['duplicate_cosine']:.3f})"
    )
    widest = sorted(spr["near_copy_sets_by_pair"].items(), key=lambda kv: -kv[1]["max"])[:4]
    for pair, d in widest:
        lines.append(f"    widest: {pair:24s} max {d['max']:.4f}, median {d['p50']:.4f}")
    for label, row in (("current ", spr["current"]), ("proposed", spr["proposal"])):
        lines.append(
            f"  {label} MIN_SPREAD = {row['value']:.3f}: refuses {row['distinct_sets_refused']}/"
            f"{row['distinct_sets']} distinct sets; passes {row['near_copy_sets_passing']}/"
            f"{row['near_copy_sets']} near-copy sets, {row['near_copy_sets_passing_both_gates']} of them "
            "also past the duplicate gate" + (f"  ({row['rule']})" if "rule" in row else "")
        )

    audio = results["audio"]
    d = audio["current_defaults"]
    lines += [
        "",
        f"5. Audio gates (current: speech >= {d['min_speech_seconds']:g} s, SNR >= {d['min_snr_db']:g} dB, "
        f"clipped <= {100 * d['max_clipped_fraction']:g} %)",
    ]
    for variant, row in audio.items():
        if variant in ("current_defaults", "proposal"):
            continue
        lines += [
            f"  {variant} ({row['clips']} clips)",
            f"    speech s   {fmt(row['speech_seconds'])}",
            f"    SNR dB     {fmt(row['snr_db'])}",
            f"    clipped    {fmt(row['clipped_fraction'], ('p50', 'p95', 'p99', 'max'))}",
        ]
        refused = row["refused_by_defaults"]
        lines.append(f"    refused by current defaults: {len(refused)}")
        lines += [f"      {r['clip']}: {', '.join(r['why'])}" for r in refused]
    p = audio["proposal"]
    lines += [
        f"  lowest speech {p['lowest_speech_seconds']:.2f} s, lowest SNR {p['lowest_snr_db']:.1f} dB, "
        f"highest clipped {100 * p['highest_clipped_fraction']:.3f} % (the three conditions)",
        "",
        "Proposed values (half 0)",
    ]
    for name, value in results["proposal"].items():
        lines.append(f"  {name:22s} = {value:g}")
    return lines + render_held_out(results["held_out"])


def render_held_out(held: dict[str, Any]) -> list[str]:
    """Section 6: half 1's speakers at the current defaults and at half 0's proposals."""
    lines = ["", "6. Held out: half 1's speakers, at the current defaults and at half 0's proposals"]
    dup = held["duplicate"]
    for label, row in (("current ", dup["current"]), ("proposed", dup["at"][0])):
        lines.append(
            f"  {label} DUPLICATE_COSINE = {row['value']:.3f}: near-copies refused "
            + ", ".join(f"{v} {100 * r:.0f} %" for v, r in row["near_copies_caught"].items())
            + f"; different utterances of one speaker refused {rate_cell(row['distinct_pairs_refused'])}"
        )
    lines.append(
        f"  highest cosine of two different clips of one speaker {dup['highest_distinct']:.3f}, "
        f"lowest near-copy {dup['lowest_near_copy']:.3f}"
    )
    spr = held["spread"]
    for label, row in (("current ", spr["current"]), ("proposed", spr["at"][0])):
        lines.append(
            f"  {label} MIN_SPREAD = {row['value']:.3f}: refuses {row['distinct_sets_refused']}/"
            f"{row['distinct_sets']} sets of distinct utterances; passes {row['near_copy_sets_passing']}/"
            f"{row['near_copy_sets']} near-copy sets, {row['near_copy_sets_passing_both_gates']} of them "
            "also past the duplicate gate"
        )
    audio = held["audio"]
    for variant, row in audio.items():
        if variant in ("current_defaults", "proposal"):
            continue
        lines.append(
            f"  audio gates, {variant}: {len(row['refused_by_defaults'])}/{row['clips']} clips refused by "
            f"the current defaults, {row['refused_at_report_limits']} by half 0's proposal"
        )
    return lines


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="eval-speech manifest.csv")
    parser.add_argument("--out", type=Path, default=Path("results.json"), help="JSON file for every number")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="embedding cache folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def run(manifest: Path, cache_dir: Path) -> dict[str, Any]:
    clips = set_clips(manifest.parent, manifest.name)
    speakers = enrollable_speakers(clips)
    measurer = Measurer(manifest.parent, cache_dir)
    dim = measurer.embedder.dim
    everything = list(range(len(clips)))
    measured = measure_all(measurer, clips, everything, CONDITIONS, "conditions")
    vectors = {c: matrix(measured[c], len(clips), dim) for c in CONDITIONS}

    copy_clips = spread_clips(speakers, measured["16k"])
    copy_indices = [i for indices in copy_clips.values() for i in indices]
    extra = [v for v in COPIES if v not in CONDITIONS]
    copies = measure_all(measurer, clips, copy_indices, extra, "near-copies")
    copies.update({c: measured[c] for c in COPIES if c in CONDITIONS})

    # Half 0 of the speakers proposes every value; half 1 reports them (and the current defaults).
    def half(by_speaker: dict[str, list[int]], h: int) -> dict[str, list[int]]:
        return {s: v for s, v in by_speaker.items() if half_of(s) == h}

    def clips_of(h: int) -> dict[str, dict[int, Measurement]]:
        every = {**measured, **{v: copies[v] for v in extra}}
        return {
            v: {i: m for i, m in by_clip.items() if half_of(clips[i].speaker) == h}
            for v, by_clip in every.items()
        }

    long = long_clips(speakers, measured["16k"])
    duplicate = duplicate_section(vectors, copies, clips, half(speakers, 0), half(copy_clips, 0))
    duplicate_value = duplicate["proposal"]["value"]
    spread_result = spread_section(vectors, copies, half(copy_clips, 0), half(long, 0), duplicate_value)
    audio = audio_section(clips_of(0), clips)
    proposal = {
        "MIN_SPEECH_SECONDS": audio["proposal"]["min_speech_seconds"],
        "MAX_CLIPPED_FRACTION": audio["proposal"]["max_clipped_fraction"],
        "MIN_SNR_DB": audio["proposal"]["min_snr_db"],
        "MIN_SPREAD": spread_result["proposal"]["value"],
        "DUPLICATE_COSINE": duplicate_value,
    }
    held_out = {
        "duplicate": duplicate_section(
            vectors, copies, clips, half(speakers, 1), half(copy_clips, 1), report_at=[duplicate_value]
        ),
        "spread": spread_section(
            vectors,
            copies,
            half(copy_clips, 1),
            half(long, 1),
            duplicate_value,
            report_at=[proposal["MIN_SPREAD"]],
        ),
        "audio": audio_section(
            clips_of(1),
            clips,
            report_at={
                k: audio["proposal"][k] for k in ("min_speech_seconds", "min_snr_db", "max_clipped_fraction")
            },
        ),
    }
    return {
        "data": {
            "manifest": str(manifest),
            "model_sha256": measurer.model_sha256,
            "clips": len(clips),
            "speakers": len({c.speaker for c in clips}),
            "enrollable_speakers": len(speakers),
            "enrollable_clips": sum(len(v) for v in speakers.values()),
            "near_copy_clips": {s: [clips[i].path for i in v] for s, v in copy_clips.items()},
            "speakers_by_half": [
                sorted({c.speaker for c in clips if half_of(c.speaker) == h}) for h in (0, 1)
            ],
        },
        "pairwise": pairwise_section(vectors, clips),
        "duplicate": duplicate,
        "spread": spread_result,
        "audio": audio,
        "proposal": proposal,
        "held_out": held_out,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    try:
        results = run(args.manifest.resolve(), args.cache_dir)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(render(results)))
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
