"""gpu: the service's DynamicBatcher on a CUDA device against batch-1 forward (see the runner)."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from devtools.clips import SetClip

if TYPE_CHECKING:
    pass
from devtools.bench.common import (
    GPU_CLIP_SECONDS,
    Models,
    cosines,
    fmt,
    load_wave,
    precisions,
    table,
)
from service.audio import MODEL_RATE

# --- gpu ------------------------------------------------------------------------------------------


def through_batcher(
    embed_batch: Callable[[Sequence[np.ndarray]], np.ndarray],
    waves: Sequence[np.ndarray],
    max_batch: int,
    in_flight: int,
    warmup_s: float,
    seconds: float,
) -> dict[str, Any]:
    """Clips per second through a DynamicBatcher that always has `in_flight` requests waiting:
    each finished request submits the next at once, as a crowd of clients would."""
    from service.config import BatchingSettings
    from service.embedding.batcher import BatchLimits, DynamicBatcher

    defaults = BatchingSettings()
    limits = BatchLimits(
        max_batch=max_batch,
        max_audio_seconds=max(defaults.max_audio_seconds, max_batch * GPU_CLIP_SECONDS),
        max_wait_ms=defaults.max_wait_ms,
        max_queue=max(defaults.max_queue, in_flight),
    )
    sizes: list[int] = []

    def counted(batch: Sequence[np.ndarray]) -> np.ndarray:
        sizes.append(len(batch))
        return embed_batch(batch)

    batcher = DynamicBatcher(counted, limits, workers=defaults.workers).start()
    stop = threading.Event()
    done = [0]
    failures: list[BaseException] = []

    def submit(k: int) -> None:
        if stop.is_set():
            return
        try:
            batcher.submit(waves[k % len(waves)]).add_done_callback(lambda f: finished(f, k))
        except Exception as exc:  # from a callback, where it would be lost
            failures.append(exc)

    def finished(future: Future[np.ndarray], k: int) -> None:
        if future.cancelled() or future.exception() is not None:
            failures.append(future.exception() or RuntimeError("cancelled"))
            return
        done[0] += 1  # only the batcher's thread runs callbacks
        submit(k + in_flight)

    try:
        for k in range(in_flight):
            submit(k)
        time.sleep(warmup_s)
        count0, batches0, start = done[0], len(sizes), time.perf_counter()
        time.sleep(seconds)
        count1, batches1, end = done[0], len(sizes), time.perf_counter()
    finally:
        stop.set()
        batcher.stop()
    if failures:
        raise failures[0]
    measured = sizes[batches0:batches1]
    return {
        "max_batch": limits.max_batch,
        "max_audio_seconds": limits.max_audio_seconds,
        "max_wait_ms": limits.max_wait_ms,
        "in_flight": in_flight,
        "clips": count1 - count0,
        "batches": len(measured),
        "mean_batch": float(np.mean(measured)) if measured else None,
        "clips_per_s": (count1 - count0) / (end - start),
    }


def sequential_rate(
    embed_batch: Callable[[Sequence[np.ndarray]], np.ndarray], waves: Sequence[np.ndarray], count: int
) -> float:
    """Clips per second, one forward pass per clip (batch 1), one after another."""
    embed_batch([waves[0]])
    start = time.perf_counter()
    for k in range(count):
        embed_batch([waves[k % len(waves)]])
    return count / (time.perf_counter() - start)


def cut(wave: np.ndarray, samples: int) -> np.ndarray:
    """Exactly `samples` long: cut, or padded with silence (a decoder may end a sample short)."""
    return np.pad(wave[:samples], (0, max(0, samples - len(wave))))


def gpu_section(args: argparse.Namespace, models: Models, speech: Sequence[SetClip]) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        print("\n== gpu: skipped: no CUDA device")
        return {"skipped": "no CUDA device"}
    name = torch.cuda.get_device_name(0)
    samples = int(GPU_CLIP_SECONDS * MODEL_RATE)
    clips = [c for c in speech if c.duration_s >= GPU_CLIP_SECONDS][: args.gpu_clips]
    waves = [cut(load_wave(c.file), samples) for c in clips]
    print(
        f"\n== gpu: {name}; {len(waves)} distinct clips cut to {GPU_CLIP_SECONDS:g} s; "
        f"{args.gpu_in_flight} requests in flight; {args.gpu_seconds:g} s measured per run",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    unsupported: dict[str, str] = {}
    fp32: np.ndarray | None = None
    for precision in precisions(args.precision):
        try:
            embedder = models.ours("cuda", precision)
            vectors = np.concatenate(
                [embedder.embed_batch(waves[k : k + 64]) for k in range(0, len(waves), 64)]
            )
        except Exception as exc:
            unsupported[precision] = repr(exc)[:300]
            print(f"{precision}: not supported on cuda: {unsupported[precision]}")
            continue
        if fp32 is None:
            fp32 = vectors
        cos = cosines(vectors, fp32)
        sequential = sequential_rate(embedder.embed_batch, waves, args.gpu_sequential)
        for max_batch in args.gpu_max_batch:
            run = through_batcher(
                embedder.embed_batch,
                waves,
                max_batch,
                args.gpu_in_flight,
                warmup_s=max(1.0, 0.3 * args.gpu_seconds),
                seconds=args.gpu_seconds,
            )
            run.update(
                precision=precision,
                sequential_clips_per_s=sequential,
                vs_sequential=run["clips_per_s"] / sequential,
                cos_vs_fp32_min=float(cos.min()),
                cos_vs_fp32_mean=float(cos.mean()),
            )
            runs.append(run)
            print(
                f"  {precision} max batch {max_batch}: {run['clips_per_s']:.0f} clips/s",
                flush=True,
            )
        models.release("cuda", precision)
    print(
        table(
            [
                "precision",
                "max batch",
                "mean batch",
                "clips/s",
                "batch-1 clips/s",
                "batched/batch-1",
                "cos vs fp32 min",
            ],
            [
                [
                    r["precision"],
                    str(r["max_batch"]),
                    fmt(r["mean_batch"]),
                    fmt(r["clips_per_s"], ".0f"),
                    fmt(r["sequential_clips_per_s"], ".0f"),
                    fmt(r["vs_sequential"], ".1f", "x"),
                    fmt(r["cos_vs_fp32_min"], ".5f"),
                ]
                for r in runs
            ],
        )
    )
    return {
        "device_name": name,
        "clips": len(waves),
        "clip_seconds": GPU_CLIP_SECONDS,
        "runs": runs,
        "unsupported": unsupported,
    }
