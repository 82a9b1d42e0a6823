"""`speakerid evaluate`: identification accuracy of a running service, measured through its HTTP API.

Speakers are enrolled (native API) under a fresh prefix (`eval-<random>-<speaker>`) and every test
clip is sent to ``POST /v1/identify`` against exactly those speakers: an enrolled speaker's test clips
are genuine trials, all clips of the speakers not enrolled are unknown-speaker trials. The run's
speakers are deleted at the end. The service's calibrated `score` and the plain `cosine` of the same
answers are both scored, so the report shows what the calibration adds over the baseline.

Who is enrolled on what:
  default        speakers with at least --min-clips clips, on their first --enroll-clips clips; their
                 other clips are the genuine trials.
  --by-session   (manifests with a `session` column, e.g. one phone call per session) a speaker is
                 enrolled on up to --enroll-clips clips taken round-robin from all its sessions but
                 its last, and tested only on the clips of the sessions none of those came from;
                 speakers with one session become unknown speakers. --min-clips is not used.
  --unknown-fraction F  holds out that share of the enrollable speakers (chosen by a hash of the
                 label and --seed: the same options give the same split) as never-enrolled
                 impostors, so a set where every speaker could be enrolled has unknown trials too.
  --only-consistent  keeps only rows with consistent=1 as enrollment and genuine material (a label
                 whose clips may be several people); the other rows still serve as unknown-speaker
                 clips when their speaker is not enrolled. Ignored for manifests without the column.

A clip the service refuses to judge (any non-200 answer to identify, e.g. 422 too little speech)
counts as a reject of its trial in the service's decisions: a false reject of a genuine clip, a
correct reject of an unknown one. Every rate is printed with its 95 % Wilson interval, every EER
with a bootstrap interval over speakers. A DET curve and the score distributions are drawn as PNGs
next to the --json report (or into --plots DIR).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
from tqdm import tqdm

from service.enrollment.speaker_ids import MAX_LENGTH as MAX_ID
from service.tools import metrics
from service.tools.audio import AudioReadError, flac_clip
from service.tools.client import (
    INTERRUPTED,
    FatalHttpError,
    ServiceClient,
    add_connection_args,
    connect,
    error_of,
    reach,
)
from service.tools.evaluate_diarization import cmd_evaluate_diarization
from service.tools.inputs import InputError, ManifestRow, clean_id, read_manifest, require_files
from service.tools.pool import run_bounded

Scoring = Literal["score", "cosine"]
SCORINGS: tuple[Scoring, ...] = ("score", "cosine")
TrialKind = Literal["genuine", "unknown"]
TOP_K_MAX = 100  # the most candidates /v1/identify returns; beyond it, pairwise non-targets are the top 100


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One clip sent to identify. `expected` is its speaker's id in this run (None: not enrolled)."""

    clip: ManifestRow
    kind: TrialKind
    expected: str | None


@dataclass
class EvalPlan:
    prefix: str
    ids: dict[str, str]  # manifest speaker -> speaker id in the service
    enroll: dict[str, list[ManifestRow]]  # manifest speaker -> enrollment clips
    trials: list[Trial]
    held_out: list[str] = field(default_factory=list)  # enrollable speakers kept as unknown speakers
    unused: int = 0  # clips of enrolled speakers neither enrolled nor tested


Split = tuple[list[ManifestRow], list[ManifestRow]]  # (enrollment clips, genuine test clips)


def probes_from(plan: EvalPlan, probes: list[ManifestRow]) -> None:
    """Send each trial's clip as the row of `probes` with the same path (extension aside): the same
    utterances through another channel (e.g. a G.711 rendering), while enrollment keeps the
    original clips: a tenant enrolled in the studio and heard over the phone."""
    by_name = {Path(r.name).with_suffix("").as_posix(): r for r in probes}
    missing = [
        t.clip.name for t in plan.trials if Path(t.clip.name).with_suffix("").as_posix() not in by_name
    ]
    if missing:
        raise InputError(f"--probe-manifest has no clip for {len(missing)} trials, e.g. {missing[0]}")
    plan.trials = [
        Trial(by_name[Path(t.clip.name).with_suffix("").as_posix()], t.kind, t.expected) for t in plan.trials
    ]


def first_clips(clips: list[ManifestRow], enroll_clips: int, min_clips: int) -> Split | None:
    """Enroll on the first clips, test on the rest; None below `min_clips` clips."""
    if len(clips) < min_clips:
        return None
    return clips[:enroll_clips], clips[enroll_clips:]


def other_sessions(clips: list[ManifestRow], enroll_clips: int) -> Split | None:
    """Enroll on up to `enroll_clips` clips taken round-robin from every session but the last (sessions
    in order of first appearance), test on every clip of the sessions that gave no enrollment clip,
    so no test clip shares a session with the enrollment. None with a single session."""
    sessions: dict[str, list[ManifestRow]] = {}
    for clip in clips:
        sessions.setdefault(clip.extra["session"], []).append(clip)
    if len(sessions) < 2:
        return None
    pools = list(sessions.values())[:-1]
    deepest = max(len(pool) for pool in pools)
    enroll = [pool[i] for i in range(deepest) for pool in pools if i < len(pool)][:enroll_clips]
    used = {clip.extra["session"] for clip in enroll}
    return enroll, [clip for clip in clips if clip.extra["session"] not in used]


def held_out_speakers(speakers: Sequence[str], fraction: float, seed: int) -> set[str]:
    """round(fraction * n) of `speakers` (at most n - 1), picked by a hash of (seed, label): the same
    labels, fraction and seed always give the same set, whatever the manifest's order."""
    count = min(round(fraction * len(speakers)), max(len(speakers) - 1, 0))
    ranked = sorted(speakers, key=lambda s: hashlib.sha256(f"{seed}\0{s}".encode()).digest())
    return set(ranked[:count])


def consistent(row: ManifestRow) -> bool:
    """Whether a row may be enrollment or genuine material: consistent=1, or no such column."""
    return row.extra.get("consistent", "1") == "1"


def plan_eval(
    rows: Sequence[ManifestRow],
    prefix: str,
    enroll_clips: int,
    min_clips: int,
    *,
    by_session: bool = False,
    unknown_fraction: float = 0.0,
    seed: int = 0,
    only_consistent: bool = False,
) -> EvalPlan:
    """Who is enrolled on which clips, and every trial (see the module's docstring). Speakers and
    their trials keep manifest order."""
    if not 0.0 <= unknown_fraction < 1.0:
        raise InputError("--unknown-fraction must be in [0, 1)")
    if by_session:
        if enroll_clips < 1:
            raise InputError("--enroll-clips must be at least 1")
        if any("session" not in row.extra for row in rows):
            raise InputError("--by-session needs a `session` column in the manifest")
    elif not 1 <= enroll_clips < min_clips:
        raise InputError("need 1 <= --enroll-clips < --min-clips, so each enrolled speaker has a test clip")
    by_speaker: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_speaker.setdefault(row.speaker, []).append(row)
    splits: dict[str, Split] = {}
    for speaker, clips in by_speaker.items():
        usable = [c for c in clips if consistent(c)] if only_consistent else clips
        split = (
            other_sessions(usable, enroll_clips)
            if by_session
            else first_clips(usable, enroll_clips, min_clips)
        )
        if split:
            splits[speaker] = split
    held_out = held_out_speakers(list(splits), unknown_fraction, seed)
    ids: dict[str, str] = {}
    for speaker in splits:
        if speaker in held_out:
            continue
        sid, n = f"{prefix}-{clean_id(speaker, MAX_ID - len(prefix) - 1)}", 1
        while sid in ids.values():  # two names that clean to the same id
            n += 1
            sid = f"{prefix}-{clean_id(speaker, MAX_ID - len(prefix) - len(str(n)) - 2)}-{n}"
        ids[speaker] = sid
    plan = EvalPlan(
        prefix=prefix, ids=ids, enroll={}, trials=[], held_out=[s for s in splits if s in held_out]
    )
    for speaker, clips in by_speaker.items():
        if speaker in ids:
            enroll, tests = splits[speaker]
            plan.enroll[speaker] = enroll
            plan.trials += [Trial(c, "genuine", ids[speaker]) for c in tests]
            plan.unused += len(clips) - len(enroll) - len(tests)
        else:
            plan.trials += [Trial(c, "unknown", None) for c in clips]
    return plan


# --- talking to the service ----------------------------------------------------------------------


@dataclass
class EnrollRecord:
    speaker: str
    speakerId: str
    file: str
    status: int | None
    accepted: bool
    errorcode: str | None = None
    message: str | None = None
    enrollmentStatus: str | None = None


@dataclass
class TrialRecord:
    """One identify answer as the report uses it (and as written to --json)."""

    file: str
    speaker: str
    kind: TrialKind
    expected: str | None
    status: int | None
    errorcode: str | None = None
    message: str | None = None
    speakerId: str | None = None
    score: float | None = None
    threshold: float | None = None
    speechSeconds: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def refused(self) -> bool:
        """The service answered, but not with a decision (e.g. 422: too little speech)."""
        return self.status is not None and self.status != 200


def audio_body(row: ManifestRow, resample: int | None) -> dict[str, Any]:
    clip = flac_clip(row.path, resample)
    return {
        "content": base64.b64encode(clip.data).decode("ascii"),
        "encoding": "FLAC",
        "sampleRate": clip.sample_rate,
    }


def _failure(exc: Exception) -> tuple[str, str]:
    """A client-side failure as (code, message), in the shape of the service's errors."""
    code = "client.ConnectionFailed" if isinstance(exc, httpx.TransportError) else "client.AudioUnreadable"
    return code, f"{type(exc).__name__}: {exc}"[:200]


def enroll_speaker(
    client: ServiceClient,
    speaker: str,
    speaker_id: str,
    clips: list[ManifestRow],
    resample: int | None,
    out: list[EnrollRecord],
    tick: Callable[[], None],
    stop: threading.Event,
) -> None:
    """Enroll one speaker's clips in order; a refused clip is noted and the next one is sent."""
    for row in clips:
        if stop.is_set():
            return
        record = EnrollRecord(
            speaker=speaker, speakerId=speaker_id, file=row.name, status=None, accepted=False
        )
        try:
            response = client.request(
                "POST", f"/v1/speakers/{speaker_id}/enrollments", json=audio_body(row, resample)
            )
        except (httpx.TransportError, AudioReadError) as exc:
            record.errorcode, record.message = _failure(exc)
        else:
            record.status = response.status_code
            if response.status_code in (200, 201):
                record.accepted = True
                record.enrollmentStatus = response.json().get("status")
            else:
                record.errorcode, record.message = error_of(response)
        out.append(record)
        tick()


def identify(
    client: ServiceClient,
    trial: Trial,
    speaker_ids: list[str],
    resample: int | None,
    out: list[TrialRecord],
    tick: Callable[[], None],
    stop: threading.Event,
) -> None:
    if stop.is_set():
        return
    record = TrialRecord(
        file=trial.clip.name,
        speaker=trial.clip.speaker,
        kind=trial.kind,
        expected=trial.expected,
        status=None,
    )
    try:
        body = {
            **audio_body(trial.clip, resample),
            "speakerIds": speaker_ids,
            "topK": min(len(speaker_ids), TOP_K_MAX),
        }
        response = client.request("POST", "/v1/identify", json=body)
    except (httpx.TransportError, AudioReadError) as exc:
        record.errorcode, record.message = _failure(exc)
    else:
        record.status = response.status_code
        if response.status_code == 200:
            answer = response.json()
            record.speakerId = answer.get("speakerId")
            record.score = answer.get("score")
            record.threshold = answer.get("threshold")
            record.speechSeconds = answer.get("speechSeconds")
            record.candidates = list(answer.get("candidates") or [])
        else:
            record.errorcode, record.message = error_of(response)
    out.append(record)
    tick()


def delete_speakers(client: ServiceClient, speaker_ids: Sequence[str]) -> list[str]:
    """Delete the run's speakers; returns the ids that could not be deleted (404 counts as gone)."""
    left: list[str] = []
    for speaker_id in speaker_ids:
        try:
            response = client.request("DELETE", f"/v1/speakers/{speaker_id}")
            if response.status_code not in (200, 204, 404):
                left.append(speaker_id)
        except (httpx.HTTPError, FatalHttpError):
            left.append(speaker_id)
    return left


# --- metrics from the answers (no HTTP: testable on synthetic records) ---------------------------


def rate(count: int, of: int) -> dict[str, Any]:
    return metrics.Rate(count, of).as_dict()


@dataclass
class ScoreSets:
    """Scores of one scoring ("score" or "cosine") arranged for each measurement. `*_groups` hold the
    true speaker of the clip behind each score, for the bootstrap over speakers."""

    top1_correct: int = 0
    top1_trials: int = 0
    open_target: list[float] = field(default_factory=list)
    open_target_groups: list[str] = field(default_factory=list)
    open_nontarget: list[float] = field(default_factory=list)
    open_nontarget_groups: list[str] = field(default_factory=list)
    pair_target: list[float] = field(default_factory=list)
    pair_target_groups: list[str] = field(default_factory=list)
    pair_nontarget: list[float] = field(default_factory=list)
    pair_nontarget_groups: list[str] = field(default_factory=list)
    wrong_top: list[float] = field(default_factory=list)  # best other enrolled speaker, genuine clips
    missing_own: int = 0  # genuine answers without a candidate for the right speaker


def score_sets(records: Sequence[TrialRecord], scoring: Scoring) -> ScoreSets:
    """Arrange the candidates' `scoring` values: closed-set top-1 over genuine clips; open-set
    detection (own-speaker score of genuine clips vs the top score of unknown clips); pairwise
    verification (each clip against its own speaker vs against every other enrolled speaker)."""
    sets = ScoreSets()
    for r in records:
        if not r.ok:
            continue
        scores = {str(c["speakerId"]): float(c[scoring]) for c in r.candidates if c.get(scoring) is not None}
        others = [value for sid, value in scores.items() if sid != r.expected]
        sets.pair_nontarget += others
        sets.pair_nontarget_groups += [r.speaker] * len(others)
        if r.kind == "genuine":
            sets.top1_trials += 1
            if others:
                sets.wrong_top.append(max(others))
            own = scores.get(r.expected or "")
            if own is None:
                sets.missing_own += 1
                continue
            sets.top1_correct += int(max(scores, key=lambda s: scores[s]) == r.expected)
            for values, groups in (
                (sets.open_target, sets.open_target_groups),
                (sets.pair_target, sets.pair_target_groups),
            ):
                values.append(own)
                groups.append(r.speaker)
        elif scores:
            sets.open_nontarget.append(max(scores.values()))
            sets.open_nontarget_groups.append(r.speaker)
    return sets


def eer_entry(
    target: list[float],
    t_groups: list[str],
    nontarget: list[float],
    n_groups: list[str],
    bootstrap: int,
    seed: int = 0,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "eer": None,
        "threshold": None,
        "targets": len(target),
        "nontargets": len(nontarget),
    }
    if target and nontarget:
        result = metrics.eer(target, nontarget)
        entry.update(eer=result.eer, threshold=result.threshold)
        if bootstrap > 0:
            ci = metrics.bootstrap(target, t_groups, nontarget, n_groups, iterations=bootstrap, seed=seed)
            entry["ci95"] = list(ci) if ci else None
    return entry


def scoring_report(
    records: Sequence[TrialRecord], scoring: Scoring, bootstrap: int, seed: int = 0
) -> dict[str, Any]:
    sets = score_sets(records, scoring)
    report: dict[str, Any] = {
        "closedSetTop1": rate(sets.top1_correct, sets.top1_trials),
        "openSetEer": eer_entry(
            sets.open_target,
            sets.open_target_groups,
            sets.open_nontarget,
            sets.open_nontarget_groups,
            bootstrap,
            seed,
        ),
        "faAt5PercentFr": None,
        "pairwiseEer": eer_entry(
            sets.pair_target,
            sets.pair_target_groups,
            sets.pair_nontarget,
            sets.pair_nontarget_groups,
            bootstrap,
            seed,
        ),
        "genuineWithoutOwnCandidate": sets.missing_own,
    }
    if sets.open_target and sets.open_nontarget:
        fa = metrics.fa_at_fr(sets.open_target, sets.open_nontarget, 0.05)
        report["faAt5PercentFr"] = {
            **fa.fa.as_dict(),
            "threshold": fa.threshold,
            "falseRejects": fa.fr.as_dict(),
        }
    return report


def decisions_report(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """The service's own answers at its default threshold over every clip it answered, with a
    decision or a refusal (counted as a reject): a named unknown voice, or a genuine clip named as
    someone else, is a false accept; a genuine clip answered null or refused is a false reject."""
    judged = [r for r in records if r.ok or r.refused]
    genuine = [r for r in judged if r.kind == "genuine"]
    unknown = [r for r in judged if r.kind == "unknown"]
    named = [r for r in judged if r.ok and r.speakerId is not None]
    fa_unknown = sum(r.kind == "unknown" for r in named)
    fa_wrong = sum(r.kind == "genuine" and r.speakerId != r.expected for r in named)
    correct = sum(r.kind == "genuine" and r.speakerId == r.expected for r in named)
    return {
        "thresholds": sorted({r.threshold for r in judged if r.ok and r.threshold is not None}),
        "falseAccepts": rate(fa_unknown + fa_wrong, len(judged)),
        "unknownNamed": rate(fa_unknown, len(unknown)),
        "genuineNamedWrong": rate(fa_wrong, len(genuine)),
        "falseRejects": rate(sum(r.speakerId is None for r in genuine), len(genuine)),
        "genuineCorrect": rate(correct, len(genuine)),
        "refusedGenuine": sum(r.refused for r in genuine),
        "refusedUnknown": sum(r.refused for r in unknown),
    }


def build_report(records: Sequence[TrialRecord], bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    failed = Counter(r.errorcode or f"http.{r.status}" for r in records if not r.ok)
    refused = Counter(r.errorcode or f"http.{r.status}" for r in records if r.refused)
    return {
        "trials": {
            "sent": len(records),
            "answered": sum(r.ok for r in records),
            "refused": sum(r.refused for r in records),
            "genuine": sum(r.ok and r.kind == "genuine" for r in records),
            "unknown": sum(r.ok and r.kind == "unknown" for r in records),
            "failedByCode": dict(failed.most_common()),
            "refusedByCode": dict(refused.most_common()),
        },
        **{scoring: scoring_report(records, scoring, bootstrap, seed) for scoring in SCORINGS},
        "service": decisions_report(records),
    }


# --- plots ---------------------------------------------------------------------------------------


def plot_paths(json_path: Path | None, plots_dir: Path | None) -> tuple[Path, Path] | None:
    """Where the DET and score plots go: `<stem>.det.png`, `<stem>.scores.png` in --plots DIR (stem:
    the --json file's, else "evaluate") or next to the --json file; None when neither is given."""
    if plots_dir is None and json_path is None:
        return None
    stem = json_path.stem if json_path else "evaluate"
    folder = plots_dir if plots_dir is not None else (json_path or Path()).parent
    return folder / f"{stem}.det.png", folder / f"{stem}.scores.png"


def write_plots(
    records: Sequence[TrialRecord], report: dict[str, Any], det_path: Path, scores_path: Path
) -> list[Path]:
    """The DET curves (open-set and pairwise, service score and cosine, the service's threshold
    marked) and the service score's distributions (genuine: own speaker; unknown speaker: best
    candidate; wrong speaker: best other candidate of a genuine clip) with its threshold. A DET plot
    needs targets and non-targets; returns the files written."""
    sets = {scoring: score_sets(records, scoring) for scoring in SCORINGS}
    thresholds = report["service"]["thresholds"]
    curves: dict[str, metrics.Det] = {}
    labels: dict[Scoring, str] = {"score": "service score", "cosine": "cosine"}
    for scoring, label in labels.items():
        s = sets[scoring]
        for kind, target, nontarget in (
            ("open-set", s.open_target, s.open_nontarget),
            ("pairwise", s.pair_target, s.pair_nontarget),
        ):
            if target and nontarget:
                curves[f"{kind}, {label}"] = metrics.det_curve(target, nontarget)
    written: list[Path] = []
    for path in (det_path, scores_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    if curves:
        score = sets["score"]
        points = {
            f"service threshold {t:.3g}": metrics.rates_at(score.open_target, score.open_nontarget, t)
            for t in thresholds
        }
        written.append(metrics.plot_det(curves, det_path, points=points, title="speakerid evaluate: DET"))
    written.append(
        metrics.plot_score_histograms(
            {
                "genuine (own speaker)": sets["score"].open_target,
                "unknown speaker (best candidate)": sets["score"].open_nontarget,
                "wrong speaker (best other candidate)": sets["score"].wrong_top,
            },
            scores_path,
            thresholds=thresholds,
            title="speakerid evaluate: service scores",
            xlabel="service score",
        )
    )
    return written


# --- printing ------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _rate_cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry["rate"] is None:
        return "-"
    return f"{_pct(entry['rate'])}{_ci(entry['ci95'])} ({entry['count']}/{entry['of']})"


def _eer_cell(entry: dict[str, Any]) -> str:
    if entry["eer"] is None:
        return "-"
    return f"{_pct(entry['eer'])}{_ci(entry.get('ci95'))} @ {entry['threshold']:.3f}"


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in counts.items())


def format_report(report: dict[str, Any], header: Sequence[str]) -> str:
    score, cosine = report["score"], report["cosine"]
    open_set, pairs = score["openSetEer"], score["pairwiseEer"]
    rows = [
        ("", "service score", "cosine baseline"),
        (
            "closed-set top-1 accuracy",
            _rate_cell(score["closedSetTop1"]),
            _rate_cell(cosine["closedSetTop1"]),
        ),
        (
            f"open-set EER ({open_set['targets']} tgt / {open_set['nontargets']} non)",
            _eer_cell(open_set),
            _eer_cell(cosine["openSetEer"]),
        ),
        ("open-set FA at 5% FR", _rate_cell(score["faAt5PercentFr"]), _rate_cell(cosine["faAt5PercentFr"])),
        (
            f"pairwise EER ({pairs['targets']} tgt / {pairs['nontargets']} non)",
            _eer_cell(pairs),
            _eer_cell(cosine["pairwiseEer"]),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [*header, ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("(scores: answered clips only)")
    service = report["service"]
    thresholds = ", ".join(f"{t:.3f}" for t in service["thresholds"]) or "-"
    decisions = [
        ("false accepts", service["falseAccepts"], "of judged clips: unknown named or genuine named wrong"),
        ("unknown named", service["unknownNamed"], "of unknown-speaker clips"),
        ("misidentified", service["genuineNamedWrong"], "of genuine clips named as another speaker"),
        ("false rejects", service["falseRejects"], "of genuine clips answered null or refused"),
        ("correct", service["genuineCorrect"], "of genuine clips named right"),
    ]
    cells = [_rate_cell(entry) for _, entry, _ in decisions]
    width = max(len(c) for c in cells)
    lines += ["", f"service decisions at its threshold ({thresholds}), a refused clip counted as a reject:"]
    lines += [
        f"  {name:<14} {cell:<{width}}  {what}"
        for (name, _, what), cell in zip(decisions, cells, strict=True)
    ]
    trials = report["trials"]
    if trials["refused"]:
        lines.append(
            f"identify refused {trials['refused']} clips, counted as rejects ({service['refusedGenuine']} "
            f"genuine, {service['refusedUnknown']} unknown): {_codes(trials['refusedByCode'])}"
        )
    unanswered = Counter(trials["failedByCode"]) - Counter(trials["refusedByCode"])
    if unanswered:
        lines.append(f"identify trials without an answer (left out): {_codes(dict(unanswered))}")
    if missing := score["genuineWithoutOwnCandidate"]:
        lines.append(f"genuine answers lacking their own speaker among the candidates: {missing}")
    lines.append("intervals: 95 % Wilson for rates, bootstrap over speakers for EERs")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure identification accuracy of a running service on a manifest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "manifest", type=Path, help="CSV with path,speaker columns (like eval-speech's manifest.csv)"
    )
    add_connection_args(p)
    p.add_argument(
        "--resample", type=int, metavar="HZ", help="resample every clip (enrollment too), e.g. 8000"
    )
    p.add_argument(
        "--probe-manifest",
        type=Path,
        metavar="CSV",
        help="identify with the clips of this manifest that share the trials' paths (the same "
        "utterances through another channel, e.g. a G.711 rendering); enrollment keeps the originals",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report and every trial here")
    p.add_argument(
        "--enroll-clips", type=int, default=3, help="clips each speaker is enrolled on (default 3)"
    )
    p.add_argument(
        "--min-clips", type=int, default=5, help="clips a speaker needs to be enrolled (default 5)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="requests at once (default 4)")
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for EER intervals; 0 = off"
    )
    p.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write the DET and score PNGs here (default: next to --json; none without either)",
    )
    p.add_argument(
        "--by-session",
        action="store_true",
        help="enroll from some sessions, test on others (needs a session column)",
    )
    p.add_argument(
        "--unknown-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this share of the enrollable speakers as unknown speakers (default 0)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the --unknown-fraction split and the bootstrap"
    )
    p.add_argument(
        "--only-consistent",
        action="store_true",
        help="enroll and test genuine trials only on rows with consistent=1",
    )
    p.add_argument("--keep", action="store_true", help="do not delete the run's speakers at the end")
    p.add_argument(
        "--diarization",
        action="store_true",
        help="who-speaks-when instead: the manifest has path,rttm columns; DER through sync/diarize",
    )
    p.add_argument("--collar", type=float, default=0.25, help="--diarization: DER collar, s (default 0.25)")
    p.add_argument("--speakers-given", action="store_true", help="--diarization: send the reference's count")
    p.add_argument("--audio-type", default="callcenter", help="--diarization: the audioType hint")
    p.set_defaults(run=cmd_evaluate)


@dataclass
class EvalRun:
    """What a run sent and got back."""

    enrolled: list[EnrollRecord] = field(default_factory=list)
    trials: list[TrialRecord] = field(default_factory=list)
    active: list[str] = field(default_factory=list)  # ids with at least one accepted clip
    dropped: list[str] = field(default_factory=list)  # ids with none: their trials are left out
    not_deleted: list[str] = field(default_factory=list)


def run_eval(
    client: ServiceClient,
    plan: EvalPlan,
    *,
    resample: int | None = None,
    concurrency: int = 4,
    keep: bool = False,
    progress: bool = True,
    run: EvalRun | None = None,
) -> EvalRun:
    """Enroll (speakers in parallel, each one's clips in order), identify every trial, then delete
    the run's speakers, also when a step fails or is interrupted (unless `keep`). Results go into
    `run` (a new EvalRun if None), so a caller sees `not_deleted` also when this raises."""
    run = EvalRun() if run is None else run
    stop = threading.Event()
    lock = threading.Lock()
    total = sum(len(c) for c in plan.enroll.values()) + len(plan.trials)
    with tqdm(total=total, unit="clip", desc="evaluate", dynamic_ncols=True, disable=not progress) as bar:

        def tick() -> None:
            with lock:
                bar.update(1)

        try:
            enroll_jobs = [
                partial(enroll_speaker, client, s, plan.ids[s], clips, resample, run.enrolled, tick, stop)
                for s, clips in plan.enroll.items()
            ]
            run_bounded(enroll_jobs, concurrency, stop)
            run.active = sorted({r.speakerId for r in run.enrolled if r.accepted})
            run.dropped = sorted(set(plan.ids.values()) - set(run.active))
            todo = [t for t in plan.trials if t.expected is None or t.expected in run.active]
            bar.total = total - (len(plan.trials) - len(todo))
            bar.refresh()
            if run.active:
                jobs = [
                    partial(identify, client, t, run.active, resample, run.trials, tick, stop) for t in todo
                ]
                run_bounded(jobs, concurrency, stop)
        finally:
            if not keep:
                run.not_deleted = delete_speakers(client, list(plan.ids.values()))
    clips = [c.name for cs in plan.enroll.values() for c in cs] + [t.clip.name for t in plan.trials]
    order = {name: i for i, name in enumerate(clips)}
    run.enrolled.sort(key=lambda r: order.get(r.file, 0))
    run.trials.sort(key=lambda r: order.get(r.file, 0))
    return run


def run_header(args: argparse.Namespace, plan: EvalPlan, run: EvalRun) -> list[str]:
    """What was enrolled on what, and who the unknown speakers are."""
    refused = Counter(r.errorcode for r in run.enrolled if not r.accepted)
    audio = f"resampled to {args.resample} Hz FLAC" if args.resample else "FLAC at each clip's own rate"
    if args.probe_manifest is not None:
        audio += f"; identify clips from {args.probe_manifest}"
    if args.by_session:
        protocol = f"by session: up to {args.enroll_clips} clips from earlier sessions, tests from others"
    else:
        protocol = f"first {args.enroll_clips} clips of speakers with >= {args.min_clips}"
    if args.only_consistent:
        protocol += "; consistent=1 rows only for enrollment and genuine trials"
    unknown = {t.clip.speaker for t in plan.trials if t.kind == "unknown"}
    header = [
        f"manifest: {args.manifest}; audio: {audio}",
        f"protocol: {protocol}",
        f"enrolled {len(run.active)} speakers as {plan.prefix}-* on "
        f"{sum(r.accepted for r in run.enrolled)} clips"
        + (f"; enrollment clips refused: {dict(refused)}" if refused else ""),
        f"unknown speakers: {len(unknown)} ({len(plan.held_out)} enrollable ones held out by "
        f"--unknown-fraction {args.unknown_fraction:g} --seed {args.seed}, "
        f"{len(unknown) - len(plan.held_out)} not enrollable)",
    ]
    if plan.unused:
        header.append(f"clips of enrolled speakers neither enrolled nor tested: {plan.unused}")
    if run.dropped:
        header.append(f"no enrollment clip accepted (their clips left out): {', '.join(run.dropped)}")
    return header


def cmd_evaluate(args: argparse.Namespace, _settings: object = None) -> int:
    """Exit status 0 with a report, 1 when no trial was answered, 2 when the run could not start,
    130 when the operator stopped it (Ctrl-C: the run's speakers are deleted first)."""
    try:
        return cmd_evaluate_diarization(args) if args.diarization else _evaluate(args)
    except KeyboardInterrupt:
        print("stopped: interrupted", file=sys.stderr)
        return INTERRUPTED


def _evaluate(args: argparse.Namespace) -> int:
    prefix = f"eval-{secrets.token_hex(4)}"
    try:
        if args.resample is not None and args.resample <= 0:
            raise InputError("--resample must be a positive rate in Hz")
        rows = read_manifest(args.manifest)
        plan = plan_eval(
            rows,
            prefix,
            args.enroll_clips,
            args.min_clips,
            by_session=args.by_session,
            unknown_fraction=args.unknown_fraction,
            seed=args.seed,
            only_consistent=args.only_consistent,
        )
        if not plan.ids:
            need = "clips from two sessions" if args.by_session else f"{args.min_clips} clips"
            raise InputError(f"no speaker to enroll: none has {need} in {args.manifest}")
        if args.probe_manifest is not None:
            probes = read_manifest(args.probe_manifest)
            probes_from(plan, probes)
            rows = [*rows, *probes]
        require_files(rows)
        client = connect(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = datetime.now(UTC).isoformat(timespec="seconds")
    run = EvalRun()
    with client:
        try:
            already = reach(client)
            if already:
                print(
                    f"warning: the key's tenant already holds {already} speaker(s): they join the cohort "
                    "that sets the decision level, and a clip one of them has is refused as its "
                    "recording; use a tenant of its own for a measurement",
                    file=sys.stderr,
                )
            run_eval(
                client,
                plan,
                resample=args.resample,
                concurrency=args.concurrency,
                keep=args.keep,
                run=run,
            )
        except FatalHttpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # run_eval has deleted the run's speakers on its way out (unless --keep).
            left = f"; could not delete {', '.join(run.not_deleted)}" if run.not_deleted else ""
            print(f"stopped: interrupted, no report{left}", file=sys.stderr)
            return INTERRUPTED
    report = build_report(run.trials, args.bootstrap, args.seed)
    print(format_report(report, run_header(args, plan, run)))
    if run.not_deleted:
        print(f"warning: could not delete {', '.join(run.not_deleted)}", file=sys.stderr)
    if args.json:
        document = {
            "run": {
                "manifest": str(args.manifest),
                "url": args.url,
                "prefix": prefix,
                "resample": args.resample,
                "probeManifest": str(args.probe_manifest) if args.probe_manifest else None,
                "enrollClips": args.enroll_clips,
                "minClips": args.min_clips,
                "bySession": args.by_session,
                "unknownFraction": args.unknown_fraction,
                "seed": args.seed,
                "onlyConsistent": args.only_consistent,
                "heldOut": plan.held_out,
                "unusedClips": plan.unused,
                "started": started,
                "speakers": plan.ids,
                "droppedSpeakers": run.dropped,
                "tenantSpeakersBefore": already,
                "notDeleted": run.not_deleted,
            },
            "metrics": report,
            "enrollment": [asdict(r) for r in run.enrolled],
            "trials": [asdict(r) for r in run.trials],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if paths := plot_paths(args.json, args.plots):
        written = write_plots(run.trials, report, *paths)
        print("plots: " + ", ".join(str(p) for p in written))
    return 0 if report["trials"]["answered"] else 1
