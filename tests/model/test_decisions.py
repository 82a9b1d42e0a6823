"""The decision rule on real speech through the real model: one threshold in normalised units holds
on studio audio and on the same voices through a telephone codec, because the tenant's own level
moves with the channel."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.channels import channels, resample
from devtools.clips import load_clip, manifest
from service import calibration as cal
from service.embedding import weights
from service.embedding.ecapa import EcapaEmbedder, load_cohort
from service.enrollment.scoring import DecisionRule, Scorer, unit_rows
from tests.conftest import needs_speech

pytestmark = [needs_speech, pytest.mark.model]

SPEAKERS = 8  # enrolled, 3 clips each, tested on a 4th
UNKNOWN = 10  # one-clip speakers the tenant never enrolled
SECONDS = 6.0  # of each clip: enough for a voiceprint, and the test stays short


def _clips() -> tuple[dict[str, list[str]], list[str]]:
    by: dict[str, list[str]] = {}
    for row in manifest():
        by.setdefault(row.speaker, []).append(row.path)
    enrolled = {s: p[:4] for s, p in sorted(by.items()) if len(p) >= 6}
    picked = dict(list(enrolled.items())[:SPEAKERS])
    unknown = [p[0] for s, p in sorted(by.items()) if len(p) == 1][:UNKNOWN]
    return picked, unknown


@pytest.fixture(scope="module")
def scorer(embedder: EcapaEmbedder) -> Scorer:
    prototypes = load_cohort(weights.resolve(None))
    assert prototypes is not None
    return Scorer(DecisionRule.calibrated(prototypes.mean(axis=0)))


def _vectors(embedder: EcapaEmbedder, paths: list[str], channel: str) -> np.ndarray:
    through = channels(np.zeros(16_000, np.float32))[channel]
    out = []
    for path in paths:
        clip = load_clip(path).as_float()[: int(SECONDS * 16_000)]
        wave, rate = through(clip, 16_000, np.random.default_rng(0))
        out.append(embedder.embed(resample(wave, rate, 16_000)))
    return unit_rows(np.stack(out))


Heard = tuple[np.ndarray, np.ndarray, np.ndarray]  # centroids, genuine tests, unknown voices


@pytest.fixture(scope="module")
def heard(embedder: EcapaEmbedder) -> dict[str, Heard]:
    """Per channel: the tenant's centroids, its speakers' test clips, the unknown voices' clips."""
    enrolled, unknown = _clips()
    out = {}
    for channel in ("clean", "mulaw"):
        samples = [_vectors(embedder, paths[:3], channel) for paths in enrolled.values()]
        centroids = unit_rows(np.stack([s.mean(axis=0) for s in samples]))
        tests = _vectors(embedder, [paths[3] for paths in enrolled.values()], channel)
        out[channel] = (centroids, tests, _vectors(embedder, unknown, channel))
    return out


@pytest.mark.parametrize("channel", ["clean", "mulaw"])
def test_one_threshold_holds_on_studio_and_telephone_audio(
    heard: dict[str, Heard], scorer: Scorer, channel: str
) -> None:
    names = list(_clips()[0])
    centroids, tests, strangers = heard[channel]
    scale = scorer.build_scale(centroids)
    threshold = cal.IDENTIFY_THRESHOLD

    genuine = scorer.scores(tests, centroids, scale, len(names))
    best = genuine.argmax(axis=1)
    named = [names[j] if row[j] >= threshold else None for row, j in zip(genuine, best, strict=True)]
    assert sum(n == want for n, want in zip(named, names, strict=True)) >= SPEAKERS - 1, named
    assert all(n in (None, want) for n, want in zip(named, names, strict=True))  # never the wrong one
    best_unknown = scorer.scores(strangers, centroids, scale, len(names)).max(axis=1)
    assert int((best_unknown >= threshold).sum()) <= 1, best_unknown

    # The channel is what moved: the same voices through G.711 sit closer together (a wider spread
    # of impostor scores), and the tenant's level follows.
    if channel == "mulaw":
        studio_scale = scorer.build_scale(heard["clean"][0])
        assert scale.pair_sd > studio_scale.pair_sd
        assert scorer.level(scale, len(names)) > scorer.level(studio_scale, len(names))
