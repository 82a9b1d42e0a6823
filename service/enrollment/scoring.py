"""The one decision rule: how a clip is scored against a tenant's speakers, in units that mean the
same on every channel.

1. Centre: remove the tenant's domain mean (the mean of its speakers' centroids, shrunk towards the
   mean of the model's training-speaker prototypes) from the clip and the centroids, then take the
   cosine. A channel (telephone codecs, a room, a handset) shifts every embedding made through it
   the same way; the tenant's speakers were enrolled through it too, so this removes the shift.
2. Level: where a voice the tenant never enrolled would score. The tenant's own speakers play the
   unknown voices: each one's centroid is scored against every other speaker's centroid, after
   centring on the tenant *without* it (exactly how an unknown caller is scored; centring on a mean
   that includes it would push its scores against the others down, most in a small tenant). The
   mean and sd of these scores, shrunk towards a prior for a tenant with few speakers, place the
   level for a clip compared against `gallery` speakers: ``mean + sd * (z(1 - p / gallery) -
   z(1 - p))``, z the standard normal quantile and p `DecisionRule.gallery_tail`. The best of
   `gallery` independent impostor scores passes a bar as often as one score passes a bar that much
   lower (``1 - (1 - p / g) ** g`` is p to within p^2 / 2): what a threshold controls is that upper
   tail, so the same threshold keeps the same false-accept rate at every gallery size. The level
   rises on channels where voices sound alike and with the number of speakers a clip is compared
   against (identify against all, a `speakerIds` list; verify against one: no rise). It rises more
   slowly than the best impostor score's mean (``E[max of gallery draws]``, the rule's first form:
   1.54 sd at 10 speakers, 2.51 at 100, against 0.76 and 1.39 here), which rejected ever more
   genuine callers as a tenant grew while its false accepts stayed at 0.
3. Normalised score = (centred cosine - level) / unit; one threshold in these units holds across
   channels. The plain cosine is always reported beside it.
4. Duration: a clip with less speech than `DecisionRule.short_s` gains ``short_slope * log(short_s
   / seconds)`` units. The vector of a short clip carries more noise, which pulls its cosines
   towards 0 against every speaker: unknown voices' best scores fall (their upper tail 1.0 unit
   lower at 0.7 s of speech than for the whole clip) and the threshold alone would reject short
   genuine clips it need not. The term puts the unknown voices' tail back where it lies for long
   clips, so one threshold keeps the same false-accept rate at every duration. It is the same for
   every candidate of a clip, so it never changes the ranking; voiceprints and clips of unknown
   duration get none.

Measured in `scripts/calibrate_decisions.py` (see `service/calibration.py` for the numbers): the
tenant's level tracks where unknown voices score on each channel (16 kHz, G.711, AMR-NB, Opus, MP3,
noise, reverberation and real telephone calls), which a fixed cosine threshold cannot. Adaptive
s-norm against the tenant's top-scoring voices was tried and separated genuine from unknown voices
less well than centring alone: with tens of speakers its per-candidate statistics are noise.
Second-order compensation was measured too (`scripts/nuisance_study.py`): projecting out the top
channel, within-speaker or tenant-adaptive nuisance directions (learnt on half of eval-speech), or
normalising each probe by its scores against the training-speaker prototypes, did not lower false
rejects at equal false accepts on the report half or on real calls, so the rule has none.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from service import calibration as cal

# Cohorts of up to this many speakers get exact leave-one-out statistics; larger ones are scored
# on the whole cohort's mean (its leave-one-out change is below 1/64) with a bounded set of probes.
EXACT_COHORT = 64
MAX_PROBES = 256
# Cohort centroids this close (plain cosine) are one voice and count once: different speakers'
# centroids reached at most 0.69 on every studio channel and 0.78 on real telephone calls (two labels
# that are probably one caller); copies of one recording score about 1.0.
SAME_VOICE = 0.85
# The duration term is measured down to 0.7 s of speech; identification refuses clips under 0.5 s.
MIN_TERM_SECONDS = 0.5


def gallery_offset(m: int, tail: float) -> float:
    """How far the bar for the best of `m` independent standard normal draws sits above the bar for
    one draw, both passed with probability `tail`: ``z(1 - tail / m) - z(1 - tail)``; 0 for m <= 1."""
    if m <= 1:
        return 0.0
    z = NormalDist().inv_cdf
    return float(z(1.0 - tail / m) - z(1.0 - tail))


def unit_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-8), dtype=np.float32)


def centred(queries: np.ndarray, centroids: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Cosines after removing `mean`: ``(n, dim)`` x ``(m, dim)`` -> ``(n, m)``."""
    return np.asarray(unit_rows(np.atleast_2d(queries) - mean) @ unit_rows(np.atleast_2d(centroids) - mean).T)


def domain_mean(centroids: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """The mean of `centroids` ``(c, dim)`` with `prior` counted as `prior_weight` speakers."""
    total = centroids.sum(axis=0) if len(centroids) else np.zeros_like(prior)
    return ((total + prior_weight * prior) / (len(centroids) + prior_weight)).astype(np.float32)


def distinct_voices(centroids: np.ndarray) -> np.ndarray:
    """`centroids` ``(c, dim)`` without the repeats of a voice (see `SAME_VOICE`), first kept."""
    if len(centroids) < 2:
        return centroids
    close = (centroids @ centroids.T) >= SAME_VOICE
    later = np.triu(np.ones_like(close), k=1)
    dropped = np.zeros(len(centroids), dtype=bool)
    for i in range(len(centroids)):
        if not dropped[i]:
            dropped |= close[i] & later[i]
    return centroids[~dropped]


def impostor_scores(centroids: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """The tenant's speakers scored against each other, leave one speaker out (see the module
    docstring): every ordered pair's centred cosine, ``(c * (c - 1),)``, or a bounded sample of the
    pairs for a large cohort."""
    c = len(centroids)
    if c < 2:
        return np.zeros(0, dtype=np.float32)
    if c > EXACT_COHORT:
        mean = domain_mean(centroids, prior, prior_weight)
        probes = np.linspace(0, c - 1, min(c, MAX_PROBES)).round().astype(int)
        scores = centred(centroids[probes], centroids, mean)
        scores[np.arange(len(probes)), probes] = np.nan  # a speaker against itself
        return np.asarray(scores[np.isfinite(scores)], dtype=np.float32)
    total = centroids.sum(axis=0)
    out = []
    for i in range(c):
        mean = (total - centroids[i] + prior_weight * prior) / (c - 1 + prior_weight)
        out.append(centred(centroids[i], np.delete(centroids, i, axis=0), mean).reshape(-1))
    return np.concatenate(out).astype(np.float32)


def shrunk_pair_stats(
    pairs: np.ndarray, speakers: int, prior_mean: float, prior_sd: float, strength: float
) -> tuple[float, float]:
    """Mean and sd of the impostor pair scores `pairs` of `speakers` voices, shrunk towards the prior
    (`prior_mean`, `prior_sd`) counted as `strength` speakers; the prior alone without pairs."""
    mean = float(pairs.mean()) if len(pairs) else prior_mean
    var = float(pairs.var()) if len(pairs) else prior_sd**2
    n, k = (speakers if len(pairs) else 0), strength
    return (n * mean + k * prior_mean) / (n + k), float(np.sqrt((n * var + k * prior_sd**2) / (n + k)))


@dataclass(frozen=True)
class DecisionRule:
    """The rule's constants (calibrated in `service.calibration`)."""

    prior_mean: np.ndarray  # (dim,): the mean of the model's training-speaker prototypes
    prior_weight: float  # the prior counted as this many speakers in the domain mean
    pair_mean: float  # prior for the mean of impostor pair scores
    pair_sd: float  # prior for their sd
    strength: float  # those priors counted as this many speakers
    unit: float  # cosine per normalised unit
    centring: bool = True  # off: plain cosine, for comparison only
    short_s: float = 0.0  # clips with less speech than this gain the duration term (0: none)
    short_slope: float = 0.0  # units per natural-log step of speech below `short_s`
    gallery_tail: float = cal.GALLERY_TAIL  # the tail the level keeps as the gallery grows

    @classmethod
    def calibrated(cls, prior_mean: np.ndarray, **changes: Any) -> DecisionRule:
        """The rule with `service.calibration`'s defaults (what a server runs unless its settings
        say otherwise), `changes` applied."""
        return replace(
            cls(
                prior_mean=prior_mean,
                prior_weight=cal.PRIOR_WEIGHT,
                pair_mean=cal.PAIR_MEAN,
                pair_sd=cal.PAIR_SD,
                strength=cal.PRIOR_STRENGTH,
                unit=cal.SCORE_UNIT,
                short_s=cal.SHORT_PROBE_S,
                short_slope=cal.SHORT_PROBE_SLOPE,
            ),
            **changes,
        )


@dataclass(frozen=True)
class TenantScale:
    """What the rule knows of one tenant: its domain mean and its impostor pair statistics."""

    mean: np.ndarray
    pair_mean: float
    pair_sd: float
    speakers: int  # distinct voices of the cohort behind the statistics


class Scorer:
    """Scores clips against a tenant's speakers with `DecisionRule`. Thread-safe; caches each
    tenant's scale until the cohort arrays handed to `scale` change."""

    # Cohorts kept per tenant: one per band (a tenant's wideband and narrowband voiceprints).
    COHORTS_PER_TENANT = 2
    # Tenants whose scales are kept, the most recently used (the index keeps as many cohorts).
    TENANTS = 4096

    def __init__(self, rule: DecisionRule) -> None:
        self.rule = rule
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, list[tuple[np.ndarray, TenantScale]]] = OrderedDict()

    def scale(self, tenant_id: int, cohort_ids: np.ndarray, cohort: np.ndarray) -> TenantScale:
        """The tenant's scale from its cohort (`cohort_ids` ``(c,)``, centroids ``(c, dim)``); the
        arrays must be the index's shared ones, replaced (not modified) when the cohort changes.
        A tenant's cohorts of both bands are cached side by side."""
        with self._lock:
            for ids, cached in self._cache.get(tenant_id, ()):
                if ids is cohort_ids:
                    self._cache.move_to_end(tenant_id)
                    return cached
        built = self.build_scale(cohort)
        with self._lock:
            kept = [e for e in self._cache.get(tenant_id, []) if e[0] is not cohort_ids]
            self._cache[tenant_id] = [(cohort_ids, built), *kept][: self.COHORTS_PER_TENANT]
            self._cache.move_to_end(tenant_id)
            while len(self._cache) > self.TENANTS:
                self._cache.popitem(last=False)
        return built

    def build_scale(self, cohort: np.ndarray) -> TenantScale:
        """The scale of a tenant whose cohort centroids are `cohort` ``(c, dim)``."""
        r = self.rule
        cohort = distinct_voices(cohort)
        c = len(cohort)
        if not r.centring:
            return TenantScale(np.zeros_like(r.prior_mean), r.pair_mean, r.pair_sd, c)
        pairs = impostor_scores(cohort, r.prior_mean, r.prior_weight)
        pair_mean, pair_sd = shrunk_pair_stats(pairs, c, r.pair_mean, r.pair_sd, r.strength)
        return TenantScale(
            mean=domain_mean(cohort, r.prior_mean, r.prior_weight),
            pair_mean=pair_mean,
            pair_sd=pair_sd,
            speakers=c,
        )

    def level(self, scale: TenantScale, gallery: int) -> float:
        """The tenant's level for a clip compared against `gallery` speakers (cosine units): see the
        module docstring."""
        return scale.pair_mean + scale.pair_sd * gallery_offset(gallery, self.rule.gallery_tail)

    def duration_term(self, seconds: float | np.ndarray | None) -> float | np.ndarray:
        """Units a clip with `seconds` of speech gains (see the module docstring); 0 for None."""
        r = self.rule
        if seconds is None or r.short_s <= 0:
            return 0.0
        held = np.clip(seconds, MIN_TERM_SECONDS, r.short_s)
        return r.short_slope * np.log(r.short_s / held)

    def scores(
        self,
        queries: np.ndarray,
        centroids: np.ndarray,
        scale: TenantScale,
        gallery: int,
        seconds: float | np.ndarray | None = None,
    ) -> np.ndarray:
        """Normalised scores of clips ``(n, dim)`` against speakers ``(m, dim)`` -> ``(n, m)``, for a
        clip compared against `gallery` speakers in all; `seconds`: each clip's speech (a number for
        all, or ``(n,)``), None where unknown."""
        if self.rule.centring:
            cosines = centred(queries, centroids, scale.mean)
        else:
            cosines = np.atleast_2d(queries) @ np.atleast_2d(centroids).T
        term = np.reshape(self.duration_term(seconds), (-1, 1))
        return np.asarray((cosines - self.level(scale, gallery)) / self.rule.unit + term)
