"""Diarization quality with the real model on conversations built from real speech of the report
half (`devtools.conversations`), scored by pyannote.metrics: a short version of
scripts/eval_diarization.py."""

from __future__ import annotations

import pytest
from pyannote.metrics.diarization import DiarizationErrorRate

from devtools.conversations import build, speech_source, telephone_source
from devtools.diarization import COLLAR_S, Harness, changes_found, hypothesis, reference
from service.diarization.turns import TurnOptions
from service.embedding.ecapa import EcapaEmbedder
from tests.conftest import needs_speech

pytestmark = [needs_speech, pytest.mark.model, pytest.mark.slow]

REPORT_HALF = 1


@pytest.fixture(scope="module")
def harness(embedder: EcapaEmbedder) -> Harness:
    return Harness.load(embedder)


def test_two_speakers_turn_changes_within_half_a_second(harness: Harness) -> None:
    c = build(speech_source(REPORT_HALF), seed=7, speakers=2, overlap=False)
    result = harness.service(TurnOptions()).diarize(0, harness.prepare(c))
    assert result.num_speakers == 2
    found, total = changes_found(c, result)
    assert total >= 5 and found == total, (c.rttm(), result.segments)
    der = DiarizationErrorRate(collar=COLLAR_S)(reference(c), hypothesis(c.name, result))
    assert der < 0.08


# Real calls' callers are told apart far less surely than read speech (see README, Accuracy): there
# the count is given, and the bound is looser.
@pytest.mark.parametrize(
    ("source", "speakers", "overlap", "count_given", "bound"),
    [("speech", 3, True, False, 0.15), ("telephone", 2, False, True, 0.3)],
)
def test_der_stays_under_a_loose_bound(
    harness: Harness, source: str, speakers: int, overlap: bool, count_given: bool, bound: float
) -> None:
    pool = speech_source(REPORT_HALF) if source == "speech" else telephone_source(REPORT_HALF)
    c = build(pool, seed=11, speakers=speakers, overlap=overlap)
    given = speakers if count_given else None
    result = harness.service(TurnOptions()).diarize(0, harness.prepare(c), speakers=given)
    der = DiarizationErrorRate(collar=COLLAR_S)(reference(c), hypothesis(c.name, result))
    assert der < bound, (der, result.num_speakers)
