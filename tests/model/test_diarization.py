"""Diarization quality with the real model on conversations built from real speech of the report
half (`devtools.conversations`), scored by pyannote.metrics: a short version of
scripts/eval_diarization.py."""

from __future__ import annotations

import numpy as np
import pytest
from pyannote.metrics.diarization import DiarizationErrorRate
from scipy.signal import correlate

from devtools.conversations import CallStream, build, speech_source, telephone_source
from devtools.diarization import COLLAR_S, Harness, changes_found, hypothesis, reference, tally
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


# Real calls' callers are told apart less surely than read speech (see README, Accuracy): there the
# DER is pooled over four calls, built as real ones are (each caller's turns from one call of
# theirs), and each call's two voices are counted, not given: on a call one caller's stretches are
# split into several voices unless what the line gives every voice is taken out first.
@pytest.mark.parametrize(
    ("source", "speakers", "overlap", "seeds", "bound"),
    [("speech", 3, True, (11,), 0.15), ("telephone", 2, False, (11, 12, 13, 14), 0.1)],
)
def test_the_count_is_found_and_the_der_stays_under_a_bound(
    harness: Harness,
    source: str,
    speakers: int,
    overlap: bool,
    seeds: tuple[int, ...],
    bound: float,
) -> None:
    pool = speech_source(REPORT_HALF) if source == "speech" else telephone_source(REPORT_HALF)
    metric = DiarizationErrorRate(collar=COLLAR_S)
    counts = []
    for seed in seeds:
        c = build(pool, seed=seed, speakers=speakers, overlap=overlap, one_call=source == "telephone")
        result = harness.service(TurnOptions()).diarize(0, harness.prepare(c))
        metric(reference(c), hypothesis(c.name, result))
        counts.append(result.num_speakers)
    assert counts == [speakers] * len(seeds), counts
    assert abs(metric) < bound, (abs(metric), counts)


def test_each_caller_speaks_from_one_call_of_theirs_in_order() -> None:
    """Every turn of a one-call telephone conversation is a stretch of that speaker's one call,
    later in the call than their turn before unless the call started again from the top."""
    source = telephone_source(REPORT_HALF)
    c = build(source, seed=0, speakers=2, overlap=False, one_call=True)
    wave = c.samples.astype(np.float32) / 32768
    backwards = 0
    for speaker in c.speakers:
        paths = source.calls[speaker]
        assert len({p.stem.rsplit("_c", 1)[0] for p in paths}) == 1
        call = CallStream(paths, c.rate).wave
        at = -1
        for t in (t for t in c.turns if t.speaker == speaker):
            start = round(t.start * c.rate)
            piece = wave[start : start + min(round((t.end - t.start) * c.rate), c.rate // 2)]
            # Cosine similarity of the piece with every stretch of the call as long as it.
            energy = np.concatenate([[0.0], np.cumsum(call.astype(np.float64) ** 2)])
            norms = np.sqrt(np.maximum(energy[len(piece) :] - energy[: -len(piece)], 1e-12))
            cosine = correlate(call, piece, mode="valid", method="fft") / (norms * np.linalg.norm(piece))
            offset = int(np.argmax(cosine))
            similarity = float(cosine[offset])
            assert similarity > 0.99, (speaker, t, similarity)
            backwards += offset < at
            at = offset
    assert backwards == c.loops


def test_a_call_whose_first_speech_is_short_still_gives_whole_turns() -> None:
    """A caller of the tuning half whose call, started again from the top, holds under 0.5 s of
    speech in the next turn's length: that turn runs on to the call's next speech instead."""
    c = build(telephone_source(1 - REPORT_HALF), seed=5, speakers=3, overlap=True, one_call=True)
    assert c.loops >= 1
    assert all(t.end - t.start >= 0.5 for t in c.turns), c.rttm()


def test_the_speech_heard_lies_inside_the_turns_without_their_pauses() -> None:
    """The second reference: each turn cut to the speech heard in its piece alone. A real call's
    turns hold pauses the first reference counts as speech; this one leaves them out."""
    for c in (
        build(telephone_source(REPORT_HALF), seed=3, speakers=3, overlap=False, one_call=True),
        build(speech_source(REPORT_HALF), seed=3, speakers=2, overlap=True),
    ):
        for s in c.speech:
            assert any(t.speaker == s.speaker and t.start <= s.start < s.end <= t.end for t in c.turns), s
        for t in c.turns:
            heard = [s for s in c.speech if s.speaker == t.speaker and t.start <= s.start < t.end]
            assert heard and heard[0].start == pytest.approx(t.start, abs=0.01)
            assert heard[-1].end == pytest.approx(t.end, abs=0.01)
        assert sum(s.end - s.start for s in c.speech) < sum(t.end - t.start for t in c.turns)


def test_the_der_splits_into_its_three_parts(harness: Harness) -> None:
    c = build(telephone_source(REPORT_HALF), seed=12, speakers=2, overlap=True, one_call=True)
    prepared = harness.prepare(c)
    service = harness.service(TurnOptions())
    figures = tally(
        [("call", c, prepared)],
        [service.diarize(0, prepared)],
        [service.diarize(0, prepared, do_vad=True)],
    )["call"]
    parts = figures["missed"] + figures["false_alarm"] + figures["confusion"]
    assert figures["missed"] > 0  # the overlapped turns' second voice at least
    assert parts == pytest.approx(figures["der"], abs=0.03)
    assert 0 < figures["der_speech"] < 100
