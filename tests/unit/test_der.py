"""The diarization error rate of service.tools.metrics against pyannote.metrics (the reference
implementation, a dev dependency) on built conversations' references and perturbed hypotheses."""

from __future__ import annotations

import random

import pytest
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

from service.tools.metrics import Turn, diarization_error


def annotation(turns: list[Turn]) -> Annotation:
    a = Annotation()
    for i, (label, start, end) in enumerate(turns):
        a[Segment(start, end), i] = label
    return a


def conversation(rng: random.Random, speakers: int, overlap: bool) -> list[Turn]:
    turns, t = [], 0.5
    for i in range(12):
        length = rng.uniform(1.0, 10.0)
        if overlap and i and rng.random() < 0.3:
            t -= rng.uniform(0.2, 1.0)
        turns.append((f"s{i % speakers}", round(t, 3), round(t + length, 3)))
        t += length + rng.uniform(0.1, 1.5)
    return turns


def perturbed(rng: random.Random, turns: list[Turn]) -> list[Turn]:
    """Shifted edges, renamed labels, a wrong label now and then, a turn dropped, a false alarm."""
    names = {label: f"h{k}" for k, label in enumerate(sorted({t[0] for t in turns}, reverse=True))}
    out: list[Turn] = []
    for label, start, end in turns:
        if rng.random() < 0.1:
            continue
        name = names[label] if rng.random() > 0.15 else rng.choice(sorted(names.values()))
        a, b = max(0.0, start + rng.uniform(-0.6, 0.6)), end + rng.uniform(-0.6, 0.6)
        # One label never overlaps itself (pyannote would count such a stretch twice).
        a = max([a, *(e for n, _, e in out if n == name)])
        if b > a:
            out.append((name, round(a, 3), round(b, 3)))
    out.append(("h9", 1.0, 2.5))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("collar", [0.0, 0.25, 0.5])
def test_der_matches_pyannote(seed: int, collar: float) -> None:
    rng = random.Random(seed)
    ref = conversation(rng, 2 + seed % 4, overlap=seed % 2 == 1)
    hyp = perturbed(rng, ref)
    ours = diarization_error(ref, hyp, collar=collar).der
    theirs = DiarizationErrorRate(collar=collar)(annotation(ref), annotation(hyp))
    assert ours == pytest.approx(theirs, abs=0.002)


def test_perfect_and_empty_answers() -> None:
    ref: list[Turn] = [("a", 0.0, 5.0), ("b", 5.5, 9.0)]
    assert diarization_error(ref, [("x", 0.0, 5.0), ("y", 5.5, 9.0)]).der == 0.0
    missed = diarization_error(ref, [], collar=0.0)
    assert missed.der == pytest.approx(1.0) and missed.missed == pytest.approx(8.5)
