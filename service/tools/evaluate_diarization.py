"""`speakerid evaluate MANIFEST --diarization`: who-speaks-when accuracy of a running service.

The manifest is a CSV with `path` (audio) and `rttm` (its reference, NIST RTTM: one `SPEAKER` line
per turn) columns, relative to the CSV. Each file is sent to ``POST /audio/generic/api/v1/sync/diarize``
(`speakers: -1`, or the reference's count with --speakers-given) and scored by the diarization error
rate (`service.tools.metrics.diarization_error`, pyannote's conventions: a --collar of 0.25 leaves
0.125 s either side of each reference edge out), pooled over the files, with the share of files
whose speaker count is right.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from service.tools.audio import AudioReadError, flac_clip
from service.tools.client import FatalHttpError, connect, error_of, reach
from service.tools.inputs import InputError, read_manifest, require_files
from service.tools.metrics import Turn, diarization_error

DIARIZE = "/audio/generic/api/v1/sync/diarize"


def read_rttm(path: Path, uri: str | None = None) -> list[Turn]:
    """The `SPEAKER` lines of an RTTM file as (speaker, start, end) turns. A file that holds several
    recordings (its second field, the file id) gives those of `uri` only (the audio file's name
    without its extension); it must hold some."""
    turns: list[Turn] = []
    ids: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        try:
            start, duration = float(fields[3]), float(fields[4])
            speaker = fields[7]
        except (IndexError, ValueError) as exc:
            raise InputError(f"{path}:{number}: not an RTTM SPEAKER line") from exc
        turns.append((speaker, start, start + duration))
        ids.append(fields[1])
    if len(set(ids)) <= 1 or uri is None:
        return turns
    # A recording the set-wide file gives no line has no speech (RTTM's convention).
    return [turn for turn, file_id in zip(turns, ids, strict=True) if file_id == uri]


def cmd_evaluate_diarization(args: argparse.Namespace) -> int:
    """Exit status 0 with a report, 1 when no file was answered, 2 when the run could not start."""
    try:
        rows = read_manifest(args.manifest, required=("path", "rttm"))
        require_files(rows)
        files = [
            (row.path, read_rttm(args.manifest.parent / row.extra["rttm"], row.path.stem)) for row in rows
        ]
        client = connect(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    missed = false_alarm = confusion = total = 0.0
    refused_missed = refused_total = 0.0  # the reference speech of files the service refused
    counted = refused = 0
    with client:
        try:
            reach(client)
        except FatalHttpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for path, reference in files:
            speakers = len({t[0] for t in reference})
            try:
                clip = flac_clip(path, args.resample)
                body = {
                    "content": base64.b64encode(clip.data).decode("ascii"),
                    "encoding": "FLAC",
                    "sampleRate": clip.sample_rate,
                    "speakers": speakers if args.speakers_given else -1,
                    "audioType": args.audio_type,
                }
                answer = client.request("POST", DIARIZE, json=body)
            except FatalHttpError as exc:  # the key was revoked or the service replaced mid-run
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except (AudioReadError, httpx.TransportError) as exc:
                results.append({"path": str(path), "error": f"{type(exc).__name__}: {exc}"[:200]})
                continue
            if answer.status_code != 200:
                # The service would not diarize it: all of its speech is missed, as the identify
                # evaluation counts a refused clip as a reject.
                code, message = error_of(answer)
                results.append({"path": str(path), "error": f"{answer.status_code} {code}: {message}"})
                unanswered = diarization_error(reference, [], collar=args.collar)
                refused += 1
                refused_missed, refused_total = (
                    refused_missed + unanswered.missed,
                    refused_total + unanswered.total,
                )
                continue
            found = answer.json()
            hypothesis = [(s["speaker_id"], s["start"], s["end"]) for s in found["segments"]]
            error = diarization_error(reference, hypothesis, collar=args.collar)
            missed, false_alarm = missed + error.missed, false_alarm + error.false_alarm
            confusion, total = confusion + error.confusion, total + error.total
            counted += int(found["num_speakers"] == speakers)
            results.append(
                {
                    "path": str(path),
                    "der": round(error.der, 4),
                    "speakers": speakers,
                    "found": found["num_speakers"],
                    "segments": found["segments"],
                }
            )
    answered = [r for r in results if "der" in r]
    every = total + refused_total

    def share(part: float, whole: float) -> float | None:
        return round(part / whole, 4) if whole else None

    report = {
        "files": len(files),
        "answered": len(answered),
        "refused": refused,  # by the service (4xx/5xx); files it never got are only in the errors
        "collar": args.collar,
        # Refused files count: their speech is missed (`der_answered` leaves them out).
        "der": share(missed + refused_missed + false_alarm + confusion, every),
        "missed": share(missed + refused_missed, every),
        "false_alarm": share(false_alarm, every),
        "confusion": share(confusion, every),
        "der_answered": share(missed + false_alarm + confusion, total),
        "count_right": round(counted / len(answered), 4) if answered else None,
    }
    print(json.dumps(report, indent=2))
    for r in results:
        if "error" in r:
            print(f"{r['path']}: {r['error']}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"report": report, "files": results}, indent=2))
    return 0 if answered else 1
