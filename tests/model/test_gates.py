"""The enrollment gates' study (`python -m scripts.calibrate`) on a few speakers of eval-speech: the
values are proposed on half 0 of the speakers and reported on half 1 only. Real model, real speech;
the whole set is the script's."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from devtools import gates
from devtools.clips import set_clips
from devtools.decisions import half_of
from tests.conftest import needs_speech

pytestmark = [needs_speech, pytest.mark.model]


def small_manifest(folder: Path) -> Path:
    """Two speakers with three clips of 4-9 s and one single-clip speaker from each half."""
    clips = set_clips()
    chosen = []
    for half in (0, 1):
        by_speaker: dict[str, list[str]] = {}
        for c in clips:
            if half_of(c.speaker) == half and 4.0 <= c.duration_s <= 9.0:
                by_speaker.setdefault(c.speaker, []).append(c.path)
        several = [s for s, paths in by_speaker.items() if len(paths) >= 3][:2]
        single = next(s for s in by_speaker if s not in several)
        chosen += [(p, s) for s in several for p in by_speaker[s][:3]] + [(by_speaker[single][0], single)]
    durations = {c.path: c.duration_s for c in clips}
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "speaker", "duration_s"])
        writer.writerows([str(clips[0].folder / p), s, durations[p]] for p, s in chosen)
    return manifest


def test_the_gates_are_proposed_on_one_half_and_reported_on_the_other(tmp_path: Path) -> None:
    results = gates.run(small_manifest(tmp_path), tmp_path / "cache")
    halves = [set(h) for h in results["data"]["speakers_by_half"]]
    assert len(halves[0]) == len(halves[1]) == 3 and not halves[0] & halves[1]
    # Half 0's sections see half 0's speakers only: two of them with near-copies of three clips.
    assert results["duplicate"]["near_copy"]["mp3"]["n"] == 6
    assert set(results["duplicate"]["distinct_same_speaker"]["16k"]["by_speaker"]) <= halves[0]
    assert set(results["spread"]["distinct_sets"]["16k"]["by_speaker"]) <= halves[0]
    assert sum(row["clips"] for v, row in results["audio"].items() if v == "16k") == 7
    # Half 1 reports the current defaults and half 0's proposals, and proposes nothing of its own.
    held = results["held_out"]
    assert set(held["duplicate"]["distinct_same_speaker"]["16k"]["by_speaker"]) <= halves[1]
    assert held["duplicate"]["at"][0]["value"] == results["proposal"]["DUPLICATE_COSINE"]
    assert held["spread"]["at"][0]["value"] == results["proposal"]["MIN_SPREAD"]
    assert held["audio"]["16k"]["clips"] == 7
    # Different utterances of one speaker are not copies, on either half (3 pairs per speaker, in
    # each of the three conditions).
    refused = held["duplicate"]["current"]["distinct_pairs_refused"]
    assert refused["of"] == 2 * 3 * 3 and refused["count"] == 0
    assert held["spread"]["current"]["distinct_sets_refused"] == 0
    assert "6. Held out" in "\n".join(gates.render(results))
