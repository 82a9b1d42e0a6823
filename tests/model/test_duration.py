"""The duration term on real speech through the real model: the first second of a clip's speech
is a noisier vector whose cosines shrink towards 0 against every voiceprint, genuine and unknown
alike; the term lets short genuine clips through while unknown voices' short clips stay out."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.clips import SetClip, manifest
from service import calibration as cal
from service.audio import MODEL_RATE
from service.audio.decode import decode
from service.audio.pipeline import SpeechDetector, prepare
from service.config import Settings
from service.embedding import weights
from service.embedding.ecapa import EcapaEmbedder, load_cohort
from service.enrollment.scoring import DecisionRule, Scorer, unit_rows
from tests.conftest import needs_speech

pytestmark = [needs_speech, pytest.mark.model]

SPEAKERS = 8  # enrolled on 3 clips each, tested on the first second of 3 others
UNKNOWN = 24  # one-clip speakers the tenant never enrolled
ENROLL_S = 8.0  # of each enrollment clip's speech: enough for a voiceprint, and the test stays short
SHORT_S = 1.0


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    prototypes = load_cohort(weights.resolve(None))
    assert prototypes is not None
    return Scorer(DecisionRule.calibrated(prototypes.mean(axis=0)))


def _speech(clip: SetClip) -> np.ndarray:
    audio = Settings().audio
    decoded = decode(
        clip.file.read_bytes(),
        clip.encoding,
        None,
        max_seconds=audio.max_seconds,
        timeout_s=audio.decode_timeout_s,
    )
    return prepare(decoded, SpeechDetector(audio.vad_threshold, audio.vad_narrowband_threshold)).speech_wave()


def _vectors(embedder: EcapaEmbedder, clips: list[SetClip], seconds: float) -> np.ndarray:
    return unit_rows(np.stack([embedder.embed(_speech(c)[: int(seconds * MODEL_RATE)]) for c in clips]))


Heard = tuple[list[str], np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def heard(embedder: EcapaEmbedder) -> Heard:
    """Centroids; genuine tests (first second, and whole) with their names; unknown voices (first
    second, and whole)."""
    by: dict[str, list[SetClip]] = {}
    for clip in manifest():
        by.setdefault(clip.speaker, []).append(clip)
    enrolled = [(s, c) for s, c in sorted(by.items()) if len(c) >= 6][:SPEAKERS]
    unknown = [c[0] for _, c in sorted(by.items()) if len(c) == 1][:UNKNOWN]
    centroids = unit_rows(np.stack([_vectors(embedder, c[:3], ENROLL_S).mean(axis=0) for _, c in enrolled]))
    tests = [clip for _, c in enrolled for clip in c[3:6]]
    truth = [s for s, c in enrolled for _ in c[3:6]]
    return (
        [s for s, _ in enrolled],
        centroids,
        _vectors(embedder, tests, SHORT_S),
        truth,
        _vectors(embedder, unknown, SHORT_S),
        _vectors(embedder, unknown, ENROLL_S),
    )


def test_short_genuine_clips_pass_more_often_while_unknown_voices_stay_out(
    heard: Heard, scorer: Scorer
) -> None:
    names, centroids, genuine, truth, strangers, strangers_whole = heard
    scale = scorer.build_scale(centroids)
    threshold = cal.IDENTIFY_THRESHOLD
    gallery = len(names)

    # The model: an unknown voice's first second scores lower than its whole speech.
    short_unknown = scorer.scores(strangers, centroids, scale, gallery).max(axis=1)
    whole_unknown = scorer.scores(strangers_whole, centroids, scale, gallery).max(axis=1)
    assert short_unknown.mean() < whole_unknown.mean()

    accepted = {}
    for label, seconds in (("without", None), ("with", SHORT_S)):
        scores = scorer.scores(genuine, centroids, scale, gallery, seconds)
        best = scores.argmax(axis=1)
        named = [names[j] if row[j] >= threshold else None for row, j in zip(scores, best, strict=True)]
        assert all(n in (None, want) for n, want in zip(named, truth, strict=True)), (
            named
        )  # never the wrong one
        accepted[label] = sum(n is not None for n in named)
        unknown = scorer.scores(strangers, centroids, scale, gallery, seconds).max(axis=1)
        assert int((unknown >= threshold).sum()) <= 1, unknown
    assert accepted["with"] > accepted["without"], accepted
