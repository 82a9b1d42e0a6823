"""Setting the decision rule's defaults on one part of the data and reporting them on another.

- eval-speech speakers are split in two halves by a hash of their label: half 0 sets the defaults,
  half 1 reports them. Every channel of `devtools.channels` is a condition; each condition is also
  reported with the threshold set on every *other* condition (leave one condition out): the figure
  that counts is the worst held-out condition.
- eval-telephone (real calls) sets nothing: it is reported only.
- Unknown-voice trials: the one-clip speakers, plus each enrolled speaker's own test clips in a
  tenant that lacks it (`decisions.leave_one_out`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from devtools import decisions as D
from devtools.channels import CONDITIONS
from devtools.embeddings import Embedded
from devtools.study import embed_all
from service import calibration as cal
from service.embedding import weights
from service.embedding.ecapa import load_cohort
from service.enrollment.scoring import DecisionRule, Scorer, impostor_scores, unit_rows
from service.tools.metrics import Rate

log = logging.getLogger(__name__)

FA_TARGET = 0.01
FR_TARGET = 0.05
# The voice check sits this many units below the lowest genuine sample of the calibration half:
# telephone samples of one caller from different calls score lower than any studio condition.
VOICE_MARGIN = 1.5
# The conditions that set the defaults; the others are reported beside them.
SPEECH = [c.name for c in CONDITIONS if c.calibrates]
REPORTED = [c.name for c in CONDITIONS]
# Rules also reported at their default threshold: the service's at today's, its level's first form
# (`decisions.MeanOfMaxLevel`) at the default it had.
AT_DEFAULT = {"service": cal.IDENTIFY_THRESHOLD, "mean-of-max level": 2.9}


@dataclass(frozen=True)
class Study:
    embedded: dict[str, Embedded]
    prior: np.ndarray  # the model prototypes' mean

    def speech(self, half: int | None, short: bool = False) -> dict[str, list[D.Case]]:
        e = self.embedded
        return {
            c.name: D.leave_one_out(D.speech_cases(c.name, e[c.enroll], e[c.test], half, short))
            for c in CONDITIONS
        }

    def telephone(self, consistent: bool, short: bool = False) -> list[D.Case]:
        return D.leave_one_out(D.telephone_cases(self.embedded["telephone"], consistent, short))


def load(context_s: float = 0.0) -> Study:
    prior = load_cohort(weights.resolve(None))
    if prior is None:
        raise SystemExit("the bundled model has no classifier prototypes")
    return Study(embed_all(context_s=context_s), prior.mean(axis=0))


def pair_prior(study: Study, cases: dict[str, list[D.Case]]) -> tuple[float, float]:
    """Mean and sd of impostor pair scores, averaged over the calibration tenants of every channel."""
    means, sds = [], []
    for name in SPEECH:
        tenant = cases[name][0].tenant
        pairs = impostor_scores(tenant.centroids, study.prior, cal.PRIOR_WEIGHT)
        means.append(float(pairs.mean()))
        sds.append(float(pairs.std()))
    return float(np.mean(means)), float(np.mean(sds))


def rule(study: Study, pair_mean: float, pair_sd: float) -> D.Service:
    return D.Service(Scorer(DecisionRule.calibrated(study.prior, pair_mean=pair_mean, pair_sd=pair_sd)))


def rates(outcome: D.Outcome) -> dict[str, Any]:
    return {
        "falseAccepts": _entry(outcome.false_accepts, outcome.unknown),
        "falseRejects": _entry(outcome.false_rejects, outcome.genuine),
        "misidentified": _entry(outcome.misidentified, outcome.genuine),
    }


def scored(r: D.Rule, cases: dict[str, list[D.Case]]) -> dict[str, list[D.Scored]]:
    return {name: [D.score_case(r, c) for c in group] for name, group in cases.items()}


Halves = tuple[dict[str, list[D.Case]], dict[str, list[D.Case]]]  # each half's cases per condition


def identification(study: Study, halves: Halves) -> dict[str, Any]:
    calib, report = halves
    pair_mean, pair_sd = pair_prior(study, calib)
    service = rule(study, pair_mean, pair_sd)
    first_form = D.Service(
        D.MeanOfMaxLevel(DecisionRule.calibrated(study.prior, pair_mean=pair_mean, pair_sd=pair_sd)),
        "mean-of-max level",
    )
    baseline = D.Centred(study.prior, cal.PRIOR_WEIGHT)
    out: dict[str, Any] = {"pairPrior": {"mean": pair_mean, "sd": pair_sd}}
    extra = {
        "telephone": study.telephone(False),
        "telephone-consistent": study.telephone(True),
        "telephone-3s": study.telephone(False, short=True),
        "telephone-consistent-3s": study.telephone(True, short=True),
    }
    short = {f"{k}-3s": v for k, v in study.speech(1, short=True).items()}
    # The service's rule, its level's first form, and the rule before either (centred cosine against
    # a fixed threshold), each with its threshold set on half 0.
    rules = (("service", service), ("mean-of-max level", first_form), ("previous", baseline))
    for label, r in rules:
        s_cal, s_rep = scored(r, calib), scored(r, report)
        s_extra, s_short = scored(r, extra), scored(r, short)
        threshold = D.threshold_for([s for k in SPEECH for s in s_cal[k]], FA_TARGET, FR_TARGET)
        held_out = {}
        for name in REPORTED:
            others = [s for k in SPEECH if k != name for s in s_cal[k]]
            t = D.threshold_for(others, FA_TARGET, FR_TARGET)
            held_out[name] = {"threshold": t, **rates(D.pooled(s_rep[name], t))}
        out[label] = {
            "threshold": threshold,
            "reportHalf": {k: rates(D.pooled(v, threshold)) for k, v in s_rep.items()},
            "leaveOneConditionOut": held_out,
            "shortClips": {k: rates(D.pooled(v, threshold)) for k, v in s_short.items()},
            "telephone": {k: rates(D.pooled(v, threshold)) for k, v in s_extra.items()},
            "calibrationHalf": rates(D.pooled([s for k in SPEECH for s in s_cal[k]], threshold)),
        }
        out[label]["gallery"] = gallery(study, r, threshold)
        if label in AT_DEFAULT:
            t = AT_DEFAULT[label]
            out[label]["atDefault"] = {
                "threshold": t,
                "reportHalf": {k: rates(D.pooled(v, t)) for k, v in s_rep.items()},
                "shortClips": {k: rates(D.pooled(v, t)) for k, v in s_short.items()},
                "telephone": {k: rates(D.pooled(v, t)) for k, v in s_extra.items()},
                "gallery": gallery(study, r, t),
            }
    return out


def gallery(study: Study, r: D.Rule, threshold: float) -> dict[str, Any]:
    """False accepts and rejects as the tenant grows: the report half's speakers alone (about 11),
    with the calibration half's speakers enrolled too (22), and with the one-clip speakers
    enrolled as well (about 100: then only left-out enrolled speakers are unknown voices); the
    telephone labels all enrolled but one at a time (32)."""
    out: dict[str, Any] = {}
    for channel in ("clean", "mulaw", "amrnb", "opus"):
        e = study.embedded[channel]
        small = D.speech_cases(channel, e, e, 1)
        full = D.speech_cases(channel, e, e, None)
        report_half = {row.speaker for row in e.rows if D.half_of(row.speaker) == 1}
        tenant22 = _restrict(full[0], report_half)
        tenant100 = _with_fillers(tenant22, e, report_half)
        for label, cases in (("~11", small), ("22", [tenant22]), ("~100", [tenant100])):
            expanded = D.leave_one_out(cases)
            if label == "~100":
                expanded = [c for c in expanded[1:] if c.tenant.names != tenant100.tenant.names]
                expanded = [tenant100, *expanded]
            total = D.pooled([D.score_case(r, c) for c in expanded], threshold)
            out[f"{channel} {label}"] = {"speakers": len(cases[0].tenant.names), **rates(total)}
    everyone = D.leave_one_out(D.telephone_cases(study.embedded["telephone"], folds=0))
    total = D.pooled([D.score_case(r, c) for c in everyone], threshold)
    out["telephone 32"] = {"speakers": len(everyone[0].tenant.names) - 1, **rates(total)}
    return out


def _restrict(case: D.Case, speakers: set[str]) -> D.Case:
    """The case's tenant whole, its trials only from `speakers`."""
    t = case.trials
    keep = [i for i, g in enumerate(t.group) if g in speakers]
    return D.Case(
        case.condition,
        case.tenant,
        t.subset(keep),
    )


def _with_fillers(case: D.Case, e: Embedded, report_half: set[str]) -> D.Case:
    """`case` with every one-clip speaker enrolled on its clip (so none is an unknown trial)."""
    counts: dict[str, list[int]] = {}
    for i, row in enumerate(e.rows):
        counts.setdefault(row.speaker, []).append(i)
    names, samples = list(case.tenant.names), list(case.tenant.samples)
    for spk, idx in counts.items():
        if len(idx) == 1 and np.isfinite(e.vectors[idx[0]]).all():
            names.append(spk)
            samples.append(e.vectors[idx])
    t = case.trials
    keep = [i for i, truth in enumerate(t.truth) if truth is not None]
    return D.Case(
        case.condition,
        D.Tenant(names, samples),
        t.subset(keep),
    )


def voice_check(study: Study, r: D.Service, threshold_units: float | None = None) -> dict[str, Any]:
    """The enrollment voice check: a speaker's 2nd and 3rd samples against the voiceprint of the
    samples before them (genuine), and other speakers' clips against the same voiceprints
    (impostor), scored by the rule against one speaker. Within each channel, and across (first
    sample at 16 kHz, the next through G.711, checked against the twins of the 16 kHz ones). Sets
    the threshold on half 0 (the lowest genuine score there, less `VOICE_MARGIN`), reports half 1
    at it and at the service's default (`cal.VOICE_CHECK`), which this threshold should match."""
    scorer = r.scorer
    pairs = [(c.name, c.enroll, c.test) for c in CONDITIONS if c.enroll == c.test] + [
        ("mixed", "twin", "mulaw")
    ]
    per_half: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {0: {}, 1: {}}
    for half in (0, 1):
        for name, first, later in pairs:
            per_half[half][name] = _voice_trials(study, scorer, first, later, half)
    if threshold_units is None:
        genuine = np.concatenate([g for g, _ in per_half[0].values()])
        threshold_units = float(np.floor((genuine.min() - VOICE_MARGIN) * 10) / 10)

    def report(threshold: float) -> dict[str, Any]:
        return {
            name: {
                "genuineRefused": _entry(int((g < threshold).sum()), len(g)),
                "otherVoicesRefused": _entry(int((i < threshold).sum()), len(i)),
                "genuineMin": float(g.min()),
            }
            for name, (g, i) in per_half[1].items()
        }

    return {
        "threshold": threshold_units,
        "reportHalf": report(threshold_units),
        "default": cal.VOICE_CHECK,
        "reportHalfAtDefault": report(cal.VOICE_CHECK),
    }


def _entry(count: int, of: int) -> dict[str, Any]:
    return Rate(count, of).as_dict()


def _voice_trials(
    study: Study, scorer: Scorer, first: str, later: str, half: int
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and other-voice scores of the check, for the half's enrolled speakers: the voiceprint
    of sample 1 (channel `first`) against sample 2 (channel `later`), then of samples 1-2 against
    sample 3; every other speaker's first clip (channel `later`) against the same voiceprints."""
    e1, e2 = study.embedded[first], study.embedded[later]
    scale = scorer.build_scale(D.speech_cases(first, e1, e1, half)[0].tenant.centroids)
    by: dict[str, list[int]] = {}
    for i, row in enumerate(e1.rows):
        if D.half_of(row.speaker) == half:
            by.setdefault(row.speaker, []).append(i)
    firsts = {s: idx[0] for s, idx in by.items() if np.isfinite(e2.vectors[idx[0]]).all()}
    genuine: list[float] = []
    impostor: list[float] = []
    for spk, idx in by.items():
        if len(idx) < 6:
            continue
        earlier = [e1.vectors[idx[0]]]
        for k in (1, 2):
            voiceprint = unit_rows(np.mean(earlier, axis=0))
            new = e2.vectors[idx[k]]
            earlier.append(new)
            if not np.isfinite(new).all():
                continue
            # Each sample with its own speech seconds, as the service checks it (the duration term).
            genuine.append(float(scorer.scores(new, voiceprint, scale, 1, float(e2.speech_s[idx[k]]))[0, 0]))
            others = [i for s, i in firsts.items() if s != spk]
            scores = scorer.scores(e2.vectors[others], voiceprint, scale, 1, e2.speech_s[others])
            impostor += scores[:, 0].tolist()
    return np.array(genuine), np.array(impostor)


def summary_lines(results: dict[str, Any]) -> list[str]:
    def cell(entry: dict[str, Any]) -> str:
        lo, hi = entry["ci95"]
        rate = entry["rate"]
        pct = "-" if rate is None else f"{100 * rate:.1f} %"
        return f"{entry['count']}/{entry['of']} {pct} [{100 * lo:.1f}, {100 * hi:.1f}]"

    lines = []
    ident = results["identification"]
    p = ident["pairPrior"]
    lines.append(f"pair prior: mean {p['mean']:.4f}, sd {p['sd']:.4f}")
    for label in ident:
        if label == "pairPrior":
            continue
        r = ident[label]
        lines.append(f"\n## {label}: threshold {r['threshold']:.3f} (set on half 0, every channel)")
        c = r["calibrationHalf"]
        lines.append(f"calibration half: FA {cell(c['falseAccepts'])}  FR {cell(c['falseRejects'])}")
        lines.append("| condition | FA (report half) | FR | misidentified | held-out threshold | FA | FR |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for name in REPORTED:
            a, b = r["reportHalf"][name], r["leaveOneConditionOut"][name]
            lines.append(
                f"| {name} | {cell(a['falseAccepts'])} | {cell(a['falseRejects'])} "
                f"| {cell(a['misidentified'])} | {b['threshold']:.2f} | {cell(b['falseAccepts'])} "
                f"| {cell(b['falseRejects'])} |"
            )
        for group in ("shortClips", "telephone", "gallery"):
            for name, a in r[group].items():
                size = f" ({a['speakers']} speakers)" if "speakers" in a else ""
                lines.append(
                    f"| {group}: {name}{size} | {cell(a['falseAccepts'])} | {cell(a['falseRejects'])} "
                    f"| {cell(a['misidentified'])} | | | |"
                )
        if "atDefault" in r:
            d = r["atDefault"]
            lines.append(f"\n### {label} at its default threshold {d['threshold']:.2f}")
            lines.append("| condition | FA | FR | misidentified |")
            lines.append("| --- | --- | --- | --- |")
            for group in ("reportHalf", "shortClips", "telephone", "gallery"):
                for name, a in d[group].items():
                    lines.append(
                        f"| {group}: {name} | {cell(a['falseAccepts'])} | {cell(a['falseRejects'])} "
                        f"| {cell(a['misidentified'])} |"
                    )
    ver = results["verification"]
    lines.append(f"\n## verify: threshold {ver['threshold']:.2f} units (gallery 1, every condition pooled)")
    for half in ("half0", "half1"):
        a = ver[half]
        lines.append(f"| {half} | FA {cell(a['falseAccepts'])} | FR {cell(a['falseRejects'])} |")
    lines.append(
        f"\n## similar-voice warning (at {cal.SIMILAR_VOICE:.2f}): one voice under two ids / two voices"
    )
    for name, a in results["similarVoice"].items():
        lines.append(
            f"| {name} ({a['speakers']} speakers) | two ids: lowest {a['twoIdsLowest']:.2f}, "
            f"median {a['twoIdsMedian']:.2f} | nearest other person: highest {a['otherPersonHighest']:.2f} |"
        )
    v = results["voiceCheck"]
    for key, at in (("reportHalf", v["threshold"]), ("reportHalfAtDefault", v["default"])):
        origin = "set on half 0" if key == "reportHalf" else "the service's default"
        lines.append(f"\n## enrollment voice check: threshold {at:.2f} units ({origin}; gallery 1)")
        for name, a in v[key].items():
            lines.append(
                f"| {name} | genuine refused {cell(a['genuineRefused'])} (lowest {a['genuineMin']:.2f}) "
                f"| other voices refused {cell(a['otherVoicesRefused'])} |"
            )
    return lines


def verification(halves: Halves, r: D.Service, threshold: float = cal.VERIFY_THRESHOLD) -> dict[str, Any]:
    """Verify (a clip against the one speaker it claims, gallery 1) on each half, every condition
    pooled: each enrolled speaker's test clips against it (genuine), and every other test clip of the
    condition's tenant, enrolled speakers' and one-clip speakers' alike, against it (impostor)."""
    scorer = r.scorer
    out: dict[str, Any] = {"threshold": threshold}
    for half in (0, 1):
        genuine, impostor = 0, 0
        refused, accepted = 0, 0
        for group in halves[half].values():
            case = group[0]  # the whole tenant (leave_one_out's cases come after it)
            c = case.tenant.centroids
            scores = scorer.scores(case.trials.vectors, c, scorer.build_scale(c), 1, case.trials.seconds)
            claimed = np.array([[t == n for n in case.tenant.names] for t in case.trials.truth])
            genuine += int(claimed.sum())
            refused += int((scores[claimed] < threshold).sum())
            impostor += int((~claimed).sum())
            accepted += int((scores[~claimed] >= threshold).sum())
        out[f"half{half}"] = {
            "falseAccepts": _entry(accepted, impostor),
            "falseRejects": _entry(refused, genuine),
        }
    return out


def similar_voice(study: Study, r: D.Service) -> dict[str, Any]:
    """The status warning's scores (`EnrollmentService._warnings`: a voiceprint against the tenant's
    other speakers, gallery the whole tenant). Per condition, every speaker with 6 clips or more
    enrolled on its first 3; each in turn enrolled again under a second id on its next 3: that id's
    score against the first (one voice, two ids), and every speaker's best score against another
    speaker (two voices). eval-telephone: its consistent labels only."""
    scorer = r.scorer
    sets = {
        name: study.embedded[name] for name in ("clean", "mulaw", "amrnb", "opus", "mp3", "noise", "reverb")
    }
    sets["telephone"] = study.embedded["telephone"]
    out: dict[str, Any] = {}
    for name, e in sets.items():
        by: dict[str, list[int]] = {}
        for i, row in enumerate(e.rows):
            if np.isfinite(e.vectors[i]).all():
                by.setdefault(row.speaker, []).append(i)
        keep = {
            s: idx
            for s, idx in by.items()
            if len(idx) >= 6 and (name != "telephone" or e.rows[idx[0]].extra.get("consistent") == "1")
        }
        centroids = unit_rows(np.stack([e.vectors[idx[:3]].mean(axis=0) for idx in keep.values()]))
        twice = []
        for k, idx in enumerate(keep.values()):
            again = unit_rows(e.vectors[idx[3:6]].mean(axis=0))
            both = np.vstack([centroids, again[None]])
            twice.append(float(scorer.scores(again, centroids[k], scorer.build_scale(both), len(both))[0, 0]))
        m = scorer.scores(centroids, centroids, scorer.build_scale(centroids), len(centroids))
        np.fill_diagonal(m, -np.inf)
        out[name] = {
            "speakers": len(keep),
            "twoIdsLowest": min(twice),
            "twoIdsMedian": float(np.median(twice)),
            "otherPersonHighest": float(m.max()),
        }
    return out


def run(context_s: float = 0.0) -> dict[str, Any]:
    study = load(context_s)
    halves = (study.speech(0), study.speech(1))
    ident = identification(study, halves)
    p = ident["pairPrior"]
    service = rule(study, p["mean"], p["sd"])
    voice = voice_check(study, service)
    return {
        "identification": ident,
        "voiceCheck": voice,
        "verification": verification(halves, service),
        "similarVoice": similar_voice(study, service),
    }


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", nargs="?", help="write every figure here")
    parser.add_argument(
        "--context",
        type=float,
        default=0.0,
        metavar="S",
        help="give the model each speech region widened by S seconds (a study; the service gives none)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run(args.context)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print("\n".join(summary_lines(results)))
    return 0
