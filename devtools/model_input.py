"""What the model is given. The service embeds a clip's speech regions joined end to end; measured
beside it here, and not adopted: the regions widened by some context on each side (the model was
trained on whole utterances, pauses included, and joins are abrupt), the whole clip, and for
narrowband speech the empty 4-8 kHz band filled with low noise or the telephone band cut hard.

`python -m scripts.model_input_study [--half N]`: for each channel of the decision study (its
rendered clips: run `python -m scripts.calibrate_decisions` first) and for eval-telephone, each
variant's pairwise cosine EER over every same-speaker pair and over those from different sessions
only (a LibriSpeech chapter, a call; a VCTK speaker is one session), and its false accepts at 5 %
false rejects (all pairs). Vectors are centred on the set's mean first, as the tenant's domain mean
centres them. `--half`: eval-speech speakers of that half of the decision study only. The decision
study itself runs on vectors with context with `python -m scripts.calibrate_decisions --context S`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from devtools.decisions import half_of
from devtools.embeddings import Embedding, widened
from devtools.sets import EVAL_TELEPHONE
from devtools.study import WORK
from service.audio import MODEL_RATE
from service.audio.pipeline import PreparedAudio
from service.enrollment.scoring import unit_rows
from service.tools.inputs import ManifestRow, read_manifest
from service.tools.metrics import eer, fa_at_fr

log = logging.getLogger(__name__)

CONDITIONS = ("clean", "mulaw", "amrnb", "opus", "mp3", "noise", "reverb")
NARROWBAND = {"mulaw", "amrnb", "opus", "telephone"}

_ABOVE_BAND = signal.butter(8, 4100, "highpass", fs=MODEL_RATE, output="sos")
_TELEPHONE = signal.butter(6, [300, 3400], "bandpass", fs=MODEL_RATE, output="sos")


def noise_above_band(wave: np.ndarray, level_db: float, seed: int = 0) -> np.ndarray:
    """`wave` with white noise above 4.1 kHz at `level_db` relative to its own RMS."""
    noise = signal.sosfilt(_ABOVE_BAND, np.random.default_rng(seed).standard_normal(len(wave)))
    gain = np.sqrt(np.mean(wave**2)) / (np.sqrt(np.mean(noise**2)) + 1e-12) * 10 ** (level_db / 20)
    return np.asarray(wave + gain * noise, dtype=np.float32)


def telephone_cut(wave: np.ndarray) -> np.ndarray:
    return np.asarray(signal.sosfiltfilt(_TELEPHONE, wave), dtype=np.float32)


@dataclass(frozen=True)
class Variant:
    name: str
    make: Callable[[PreparedAudio], np.ndarray]
    narrowband_only: bool = False


VARIANTS = (
    Variant("speech joined (the service)", lambda p: p.speech_wave()),
    Variant("widened 0.1 s", lambda p: widened(p, 0.1)),
    Variant("widened 0.3 s", lambda p: widened(p, 0.3)),
    Variant("widened 0.5 s", lambda p: widened(p, 0.5)),
    Variant("whole clip", lambda p: p.wave),
    Variant("noise above 4.1 kHz, -30 dB", lambda p: noise_above_band(p.speech_wave(), -30.0), True),
    Variant("band-pass 300-3400 Hz", lambda p: telephone_cut(p.speech_wave()), True),
)


def session_of(row: ManifestRow) -> str:
    """A call (eval-telephone's `session`), a LibriSpeech chapter (``reader-chapter-utterance``), or
    the speaker (VCTK: one session each)."""
    if "session" in row.extra:
        return row.extra["session"]
    parts = Path(row.name).stem.split("-")
    return f"{row.speaker}/{parts[1]}" if len(parts) == 3 else row.speaker


@dataclass(frozen=True)
class Result:
    eer: float
    eer_cross_session: float
    fa_at_5_fr: float
    target: int
    cross_session: int


def pair_result(vectors: np.ndarray, speakers: Sequence[str], sessions: Sequence[str]) -> Result:
    v = unit_rows(vectors - vectors.mean(axis=0))
    i, j = np.triu_indices(len(v), 1)
    scores = np.sum(v[i] * v[j], axis=1)
    spk, ses = np.asarray(speakers), np.asarray(sessions)
    same = spk[i] == spk[j]
    cross = same & (ses[i] != ses[j])
    return Result(
        eer(scores[same], scores[~same]).eer,
        eer(scores[cross], scores[~same]).eer if cross.any() else float("nan"),
        fa_at_fr(scores[same], scores[~same], 0.05).fa_rate,
        int(same.sum()),
        int(cross.sum()),
    )


def study(embedding: Embedding, name: str, rows: list[ManifestRow]) -> dict[str, Result]:
    prepared = [embedding.prepared(row) for row in rows]
    kept = [k for k, p in enumerate(prepared) if p.speech_seconds >= 0.5]
    speakers = [rows[k].speaker for k in kept]
    sessions = [session_of(rows[k]) for k in kept]
    out = {}
    for variant in VARIANTS:
        if variant.narrowband_only and name not in NARROWBAND:
            continue
        vectors = np.stack([embedding.model.embed(variant.make(prepared[k])) for k in kept])
        out[variant.name] = pair_result(vectors, speakers, sessions)
        log.info("%s: %s done", name, variant.name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--half", type=int, choices=(0, 1), help="eval-speech speakers of this half only")
    parser.add_argument("--no-telephone", action="store_true", help="leave eval-telephone out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    embedding = Embedding()
    sets: dict[str, list[ManifestRow]] = {}
    for name in CONDITIONS:
        manifest = WORK / "speech" / name / "manifest.csv"
        if not manifest.exists():
            raise SystemExit(f"{manifest} is missing: run python -m scripts.calibrate_decisions first")
        rows = read_manifest(manifest)
        sets[name] = [r for r in rows if args.half is None or half_of(r.speaker) == args.half]
    if not args.no_telephone:
        sets["telephone"] = read_manifest(EVAL_TELEPHONE / "manifest.csv")
    print("| set | variant | same-speaker pairs / across sessions | EER | across sessions | FA at 5 % FR |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in sets.items():
        for variant, r in study(embedding, name, rows).items():
            print(
                f"| {name} | {variant} | {r.target} / {r.cross_session} | {100 * r.eer:.2f} % "
                f"| {100 * r.eer_cross_session:.2f} % | {100 * r.fa_at_5_fr:.2f} % |",
                flush=True,
            )
    return 0
