"""enroll: one enrollment over HTTP against the bare forward pass and speechbrain (see the runner)."""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devtools.clips import SetClip
from service.config import Settings

if TYPE_CHECKING:
    from service.embedding.ecapa import EcapaEmbedder
from devtools.bench.common import (
    COMPAT_ENROLL,
    Models,
    Server,
    alternated,
    enroll_body,
    fmt,
    ms,
    table,
    ten_second_bodies,
)
from service.audio import MODEL_RATE

# --- enroll ---------------------------------------------------------------------------------------


def enroll_section(
    args: argparse.Namespace, models: Models, speech: Sequence[SetClip], server: Server
) -> dict[str, Any]:
    import httpx

    from service.audio.band import telephone_band
    from service.audio.frontend import AudioFrontEnd, AudioInput

    clips, flacs = ten_second_bodies(speech, args.clips)
    bodies = [enroll_body(f, MODEL_RATE) for f in flacs]
    audio = Settings().audio
    frontend = AudioFrontEnd(
        max_seconds=audio.max_seconds,
        decode_timeout_s=audio.decode_timeout_s,
        vad_threshold=audio.vad_threshold,
        vad_narrowband_threshold=audio.vad_narrowband_threshold,
    )
    # What the service embeds for an enrollment: the clip's speech, found by its VAD, and (with
    # narrowband twins on, the default) that speech through a simulated telephone line, in the
    # same model call: a batch of two of the same length.
    speech_waves = [frontend.load(AudioInput(f, "FLAC")).speech_wave() for f in flacs]
    twins = Settings().enrollment.narrowband_twins
    pairs = [[w, telephone_band(w)] if twins else [w] for w in speech_waves]
    ours = models.ours(server.device, server.precision)
    reference = models.reference(server.device)
    ids = itertools.count()
    statuses: list[int] = []
    # CPU seconds per call: the server process's (every thread) for a request, this process's for
    # the others. A machine shared with other work moves wall times by 10 % and more; CPU times
    # less, though they too grow with the load (shared caches and memory bandwidth).
    cpu: dict[str, list[float]] = {"http": [], "forward": [], "enrollment_forward": [], "speechbrain": []}

    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.key}, timeout=args.timeout) as client:

        def enroll(i: int) -> int:
            before = process_cpu_seconds(server.local.process.pid)
            answer = client.post(
                COMPAT_ENROLL,
                content=bodies[i].with_speaker(f"enroll-{next(ids)}"),
                headers={"Content-Type": "application/json"},
            )
            cpu["http"].append(process_cpu_seconds(server.local.process.pid) - before)
            statuses.append(answer.status_code)
            return answer.status_code

        def on_cpu(name: str, fn: Callable[[int], Any]) -> Callable[[int], Any]:
            def call(i: int) -> Any:
                before = time.process_time()
                out = fn(i)
                cpu[name].append(time.process_time() - before)
                return out

            return call

        calls: dict[str, Callable[[int], Any]] = {
            "http": enroll,
            "forward": on_cpu("forward", lambda i: ours.embed_batch([speech_waves[i]])[0]),
            "enrollment_forward": on_cpu("enrollment_forward", lambda i: ours.embed_batch(pairs[i])),
            "speechbrain": on_cpu("speechbrain", lambda i: reference.embed(speech_waves[i])),
        }
        alternated(calls, 1, 1)  # the first request pays one-off costs
        # ... and is deleted, so that its clip, timed below under a new id, is not refused as a
        # recording the tenant already has (every check of an enrollment runs, as in service).
        assert client.delete("/v1/speakers/enroll-0").status_code == 204
        statuses.clear()
        for times in cpu.values():
            times.clear()
        model_before = server_model_seconds(client)
        seconds, _ = alternated(calls, len(clips), 1)
        # The server's own model time for these requests, from its /metrics: the ratio of a request
        # to the model call it made, both in the one server process. A model's speed differs from
        # process to process by up to 10 % here (where its memory lands), which the ratio to the
        # bench process's forward carries and this one does not.
        server_model_s = (server_model_seconds(client) - model_before) / max(len(statuses), 1)
    steps = enroll_steps([b.with_speaker("steps") for b in bodies], ours, server.threads, rounds=2)

    errors = sum(s >= 300 for s in statuses)
    e2e = float(np.median(seconds["http"]))
    e2e_cpu = float(np.median(cpu["http"]))
    labels = {
        "http": "enrollment over HTTP, end to end",
        "forward": f"bare forward (service core, {server.precision}, batch 1)",
        "enrollment_forward": "bare forward of what an enrollment embeds: the speech"
        + (" and its narrowband twin, one call (batch 2)" if twins else " (batch 1)"),
        "speechbrain": "speechbrain encode_batch",
    }
    rows = {
        name: {
            "ms_p50": ms(times, 50),
            "ms_p90": ms(times, 90),
            "enrollment_over_this": e2e / float(np.median(times)),
            "cpu_ms_p50": ms(cpu[name], 50),
            "enrollment_cpu_over_this": e2e_cpu / float(np.median(cpu[name])),
        }
        for name, times in seconds.items()
    }
    mean_s = float(np.mean([c.duration_s for c in clips]))
    speech_s = float(np.mean([len(w) for w in speech_waves])) / MODEL_RATE
    print(
        f"\n== enroll: {len(clips)} FLAC clips of {mean_s:.1f} s (mean; {speech_s:.1f} s of speech "
        f"embedded), one at a time, compatible route; server on {server.device}, {server.precision}, "
        f"{server.threads} torch threads"
    )
    print(
        table(
            ["", "p50 ms", "p90 ms", "enrollment/this", "CPU p50 ms", "enrollment/this in CPU"],
            [
                [
                    labels[n],
                    fmt(r["ms_p50"]),
                    fmt(r["ms_p90"]),
                    fmt(r["enrollment_over_this"], ".2f", "x"),
                    fmt(r["cpu_ms_p50"]),
                    fmt(r["enrollment_cpu_over_this"], ".2f", "x"),
                ]
                for n, r in rows.items()
            ],
        )
    )
    print(
        f"in the server itself: the model {server_model_s * 1e3:.1f} ms per enrollment (mean, from its "
        f"/metrics); the request {float(np.mean(seconds['http'])) * 1e3:.1f} ms (mean), "
        f"{float(np.mean(seconds['http'])) / server_model_s:.2f}x its own model call"
    )
    if errors:
        print(f"errors: {errors} of {len(statuses)} enrollments were not accepted ({Counter(statuses)})")
    print(
        "\nthe same enrollments step by step in this process (medians over the clips, two rounds; "
        "CPU: the whole process's CPU time, the model's thread included)"
    )
    print(
        table(
            ["step", "wall ms", "CPU ms"],
            [[STEP_LABELS[n], fmt(t["wall_ms"], ".2f"), fmt(t["cpu_ms"], ".2f")] for n, t in steps.items()],
        )
    )
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
        "narrowband_twins": twins,
        "enrollment_forward": rows["enrollment_forward"],
        "enrollment_over_enrollment_forward": rows["enrollment_forward"]["enrollment_over_this"],
        "speechbrain_over_enrollment": 1.0 / rows["speechbrain"]["enrollment_over_this"],
        "server_model_ms_mean": server_model_s * 1e3,
        "enrollment_over_server_model": float(np.mean(seconds["http"])) / server_model_s,
        "steps": steps,
    }


def server_model_seconds(client: Any) -> float:
    """Seconds the server has spent in model calls (`speakerid_embedding_seconds_sum` of its
    /metrics, which answers loopback without a token)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("speakerid_embedding_seconds_sum"):
            return float(line.split()[-1])
    raise RuntimeError("the server's /metrics has no speakerid_embedding_seconds_sum")


def process_cpu_seconds(pid: int) -> float:
    """CPU time process `pid` has had, every thread's (Linux's per-thread scheduler statistics, in
    nanoseconds: finer than the clock ticks of /proc/PID/stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


STEP_LABELS = {
    "body": "request body: JSON and base64",
    "frontend": "front end: decode, 16 kHz, speech detection",
    "band": "band of the speech",
    "telephone": "the twin's telephone line",
    "fingerprint": "content fingerprint",
    "model": "model: the speech and its twin, one bounded embedding",
    "enroll": "the whole enrollment use case (the steps above but the body, and the rest)",
    "rest": "the rest: checks, database transaction, index",
}


def enroll_steps(
    bodies: Sequence[bytes], embedder: EcapaEmbedder, threads: int, rounds: int
) -> dict[str, dict[str, float]]:
    """The steps of an enrollment as the service runs them, each on its own, and the whole
    enrollment use case on a fresh SQLite database, for each compatible enroll body in turn, with
    `threads` torch threads as the server has:
    medians of wall time and of the process's CPU time (which a busy machine inflates less), in ms.
    "rest" is what the use case spends beyond the steps timed here, enrollment by enrollment."""
    from service.audio.band import band_of, telephone_band
    from service.audio.decode import b64decode
    from service.audio.fingerprint import fingerprint
    from service.audio.frontend import AudioInput
    from service.main import build_services
    from service.storage.database import migrate

    steps: dict[str, tuple[float, float]] = {}

    def read_body(body: bytes) -> AudioInput:
        fields = json.loads(body)
        return AudioInput(b64decode(fields["content"]), fields["encoding"], fields["sampleRate"])

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        steps[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return out

    walls: dict[str, list[float]] = {name: [] for name in STEP_LABELS}
    cpus: dict[str, list[float]] = {name: [] for name in STEP_LABELS}
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as folder:
        settings = Settings(
            data_dir=Path(folder), database_url=f"sqlite:///{folder}/steps.db", torch_threads=threads
        )
        migrate(settings.resolved_database_url())
        services = build_services(settings, embedder)
        try:
            store, enrollment = services.store, services.enrollment
            for r in range(rounds + 1):  # the first round pays one-off costs and is not counted
                # A tenant per round: a recording belongs to one speaker of a tenant, and each
                # round sends the same clips again.
                tenant = store.authenticate(store.create_key(f"bench-{r}")[1])
                assert tenant is not None
                for i, body in enumerate(bodies):
                    audio = timed("body", read_body, body)
                    prepared = timed(
                        "frontend", enrollment.frontend.load, audio, enrollment.limits, channels=True
                    )
                    speech = prepared.speech_wave()
                    timed("band", band_of, prepared.source_rate, speech)
                    twin = timed("telephone", telephone_band, speech)
                    timed("fingerprint", fingerprint, prepared.wave)
                    timed("model", enrollment.embed, [speech, twin])
                    timed("enroll", enrollment.enroll, tenant.tenant_id, f"steps-{r}-{i}", audio)
                    inner = [steps[n] for n in ("frontend", "band", "telephone", "fingerprint", "model")]
                    steps["rest"] = (
                        steps["enroll"][0] - sum(w for w, _ in inner),
                        steps["enroll"][1] - sum(c for _, c in inner),
                    )
                    if r > 0:
                        for name, (wall, cpu) in steps.items():
                            walls[name].append(wall * 1000)
                            cpus[name].append(cpu * 1000)
        finally:
            services.runtime.engine.dispose()
    return {
        name: {"wall_ms": float(np.median(walls[name])), "cpu_ms": float(np.median(cpus[name]))}
        for name in STEP_LABELS
    }
