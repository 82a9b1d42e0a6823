"""Second-order channel and session compensation, measured: nuisance attribute projection (NAP).

Centring on the tenant removes the mean shift a channel gives every vector. What is left of the
channel (and of the session: handset, room, level, what was said) varies from clip to clip along a
few directions; projecting those directions out of every vector before centring and the cosine
(probe, centroids, cohort and the prior mean alike, then renormalised) should leave more of the
voice. The directions are the top principal ones of a scatter of nuisance deviations:

- channel: every eval-speech clip exists rendered through every condition; each rendering's vector
  less the clip's mean over its renderings (the voice and the words held fixed);
- speaker: each multi-clip speaker's clips less the speaker's mean, per condition (sessions and
  words vary, the channel held fixed);
- both together, each scatter weighed equally;
- tenant: the tenant's own enrolled samples less their speaker's mean (its own channel), combined
  with the generic channel scatter, counted as `tau` deviations.

Two softer relatives are measured beside it: whitening by the channel-and-speaker scatter
(WCCN-like, regularised; `Whitened`) and normalising each probe by its scores against the model's
training-speaker prototypes (`ProbeNormed`).

Every direction set is learnt on half 0 of eval-speech only. For each, the pair prior and the
threshold are set on half 0 as `devtools.calibration` sets them (all conditions pooled, and each
condition left out), and half 1 per condition and eval-telephone (which sets nothing) are reported:
the decisions at the threshold and false rejects at 1 % false accepts.

Usage: python -m scripts.nuisance_study [--ks 0,2,4,8,16,32] [--taus 10,100] [--lams 0.1,0.5,2]
    [--tops 100,400,2000]
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from devtools import calibration as C
from devtools import decisions as D
from service import calibration as cal
from service.embedding import weights
from service.embedding.ecapa import load_cohort
from service.enrollment.scoring import (
    DecisionRule,
    Scorer,
    TenantScale,
    centred,
    distinct_voices,
    domain_mean,
    impostor_scores,
    shrunk_pair_stats,
    unit_rows,
)

log = logging.getLogger(__name__)

# Every rendering of a clip the study holds: the channels and the narrowband twin of the 16 kHz clip.
RENDERINGS = ("clean", "mulaw", "alaw", "amrnb", "opus", "mp3", "noise", "reverb", "twin")
FA = 0.01


def channel_deviations(study: C.Study, half: int = 0) -> np.ndarray:
    """Each rendering's vector less its clip's mean over renderings, for the clips of `half`."""
    e = study.embedded
    keep = [i for i, row in enumerate(e["clean"].rows) if D.half_of(row.speaker) == half]
    stack = np.stack([e[name].vectors[keep] for name in RENDERINGS], axis=1)  # (clips, R, dim)
    out = []
    for clip in stack:
        v = clip[np.isfinite(clip).all(axis=1)]
        if len(v) >= 2:
            out.append(v - v.mean(axis=0))
    return np.concatenate(out)


def speaker_deviations(study: C.Study, half: int = 0) -> np.ndarray:
    """Each clip of a multi-clip speaker of `half` less the speaker's mean, per condition."""
    e = study.embedded
    by: dict[str, list[int]] = {}
    for i, row in enumerate(e["clean"].rows):
        if D.half_of(row.speaker) == half:
            by.setdefault(row.speaker, []).append(i)
    out = []
    for name in RENDERINGS:
        for idx in by.values():
            v = e[name].vectors[idx]
            v = v[np.isfinite(v).all(axis=1)]
            if len(v) >= 2:
                out.append(v - v.mean(axis=0))
    return np.concatenate(out)


def scatter(deviations: np.ndarray) -> np.ndarray:
    return np.asarray(deviations.T @ deviations / max(len(deviations), 1))


def directions(s: np.ndarray, k: int) -> np.ndarray:
    """The top `k` principal directions ``(k, dim)`` of scatter `s`."""
    values, vectors = np.linalg.eigh(s)
    return np.asarray(vectors[:, np.argsort(values)[::-1][:k]].T, dtype=np.float32)


def project(x: np.ndarray, basis: np.ndarray, renormalise: bool = True) -> np.ndarray:
    x = np.atleast_2d(x)
    if not len(basis):
        return x
    y = x - (x @ basis.T) @ basis
    return unit_rows(y) if renormalise else np.asarray(y, dtype=np.float32)


class Projected(D.Rule):
    """The service's rule on vectors with `basis` projected out (a fixed basis, or one per tenant
    from `tenant_basis`)."""

    def __init__(
        self,
        study: C.Study,
        basis: np.ndarray | None,
        name: str,
        tenant_basis: Callable[[D.Tenant], np.ndarray] | None = None,
    ) -> None:
        self.study, self.basis, self.name, self.tenant_basis = study, basis, name, tenant_basis
        self.scorer = Scorer(DecisionRule.calibrated(study.prior))

    def basis_for(self, tenant: D.Tenant) -> np.ndarray:
        if self.tenant_basis is not None:
            return self.tenant_basis(tenant)
        return self.basis if self.basis is not None else np.zeros((0, len(self.study.prior)), np.float32)

    def with_prior(self, pair_mean: float, pair_sd: float) -> Projected:
        out = copy.copy(self)
        out.scorer = Scorer(replace(self.scorer.rule, pair_mean=pair_mean, pair_sd=pair_sd))
        return out

    def parts(self, tenant: D.Tenant) -> tuple[np.ndarray, np.ndarray, Scorer]:
        basis = self.basis_for(tenant)
        prior = project(self.study.prior, basis, renormalise=False)[0]
        scorer = Scorer(replace(self.scorer.rule, prior_mean=prior))
        return basis, project(tenant.centroids, basis), scorer

    def scores(self, tenant: D.Tenant, queries: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        basis, c, scorer = self.parts(tenant)
        scale = scorer.build_scale(c)
        return scorer.scores(project(queries, basis), c, scale, len(c), seconds)

    def pairs(self, tenant: D.Tenant) -> np.ndarray:
        _, c, scorer = self.parts(tenant)
        return impostor_scores(c, scorer.rule.prior_mean, cal.PRIOR_WEIGHT)


class Whitened(Projected):
    """WCCN-like: every vector through ``(S + lam * mean eigenvalue * I) ** -1/2`` of a nuisance
    scatter `S`, then renormalised; a soft version of the projection (lam large: no change)."""

    def __init__(self, study: C.Study, s: np.ndarray, lam: float, name: str) -> None:
        super().__init__(study, None, name)
        values, vectors = np.linalg.eigh(s + lam * float(np.trace(s)) / len(s) * np.eye(len(s)))
        self.transform = np.asarray(vectors @ np.diag(values**-0.5) @ vectors.T, dtype=np.float32)

    def parts(self, tenant: D.Tenant) -> tuple[np.ndarray, np.ndarray, Scorer]:
        scorer = Scorer(replace(self.scorer.rule, prior_mean=self.study.prior @ self.transform))
        return self.transform, unit_rows(tenant.centroids @ self.transform), scorer

    def scores(self, tenant: D.Tenant, queries: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        _, c, scorer = self.parts(tenant)
        return scorer.scores(
            unit_rows(np.atleast_2d(queries) @ self.transform), c, scorer.build_scale(c), len(c), seconds
        )


class ProbeNormed(Projected):
    """Centred cosines normalised per probe by its own scores against the model's training-speaker
    prototypes (the `top` highest, centred on their mean): a probe whose cosines all sit low or high
    (a short, noisy or odd-channel clip) is put on the same footing as the others. The tenant's
    pair statistics are taken in the same normalised units."""

    def __init__(self, study: C.Study, prototypes: np.ndarray, top: int, name: str) -> None:
        super().__init__(study, None, name)
        self.prototypes = unit_rows(prototypes - study.prior)
        self.top = top
        self.pair_prior = (0.0, 1.0)

    def with_prior(self, pair_mean: float, pair_sd: float) -> Projected:
        out = copy.copy(self)
        out.pair_prior = (pair_mean, pair_sd)
        return out

    def stats(self, x: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cos = unit_rows(np.atleast_2d(x) - mean) @ self.prototypes.T
        best = -np.partition(-cos, self.top, axis=1)[:, : self.top]
        return best.mean(axis=1), best.std(axis=1)

    def normed(self, x: np.ndarray, c: np.ndarray, mean: np.ndarray) -> np.ndarray:
        mu, sd = self.stats(x, mean)
        return np.asarray((centred(x, c, mean) - mu[:, None]) / sd[:, None])

    def pairs(self, tenant: D.Tenant) -> np.ndarray:
        c = distinct_voices(tenant.centroids)
        r = self.scorer.rule
        total = c.sum(axis=0)
        out = []
        for i in range(len(c)):
            mean = (total - c[i] + r.prior_weight * r.prior_mean) / (len(c) - 1 + r.prior_weight)
            out.append(self.normed(c[i], np.delete(c, i, axis=0), mean).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0)

    def scores(self, tenant: D.Tenant, queries: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
        c = tenant.centroids
        r = self.scorer.rule
        voices = distinct_voices(c)
        mean = domain_mean(voices, r.prior_mean, r.prior_weight)
        p_mean, p_sd = self.pair_prior
        level_mean, level_sd = shrunk_pair_stats(self.pairs(tenant), len(voices), p_mean, p_sd, r.strength)
        level = self.scorer.level(TenantScale(mean, level_mean, level_sd, len(voices)), len(c))
        term = np.reshape(self.scorer.duration_term(seconds), (-1, 1))
        return np.asarray((self.normed(queries, c, mean) - level) / p_sd + term)


def tenant_adaptive(generic: np.ndarray, k: int, tau: float) -> Callable[[D.Tenant], np.ndarray]:
    """Per tenant: the top `k` directions of its enrolled samples' within-speaker scatter, the
    generic scatter counted as `tau` deviations beside its own."""

    def basis(tenant: D.Tenant) -> np.ndarray:
        devs = [s - s.mean(axis=0) for s in tenant.samples if len(s) >= 2]
        own = np.concatenate(devs) if devs else np.zeros((0, generic.shape[0]), np.float32)
        n = len(own)
        return directions((own.T @ own + tau * generic) / (n + tau), k)

    return basis


@dataclass
class Measured:
    name: str
    threshold: float
    pair: tuple[float, float]
    calib_fr_at_fa: float
    held_out: dict[str, tuple[float, D.Outcome]]  # condition -> (its threshold, report-half outcome)
    report_fr_at_fa: dict[str, float]
    telephone: dict[str, dict[str, Any]]


def measure(study: C.Study, rule: Projected, cases: dict[str, dict[str, list[D.Case]]]) -> Measured:
    calib = cases["calib"]
    means, sds = [], []
    for name in C.SPEECH:
        pairs = rule.pairs(calib[name][0].tenant)
        means.append(float(pairs.mean()))
        sds.append(float(pairs.std()))
    pair = (float(np.mean(means)), float(np.mean(sds)))
    r = rule.with_prior(*pair)
    s_cal = C.scored(r, calib)
    s_rep = C.scored(r, cases["report"])
    s_tel = C.scored(r, cases["telephone"])
    pooled_cal = [s for k in C.SPEECH for s in s_cal[k]]
    threshold = D.threshold_for(pooled_cal, C.FA_TARGET, C.FR_TARGET)
    held_out = {}
    for name in C.REPORTED:
        t = D.threshold_for([s for k in C.SPEECH if k != name for s in s_cal[k]], C.FA_TARGET, C.FR_TARGET)
        held_out[name] = (t, D.pooled(s_rep[name], t))
    telephone = {}
    for name, scored in s_tel.items():
        telephone[name] = {
            "at threshold": D.pooled(scored, threshold),
            "at the default": D.pooled(scored, cal.IDENTIFY_THRESHOLD),
            "fr at 1% fa": D.fr_at_fa(scored, FA)[1],
        }
    return Measured(
        name=rule.name,
        threshold=threshold,
        pair=pair,
        calib_fr_at_fa=D.fr_at_fa(pooled_cal, FA)[1],
        held_out=held_out,
        report_fr_at_fa={k: D.fr_at_fa(v, FA)[1] for k, v in s_rep.items()},
        telephone=telephone,
    )


def all_cases(study: C.Study) -> dict[str, dict[str, list[D.Case]]]:
    return {
        "calib": study.speech(0),
        "report": study.speech(1),
        "telephone": {
            "all": study.telephone(False),
            "consistent": study.telephone(True),
        },
    }


def rules(
    study: C.Study,
    ks: Sequence[int],
    taus: Sequence[float],
    tops: Sequence[int] = (),
    lams: Sequence[float] = (),
) -> list[Projected]:
    chan, spk = scatter(channel_deviations(study)), scatter(speaker_deviations(study))
    both = (chan + spk) / 2
    out = [Projected(study, None, "none")]
    out += [Whitened(study, both, lam, f"whitened lam={lam:g}") for lam in lams]
    if tops:
        prototypes = load_cohort(weights.resolve(None))
        assert prototypes is not None
        out += [ProbeNormed(study, prototypes, top, f"probe-normed top={top}") for top in tops]
    for k in ks:
        if k == 0:
            continue
        out += [
            Projected(study, directions(chan, k), f"channel k={k}"),
            Projected(study, directions(spk, k), f"speaker k={k}"),
            Projected(study, directions(both, k), f"both k={k}"),
        ]
        for tau in taus:
            out.append(Projected(study, None, f"tenant k={k} tau={tau:g}", tenant_adaptive(chan, k, tau)))
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def lines(m: Measured) -> list[str]:
    worst_fr = max(o.fr for _, o in m.held_out.values())
    worst_fa = max(o.fa for _, o in m.held_out.values())
    tel = m.telephone
    head = (
        f"## {m.name}: threshold {m.threshold:.2f}, pair prior {m.pair[0]:.3f}/{m.pair[1]:.3f}; "
        f"half 0 FR@1%FA {pct(m.calib_fr_at_fa)}; held out worst FA {pct(worst_fa)} FR {pct(worst_fr)}; "
        f"half 1 FR@1%FA mean {pct(float(np.mean(list(m.report_fr_at_fa.values()))))} "
        f"worst {pct(max(m.report_fr_at_fa.values()))}; "
        f"calls FR@1%FA all {pct(tel['all']['fr at 1% fa'])} "
        f"consistent {pct(tel['consistent']['fr at 1% fa'])}"
    )
    out = [head]
    for name, (t, o) in m.held_out.items():
        out.append(
            f"  {name:12s} held-out t {t:.2f}: FA {o.false_accepts}/{o.unknown} {pct(o.fa)} "
            f"FR {o.false_rejects}/{o.genuine} {pct(o.fr)} mis {o.misidentified}; "
            f"FR@1%FA {pct(m.report_fr_at_fa[name])}"
        )
    for name, a in tel.items():
        for at in ("at threshold", "at the default"):
            o = a[at]
            out.append(
                f"  calls {name:10s} {at:12s}: FA {o.false_accepts}/{o.unknown} {pct(o.fa)} "
                f"FR {o.false_rejects}/{o.genuine} {pct(o.fr)} mis {o.misidentified}"
            )
    return out


T = TypeVar("T", int, float)


def _listed(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse type: comma-separated values of `kind`."""

    def parse(text: str) -> list[T]:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints, floats = _listed(int), _listed(float)  # checked here, before the study's long load
    parser.add_argument("--ks", type=ints, default=ints("0,2,4,8,16,32"), help="directions removed")
    parser.add_argument("--taus", type=floats, default=[], help="tenant: the channel scatter's weight")
    parser.add_argument(
        "--lams", type=floats, default=[], help="whitening: regularisation, in mean eigenvalues"
    )
    parser.add_argument(
        "--tops", type=ints, default=[], help="probe normalisation: prototypes kept per probe"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    study = C.load()
    cases = all_cases(study)
    for rule in rules(study, args.ks, args.taus, args.tops, args.lams):
        print("\n".join(lines(measure(study, rule, cases))), flush=True)
    return 0
