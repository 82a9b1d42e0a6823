"""Realtime streams' accuracy: conversations of enrolled and unknown readers streamed chunk by chunk.

Half of eval-speech's speakers (`devtools.decisions.half_of`): those with six clips or more are
enrolled from their first three clips; conversations are built (`devtools.conversations.build`)
from the other clips of two or three of them, and in two conversations of three from one reader
with a single clip (never enrolled, so "unknown"), with turns of 1-15 s and pauses of 0.1-1.5 s, at
16 kHz and resampled to 8 kHz. Each is streamed through the service's own `StreamSession` in
chunks of 0.5, 1 and 3 s (in process: the front end, the model on the service's default path and
the decision rule), and identified whole by the compatible identify's use case for comparison.

Every 0.1 s frame of reference speech (the speech silero hears in each turn alone) is right when
the answer covering it names the turn's speaker ("unknown" for the reader never enrolled), a
wrong name when it names someone else, and unanswered when no answer covers it.

Usage: python -m scripts.eval_realtime [--half 1] [--per-rate 12] [--hold-margin 2] [--hold-max 1.5]
    [--min-voice 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from devtools.conversations import Conversation, Source, build
from devtools.decisions import half_of
from devtools.sets import EVAL_SPEECH, manifest_rows
from service.api.deps import Services
from service.audio.frontend import AudioInput
from service.config import RealtimeSettings, Settings
from service.errors import ServiceError
from service.main import build_services
from service.realtime.session import StreamSession
from service.storage.database import migrate

ENROLL_CLIPS = 3
MIN_CLIPS = 6  # a reader with this many clips is enrolled; one with a single clip is a stranger
FRAME_S = 0.1
Labelled = Sequence[tuple[str, float, float]]  # (speaker or "unknown", start, end)


def pcm(wave: np.ndarray) -> bytes:
    return bytes((np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def readers(half: int) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The half's readers to enroll (clips sorted) and its strangers."""
    by: dict[str, list[Path]] = {}
    for row in manifest_rows(EVAL_SPEECH):
        if half_of(row.speaker) == half:
            by.setdefault(row.speaker, []).append(row.path)
    enrolled = {s: sorted(p) for s, p in by.items() if len(p) >= MIN_CLIPS}
    strangers = {s: p for s, p in by.items() if len(p) == 1}
    return enrolled, strangers


def enroll(services: Services, tenant_id: int, enrolled: dict[str, list[Path]]) -> None:
    for speaker, paths in enrolled.items():
        for path in paths[:ENROLL_CLIPS]:
            wave, rate = sf.read(path, dtype="float32")
            try:
                services.enrollment.enroll(tenant_id, speaker, AudioInput(pcm(wave), "LINEAR16", rate))
            except ServiceError as exc:
                print(f"enrollment refused: {speaker} {path.name}: {exc.message}", file=sys.stderr)


def conversations(
    half: int,
    per_rate: int,
    rates: Sequence[int],
    enrolled: dict[str, list[Path]],
    strangers: dict[str, list[Path]],
) -> list[Conversation]:
    tests = {s: paths[ENROLL_CLIPS:] for s, paths in enrolled.items()}
    out = []
    for rate in rates:
        for k in range(per_rate):
            rng = random.Random(f"stream:{half}:{rate}:{k}")
            chosen = rng.sample(sorted(tests), 2 + k % 2)
            speakers = {s: tests[s] for s in chosen}
            if k % 3 != 2:
                stranger = rng.choice(sorted(strangers))
                speakers[stranger] = strangers[stranger]
            source = Source("stream", 16_000, speakers)
            out.append(build(source, k, len(speakers), overlap=False, rate=rate, turns=8))
    return out


def judge(c: Conversation, answers: Labelled, enrolled: set[str]) -> dict[str, float]:
    """Shares of the reference speech frames named right, named wrong, and not answered."""
    right = wrong = unanswered = total = 0
    for t in np.arange(FRAME_S / 2, c.duration_s, FRAME_S):
        truth = next((x.speaker for x in c.speech if x.start <= t < x.end), None)
        if truth is None:
            continue
        truth = truth if truth in enrolled else "unknown"
        said = next((s for s, a, b in answers if a <= t < b), None)
        total += 1
        right += said == truth
        wrong += said not in (None, truth, "unknown")
        unanswered += said is None
    n = max(total, 1)
    return {"right": right / n, "wrong_name": wrong / n, "unanswered": unanswered / n}


def stream(
    services: Services, tenant: Any, c: Conversation, chunk_s: float, settings: RealtimeSettings
) -> tuple[list[tuple[str, float, float]], float]:
    """The stream's answers for `c` in `chunk_s` chunks (LINEAR16 at the conversation's rate), and
    the seconds it took."""
    session = StreamSession(services.identification, tenant, [], settings, decode_timeout_s=60)
    wave = c.samples.astype(np.float32) / 32768
    step = int(chunk_s * c.rate)
    started = time.perf_counter()
    out = []
    for i in range(0, len(wave), step):
        answer = session.chunk(AudioInput(pcm(wave[i : i + step]), "LINEAR16", c.rate))
        out += [(g.speaker_id, g.start, g.end) for g in answer.segments]
    return out, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--half", type=int, default=1, choices=(0, 1), help="readers' half (0 sets defaults)")
    parser.add_argument("--per-rate", type=int, default=12, help="conversations at each rate")
    parser.add_argument("--rates", default="16000,8000")
    parser.add_argument("--chunks", default="0.5,1,3", help="chunk lengths in seconds")
    parser.add_argument("--hold-margin", type=float, default=None, help="SPK_REALTIME__HOLD_MARGIN")
    parser.add_argument("--context", type=float, default=None, help="SPK_REALTIME__CONTEXT_SECONDS")
    parser.add_argument("--hold-max", type=float, default=None, help="SPK_REALTIME__HOLD_MAX_SECONDS")
    parser.add_argument("--min-voice", type=float, default=None, help="SPK_REALTIME__MIN_VOICE_SECONDS")
    parser.add_argument("--json", type=Path, help="write every conversation's figures here")
    args = parser.parse_args(argv)
    given = {
        "hold_margin": args.hold_margin,
        "context_seconds": args.context,
        "hold_max_seconds": args.hold_max,
        "min_voice_seconds": args.min_voice,
    }
    realtime = Settings().realtime.model_copy(update={k: v for k, v in given.items() if v is not None})
    with tempfile.TemporaryDirectory() as work:
        url = f"sqlite:///{Path(work) / 'stream.db'}"
        migrate(url)
        services = build_services(Settings(data_dir=Path(work), database_url=url))
        tenant = services.store.authenticate(services.store.create_key("streams")[1])
        assert tenant is not None
        enrolled, strangers = readers(args.half)
        enroll(services, tenant.tenant_id, enrolled)
        rates = [int(r) for r in args.rates.split(",")]
        chunk_lengths = [float(x) for x in args.chunks.split(",")]
        rows = []
        for c in conversations(args.half, args.per_rate, rates, enrolled, strangers):
            whole = services.identification.segments(tenant.tenant_id, AudioInput(c.flac(), "FLAC", c.rate))
            row: dict[str, Any] = {
                "conversation": c.name,
                "rate": c.rate,
                "seconds": round(c.duration_s, 1),
                "whole": judge(
                    c, [(g.speaker_id or "unknown", g.start, g.end) for g in whole], set(enrolled)
                ),
            }
            for chunk_s in chunk_lengths:
                answers, took = stream(services, tenant, c, chunk_s, realtime)
                row[f"chunks {chunk_s:g} s"] = {**judge(c, answers, set(enrolled)), "took_s": round(took, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        services.runtime.engine.dispose()
    print(
        f"\nhalf {args.half}, hold margin {realtime.hold_margin:g}, context {realtime.context_seconds:g} s, "
        f"hold for {realtime.hold_max_seconds:g} s at most, a voice {realtime.min_voice_seconds:g} s at least"
    )
    print("rate | way | right | wrong name | unanswered | conversations")
    for rate in rates:
        mine = [r for r in rows if r["rate"] == rate]
        for way in ["whole", *(f"chunks {x:g} s" for x in chunk_lengths)]:
            mean = {
                m: float(np.mean([r[way][m] for r in mine])) for m in ("right", "wrong_name", "unanswered")
            }
            shares = " | ".join(f"{mean[m]:.3f}" for m in ("right", "wrong_name", "unanswered"))
            print(f"{rate} | {way} | {shares} | {len(mine)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0
