"""`speakerid bench`: the project and its baselines side by side, in one run, with the ratios.

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
  index   speaker search at each --index-sizes (service.tools.bench_index).
  gpu     with a CUDA device: ten-second clips through the service's DynamicBatcher with many
          requests in flight, per precision, against sequential batch-1 forward on the same GPU,
          and the low precisions' cosine to fp32. With a CUDA device the http section also runs
          at 256 clients, the server on the GPU.

Real speech comes from ../shared/eval-speech next to the checkout (--speech to point elsewhere).
Ratios are the point: on a shared machine absolute timings move by 10 % from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import itertools
import json
import math
import os
import platform
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.audio import MODEL_RATE
from service.concurrency import compute
from service.config import Settings
from service.tools.inputs import InputError, read_manifest
from service.tools.server import LocalServer, local_server

if TYPE_CHECKING:
    from service.embedding.ecapa import EcapaEmbedder
    from service.tools.reference import SpeechbrainReference

SECTIONS = ("core", "enroll", "http", "index", "gpu")
DEFAULT_SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "eval-speech"
COMPAT_ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
GPU_CLIP_SECONDS = 10.0
CLIPS_PER_SPEAKER = 4  # in the EER set

# The targets for a GPU box.
TARGET_GPU_CLIPS_PER_S = 8_000
TARGET_HTTP_CLIENTS = 256
TARGET_HTTP_RPS = 1_000
TARGET_HTTP_P99_MS = 200.0


# --- clips ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechClip:
    path: Path
    speaker: str
    seconds: float


def read_speech(folder: Path) -> list[SpeechClip]:
    """The clips of an eval-speech style folder (``manifest.csv``: path, speaker, duration_s)."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"no speech set at {folder} (manifest.csv missing); point --speech at one")
    rows = read_manifest(manifest, required=("path", "speaker", "duration_s"))
    return [SpeechClip(r.path, r.speaker, float(r.extra["duration_s"])) for r in rows]


def near_ten_seconds(clips: Sequence[SpeechClip], count: int) -> list[SpeechClip]:
    """The `count` clips closest to 10 s long (manifest order among equals)."""
    return sorted(clips, key=lambda c: abs(c.seconds - 10.0))[:count]


def speaker_set(clips: Sequence[SpeechClip], count: int) -> list[SpeechClip]:
    """Up to `count` clips for same/different-speaker pairs: the first few clips of each speaker
    that has at least two, speaker after speaker (one-clip impostors give no same-speaker pair)."""
    by_speaker: dict[str, list[SpeechClip]] = {}
    for clip in clips:
        by_speaker.setdefault(clip.speaker, []).append(clip)
    each = min(CLIPS_PER_SPEAKER, max(2, count // 2))  # a small set still spans two speakers
    chosen: list[SpeechClip] = []
    for own in by_speaker.values():
        if len(own) >= 2 and len(chosen) < count:
            chosen.extend(own[: min(each, count - len(chosen))])
    return chosen


def decoded(data: bytes, encoding: str) -> np.ndarray:
    """The service's own decoding: 16 kHz mono float32, DC and rumble removed (no speech detection)."""
    from service.audio.decode import decode
    from service.audio.pipeline import to_mono_16k

    audio = Settings().audio
    wave, _clipped = to_mono_16k(
        decode(data, encoding, None, max_seconds=audio.max_seconds, timeout_s=audio.decode_timeout_s)
    )
    return wave


def load_wave(path: Path) -> np.ndarray:
    from service.tools.audio import encoding_for

    return decoded(path.read_bytes(), encoding_for(path) or "FLAC")


@dataclass(frozen=True)
class EnrollBody:
    """A compatible-route enroll body, JSON-encoded once: only the speaker id changes per request."""

    tail: bytes  # the JSON object's fields after the speaker id, closing brace included

    def with_speaker(self, speaker_id: str) -> bytes:
        return b'{"speakerId": ' + json.dumps(speaker_id).encode() + b", " + self.tail


def enroll_body(flac: bytes, sample_rate: int) -> EnrollBody:
    fields = {
        "content": base64.b64encode(flac).decode(),
        "encoding": "FLAC",
        "sampleRate": sample_rate,
        "languageCode": "en-US",
    }
    return EnrollBody(json.dumps(fields).encode()[1:])


# --- numbers --------------------------------------------------------------------------------------


def ms(seconds: Sequence[float], q: float) -> float:
    return 1000.0 * float(np.percentile(np.asarray(seconds, dtype=np.float64), q))


def unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(n, dim)`` arrays."""
    return np.sum(unit(a) * unit(b), axis=-1)


@dataclass(frozen=True)
class PairwiseEer:
    eer: float
    target_pairs: int
    nontarget_pairs: int


def pairwise_eer(vectors: np.ndarray, speakers: Sequence[str]) -> PairwiseEer:
    """EER of cosine scores over every pair of clips: same speaker (target) or not."""
    from service.tools.metrics import eer

    v = unit(vectors)
    scores = v @ v.T
    i, j = np.triu_indices(len(v), 1)
    labels = np.asarray(speakers)
    same = labels[i] == labels[j]
    pair_scores = scores[i, j]
    result = eer(pair_scores[same], pair_scores[~same])
    return PairwiseEer(result.eer, int(same.sum()), int((~same).sum()))


def alternated(
    calls: dict[str, Callable[[int], Any]], items: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Every call on every item (`call(i)`), round after round; the calls' order rotates from item
    to item, so that a slow moment of the machine falls on each of them alike.

    Returns each call's wall-clock seconds, and its results from the first round in item order.
    """
    names = list(calls)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(items):
            k = (r * items + i) % len(names)
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                out = calls[name](i)
                seconds[name].append(time.perf_counter() - start)
                if r == 0:
                    results[name].append(out)
    return seconds, results


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line(header), *(line(r) for r in rows)])


# --- models, each loaded once per run --------------------------------------------------------------


class Models:
    """The service's model core per (device, precision) and speechbrain's per device, warmed."""

    def __init__(self, settings: Settings) -> None:
        from service.embedding import weights

        # The bundled model unless SPK_MODEL_DIR names another: the server is given the same.
        self.files = weights.resolve(settings.model_dir, settings.model_sha256)
        self._ours: dict[tuple[str, str], EcapaEmbedder] = {}
        self._reference: dict[str, SpeechbrainReference] = {}

    def ours(self, device: str, precision: str) -> EcapaEmbedder:
        if (device, precision) not in self._ours:
            from service.embedding.ecapa import EcapaEmbedder

            embedder = EcapaEmbedder(self.files, device=device, precision=precision)  # type: ignore[arg-type]
            embedder.warmup()
            self._ours[device, precision] = embedder
        return self._ours[device, precision]

    def reference(self, device: str) -> SpeechbrainReference:
        if device not in self._reference:
            from service.tools.reference import SpeechbrainReference

            reference = SpeechbrainReference(self.files.folder, device)
            reference.embed(np.zeros(MODEL_RATE, dtype=np.float32))
            self._reference[device] = reference
        return self._reference[device]

    def release(self, device: str, precision: str) -> None:
        self._ours.pop((device, precision), None)
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


def precisions(requested: Sequence[str] | None) -> list[str]:
    """fp32 (the reference) and the requested ones (default: every precision the model core has),
    checked against the model core's names."""
    from typing import get_args

    from service.embedding.ecapa import Precision

    known = list(get_args(Precision))
    if requested is None:
        requested = known
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise InputError(f"unknown precision {', '.join(unknown)}; the model core has {', '.join(known)}")
    return list(dict.fromkeys(["fp32", *requested]))


# --- core -----------------------------------------------------------------------------------------


def core_models(
    args: argparse.Namespace, models: Models
) -> tuple[SpeechbrainReference, dict[str, EcapaEmbedder]]:
    return models.reference("cpu"), {p: models.ours("cpu", p) for p in precisions(args.precision)}


def core_section(args: argparse.Namespace, models: Models, speech: Sequence[SpeechClip]) -> dict[str, Any]:
    clips = near_ten_seconds(speech, args.clips)
    waves = [load_wave(c.path) for c in clips]
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
        eer_waves = [load_wave(c.path) for c in eer_clips]
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
        "clips": [{"path": str(c.path.relative_to(args.speech)), "seconds": c.seconds} for c in clips],
        "mean_seconds": mean_s,
        "contenders": contenders,
        "eer_set": eer_set,
    }


# --- the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    """A `speakerid serve` subprocess; `wait_ready()` before sending it anything."""

    local: LocalServer
    device: str
    precision: str
    threads: int

    @property
    def url(self) -> str:
        return self.local.url

    @property
    def key(self) -> str:
        return self.local.key

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "precision": self.precision, "threads": self.threads}

    def wait_ready(self, within_s: float = 300.0) -> None:
        self.local.wait_ready(within_s)


@contextlib.contextmanager
def served(device: str, precision: str, threads: int) -> Iterator[Server]:
    """`speakerid serve` started as a subprocess on a fresh temporary SQLite database, rate limit off."""
    with local_server(
        tenant="bench",
        inherit_settings=True,  # SPK_MODEL_DIR and the like, where the bundled model is not installed
        SPK_DEVICE=device,
        SPK_PRECISION=precision,
        SPK_TORCH_THREADS=str(threads),
        SPK_LOG_LEVEL="WARNING",
        # The load sends a few clips under many new ids; a recording belongs to one speaker of a
        # tenant, so that check is off here (it costs an index search and, for these copies, one
        # fingerprint comparison).
        SPK_ENROLLMENT__ONE_SPEAKER_PER_RECORDING="false",
    ) as local:
        yield Server(local, device, precision, threads)


def ten_second_bodies(speech: Sequence[SpeechClip], count: int) -> tuple[list[SpeechClip], list[bytes]]:
    """The clips nearest 10 s, as the FLAC bytes a client sends (other formats re-encoded)."""
    from service.tools.audio import flac_clip

    clips = near_ten_seconds(speech, count)
    return clips, [flac_clip(c.path).data for c in clips]


# --- enroll ---------------------------------------------------------------------------------------


def enroll_section(
    args: argparse.Namespace, models: Models, speech: Sequence[SpeechClip], server: Server
) -> dict[str, Any]:
    import httpx

    from service.audio.frontend import AudioFrontEnd, AudioInput

    clips, flacs = ten_second_bodies(speech, args.clips)
    bodies = [enroll_body(f, MODEL_RATE) for f in flacs]
    audio = Settings().audio
    frontend = AudioFrontEnd(
        max_seconds=audio.max_seconds,
        decode_timeout_s=audio.decode_timeout_s,
        vad_threshold=audio.vad_threshold,
    )
    # What the service embeds for an enrollment: the clip's speech, found by its VAD.
    speech_waves = [frontend.load(AudioInput(f, "FLAC")).speech_wave() for f in flacs]
    ours = models.ours(server.device, server.precision)
    reference = models.reference(server.device)
    ids = itertools.count()
    statuses: list[int] = []

    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.key}, timeout=args.timeout) as client:

        def enroll(i: int) -> int:
            answer = client.post(
                COMPAT_ENROLL,
                content=bodies[i].with_speaker(f"enroll-{next(ids)}"),
                headers={"Content-Type": "application/json"},
            )
            statuses.append(answer.status_code)
            return answer.status_code

        calls: dict[str, Callable[[int], Any]] = {
            "http": enroll,
            "forward": lambda i: ours.embed_batch([speech_waves[i]])[0],
            "speechbrain": lambda i: reference.embed(speech_waves[i]),
        }
        alternated(calls, 1, 1)  # the first request pays one-off costs
        statuses.clear()
        seconds, _ = alternated(calls, len(clips), 1)

    errors = sum(s >= 300 for s in statuses)
    e2e = float(np.median(seconds["http"]))
    labels = {
        "http": "enrollment over HTTP, end to end",
        "forward": f"bare forward (service core, {server.precision}, batch 1)",
        "speechbrain": "speechbrain encode_batch",
    }
    rows = {
        name: {
            "ms_p50": ms(times, 50),
            "ms_p90": ms(times, 90),
            "enrollment_over_this": e2e / float(np.median(times)),
        }
        for name, times in seconds.items()
    }
    mean_s = float(np.mean([c.seconds for c in clips]))
    speech_s = float(np.mean([len(w) for w in speech_waves])) / MODEL_RATE
    print(
        f"\n== enroll: {len(clips)} FLAC clips of {mean_s:.1f} s (mean; {speech_s:.1f} s of speech "
        f"embedded), one at a time, compatible route; server on {server.device}, {server.precision}, "
        f"{server.threads} torch threads"
    )
    print(
        table(
            ["", "p50 ms", "p90 ms", "enrollment/this"],
            [
                [labels[n], fmt(r["ms_p50"]), fmt(r["ms_p90"]), fmt(r["enrollment_over_this"], ".2f", "x")]
                for n, r in rows.items()
            ],
        )
    )
    if errors:
        print(f"errors: {errors} of {len(statuses)} enrollments were not accepted ({Counter(statuses)})")
    return {
        "route": COMPAT_ENROLL,
        "server": server.describe(),
        "requests": len(statuses),
        "errors": errors,
        "mean_seconds": mean_s,
        "speech_seconds": speech_s,
        "end_to_end": rows["http"],
        "bare_forward": rows["forward"],
        "speechbrain": rows["speechbrain"],
        "enrollment_over_forward": rows["forward"]["enrollment_over_this"],
        "speechbrain_over_enrollment": 1.0 / rows["speechbrain"]["enrollment_over_this"],
    }


# --- http -----------------------------------------------------------------------------------------

Outcome = tuple[float, int, str]  # seconds, HTTP status (0: no answer), error code


async def _clients(
    url: str,
    key: str,
    bodies: Sequence[EnrollBody],
    client_ids: Sequence[int],
    requests: int,
    seconds: float,
    tag: str,
    timeout: float,
    start_at: float,
) -> tuple[float, float, list[Outcome]]:
    import httpx

    from service.tools.client import error_of

    limits = httpx.Limits(max_connections=len(client_ids), max_keepalive_connections=len(client_ids))
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as http:
        # One connection per client before the clock starts.
        await asyncio.gather(*(http.get("/healthz") for _ in client_ids))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        deadline = time.monotonic() + seconds if seconds > 0 else math.inf

        async def client(c: int) -> None:
            for j in range(requests):
                if time.monotonic() >= deadline:
                    return
                body = bodies[(c * requests + j) % len(bodies)].with_speaker(f"{tag}-c{c}-r{j}")
                start = time.perf_counter()
                try:
                    answer = await http.post(COMPAT_ENROLL, content=body)
                except httpx.HTTPError as exc:
                    outcomes.append((time.perf_counter() - start, 0, type(exc).__name__))
                    continue
                code = "" if answer.status_code < 300 else error_of(answer)[0]
                outcomes.append((time.perf_counter() - start, answer.status_code, code))

        await asyncio.gather(*(client(c) for c in client_ids))
    return began, time.time(), outcomes


def drive_clients(
    url: str,
    key: str,
    bodies: Sequence[EnrollBody],
    client_ids: Sequence[int],
    requests: int,
    seconds: float,
    tag: str,
    timeout: float,
    start_at: float,
) -> tuple[float, float, list[Outcome]]:
    """Some of a level's clients on one event loop (a process's share of them)."""
    return asyncio.run(_clients(url, key, bodies, client_ids, requests, seconds, tag, timeout, start_at))


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
    common = (server.url, server.key, bodies)
    if procs == 1:
        runs = [drive_clients(*common, groups[0], args.requests, args.http_seconds, tag, args.timeout, 0.0)]
    else:
        with ProcessPoolExecutor(procs, mp_context=get_context("spawn")) as pool:
            list(pool.map(_ping, range(4 * procs)))  # workers started and imported before the clock
            start_at = time.time() + 1.0 + 0.01 * clients
            futures = [
                pool.submit(
                    drive_clients, *common, g, args.requests, args.http_seconds, tag, args.timeout, start_at
                )
                for g in groups
            ]
            runs = [f.result() for f in futures]
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
    args: argparse.Namespace, speech: Sequence[SpeechClip], server: Server, levels: Sequence[int]
) -> dict[str, Any]:
    clips, flacs = ten_second_bodies(speech, max(args.clips, 25))
    bodies = [enroll_body(f, MODEL_RATE) for f in flacs]
    results = [http_level(args, server, bodies, clients, f"http{n}") for n, clients in enumerate(levels)]
    base = results[0]["throughput_rps"] if results else 0.0
    for r in results:
        r["throughput_vs_first"] = r["throughput_rps"] / base if base > 0 else None
    mean_s = float(np.mean([c.seconds for c in clips]))
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


# --- index ----------------------------------------------------------------------------------------


def index_section(args: argparse.Namespace) -> dict[str, Any]:
    try:
        bench_index = importlib.import_module("service.tools.bench_index")
    except ModuleNotFoundError as exc:
        if exc.name != "service.tools.bench_index":
            raise
        print("\n== index: skipped: service.tools.bench_index is not available")
        return {"skipped": "service.tools.bench_index is not available"}
    nprobe = f", nprobe {args.nprobe}" if args.nprobe else ""
    print(f"\n== index: {args.index_queries} queries per size{nprobe}", flush=True)
    rows = bench_index.run_index_bench(args.index_sizes, args.index_queries, args.nprobe)
    print(bench_index.format_rows(rows))
    return {"queries": args.index_queries, "nprobe": args.nprobe, "rows": rows}


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


def gpu_section(args: argparse.Namespace, models: Models, speech: Sequence[SpeechClip]) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        print("\n== gpu: skipped: no CUDA device")
        return {"skipped": "no CUDA device"}
    name = torch.cuda.get_device_name(0)
    samples = int(GPU_CLIP_SECONDS * MODEL_RATE)
    clips = [c for c in speech if c.seconds >= GPU_CLIP_SECONDS][: args.gpu_clips]
    waves = [cut(load_wave(c.path), samples) for c in clips]
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


# --- targets --------------------------------------------------------------------------------------


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


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


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
    speech = read_speech(args.speech)
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
        f"speakerid bench: {', '.join(args.only)}; {threads} torch threads, {os.cpu_count()} cores, "
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
    if "index" in args.only:
        section("index", lambda: index_section(args))
    if "gpu" in args.only:
        section("gpu", lambda: gpu_section(args, models, speech))
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


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    try:
        results = run_bench(args, settings)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=_json_default) + "\n", encoding="utf-8")
    http_errors = sum(r["errors"] for r in results.get("http", {}).get("levels", []))
    return 1 if http_errors or results.get("enroll", {}).get("errors") else 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the service against its baselines (model core, enrollment, HTTP, index, GPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--only",
        type=sections,
        default=list(SECTIONS),
        metavar="SECTIONS",
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every result here as JSON")
    p.add_argument("--speech", type=Path, default=DEFAULT_SPEECH, help="eval-speech folder (manifest.csv)")
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
    p.set_defaults(run=cmd_bench)
