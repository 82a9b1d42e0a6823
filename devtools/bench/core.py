"""core: the model core against speechbrain's own EncoderClassifier, clip by clip (see the runner)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from devtools.clips import SetClip

if TYPE_CHECKING:
    from devtools.bench.reference import SpeechbrainReference
    from service.embedding.ecapa import EcapaEmbedder
from devtools.bench.common import (
    Models,
    PairwiseEer,
    alternated,
    cosines,
    fmt,
    load_wave,
    ms,
    near_ten_seconds,
    pairwise_eer,
    precisions,
    speaker_set,
    table,
    torch_threads,
)
from service.audio import MODEL_RATE

# --- core -----------------------------------------------------------------------------------------


def core_models(
    args: argparse.Namespace, models: Models
) -> tuple[SpeechbrainReference, dict[str, EcapaEmbedder]]:
    return models.reference("cpu"), {p: models.ours("cpu", p) for p in precisions(args.precision)}


def core_section(args: argparse.Namespace, models: Models, speech: Sequence[SetClip]) -> dict[str, Any]:
    clips = near_ten_seconds(speech, args.clips)
    waves = [load_wave(c.file) for c in clips]
    reference, ours = core_models(args, models)

    def batch_of_one(embedder: EcapaEmbedder) -> Callable[[int], np.ndarray]:
        return lambda i: embedder.embed_batch([waves[i]])[0]

    calls: dict[str, Callable[[int], np.ndarray]] = {"speechbrain": lambda i: reference.embed(waves[i])}
    calls.update((precision, batch_of_one(embedder)) for precision, embedder in ours.items())
    alternated(calls, min(2, len(waves)), 1)  # first calls pay one-off costs
    seconds, vectors = alternated(calls, len(waves), args.rounds)
    fp32 = np.stack(vectors["fp32"])

    eer_clips = speaker_set(speech, args.eer_clips) if len(ours) > 1 else []
    eers: dict[str, PairwiseEer] = {}
    eer_cos: dict[str, np.ndarray] = {}
    if eer_clips:
        eer_waves = [load_wave(c.file) for c in eer_clips]
        speakers = [c.speaker for c in eer_clips]
        by_precision = {p: np.stack([e.embed_batch([w])[0] for w in eer_waves]) for p, e in ours.items()}
        for p, v in by_precision.items():
            eers[p] = pairwise_eer(v, speakers)
            eer_cos[p] = cosines(v, by_precision["fp32"])

    base = float(np.median(seconds["speechbrain"]))
    contenders: list[dict[str, Any]] = []
    for name, times in seconds.items():
        cos = cosines(np.stack(vectors[name]), fp32)
        if name in eer_cos:
            cos = np.concatenate([cos, eer_cos[name]])
        contenders.append(
            {
                "name": name,
                "what": "speechbrain encode_batch" if name == "speechbrain" else "service embed_batch",
                "precision": "fp32" if name == "speechbrain" else name,
                "calls": len(times),
                "ms_p50": ms(times, 50),
                "ms_mean": 1000 * float(np.mean(times)),
                "clips_per_s": len(times) / float(np.sum(times)),
                "speedup_vs_speechbrain": base / float(np.median(times)),
                "min_cos_vs_fp32": float(cos.min()),
                "eer": eers[name].eer if name in eers else None,
            }
        )
    mean_s = float(np.mean([len(w) for w in waves])) / MODEL_RATE
    threads = torch_threads()
    print(
        f"\n== core: {len(waves)} clips of {mean_s:.1f} s (mean), batch 1, cpu, {threads} torch threads, "
        f"{args.rounds} rounds alternated"
    )
    print(
        table(
            ["contender", "ms/clip p50", "clips/s", "speechbrain/this", "min cos vs fp32", "pairwise EER"],
            [
                [
                    f"{c['what']} ({c['precision']})" + (" [baseline]" if c["name"] == "speechbrain" else ""),
                    fmt(c["ms_p50"]),
                    fmt(c["clips_per_s"], ".2f"),
                    fmt(c["speedup_vs_speechbrain"], ".2f", "x"),
                    fmt(c["min_cos_vs_fp32"], ".5f"),
                    fmt(None if c["eer"] is None else 100 * c["eer"], ".2f", " %"),
                ]
                for c in contenders
            ],
        )
    )
    eer_set = None
    if eer_clips:
        first = next(iter(eers.values()))
        eer_set = {
            "clips": len(eer_clips),
            "speakers": len({c.speaker for c in eer_clips}),
            "target_pairs": first.target_pairs,
            "nontarget_pairs": first.nontarget_pairs,
        }
        print(
            f"pairwise EER: {eer_set['clips']} clips of {eer_set['speakers']} speakers, "
            f"{first.target_pairs} same-speaker / {first.nontarget_pairs} different-speaker pairs, "
            "cosine scores; min cos over the timed and the EER clips"
        )
    return {
        "device": "cpu",
        "threads": threads,
        "rounds": args.rounds,
        "clips": [{"path": c.path, "seconds": c.duration_s} for c in clips],
        "mean_seconds": mean_s,
        "contenders": contenders,
        "eer_set": eer_set,
    }
