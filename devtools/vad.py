"""The speech detector against silero's own per-window loop, on every clip of the shared sets.

Each clip goes through the service's decoder and 16 kHz conversion, then through both detectors one
after the other (one torch thread each): silero's reference `get_speech_timestamps` on its
TorchScript model (what the service ran before, a model call per 32 ms window; for an 8 kHz clip
its 8 kHz network where one is set) and the service's `SpeechDetector`. The report gives the CPU
time of each per 10 s of audio, the largest difference between their region boundaries, and whether
any enrollment or identify quality check (speech seconds, SNR, clipping: the service's defaults)
decides differently.

    python -m scripts.vad_check [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from silero_vad import get_speech_timestamps, load_silero_vad

from devtools.clips import SetClip, set_clips
from devtools.sets import EVAL_SPEECH, EVAL_TELEPHONE
from service.audio import MODEL_RATE
from service.audio.decode import decode
from service.audio.pipeline import (
    SPEECH_PAD_S,
    PreparedAudio,
    QualityLimits,
    SpeechDetector,
    estimate_snr_db,
    to_mono_16k,
    torch_threads,
    vad_input,
)
from service.config import AudioSettings, IdentifySettings
from service.errors import ServiceError

Regions = list[tuple[float, float]]


class ReferenceDetector:
    """silero-vad as its authors run it: `get_speech_timestamps`, one model call per window, on
    what the service's detector hears (`vad_input`: with a narrowband threshold, a narrowband
    source at 8 kHz)."""

    def __init__(self, threshold: float, narrowband_threshold: float | None) -> None:
        self.threshold = threshold
        self.narrowband_threshold = narrowband_threshold
        self._model = load_silero_vad(onnx=False)

    def regions(self, wave: np.ndarray, source_rate: int = MODEL_RATE) -> Regions:
        heard, rate = vad_input(wave, source_rate, self.narrowband_threshold)
        with torch.inference_mode(), torch_threads(1):
            stamps = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(heard)),
                self._model,
                threshold=self.narrowband_threshold if rate != MODEL_RATE else self.threshold,
                sampling_rate=rate,
                speech_pad_ms=int(SPEECH_PAD_S * 1000),
            )
        return [(s["start"] / rate, s["end"] / rate) for s in stamps]


@dataclass
class ClipResult:
    set: str
    path: str
    seconds: float
    reference_ms: float  # CPU time of the detection alone
    service_ms: float
    max_boundary_s: float  # inf when the region counts differ
    regions: int
    reference_regions: int
    outcome: dict[str, str]  # check -> "ok" or error code, the service's detector
    reference_outcome: dict[str, str]


def service_wave(clip: SetClip) -> tuple[np.ndarray, float, int]:
    """The clip as the service hears it: decoded, mixed, cleaned, at 16 kHz; its clipped fraction and
    its source rate."""
    audio = AudioSettings()
    decoded = decode(
        clip.file.read_bytes(),
        clip.encoding,
        None,
        max_seconds=audio.max_seconds,
        timeout_s=audio.decode_timeout_s,
    )
    wave, clipped = to_mono_16k(decoded)
    return wave, clipped, decoded.sample_rate


def cpu_ms(fn: Callable[[], Regions]) -> tuple[Regions, float]:
    start = time.process_time()
    result = fn()
    return result, 1000 * (time.process_time() - start)


def boundary_difference(a: Regions, b: Regions) -> float:
    if len(a) != len(b):
        return math.inf
    return max(
        (abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)), default=0.0
    )


def outcome(wave: np.ndarray, clipped: float, speech: Regions, limits: QualityLimits) -> str:
    prepared = PreparedAudio(
        wave=wave,
        source_rate=MODEL_RATE,
        speech=speech,
        clipped_fraction=clipped,
        snr_db=estimate_snr_db(wave, speech),
    )
    try:
        prepared.check(limits)
    except ServiceError as error:
        return error.code
    return "ok"


def measure(
    clips: Sequence[SetClip], name: str, checks: dict[str, QualityLimits], audio: AudioSettings
) -> list[ClipResult]:
    thresholds = (audio.vad_threshold, audio.vad_narrowband_threshold)
    service, reference = SpeechDetector(*thresholds), ReferenceDetector(*thresholds)
    warm = np.zeros(MODEL_RATE, dtype=np.float32)
    service.regions(warm), reference.regions(warm)
    results = []
    for clip in clips:
        wave, clipped, rate = service_wave(clip)
        ours, ours_ms = cpu_ms(lambda: service.regions(wave, source_rate=rate))  # noqa: B023 - called at once
        theirs, theirs_ms = cpu_ms(lambda: reference.regions(wave, rate))  # noqa: B023
        results.append(
            ClipResult(
                set=name,
                path=clip.path,
                seconds=len(wave) / MODEL_RATE,
                reference_ms=theirs_ms,
                service_ms=ours_ms,
                max_boundary_s=boundary_difference(ours, theirs),
                regions=len(ours),
                reference_regions=len(theirs),
                outcome={check: outcome(wave, clipped, ours, limits) for check, limits in checks.items()},
                reference_outcome={
                    check: outcome(wave, clipped, theirs, limits) for check, limits in checks.items()
                },
            )
        )
    return results


def summary(results: Sequence[ClipResult]) -> dict[str, Any]:
    """Per 10 s of audio: the median clip's CPU time and the total over the set's duration."""
    seconds = sum(r.seconds for r in results)
    per_10s = {
        who: {
            "median_ms_per_10s": float(
                np.median([10 * getattr(r, f"{who}_ms") / r.seconds for r in results])
            ),
            "total_ms_per_10s": 10 * sum(getattr(r, f"{who}_ms") for r in results) / seconds,
        }
        for who in ("reference", "service")
    }
    changed = [r.path for r in results if r.outcome != r.reference_outcome]
    refused = {
        check: sum(r.outcome[check] != "ok" for r in results)
        for check in (results[0].outcome if results else {})
    }
    return {
        "clips": len(results),
        "audio_seconds": round(seconds, 1),
        **per_10s,
        "speedup": per_10s["reference"]["total_ms_per_10s"] / per_10s["service"]["total_ms_per_10s"],
        "max_boundary_s": max((r.max_boundary_s for r in results), default=0.0),
        "region_count_differs": sum(r.regions != r.reference_regions for r in results),
        "decisions_changed": changed,
        "refused": refused,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=0, help="first N clips of each set (0: all)")
    parser.add_argument("--json", type=Path, help="write every clip's figures here")
    args = parser.parse_args(argv)
    audio, identify = AudioSettings(), IdentifySettings()
    checks = {
        "enroll": QualityLimits(audio.min_speech_seconds, audio.max_clipped_fraction, audio.min_snr_db),
        "identify": QualityLimits(identify.min_speech_seconds, audio.max_clipped_fraction, -math.inf),
    }
    report: dict[str, Any] = {}
    everything: list[ClipResult] = []
    for name, folder in (("eval-speech", EVAL_SPEECH), ("eval-telephone", EVAL_TELEPHONE)):
        clips = set_clips(folder)
        results = measure(clips[: args.limit] if args.limit else clips, name, checks, audio)
        everything += results
        report[name] = summary(results)
        s = report[name]
        old, new = s["reference"], s["service"]
        print(
            f"{name}: {s['clips']} clips, {s['audio_seconds']} s | CPU per 10 s, median clip (whole set): "
            f"silero loop {old['median_ms_per_10s']:.1f} ms ({old['total_ms_per_10s']:.1f}), "
            f"service {new['median_ms_per_10s']:.1f} ms ({new['total_ms_per_10s']:.1f}), "
            f"whole set {s['speedup']:.1f}x, "
            f"median clip {old['median_ms_per_10s'] / new['median_ms_per_10s']:.1f}x"
            f" | max boundary difference {1000 * s['max_boundary_s']:.2f} ms, "
            f"region counts differ on {s['region_count_differs']} | quality decisions changed: "
            f"{len(s['decisions_changed'])} (refused by the service: {s['refused']})",
            flush=True,
        )
    if args.json:
        args.json.write_text(
            json.dumps({"summary": report, "clips": [asdict(r) for r in everything]}, indent=1)
        )
    return 0
