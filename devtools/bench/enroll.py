"""enroll: one enrollment over HTTP against the bare forward pass and speechbrain (see the runner)."""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from devtools.clips import SetClip
from service.config import Settings

if TYPE_CHECKING:
    pass
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
            "enrollment_forward": lambda i: ours.embed_batch(pairs[i]),
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
        "enrollment_forward": "bare forward of what an enrollment embeds: the speech"
        + (" and its narrowband twin, one call (batch 2)" if twins else " (batch 1)"),
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
    mean_s = float(np.mean([c.duration_s for c in clips]))
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
        "narrowband_twins": twins,
        "enrollment_forward": rows["enrollment_forward"],
        "enrollment_over_enrollment_forward": rows["enrollment_forward"]["enrollment_over_this"],
        "speechbrain_over_enrollment": 1.0 / rows["speechbrain"]["enrollment_over_this"],
    }
