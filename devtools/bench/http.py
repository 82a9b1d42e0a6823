"""http: concurrent clients enrolling over the compatible route, level by level (see the runner)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np

from devtools.bench.common import (
    COMPAT_ENROLL,
    EnrollBody,
    Server,
    enroll_body,
    fmt,
    ms,
    table,
    ten_second_bodies,
)
from devtools.clips import SetClip
from devtools.server import create_key
from service.audio import MODEL_RATE

# --- http -----------------------------------------------------------------------------------------

Outcome = tuple[float, int, str]  # seconds, HTTP status (0: no answer), error code


@dataclass(frozen=True)
class Load:
    """What every client of a level sends: enrollments of new speakers "{tag}-c{client}-r{request}",
    `requests` per client or until `seconds` (0: no cap), all starting at `start_at` (epoch s)."""

    url: str
    keys: Sequence[str]  # one tenant per pass over `bodies`: a recording belongs to one speaker of a tenant
    bodies: Sequence[EnrollBody]
    requests: int
    seconds: float
    tag: str
    timeout: float
    start_at: float = 0.0


async def _clients(load: Load, client_ids: Sequence[int]) -> tuple[float, float, list[Outcome]]:
    import httpx

    from service.tools.client import parse_error

    limits = httpx.Limits(max_connections=len(client_ids), max_keepalive_connections=len(client_ids))
    headers = {"Content-Type": "application/json"}
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(
        base_url=load.url, headers=headers, timeout=load.timeout, limits=limits
    ) as http:
        # One connection per client before the clock starts.
        await asyncio.gather(*(http.get("/healthz") for _ in client_ids))
        await asyncio.sleep(max(0.0, load.start_at - time.time()))
        began = time.time()
        deadline = time.monotonic() + load.seconds if load.seconds > 0 else math.inf
        bodies, requests = load.bodies, load.requests

        async def client(c: int) -> None:
            for j in range(requests):
                if time.monotonic() >= deadline:
                    return
                n = c * requests + j
                body = bodies[n % len(bodies)].with_speaker(f"{load.tag}-c{c}-r{j}")
                key = {"X-API-Key": load.keys[n // len(bodies)]}
                start = time.perf_counter()
                try:
                    answer = await http.post(COMPAT_ENROLL, content=body, headers=key)
                except httpx.HTTPError as exc:
                    outcomes.append((time.perf_counter() - start, 0, type(exc).__name__))
                    continue
                code = "" if answer.status_code < 300 else parse_error(answer).code
                outcomes.append((time.perf_counter() - start, answer.status_code, code))

        await asyncio.gather(*(client(c) for c in client_ids))
    return began, time.time(), outcomes


def drive_clients(load: Load, client_ids: Sequence[int]) -> tuple[float, float, list[Outcome]]:
    """Some of a level's clients on one event loop (a process's share of them)."""
    return asyncio.run(_clients(load, client_ids))


def _ping(_: int) -> int:
    return os.getpid()


def client_processes(requested: int, clients: int) -> int:
    """Load-generating processes: one event loop keeps up with tens of clients, not hundreds."""
    if requested > 0:
        return max(1, min(requested, clients))
    return 1 if clients <= 64 else max(1, min(4, (os.cpu_count() or 1) // 4))


def http_level(
    args: argparse.Namespace, server: Server, bodies: Sequence[EnrollBody], clients: int, tag: str
) -> dict[str, Any]:
    """One level: `clients` at once, each enrolling speakers "{tag}-c{client}-r{request}"."""
    procs = client_processes(args.client_procs, clients)
    groups = [list(range(clients))[k::procs] for k in range(procs)]
    passes = -(-clients * args.requests // len(bodies))
    keys = [create_key(server.local.env(), f"{tag}-pass{k}") for k in range(passes)]
    load = Load(server.url, keys, bodies, args.requests, args.http_seconds, tag, args.timeout)
    if procs == 1:
        runs = [drive_clients(load, groups[0])]
    else:
        with ProcessPoolExecutor(procs, mp_context=get_context("spawn")) as pool:
            list(pool.map(_ping, range(4 * procs)))  # workers started and imported before the clock
            load = dataclasses.replace(load, start_at=time.time() + 1.0 + 0.01 * clients)
            runs = [f.result() for f in [pool.submit(drive_clients, load, g) for g in groups]]
    outcomes = [o for _, _, out in runs for o in out]
    wall = max(end for _, end, _ in runs) - min(began for began, _, _ in runs)
    ok = [s for s, status, _ in outcomes if 200 <= status < 300]
    limited = sum(status == 429 for _, status, _ in outcomes)
    failed = Counter(
        f"{status or 'no answer'} {code}".strip()
        for _, status, code in outcomes
        if not 200 <= status < 300 and status != 429
    )
    return {
        "clients": clients,
        "client_processes": procs,
        "requests": len(outcomes),
        "ok": len(ok),
        "rate_limited": limited,
        "errors": sum(failed.values()),
        "error_kinds": dict(failed.most_common(5)),
        "seconds": wall,
        "throughput_rps": len(ok) / wall if wall > 0 else 0.0,
        "p50_ms": ms(ok, 50) if ok else None,
        "p99_ms": ms(ok, 99) if ok else None,
    }


def http_section(
    args: argparse.Namespace, speech: Sequence[SetClip], server: Server, levels: Sequence[int]
) -> dict[str, Any]:
    clips, flacs = ten_second_bodies(speech, max(args.clips, 25))
    bodies = [enroll_body(f, MODEL_RATE) for f in flacs]
    results = [http_level(args, server, bodies, clients, f"http{n}") for n, clients in enumerate(levels)]
    base = results[0]["throughput_rps"] if results else 0.0
    for r in results:
        r["throughput_vs_first"] = r["throughput_rps"] / base if base > 0 else None
    mean_s = float(np.mean([c.duration_s for c in clips]))
    cap = f", at most {args.http_seconds:g} s per level" if args.http_seconds > 0 else ""
    print(
        f"\n== http: concurrent clients, each enrolling {args.requests} new speakers one after another "
        f"(~{mean_s:.1f} s FLAC, base64 JSON, compatible route{cap}); server on {server.device}, "
        f"{server.precision}, {server.threads} torch threads"
    )
    print(
        table(
            [
                "clients",
                "requests",
                "ok",
                "429",
                "errors",
                "req/s",
                "p50 ms",
                "p99 ms",
                f"req/s vs {levels[0]}",
            ],
            [
                [
                    str(r["clients"]),
                    str(r["requests"]),
                    str(r["ok"]),
                    str(r["rate_limited"]),
                    str(r["errors"]),
                    fmt(r["throughput_rps"], ".2f"),
                    fmt(r["p50_ms"], ".0f"),
                    fmt(r["p99_ms"], ".0f"),
                    fmt(r["throughput_vs_first"], ".2f", "x"),
                ]
                for r in results
            ],
        )
    )
    for r in results:
        if r["error_kinds"]:
            print(f"errors at {r['clients']} clients: {r['error_kinds']}")
    return {
        "route": COMPAT_ENROLL,
        "server": server.describe(),
        "requests_per_client": args.requests,
        "seconds_cap": args.http_seconds or None,
        "levels": results,
    }
