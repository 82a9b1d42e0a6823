"""The bench: the project and its baselines side by side, in one run, with the ratios.

Sections, each chosen with --only and sized by its own flags:

  core    the model core (`EcapaEmbedder.embed_batch`, batch 1) against speechbrain's own
          `EncoderClassifier.encode_batch` on the same ~10 s clips, with the same torch threads in
          the same process, the calls alternating clip by clip so that the machine's slow moments
          hit every contender alike; for each precision but fp32, the vectors' lowest cosine to
          fp32's and the pairwise EER on eval-speech next to fp32's.
  enroll  ~10 s FLAC clips enrolled one at a time over HTTP into a `speakerid serve` subprocess (a
          temporary SQLite database), against the bare forward pass of what the service embeds
          for the same clips (its speech) and against speechbrain on the same.
  http    N concurrent clients enrolling base64 FLAC on the compatible route, every request a new
          speaker id: throughput, p50/p99 latency, 429s and errors, at each --clients level.
  index   speaker search at each --index-sizes (devtools/bench/index.py).
  frontend  (only when named) the audio front end in 0, 1 and 2 worker processes: clips/s of
          the front end alone here, then a server per count: one enrollment at a time, and
          enrollments/s at --frontend-clients (devtools/bench/frontend.py).
  gpu     with a CUDA device: ten-second clips through the service's DynamicBatcher with many
          requests in flight, per precision, against sequential batch-1 forward on the same GPU,
          and the low precisions' cosine to fp32. With a CUDA device the http section also runs
          at 256 clients, the server on the GPU.
  realtime  per-chunk answer latency (p50/p90) of gRPC IdentifySpeaker for 3 s chunks of real
          speech, 1 and 16 streams at once (devtools/bench/realtime.py).

Real speech comes from ../shared/eval-speech next to the checkout (--speech to point elsewhere).
Ratios are the point: on a shared machine absolute timings move by 10 % from run to run.

    python -m scripts.bench [--only core,enroll,http,index,gpu,realtime,frontend] [--json OUT] [section flags]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devtools.clips import set_clips
from devtools.sets import EVAL_SPEECH
from service.concurrency import compute
from service.config import Settings
from service.tools.inputs import InputError

if TYPE_CHECKING:
    pass
from devtools.bench.common import (
    CLIPS_PER_SPEAKER,
    Models,
    fmt,
    precisions,
    served,
    torch_threads,
)
from devtools.bench.core import core_models, core_section
from devtools.bench.enroll import enroll_section
from devtools.bench.frontend import frontend_section
from devtools.bench.gpu import gpu_section
from devtools.bench.http import http_section
from devtools.bench.index import index_section
from devtools.bench.realtime import realtime_section

# --- targets --------------------------------------------------------------------------------------


SECTIONS = ("core", "enroll", "http", "index", "gpu", "realtime", "frontend")
# realtime (a server and 16 streams) and frontend (three servers of its own) run when named: they
# take minutes. Each prints its ratio to a baseline of the same run (realtime: the chunks alone
# over HTTP; frontend: one worker) beside its target.
DEFAULT_SECTIONS = [s for s in SECTIONS if s not in ("realtime", "frontend")]
# The targets for a GPU box.
TARGET_GPU_CLIPS_PER_S = 8_000
TARGET_HTTP_CLIENTS = 256
TARGET_HTTP_RPS = 1_000
TARGET_HTTP_P99_MS = 200.0


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    gpu = results.get("gpu")
    goal = f">= {TARGET_GPU_CLIPS_PER_S:,} ten-second clips/s through the batcher on one H100"
    if gpu is None or "skipped" in gpu or not gpu.get("runs"):
        why = "gpu section not run" if gpu is None else gpu.get("skipped", "no precision ran")
        out.append({"target": goal, "met": None, "value": None, "figure": why})
    else:
        best = max(gpu["runs"], key=lambda r: r["clips_per_s"])
        out.append(
            {
                "target": goal,
                "met": best["clips_per_s"] >= TARGET_GPU_CLIPS_PER_S,
                "value": best["clips_per_s"],
                "figure": f"{best['clips_per_s']:,.0f} clips/s ({best['precision']}, max batch "
                f"{best['max_batch']}, {gpu['device_name']})",
            }
        )
    goal = (
        f">= {TARGET_HTTP_RPS:,} enrollments/s over HTTP with p99 <= {TARGET_HTTP_P99_MS:.0f} ms "
        f"at {TARGET_HTTP_CLIENTS} concurrent clients, server on a GPU"
    )
    http = results.get("http")
    level = next((r for r in (http or {}).get("levels", []) if r["clients"] == TARGET_HTTP_CLIENTS), None)
    if http is None or level is None or http["server"]["device"] != "cuda":
        why = (
            "http section not run"
            if http is None
            else f"no {TARGET_HTTP_CLIENTS}-client level"
            if level is None
            else "server not on cuda"
        )
        out.append({"target": goal, "met": None, "value": None, "figure": why})
    else:
        p99 = level["p99_ms"]
        met = (
            level["throughput_rps"] >= TARGET_HTTP_RPS
            and p99 is not None
            and p99 <= TARGET_HTTP_P99_MS
            and level["errors"] == 0
            and level["rate_limited"] == 0
        )
        out.append(
            {
                "target": goal,
                "met": met,
                "value": level["throughput_rps"],
                "figure": f"{level['throughput_rps']:,.0f} enrollments/s, p99 {fmt(p99, '.0f')} ms, "
                f"{level['rate_limited']} 429s, {level['errors']} errors",
            }
        )
    return out


# --- the command ----------------------------------------------------------------------------------


def server_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def run_bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    threads = args.threads or torch_threads()
    # Importing silero-vad (the audio front end's) drops torch to one thread: import it first.
    importlib.import_module("service.audio.pipeline")
    torch.set_num_threads(threads)
    compute.run(torch.set_num_threads, threads)  # the model's own thread (per-thread setting)
    speech = set_clips(args.speech)
    precisions(args.precision)  # refuse unknown names before anything runs
    device = server_device(args.device or settings.device)
    cuda = torch.cuda.is_available()
    levels = args.clients or [1, 8, 64, *([TARGET_HTTP_CLIENTS] if device == "cuda" else [])]
    results: dict[str, Any] = {
        "run": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": threads,
            "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
            "sections": list(args.only),
            "speech": str(args.speech),
            "argv": sys.argv[1:],
        }
    }
    print(
        f"bench: {', '.join(args.only)}; {threads} torch threads, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, GPU: {results['run']['cuda_device'] or 'none'}",
        flush=True,
    )
    models = Models(settings)
    timings: dict[str, float] = {}

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        start = time.perf_counter()
        results[name] = fn()
        timings[name] = time.perf_counter() - start
        sys.stdout.flush()

    with contextlib.ExitStack() as stack:
        server = None
        if "enroll" in args.only or "http" in args.only:
            import torch

            from service.embedding.ecapa import pick_precision

            precision = pick_precision(args.serve_precision, torch.device(device))
            server = stack.enter_context(served(device, precision, threads))
        if "core" in args.only:
            # Loading overlaps the server's start-up; the timing starts once it is up, and idle.
            core_models(args, models)
            if server is not None:
                server.wait_ready()
            section("core", lambda: core_section(args, models, speech))
        if server is not None:
            server.wait_ready()
            if "enroll" in args.only:
                section("enroll", lambda: enroll_section(args, models, speech, server))
            if "http" in args.only:
                section("http", lambda: http_section(args, speech, server, levels))
    if "frontend" in args.only:
        import torch

        from service.embedding.ecapa import pick_precision

        precision = pick_precision(args.serve_precision, torch.device(device))
        section("frontend", lambda: frontend_section(args, speech, device, precision, threads))
    if "index" in args.only:
        section("index", lambda: index_section(args))
    if "gpu" in args.only:
        section("gpu", lambda: gpu_section(args, models, speech))
    if "realtime" in args.only:
        section("realtime", lambda: realtime_section(tuple(args.streams)))
    results["targets"] = targets(results)
    results["run"]["section_seconds"] = timings
    results["run"]["total_seconds"] = time.perf_counter() - started
    print()
    for t in results["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        print(f"target {t['target']}: {verdict}: {t['figure']}")
    print(
        "section times: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; {results['run']['total_seconds']:.0f} s in all, model loading included"
    )
    return results


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sections(text: str) -> list[str]:
    names = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)} (got {text!r})")
    return [s for s in SECTIONS if s in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        results = run_bench(args, Settings())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=_json_default) + "\n", encoding="utf-8")
    http_errors = sum(r["errors"] for r in results.get("http", {}).get("levels", []))
    return 1 if http_errors or results.get("enroll", {}).get("errors") else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--only",
        type=sections,
        default=DEFAULT_SECTIONS,
        metavar="SECTIONS",
        help=f"comma-separated sections to run (default: {','.join(DEFAULT_SECTIONS)}; "
        "also: realtime, frontend)",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every result here as JSON")
    p.add_argument("--speech", type=Path, default=EVAL_SPEECH, help="eval-speech folder (manifest.csv)")
    p.add_argument("--threads", type=int, help="torch threads here and in the server (default: torch's)")
    p.add_argument(
        "--precision",
        nargs="+",
        metavar="P",
        help="model core precisions for core and gpu (default: every one the model core has; "
        "fp32 always runs, as the reference)",
    )
    g = p.add_argument_group("core and enroll")
    g.add_argument("--clips", type=int, default=12, help="~10 s clips timed (default 12)")
    g.add_argument("--rounds", type=int, default=2, help="core: rounds over the clips (default 2)")
    g.add_argument(
        "--eer-clips",
        type=int,
        default=88,
        help=f"core: clips for the pairwise EER, {CLIPS_PER_SPEAKER} per speaker (default 88; 0: no EER)",
    )
    g = p.add_argument_group("server (enroll and http)")
    g.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="the server's device (default SPK_DEVICE)"
    )
    g.add_argument(
        "--serve-precision", default="auto", help="the server's SPK_PRECISION (default auto, the service's)"
    )
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    g = p.add_argument_group("http")
    g.add_argument(
        "--clients",
        type=int,
        nargs="+",
        metavar="N",
        help=f"concurrent clients per level (default 1 8 64; {TARGET_HTTP_CLIENTS} too, server on a GPU)",
    )
    g.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[1, 16],
        metavar="N",
        help="realtime streams at once, per level (default 1 16)",
    )
    g.add_argument("--requests", type=int, default=4, help="enrollments per client per level (default 4)")
    g.add_argument(
        "--http-seconds", type=float, default=0.0, help="stop a level after this long (default: no cap)"
    )
    g.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="processes generating the load (default: 1 up to 64 clients, more beyond)",
    )
    g = p.add_argument_group("frontend")
    g.add_argument(
        "--frontend-clients", type=int, default=4, help="concurrent clients per server (default 4)"
    )
    g.add_argument(
        "--frontend-rounds", type=int, default=2, help="front end alone: rounds over the clips (default 2)"
    )
    g = p.add_argument_group("index")
    g.add_argument(
        "--index-sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000, 1_000_000],
        metavar="N",
        help="speakers in the index (default 10000 100000 1000000)",
    )
    g.add_argument("--index-queries", type=int, default=300, help="queries per size (default 300)")
    g.add_argument("--nprobe", type=int, help="IVF lists probed (default: the index's)")
    g = p.add_argument_group("gpu")
    g.add_argument("--gpu-seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    g.add_argument(
        "--gpu-max-batch",
        type=int,
        nargs="+",
        default=[64, 256],
        metavar="N",
        help="the batcher's max batch, one run each (default 64 256)",
    )
    g.add_argument("--gpu-in-flight", type=int, default=1024, help="requests kept waiting (default 1024)")
    g.add_argument("--gpu-clips", type=int, default=64, help="distinct 10 s clips (default 64)")
    g.add_argument("--gpu-sequential", type=int, default=64, help="batch-1 forward passes timed (default 64)")
    return p
