"""The decision study: open-set identification of tenants built from embedded sets, under candidate
scoring rules, scored in numpy.

A *tenant* is a set of enrolled speakers, each with its enrollment vectors; a *trial* is a clip's
vector with its true speaker (or None: a voice the tenant never enrolled). A rule turns the trials
and the tenant into a ``(trials, speakers)`` score matrix; the decision is the best-scoring speaker
if its score reaches the threshold, else "unknown", as the service answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from devtools.embeddings import SHORT_S, Embedded
from service.enrollment.scoring import Scorer, TenantScale, centred, domain_mean, unit_rows


@dataclass(frozen=True)
class Tenant:
    names: list[str]
    samples: list[np.ndarray]  # per speaker: (n_i, dim) L2-normalised enrollment vectors

    @property
    def centroids(self) -> np.ndarray:
        return np.stack([unit_rows(s.mean(axis=0)) for s in self.samples])


@dataclass(frozen=True)
class Trials:
    vectors: np.ndarray  # (n, dim)
    truth: list[str | None]  # the speaker's name if enrolled in the tenant, else None
    group: list[str] = field(default_factory=list)  # the clip's own speaker label, for bootstraps
    clips: list[int] = field(default_factory=list)  # the clip's row in its manifest
    seconds: np.ndarray | None = None  # (n,): each clip's speech seconds (the duration term)

    def subset(self, keep: Sequence[int], unknown: bool = False) -> Trials:
        """The trials at `keep`; `unknown`: as voices the tenant never enrolled."""
        return Trials(
            self.vectors[list(keep)],
            [None if unknown else self.truth[i] for i in keep],
            [self.group[i] for i in keep] if self.group else [],
            [self.clips[i] for i in keep] if self.clips else [],
            None if self.seconds is None else self.seconds[list(keep)],
        )


@dataclass(frozen=True)
class Case:
    """One tenant and its trials, under one condition."""

    condition: str
    tenant: Tenant
    trials: Trials


def half_of(label: str, salt: str = "split") -> int:
    """0 or 1: a speaker's fixed half (calibration 0, report 1)."""
    return int(hashlib.sha256(f"{salt}:{label}".encode()).hexdigest(), 16) % 2


# --- rules ---------------------------------------------------------------------------------------


class Rule:
    name = "rule"

    def scores(self, tenant: Tenant, queries: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        """``(trials, speakers)``; `seconds`: each query's speech, for rules with a duration term."""
        raise NotImplementedError


class Cosine(Rule):
    name = "cosine"

    def scores(self, tenant: Tenant, queries: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(queries @ tenant.centroids.T)


class Centred(Rule):
    """The previous default: cosine after removing the tenant's (prior-shrunk) mean."""

    def __init__(self, prior: np.ndarray, weight: float = 5.0) -> None:
        self.prior, self.weight, self.name = prior, weight, f"centred(w={weight:g})"

    def scores(self, tenant: Tenant, queries: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        c = tenant.centroids
        return centred(queries, c, domain_mean(c, self.prior, self.weight))


class Service(Rule):
    """The service's rule (`service.enrollment.scoring.Scorer`); every enrolled speaker of the
    tenant is in its cohort, the gallery is the whole tenant, and each clip gets the duration term
    of its speech."""

    def __init__(self, scorer: Scorer, name: str = "service") -> None:
        self.scorer, self.name = scorer, name

    def scores(self, tenant: Tenant, queries: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        c = tenant.centroids
        scale = self.scorer.build_scale(c)
        return self.scorer.scores(queries, c, scale, len(c), seconds)


class MeanOfMaxLevel(Scorer):
    """The service's rule with the level's first form: the tenant's pair mean plus its sd times the
    mean of the best of `gallery` standard normal draws (Blom's approximation), which rises faster
    with the gallery than the service's tail-keeping level (1.54 sds at 10 speakers, 2.51 at 100)."""

    def level(self, scale: TenantScale, gallery: int) -> float:
        if gallery <= 1:
            return scale.pair_mean
        blom = NormalDist().inv_cdf((gallery - 0.375) / (gallery + 0.25))
        return scale.pair_mean + scale.pair_sd * blom


# --- decisions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    genuine: int
    unknown: int
    false_accepts: int  # unknown voices named as someone
    misidentified: int  # genuine clips named as another enrolled speaker
    false_rejects: int  # genuine clips answered "unknown"

    @property
    def fa(self) -> float:
        return self.false_accepts / max(self.unknown, 1)

    @property
    def fr(self) -> float:
        return self.false_rejects / max(self.genuine, 1)

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(
            self.genuine + other.genuine,
            self.unknown + other.unknown,
            self.false_accepts + other.false_accepts,
            self.misidentified + other.misidentified,
            self.false_rejects + other.false_rejects,
        )


EMPTY = Outcome(0, 0, 0, 0, 0)


@dataclass(frozen=True)
class Scored:
    """The best score and whether it names the right speaker, per trial of a case."""

    best: np.ndarray  # (n,)
    right: np.ndarray  # (n,) bool: argmax is the true speaker
    genuine: np.ndarray  # (n,) bool

    def outcome(self, threshold: float) -> Outcome:
        accepted = self.best >= threshold
        g, u = self.genuine, ~self.genuine
        return Outcome(
            genuine=int(g.sum()),
            unknown=int(u.sum()),
            false_accepts=int((accepted & u).sum()),
            misidentified=int((accepted & g & ~self.right).sum()),
            false_rejects=int((~accepted & g).sum()),
        )


def score_case(rule: Rule, case: Case) -> Scored:
    matrix = rule.scores(case.tenant, case.trials.vectors, case.trials.seconds)
    top = matrix.argmax(axis=1)
    names = np.array(case.tenant.names)
    truth = case.trials.truth
    return Scored(
        best=matrix[np.arange(len(top)), top],
        right=np.array([t is not None and names[j] == t for j, t in zip(top, truth, strict=True)]),
        genuine=np.array([t is not None for t in truth]),
    )


def pooled(scored: Sequence[Scored], threshold: float) -> Outcome:
    total = EMPTY
    for s in scored:
        total = total + s.outcome(threshold)
    return total


def fr_at_fa(scored: Sequence[Scored], fa: float) -> tuple[float, float]:
    """(threshold, false-reject rate) of the pooled trials at the lowest threshold whose false
    accepts are <= `fa`; a misidentified genuine trial counts as rejected."""
    best = np.concatenate([s.best for s in scored])
    right = np.concatenate([s.right for s in scored])
    g = np.concatenate([s.genuine for s in scored])
    ok = np.where(right[g], best[g], -np.inf)
    imp = np.sort(best[~g])[::-1]
    k = int(np.floor(fa * len(imp)))
    threshold = float(imp[k]) + 1e-6 if k < len(imp) else float(imp[-1])
    return threshold, float((ok < threshold).mean())


def threshold_for(scored: Sequence[Scored], fa_target: float, fr_target: float) -> float:
    """The threshold that meets `fr_target` on the pooled genuine trials of `scored` with the
    fewest false accepts, nudged up towards `fa_target` where the false-reject budget allows: the
    midpoint of the feasible range [t_fa, t_fr] when both can be met, else the point where the
    two rates' excess over their targets is equal."""
    grid = np.linspace(-1.0, 6.0, 1401)
    fa = np.array([pooled(scored, t).fa for t in grid])
    fr = np.array([pooled(scored, t).fr for t in grid])
    ok_fa, ok_fr = fa <= fa_target, fr <= fr_target
    both = ok_fa & ok_fr
    if both.any():
        feasible = grid[both]
        return float((feasible.min() + feasible.max()) / 2)
    excess = np.maximum(fa / fa_target, fr / fr_target)
    return float(grid[int(np.argmin(excess))])


# --- cases ---------------------------------------------------------------------------------------

ENROLL_CLIPS = 3


def _valid(e: Embedded, i: int, short: bool = False) -> bool:
    return bool(np.isfinite((e.short if short else e.vectors)[i]).all())


def _probes(e: Embedded, short: bool) -> tuple[np.ndarray, np.ndarray]:
    """The vectors trials are scored with and their speech seconds: each clip whole, or its first
    `SHORT_S` seconds of speech."""
    if short:
        return e.short, np.minimum(e.speech_s, SHORT_S)
    return e.vectors, e.speech_s


def speech_cases(
    name: str, enroll: Embedded, test: Embedded, half: int | None, short: bool = False
) -> list[Case]:
    """eval-speech: speakers with at least 6 clips are enrolled on their first 3 clips (through the
    enroll channel); their other clips (through the test channel) are genuine trials, and every clip
    of the one-clip speakers an unknown-voice trial. `half`: only speakers of that half (enrolled
    and unknown alike), else all. `short`: test on the first seconds of speech only."""
    by: dict[str, list[int]] = {}
    for i, row in enumerate(enroll.rows):
        if half is None or half_of(row.speaker) == half:
            by.setdefault(row.speaker, []).append(i)
    names: list[str] = []
    samples: list[np.ndarray] = []
    vecs: list[np.ndarray] = []
    truth: list[str | None] = []
    group: list[str] = []
    clips: list[int] = []
    tests, spoken = _probes(test, short)
    for spk, idx in by.items():
        if len(idx) >= 6:
            picked = [i for i in idx[:ENROLL_CLIPS] if _valid(enroll, i)]
            names.append(spk)
            samples.append(enroll.vectors[picked])
            trials = [i for i in idx[ENROLL_CLIPS:] if _valid(test, i, short)]
            truth += [spk] * len(trials)
        else:
            trials = [i for i in idx if _valid(test, i, short)]
            truth += [None] * len(trials)
        vecs += [tests[i] for i in trials]
        group += [spk] * len(trials)
        clips += trials
    tried = Trials(np.stack(vecs), truth, group, clips, spoken[clips])
    return [Case(name, Tenant(names, samples), tried)]


def telephone_cases(
    e: Embedded, consistent_only: bool = False, short: bool = False, folds: int = 2
) -> list[Case]:
    """eval-telephone: labels are split into `folds` groups by hash (0: none); in fold f, the labels of the
    other groups are enrolled (3 clips, round-robin over every call but the label's last) and tested
    on their last call's clips, while every clip of group f is an unknown-voice trial.
    `consistent_only`: genuine trials only from labels whose clips all agree (see the set's README)."""
    by: dict[str, dict[str, list[int]]] = {}
    for i, row in enumerate(e.rows):
        by.setdefault(row.speaker, {}).setdefault(row.extra["session"], []).append(i)
    tests, spoken = _probes(e, short)
    cases = []
    for fold in range(max(folds, 1)):
        names: list[str] = []
        samples: list[np.ndarray] = []
        vecs: list[np.ndarray] = []
        truth: list[str | None] = []
        group: list[str] = []
        clips: list[int] = []
        for spk, sessions in by.items():
            # folds=0: every label is enrolled (unknown voices come from `leave_one_out`)
            group_of = int(hashlib.sha256(f"fold:{spk}".encode()).hexdigest(), 16) % folds if folds else -1
            calls = list(sessions.values())
            if group_of == fold:
                trials = [i for c in calls for i in c if _valid(e, i, short)]
                truth += [None] * len(trials)
            else:
                pool = [list(c) for c in calls[:-1]]
                picked: list[int] = []
                while len(picked) < ENROLL_CLIPS and any(pool):
                    for c in pool:
                        if c and len(picked) < ENROLL_CLIPS:
                            picked.append(c.pop(0))
                    pool = [c for c in pool if c]
                picked = [i for i in picked if _valid(e, i)]
                names.append(spk)
                samples.append(e.vectors[picked])
                if consistent_only and e.rows[calls[-1][0]].extra.get("consistent") != "1":
                    trials = []
                else:
                    trials = [i for i in calls[-1] if _valid(e, i, short)]
                truth += [spk] * len(trials)
            vecs += [tests[i] for i in trials]
            group += [spk] * len(trials)
            clips += trials
        tried = Trials(np.stack(vecs), truth, group, clips, spoken[clips])
        cases.append(Case(f"telephone/{fold}", Tenant(names, samples), tried))
    return cases


def leave_one_out(cases: Sequence[Case]) -> list[Case]:
    """More unknown-voice trials from the same clips: for each enrolled speaker, a case whose tenant
    lacks it, with its genuine trials turned into unknown-voice ones (the other speakers' genuine
    trials are dropped there, and the case's own unknown trials appear once, in the original)."""
    out = list(cases)
    for case in cases:
        t = case.trials
        for k, name in enumerate(case.tenant.names):
            keep = [i for i, truth in enumerate(t.truth) if truth == name]
            if not keep:
                continue
            tenant = Tenant(
                [n for n in case.tenant.names if n != name],
                [s for j, s in enumerate(case.tenant.samples) if j != k],
            )
            out.append(Case(f"{case.condition}/-{name}", tenant, t.subset(keep, unknown=True)))
    return out
