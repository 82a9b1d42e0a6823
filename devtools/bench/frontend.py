"""frontend: the audio front end in worker processes (`SPK_FRONTEND__WORKERS`), see the runner.

Two parts, in one run:

* the front end alone, in this process: ~10 s FLAC clips decoded, converted and searched for
  speech by `AudioFrontEnd` with 1 and with 2 worker processes (twice as many requests in flight
  as workers), and in the calling thread (0 workers) one at a time;
* over HTTP: a `speakerid serve` per worker count (0 = in the server process, 1, 2), each
  timed on single enrollments one after another (latency) and on `--frontend-clients`
  concurrent clients (enrollments/s).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from devtools.bench.common import alternated, enroll_body, fmt, ms, served, table, ten_second_bodies
from devtools.bench.http import http_level
from devtools.clips import SetClip
from service.audio import MODEL_RATE
from service.config import Settings

POOLS = (0, 1, 2)


def alone(flacs: Sequence[bytes], workers: int, rounds: int) -> dict[str, Any]:
    from service.audio.frontend import AudioFrontEnd, AudioInput

    audio = Settings().audio
    frontend = AudioFrontEnd(
        max_seconds=audio.max_seconds,
        decode_timeout_s=audio.decode_timeout_s,
        vad_threshold=audio.vad_threshold,
        vad_narrowband_threshold=audio.vad_narrowband_threshold,
        workers=workers,
    )
    try:
        inputs = [AudioInput(f, "FLAC") for f in flacs] * rounds

        def one(i: int) -> float:
            start = time.perf_counter()
            frontend.load(inputs[i], channels=True)
            return time.perf_counter() - start

        for i in range(max(1, workers)):  # each worker's first clip pays its one-off costs
            one(i)
        start = time.perf_counter()
        with ThreadPoolExecutor(max(1, 2 * workers)) as threads:
            latencies = list(threads.map(one, range(len(inputs))))
        wall = time.perf_counter() - start
    finally:
        frontend.close()
    return {
        "workers": workers,
        "clips": len(inputs),
        "clips_per_s": len(inputs) / wall,
        "p50_ms": ms(latencies, 50),
    }


def over_http(
    args: argparse.Namespace, workers: int, bodies: Sequence[Any], device: str, precision: str, threads: int
) -> dict[str, Any]:
    import httpx

    from devtools.bench.common import COMPAT_ENROLL

    with served(device, precision, threads, SPK_FRONTEND__WORKERS=str(workers)) as server:
        server.wait_ready()
        with httpx.Client(
            base_url=server.url, headers={"X-API-Key": server.key}, timeout=args.timeout
        ) as client:
            count = iter(range(10**6))

            def enroll(i: int) -> int:
                answer = client.post(
                    COMPAT_ENROLL,
                    content=bodies[i % len(bodies)].with_speaker(f"single-{next(count)}"),
                    headers={"Content-Type": "application/json"},
                )
                return int(answer.status_code)

            alternated({"single": enroll}, 2, 1)  # warm
            seconds, statuses = alternated({"single": enroll}, args.clips, 1)
        level = http_level(args, server, bodies, args.frontend_clients, f"pool{workers}")
    return {
        "workers": workers,
        "single_p50_ms": ms(seconds["single"], 50),
        "single_errors": sum(s >= 300 for s in statuses["single"]),
        "clients": level["clients"],
        "enrollments_per_s": level["throughput_rps"],
        "p50_ms": level["p50_ms"],
        "p99_ms": level["p99_ms"],
        "errors": level["errors"] + level["rate_limited"],
    }


def frontend_section(
    args: argparse.Namespace, speech: Sequence[SetClip], device: str, precision: str, threads: int
) -> dict[str, Any]:
    clips, flacs = ten_second_bodies(speech, args.clips)
    mean_s = float(np.mean([c.duration_s for c in clips]))
    local = [alone(flacs, w, args.frontend_rounds) for w in POOLS]
    by = {r["workers"]: r for r in local}
    scaling = by[2]["clips_per_s"] / by[1]["clips_per_s"]
    rounds = args.frontend_rounds
    print(f"\n== frontend: {len(flacs)} FLAC clips of ~{mean_s:.1f} s x {rounds}, prepared in this process")
    print(
        table(
            ["workers", "clips/s", "p50 ms per clip"],
            [[str(r["workers"]), fmt(r["clips_per_s"], ".1f"), fmt(r["p50_ms"], ".0f")] for r in local],
        )
    )
    print(f"2 workers over 1: {scaling:.2f}x")
    bodies = [enroll_body(f, MODEL_RATE) for f in flacs]
    http = [over_http(args, w, bodies, device, precision, threads) for w in POOLS]
    hby = {r["workers"]: r for r in http}
    print(
        f"\nover HTTP (compatible enroll, {precision}, {threads} torch threads): one request at a time, and "
        f"{args.frontend_clients} clients x {args.requests} requests"
    )
    print(
        table(
            ["workers", "single p50 ms", "enrollments/s", "p50 ms", "p99 ms", "errors"],
            [
                [
                    str(r["workers"]),
                    fmt(r["single_p50_ms"], ".0f"),
                    fmt(r["enrollments_per_s"], ".2f"),
                    fmt(r["p50_ms"], ".0f"),
                    fmt(r["p99_ms"], ".0f"),
                    str(r["errors"] + r["single_errors"]),
                ]
                for r in http
            ],
        )
    )
    http_scaling = hby[2]["enrollments_per_s"] / hby[1]["enrollments_per_s"]
    print(f"enrollments/s, 2 workers over 1: {http_scaling:.2f}x")
    return {"alone": local, "alone_2_over_1": scaling, "http": http, "http_2_over_1": http_scaling}
