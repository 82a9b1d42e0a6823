"""How decisions move with the probe's speech duration, and whether a duration term in the rule
(a quality measure function) lowers false rejects at equal false accepts.

Every probe is scored as the service scores it (`service.enrollment.scoring.Scorer`, the tenant's
whole cohort, the gallery the whole tenant); a probe is a test clip whole or the vector of its first
0.7-5 s of speech (`devtools.embeddings.CROP_S`). Per trial the study keeps the best candidate's
centred cosine, the tenant's level, whether the best is the right speaker and the probe's speech
seconds, so any rule that moves a trial's score by a function of its own duration (which keeps the
best candidate) is evaluated in numpy. eval-speech half 0 sets, half 1 and eval-telephone report.

Usage: python -m scripts.duration_study
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from devtools import calibration as C
from devtools import decisions as D
from devtools.embeddings import CROP_S, Embedded
from devtools.study import CROPPED, crop_all
from service import calibration as cal
from service.enrollment.scoring import Scorer, centred
from service.tools.metrics import wilson

log = logging.getLogger(__name__)

# The eval-speech conditions of the study (enroll channel, test channel).
CONDITIONS = {
    "clean": ("clean", "clean"),
    "mulaw": ("mulaw", "mulaw"),
    "amrnb": ("amrnb", "amrnb"),
    "opus": ("opus", "opus"),
    "mixed": ("twin", "mulaw"),
}


@dataclass(frozen=True)
class Trials:
    """Per trial: best centred cosine, the tenant's level (cosine), right speaker, genuine, speech
    seconds, a label of its condition and duration."""

    cosine: np.ndarray
    level: np.ndarray
    right: np.ndarray
    genuine: np.ndarray
    seconds: np.ndarray
    label: np.ndarray

    def __add__(self, other: Trials) -> Trials:
        return Trials(*(np.concatenate([a, b]) for a, b in zip(self.fields(), other.fields(), strict=True)))

    def fields(self) -> tuple[np.ndarray, ...]:
        return (self.cosine, self.level, self.right, self.genuine, self.seconds, self.label)

    def where(self, keep: np.ndarray) -> Trials:
        return Trials(*(f[keep] for f in self.fields()))


def _empty() -> Trials:
    return Trials(
        np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0), np.zeros(0, dtype=object)
    )


def case_trials(
    scorer: Scorer, case: D.Case, seconds: np.ndarray, label: str, samples: float = 0.0
) -> Trials:
    """`samples`: the weight of the best single enrollment sample's centred cosine beside the
    centroid's (0: the centroid alone, as the service scores)."""
    c = case.tenant.centroids
    scale = scorer.build_scale(c)
    cos = centred(case.trials.vectors, c, scale.mean)
    if samples:
        best = np.stack(
            [centred(case.trials.vectors, s, scale.mean).max(axis=1) for s in case.tenant.samples], axis=1
        )
        cos = (1 - samples) * cos + samples * best
    top = cos.argmax(axis=1)
    names = np.array(case.tenant.names)
    truth = case.trials.truth
    n = len(top)
    return Trials(
        cosine=cos[np.arange(n), top],
        level=np.full(n, scorer.level(scale, len(c))),
        right=np.array([t is not None and names[j] == t for j, t in zip(top, truth, strict=True)]),
        genuine=np.array([t is not None for t in truth]),
        seconds=seconds,
        label=np.full(n, label, dtype=object),
    )


def _with_probes(e: Embedded, probes: np.ndarray) -> Embedded:
    """`e` whose `short` vectors are `probes` (the cases' short trials read them)."""
    return replace(e, short=probes)


def collect(
    study: C.Study, scorer: Scorer, crops: dict[str, np.ndarray], samples: float = 0.0
) -> dict[str, Trials]:
    """Trials per set: "speech/0", "speech/1" (eval-speech halves, every condition, whole clips
    and crops) and "telephone", "telephone-consistent" (whole calls and crops)."""
    e = study.embedded
    out: dict[str, Trials] = {}
    for half in (0, 1):
        total = _empty()
        for name, (enroll, test) in CONDITIONS.items():
            for j, probe in enumerate([None, *CROP_S]):
                t = e[test] if probe is None else _with_probes(e[test], crops[test][:, j - 1])
                cases = D.leave_one_out(D.speech_cases(name, e[enroll], t, half, short=probe is not None))
                for case in cases:
                    sec = (
                        t.speech_s[case.trials.clips]
                        if probe is None
                        else np.full(len(case.trials.clips), probe)
                    )
                    total = total + case_trials(
                        scorer, case, sec, f"{name}/{'whole' if probe is None else f'{probe:g}'}", samples
                    )
        out[f"speech/{half}"] = total
    tel = e["telephone"]
    for key, consistent in (("telephone", False), ("telephone-consistent", True)):
        total = _empty()
        for j, probe in enumerate([None, *CROP_S]):
            t = tel if probe is None else _with_probes(tel, crops["telephone"][:, j - 1])
            for case in D.leave_one_out(D.telephone_cases(t, consistent, short=probe is not None)):
                sec = (
                    t.speech_s[case.trials.clips] if probe is None else np.full(len(case.trials.clips), probe)
                )
                total = total + case_trials(
                    scorer, case, sec, f"telephone/{'whole' if probe is None else f'{probe:g}'}", samples
                )
        out[key] = total
    return out


# --- rules of the study: a trial's normalised score from its cosine, level and seconds -----------

Adjust = Callable[[Trials], np.ndarray]


def plain(t: Trials) -> np.ndarray:
    return np.asarray((t.cosine - t.level) / cal.SCORE_UNIT)


def shrink(b: float, ref: float) -> Adjust:
    """Short probes' cosines shrink towards 0 (their vectors carry more noise), genuine and impostor
    alike: the cosine is divided by ``r(d) = 1 + b * log(d / ref)`` (1 from `ref` on) before the
    level."""

    def f(t: Trials) -> np.ndarray:
        r = np.clip(1 + b * np.log(np.maximum(t.seconds, 0.1) / ref), 0.2, 1.0)
        return np.asarray((t.cosine / r - t.level) / cal.SCORE_UNIT)

    return f


def with_term(scorer: Scorer) -> Adjust:
    """The service's rule with its duration term (`Scorer.duration_term`)."""

    def f(t: Trials) -> np.ndarray:
        return np.asarray(plain(t) + scorer.duration_term(t.seconds))

    return f


def impostor_ratios(t: Trials) -> dict[float, float]:
    """Per crop duration: the unknown voices' mean best centred cosine over that of the whole clips
    of the same condition, averaged over conditions (how far short probes' cosines shrink)."""
    cond = np.array([s.split("/")[0] for s in t.label])
    tail = np.array([s.split("/")[1] for s in t.label])
    u = ~t.genuine.astype(bool)
    out: dict[float, list[float]] = {}
    for c in dict.fromkeys(cond):
        whole = t.cosine[u & (cond == c) & (tail == "whole")].mean()
        for d in CROP_S:
            keep = u & (cond == c) & (tail == f"{d:g}")
            if keep.any():
                out.setdefault(d, []).append(float(t.cosine[keep].mean() / whole))
    return {d: float(np.mean(v)) for d, v in out.items()}


def tail_gaps(t: Trials, q: float = 95.0) -> dict[float, float]:
    """Per crop duration: how far the unknown voices' `q`-th percentile normalised score lies below
    that of the whole clips of the same condition, averaged over conditions."""
    s = plain(t)
    cond = np.array([x.split("/")[0] for x in t.label])
    tail = np.array([x.split("/")[1] for x in t.label])
    u = ~t.genuine.astype(bool)
    out: dict[float, list[float]] = {}
    for c in dict.fromkeys(cond):
        whole = np.percentile(s[u & (cond == c) & (tail == "whole")], q)
        for d in CROP_S:
            keep = u & (cond == c) & (tail == f"{d:g}")
            if keep.sum() >= 20:
                out.setdefault(d, []).append(float(whole - np.percentile(s[keep], q)))
    return {d: float(np.mean(v)) for d, v in out.items()}


def fit_shift(gaps: dict[float, float], ref: float) -> float:
    """b of the term ``b * log(ref / d)`` (0 from `ref` on), least squares over the durations
    under `ref`."""
    x = np.array([np.log(ref / d) for d in gaps if d < ref])
    y = np.array([g for d, g in gaps.items() if d < ref])
    return float((x * y).sum() / (x * x).sum())


def fit_log(ratios: dict[float, float], ref: float) -> float:
    """b of ``r(d) = 1 + b * log(d / ref)`` (r = 1 from `ref` on), least squares over the
    durations under `ref`."""
    x = np.array([np.log(d / ref) for d in ratios if d < ref])
    y = np.array([r - 1 for d, r in ratios.items() if d < ref])
    return float((x * y).sum() / (x * x).sum())


def outcome(scores: np.ndarray, t: Trials, threshold: float) -> D.Outcome:
    return D.Scored(scores, t.right.astype(bool), t.genuine.astype(bool)).outcome(threshold)


def fr_at_fa(scores: np.ndarray, t: Trials, fa: float) -> tuple[float, float]:
    """(threshold, false-reject rate) at the lowest threshold whose false accepts are <= `fa`; a
    misidentified genuine trial counts as rejected."""
    return D.fr_at_fa([D.Scored(scores, t.right.astype(bool), t.genuine.astype(bool))], fa)


def cell(o: D.Outcome) -> str:
    def one(count: int, of: int) -> str:
        lo, hi = wilson(count, of)
        return f"{count}/{of} {100 * count / max(of, 1):.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"

    return (
        f"FA {one(o.false_accepts, o.unknown)}  FR {one(o.false_rejects, o.genuine)}  mis {o.misidentified}"
    )


def describe(sets: dict[str, Trials]) -> list[str]:
    """Genuine and best-impostor centred cosines by probe duration, and their ratio to whole clips."""
    lines = ["| set | probe | genuine cos mean | impostor best cos mean | sd | level | n gen / imp |"]
    for key in ("speech/0", "telephone-consistent"):
        t = sets[key]
        for label in sorted(set(t.label), key=lambda s: (s.split("/")[0], _order(s))):
            s = t.where(t.label == label)
            g, u = s.genuine.astype(bool), ~s.genuine.astype(bool)
            lines.append(
                f"| {key} | {label} | {s.cosine[g].mean():.3f} | {s.cosine[u].mean():.3f} | "
                f"{s.cosine[u].std():.3f} | {s.level.mean():.3f} | {g.sum()} / {u.sum()} |"
            )
    return lines


def _order(label: str) -> float:
    tail = label.split("/")[-1]
    return 99.0 if tail == "whole" else float(tail)


def report(
    sets: dict[str, Trials],
    rules: dict[str, Adjust],
    threshold_set: str = "speech/0",
    fixed: float | None = None,
) -> list[str]:
    """Each rule at the threshold set on `threshold_set` (every condition, whole clips and crops
    pooled), or at `fixed`, on every set and its groups."""
    lines = []
    for name, rule in rules.items():
        scored = {k: rule(v) for k, v in sets.items()}
        threshold = fixed if fixed is not None else _threshold(scored[threshold_set], sets[threshold_set])
        how = "fixed" if fixed is not None else f"FA <= 1 %, FR <= 5 % on {threshold_set}"
        lines.append(f"\n### {name}: threshold {threshold:.2f} ({how})")
        for k, t in sets.items():
            _, fr = fr_at_fa(scored[k], t, 0.01)
            lines.append(f"{k}: {cell(outcome(scored[k], t, threshold))}   FR at 1 % FA {100 * fr:.1f} %")
            for label, keep in _groups(t):
                lines.append(f"    {label}: {cell(outcome(scored[k][keep], t.where(keep), threshold))}")
    return lines


def _groups(t: Trials) -> list[tuple[str, np.ndarray]]:
    cond = np.array([s.split("/")[0] for s in t.label])
    whole = np.array([s.endswith("whole") for s in t.label])
    out = []
    for c in dict.fromkeys(cond):
        out.append((f"{c} whole", (cond == c) & whole))
        out.append((f"{c} crops", (cond == c) & ~whole))
    tail = np.array([s.split("/")[1] for s in t.label])
    for d in CROP_S:
        out.append((f"first {d:g} s, every condition", tail == f"{d:g}"))
    out.append(("whole, < 2 s", whole & (t.seconds < 2)))
    out.append(("whole, >= 2 s", whole & (t.seconds >= 2)))
    return out


def _threshold(scores: np.ndarray, t: Trials) -> float:
    grid = np.linspace(0.0, 6.0, 601)
    fa = np.array([outcome(scores, t, x).fa for x in grid])
    fr = np.array([outcome(scores, t, x).fr for x in grid])
    both = (fa <= C.FA_TARGET) & (fr <= C.FR_TARGET)
    if both.any():
        return float((grid[both].min() + grid[both].max()) / 2)
    return float(grid[int(np.argmin(np.maximum(fa / C.FA_TARGET, fr / C.FR_TARGET)))])


def load(names: Sequence[str] = CROPPED) -> tuple[C.Study, Scorer, dict[str, Trials]]:
    study = C.load()
    calib = study.speech(0)
    pair_mean, pair_sd = C.pair_prior(study, calib)
    scorer = C.rule(study, pair_mean, pair_sd).scorer
    return study, scorer, collect(study, scorer, crop_all(names=tuple(names)))


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m scripts.duration_study",
        description="How decisions move with a probe's speech duration (the first run embeds the crops: "
        "about 15 min on 2 CPU cores; the work goes to data/study).",
    ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    study, scorer, sets = load()
    print("\n".join(describe(sets)))
    ratios = impostor_ratios(sets["speech/0"])
    print("\nunknown voices' best centred cosine, crop / whole clip (half 0):", _fmt(ratios))
    print("eval-telephone (sets nothing):", _fmt(impostor_ratios(sets["telephone"])))
    gaps = tail_gaps(sets["speech/0"])
    print("unknown voices' 95th percentile score, whole clip - crop (half 0):", _fmt(gaps))
    print("eval-telephone (sets nothing):", _fmt(tail_gaps(sets["telephone"])))
    print(f"fit of b * ln({cal.SHORT_PROBE_S:g} / d) on half 0: b = {fit_shift(gaps, cal.SHORT_PROBE_S):.3f}")
    term = Scorer(replace(scorer.rule, short_s=cal.SHORT_PROBE_S, short_slope=cal.SHORT_PROBE_SLOPE))
    b = fit_log(ratios, 4.0)
    rules: dict[str, Adjust] = {
        "without the duration term": plain,
        f"duration term (b={cal.SHORT_PROBE_SLOPE:g}, below {cal.SHORT_PROBE_S:g} s)": with_term(term),
        f"cosine divided by 1 + {b:.3f} ln(d / 4) (compared)": shrink(b, 4.0),
    }
    print("\n".join(report(sets, rules, fixed=cal.IDENTIFY_THRESHOLD)))
    print("\n## enrollment side: centroid and best sample, false rejects at 1 % false accepts")
    for weight in (0.0, 0.25, 0.5, 1.0):
        by = collect(study, scorer, crop_all(), samples=weight)
        cells = []
        for key, t in by.items():
            whole = np.array([x.endswith("whole") for x in t.label])
            _, fr_whole = fr_at_fa(plain(t.where(whole)), t.where(whole), 0.01)
            _, fr_all = fr_at_fa(plain(t), t, 0.01)
            cells.append(f"{key} {100 * fr_whole:.1f} % (with crops {100 * fr_all:.1f} %)")
        print(f"best-sample weight {weight:g}: " + "; ".join(cells))
    return 0


def _fmt(values: dict[float, float]) -> str:
    return ", ".join(f"{d:g} s: {v:.2f}" for d, v in values.items())


if __name__ == "__main__":
    raise SystemExit(main())
