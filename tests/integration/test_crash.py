"""Durability under SIGKILL: an acknowledged write survives the crash, and the index follows the database.

`devtools/crash.py` (`python -m scripts.crash_test`) runs `speakerid serve` as a child process on a
fresh database of each kind, loads it with concurrent clients that enroll real speech and delete
speakers (real model), kills it with SIGKILL at a random moment, restarts it and checks the database
and the restarted index against every acknowledged request; 10 cycles per database here (the
script's default run is 20). Its judge (which outcomes a request log allows) is checked first on
small synthetic logs, so that a pass means the judge can also fail.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools import crash
from devtools.clips import SetClip
from service.enrollment.policy import EnrollmentPolicy, centroid_and_spread
from service.enrollment.ports import SampleRecord, SpeakerRecord, SpeakerStatus
from tests.conftest import LiveServer, flac_body, needs_speech, new_key
from tests.databases import fresh_url, kind_params

CYCLES = 10  # the suite's share of the script's 20; each cycle costs the suite about 7 s
# Short load windows keep a cycle near 8 s (the restart, model load included, takes about 4-5 s).
WINDOW_S = (0.5, 3.0)

PROBE_CLIP = "librispeech/test-other/367/367-130732-0007.flac"
ENROLL_CLIP = "librispeech/test-other/367/367-130732-0002.flac"

# --- the judge on synthetic logs ------------------------------------------------------------------

SPEAKER = "spk-a"


def clip(n: int) -> SetClip:
    return SetClip(path=f"a/{n}.flac", speaker="a", duration_s=3.0 + n)


POOL = {SPEAKER: [clip(0), clip(1), clip(2)]}


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=192).astype(np.float32)
    return v / np.linalg.norm(v)


def enroll(n: int, start: int, end: int, status: int | None, sample_id: str | None = None) -> Any:
    route = "native" if sample_id else "compat"
    return crash.Op(1, 0, "enroll", route, SPEAKER, clip(n), start, end, status, sample_id)


def delete(start: int, end: int, status: int | None) -> Any:
    return crash.Op(1, 0, "delete", "native", SPEAKER, None, start, end, status)


def snapshot(*stored: tuple[str, int]) -> Any:
    """The database holding samples (sample id, clip number) of SPEAKER, its aggregates right."""
    now = datetime.now(UTC)
    rows = [SampleRecord(sid, vector(n), "sha", 2.0, clip(n).duration_s, 20.0, now) for sid, n in stored]
    speakers = {}
    if rows:
        centre, spread = centroid_and_spread([r.vector for r in rows])
        speakers[SPEAKER] = SpeakerRecord(
            1,
            1,
            SPEAKER,
            SpeakerStatus.ENROLLING,
            len(rows),
            2.0 * len(rows),
            spread,
            centre,
            "sha",
            now,
            now,
        )
    return crash.Snapshot(speakers, {SPEAKER: rows} if rows else {}, 0, {1})


def test_judge_passes_a_log_the_database_agrees_with() -> None:
    ops = [enroll(0, 1, 2, 201, "s0"), enroll(1, 3, 4, 200), enroll(2, 5, 9, 409)]
    verdict = crash.judge(ops, snapshot(("s0", 0), ("x", 1)), POOL)
    assert verdict.problems() == [] and verdict.inflight_committed == set()


def test_judge_finds_a_lost_acknowledged_enrollment() -> None:
    native = crash.judge([enroll(0, 1, 2, 201, "s0")], snapshot(), POOL)
    compat = crash.judge([enroll(1, 1, 2, 200)], snapshot(), POOL)
    assert len(native.lost) == 1 and len(compat.lost) == 1


def test_judge_allows_either_outcome_of_a_request_without_answer() -> None:
    # An enrollment in flight at the kill may or may not be there.
    unanswered = [enroll(0, 1, 10, None)]
    assert crash.judge(unanswered, snapshot(), POOL).problems() == []
    committed = crash.judge(unanswered, snapshot(("x", 0)), POOL)
    assert committed.problems() == [] and committed.inflight_committed == {"x"}
    # A delete in flight, sent before an enrollment was acknowledged, may have removed it.
    ops = [enroll(0, 1, 3, 201, "s0"), delete(2, 10, None)]
    assert crash.judge(ops, snapshot(), POOL).problems() == []
    assert crash.judge(ops, snapshot(("s0", 0)), POOL).problems() == []


def test_judge_finds_a_resurrected_delete() -> None:
    ops = [enroll(0, 1, 2, 201, "s0"), enroll(1, 3, 4, None), delete(5, 6, 204)]
    verdict = crash.judge(ops, snapshot(("s0", 0)), POOL)
    assert len(verdict.resurrected) == 1 and not verdict.lost
    # The in-flight enrollment ended (with the kill) before the acknowledged delete began.
    assert len(crash.judge(ops, snapshot(("y", 1)), POOL).resurrected) == 1
    # A delete that overlapped the enrollment may have come first: the sample may stay.
    overlapping = [enroll(0, 1, 4, 201, "s0"), delete(2, 6, 204)]
    assert crash.judge(overlapping, snapshot(("s0", 0)), POOL).problems() == []


def test_judge_finds_samples_no_request_explains() -> None:
    refused = [enroll(0, 1, 2, 409)]
    assert len(crash.judge(refused, snapshot(("x", 0)), POOL).phantoms) == 1
    stored_twice = [enroll(0, 1, 2, 201, "s0"), enroll(0, 3, 4, 200)]
    assert len(crash.judge(stored_twice, snapshot(("s0", 0), ("x", 0)), POOL).phantoms) == 1


def test_consistency_finds_aggregates_that_disagree_with_the_samples() -> None:
    policy = EnrollmentPolicy(3, 20.0, 0.02, 0.96, 0.2)
    good = snapshot(("a", 0), ("b", 1))
    assert crash.consistency_problems(good, policy) == []
    row = good.speakers[SPEAKER]
    bad = crash.Snapshot({SPEAKER: dataclasses.replace(row, sample_count=3)}, good.samples, 1, set())
    problems = crash.consistency_problems(bad, policy)
    assert any("sample_count 3" in p for p in problems)
    assert any("speaker row is missing" in p for p in problems)
    assert any("change-log" in p for p in problems)


@needs_speech
@pytest.mark.model
@pytest.mark.slow
def test_index_check_on_a_tenant_with_no_one_enrolled(live: LiveServer) -> None:
    """A first cycle can be killed before any write commits: the restarted server then holds no one,
    and identify answers "unknown" with no candidate, which is right. Once the tenant holds a speaker
    the database does not, the same check reports it."""
    probe = crash.Probe(SetClip(PROBE_CLIP, "ls-367", 0.0), vector(0))
    with live.client(new_key(live.settings, "crash-index-check")) as http:
        assert crash.index_problems(http, snapshot(), POOL, probe) == []
        enrolled = http.post(f"/v1/speakers/{SPEAKER}/enrollments", json=flac_body(ENROLL_CLIP))
        assert enrolled.status_code == 201, enrolled.text
        problems = crash.index_problems(http, snapshot(), POOL, probe)
    assert any("identify with nothing indexed answered 200" in p for p in problems), problems
    assert any(f"speakerIds=[{SPEAKER}] (not in the database) answered 200" in p for p in problems), problems


# --- the crash test itself ------------------------------------------------------------------------


@needs_speech
@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("kind", kind_params())
def test_acknowledged_writes_survive_sigkill(kind: str, tmp_path: Path) -> None:
    url = fresh_url(kind, tmp_path)
    seed = int(os.environ.get("SPEAKERID_CRASH_SEED", "20")) + (kind == "postgres")
    report = crash.run_crash_test(
        url,
        cycles=CYCLES,
        clients=4,
        seed=seed,
        window_s=WINDOW_S,
        migrate=False,
        log_dir=tmp_path / "logs",
    )
    summary = f"seed {seed}\n{report.summary()}"
    print(summary)
    assert report.ok, summary
    assert len(report.cycles) == CYCLES
    numbers = crash.numbers(report)
    # The run proves something only if writes were acknowledged and the kills caught requests.
    assert numbers["acknowledged_enrollments"] > 0 and numbers["acknowledged_deletes"] > 0, summary
    assert numbers["unanswered"] > 0, summary
