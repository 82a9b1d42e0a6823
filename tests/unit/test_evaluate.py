"""`speakerid evaluate` without a service: who is enrolled on what, the report's arithmetic on
synthetic answers, and the plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.tools import metrics
from service.tools.evaluate import (
    TrialKind,
    TrialRecord,
    build_report,
    format_report,
    plan_eval,
    plot_paths,
    probes_from,
    write_plots,
)
from service.tools.inputs import InputError, ManifestRow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(speaker: str, name: str, **extra: str) -> ManifestRow:
    return ManifestRow(Path(name), name, speaker, dict(extra))


# --- the plan ------------------------------------------------------------------------------------


def test_plan_enrolls_speakers_with_enough_clips_under_a_prefix() -> None:
    rows = [row(s, f"{s}{i}.flac") for s, n in (("a", 5), ("b b", 6), ("c", 2)) for i in range(n)]
    plan = plan_eval(rows, "eval-1234", enroll_clips=3, min_clips=5)
    assert plan.ids == {"a": "eval-1234-a", "b b": "eval-1234-b_b"}
    assert [r.name for r in plan.enroll["a"]] == ["a0.flac", "a1.flac", "a2.flac"]
    kinds = [(t.clip.name, t.kind, t.expected) for t in plan.trials]
    assert kinds[:2] == [("a3.flac", "genuine", "eval-1234-a"), ("a4.flac", "genuine", "eval-1234-a")]
    assert sum(k == "genuine" for _, k, _ in kinds) == 5 and kinds[-2:] == [
        ("c0.flac", "unknown", None),
        ("c1.flac", "unknown", None),
    ]
    assert plan.held_out == [] and plan.unused == 0


def test_probes_come_from_another_rendering_while_enrollment_keeps_the_originals() -> None:
    rows = [row(s, f"{s}/{i}.wav") for s, n in (("a", 5), ("c", 1)) for i in range(n)]
    plan = plan_eval(rows, "eval-1", enroll_clips=3, min_clips=5)
    rendered = [row(r.speaker, str(Path(r.name).with_suffix(".flac"))) for r in rows]
    probes_from(plan, rendered)
    assert names(plan.enroll["a"]) == ["a/0.wav", "a/1.wav", "a/2.wav"]
    assert [(t.clip.name, t.expected) for t in plan.trials] == [
        ("a/3.flac", "eval-1-a"),
        ("a/4.flac", "eval-1-a"),
        ("c/0.flac", None),
    ]
    with pytest.raises(InputError, match="no clip for 1 trials"):
        probes_from(plan_eval(rows, "eval-2", enroll_clips=3, min_clips=5), rendered[:-1])


def telephone_like() -> list[ManifestRow]:
    """Like eval-telephone: clips named <speaker>-<call>-<n>, sessions interleaved in the manifest."""
    calls = {
        "ann": [("c1", 2), ("c2", 2), ("c3", 3)],
        "bob": [("b1", 3), ("b2", 1)],
        "cy": [("y1", 4)],  # one call: cannot be enrolled across sessions
        "dee": [("d1", 1), ("d2", 1), ("d3", 1), ("d4", 2)],
    }
    consistent = {"ann": "1", "bob": "1", "cy": "1", "dee": "0"}
    rows = []
    for speaker, sessions in calls.items():
        for n in range(4):
            for session, count in sessions:
                if n < count:
                    rows.append(
                        row(
                            speaker,
                            f"{speaker}-{session}-{n}.wav",
                            session=session,
                            consistent=consistent[speaker],
                        )
                    )
    return rows


def names(rows: list[ManifestRow]) -> list[str]:
    return [r.name for r in rows]


def test_by_session_enrolls_from_earlier_calls_and_tests_on_other_calls() -> None:
    plan = plan_eval(telephone_like(), "eval-x", enroll_clips=3, min_clips=99, by_session=True)
    assert list(plan.ids) == ["ann", "bob", "dee"]
    # Round-robin over every call but the last: c1, c2, c1 for ann; calls c3 (untouched) is the test.
    assert names(plan.enroll["ann"]) == ["ann-c1-0.wav", "ann-c2-0.wav", "ann-c1-1.wav"]
    assert names(plan.enroll["bob"]) == ["bob-b1-0.wav", "bob-b1-1.wav", "bob-b1-2.wav"]
    # dee: three calls before the last, one clip each; with 2 enrollment clips d3 is held out too.
    assert names(plan.enroll["dee"]) == ["dee-d1-0.wav", "dee-d2-0.wav", "dee-d3-0.wav"]
    genuine = {t.clip.speaker for t in plan.trials if t.kind == "genuine"}
    by_speaker: dict[str, list[str]] = {}
    for t in plan.trials:
        by_speaker.setdefault(t.clip.speaker, []).append(t.clip.name)
    assert by_speaker["ann"] == ["ann-c3-0.wav", "ann-c3-1.wav", "ann-c3-2.wav"]
    assert by_speaker["bob"] == ["bob-b2-0.wav"]
    assert by_speaker["dee"] == ["dee-d4-0.wav", "dee-d4-1.wav"]
    assert genuine == {"ann", "bob", "dee"} and plan.unused == 1  # ann-c2-1
    assert {t.kind for t in plan.trials if t.clip.speaker == "cy"} == {"unknown"}  # one call only
    assert len(by_speaker["cy"]) == 4
    for t in plan.trials:  # no genuine test clip shares a call with its speaker's enrollment
        if t.kind == "genuine":
            sessions = {c.extra["session"] for c in plan.enroll[t.clip.speaker]}
            assert t.clip.extra["session"] not in sessions
    fewer = plan_eval(telephone_like(), "eval-x", enroll_clips=2, min_clips=99, by_session=True)
    assert names(fewer.enroll["dee"]) == ["dee-d1-0.wav", "dee-d2-0.wav"]
    assert [t.clip.name for t in fewer.trials if t.clip.speaker == "dee"] == [
        "dee-d3-0.wav",
        "dee-d4-0.wav",
        "dee-d4-1.wav",
    ]
    assert fewer.unused == 3  # ann-c1-1, ann-c2-1, bob-b1-2: from enrollment calls, not enrolled on


def test_only_consistent_keeps_doubtful_labels_as_unknown_speakers() -> None:
    plan = plan_eval(
        telephone_like(), "eval-x", enroll_clips=3, min_clips=99, by_session=True, only_consistent=True
    )
    assert list(plan.ids) == ["ann", "bob"]
    assert {t.kind for t in plan.trials if t.clip.speaker == "dee"} == {"unknown"}
    # A manifest without the column: the option changes nothing.
    plain = [row(s, f"{s}{i}.flac") for s in "ab" for i in range(5)]
    assert plan_eval(plain, "p", 3, 5, only_consistent=True).ids == plan_eval(plain, "p", 3, 5).ids


def test_unknown_fraction_holds_out_a_deterministic_share_of_speakers() -> None:
    rows = [row(f"spk{s:02d}", f"{s}-{i}.flac") for s in range(33) for i in range(6)]
    plan = plan_eval(rows, "p", 3, 5, unknown_fraction=0.3, seed=7)
    assert len(plan.held_out) == 10 and len(plan.ids) == 23
    assert not set(plan.held_out) & set(plan.ids)
    held = set(plan.held_out)
    assert {t.clip.speaker for t in plan.trials if t.kind == "unknown"} == held
    assert all(len([t for t in plan.trials if t.clip.speaker == s]) == 6 for s in held)  # every clip
    # The same options give the same split, whatever the manifest's order; another seed another one.
    again = plan_eval(list(reversed(rows)), "p", 3, 5, unknown_fraction=0.3, seed=7)
    assert set(again.held_out) == held
    assert set(plan_eval(rows, "p", 3, 5, unknown_fraction=0.3, seed=8).held_out) != held
    # Combined with --by-session, only speakers that could be enrolled are drawn.
    session_plan = plan_eval(telephone_like(), "p", 2, 99, by_session=True, unknown_fraction=0.5, seed=1)
    assert len(session_plan.held_out) == 2 and "cy" not in session_plan.held_out
    assert len(session_plan.ids) == 1


def test_plan_refuses_options_it_cannot_honour() -> None:
    rows = [row("a", f"a{i}.flac") for i in range(5)]
    with pytest.raises(InputError, match="session"):
        plan_eval(rows, "p", 3, 5, by_session=True)
    with pytest.raises(InputError, match="unknown-fraction"):
        plan_eval(rows, "p", 3, 5, unknown_fraction=1.0)
    with pytest.raises(InputError, match="min-clips"):
        plan_eval(rows, "p", 5, 5)


# --- the report on synthetic answers -------------------------------------------------------------


def answer(
    speaker: str, kind: TrialKind, expected: str | None, scores: dict[str, tuple[float, float]]
) -> TrialRecord:
    """An identify answer with candidates {id: (score, cosine)}, decided at a threshold of 5."""
    ranked = sorted(scores.items(), key=lambda kv: -kv[1][0])
    best = ranked[0]
    return TrialRecord(
        file=f"{speaker}.flac",
        speaker=speaker,
        kind=kind,
        expected=expected,
        status=200,
        speakerId=best[0] if best[1][0] >= 5 else None,
        score=best[1][0],
        threshold=5.0,
        candidates=[{"speakerId": k, "score": s, "cosine": c, "complete": True} for k, (s, c) in ranked],
    )


def refusal(speaker: str, kind: TrialKind, expected: str | None) -> TrialRecord:
    return TrialRecord(
        file=f"{speaker}-short.flac",
        speaker=speaker,
        kind=kind,
        expected=expected,
        status=422,
        errorcode="audio.InsufficientSpeech",
    )


def synthetic_answers() -> list[TrialRecord]:
    return [
        # genuine, right on both scorings
        answer("a", "genuine", "A", {"A": (9.0, 0.8), "B": (1.0, 0.1)}),
        # genuine: the service's score is right, the cosine baseline picks B
        answer("a", "genuine", "A", {"A": (6.0, 0.3), "B": (2.0, 0.4)}),
        # genuine, but below the service threshold: a false reject
        answer("b", "genuine", "B", {"A": (1.0, 0.1), "B": (4.0, 0.5)}),
        # unknown voice, named A by the service: a false accept
        answer("x", "unknown", None, {"A": (7.0, 0.2), "B": (0.0, 0.1)}),
        answer("y", "unknown", None, {"A": (2.0, 0.1), "B": (3.0, 0.2)}),
        refusal("z", "unknown", None),  # refused: a correct reject
        refusal("b", "genuine", "B"),  # refused: a false reject
        TrialRecord(
            file="w.flac", speaker="w", kind="unknown", expected=None, status=None, errorcode="client.X"
        ),  # never answered: left out
    ]


def test_report_counts_and_rates_on_synthetic_answers() -> None:
    report = build_report(synthetic_answers(), bootstrap=0)
    assert report["trials"] == {
        "sent": 8,
        "answered": 5,
        "refused": 2,
        "genuine": 3,
        "unknown": 2,
        "failedByCode": {"audio.InsufficientSpeech": 2, "client.X": 1},
        "refusedByCode": {"audio.InsufficientSpeech": 2},
    }
    score, cosine = report["score"], report["cosine"]
    assert (score["closedSetTop1"]["count"], score["closedSetTop1"]["of"]) == (3, 3)
    assert (cosine["closedSetTop1"]["count"], cosine["closedSetTop1"]["of"]) == (2, 3)
    assert cosine["closedSetTop1"]["ci95"] == list(metrics.wilson(2, 3))
    # open set: targets are own-speaker scores {9, 6, 4}, non-targets the unknowns' top {7, 3}
    assert (score["openSetEer"]["targets"], score["openSetEer"]["nontargets"]) == (3, 2)
    assert score["openSetEer"]["eer"] == pytest.approx(metrics.eer([9, 6, 4], [7, 3]).eer)
    fa5 = score["faAt5PercentFr"]
    assert fa5["threshold"] == 4.0 and (fa5["count"], fa5["of"]) == (1, 2)
    assert fa5["ci95"] == list(metrics.wilson(1, 2)) and fa5["falseRejects"]["count"] == 0
    # pairwise: 3 own-speaker pairs; 3 other-speaker pairs from genuine clips + 4 from unknown clips
    assert (score["pairwiseEer"]["targets"], score["pairwiseEer"]["nontargets"]) == (3, 7)
    assert cosine["pairwiseEer"]["eer"] == pytest.approx(
        metrics.eer([0.8, 0.3, 0.5], [0.1, 0.4, 0.1, 0.2, 0.1, 0.1, 0.2]).eer
    )
    service = report["service"]
    assert service["thresholds"] == [5.0]
    # judged: 5 answered + 2 refused; the refused genuine clip is a false reject
    assert (service["falseAccepts"]["count"], service["falseAccepts"]["of"]) == (1, 7)
    assert (service["unknownNamed"]["count"], service["unknownNamed"]["of"]) == (1, 3)
    assert (service["genuineNamedWrong"]["count"], service["genuineNamedWrong"]["of"]) == (0, 4)
    assert (service["falseRejects"]["count"], service["falseRejects"]["of"]) == (2, 4)
    assert service["falseRejects"]["ci95"] == list(metrics.wilson(2, 4))
    assert (service["genuineCorrect"]["count"], service["refusedGenuine"], service["refusedUnknown"]) == (
        2,
        1,
        1,
    )

    text = format_report(report, ["header"])
    assert "identify refused 2 clips, counted as rejects (1 genuine, 1 unknown)" in text
    assert "without an answer (left out): client.X 1" in text
    for entry in ("falseAccepts", "unknownNamed", "genuineNamedWrong", "falseRejects", "genuineCorrect"):
        low, high = service[entry]["ci95"]
        assert f"[{100 * low:.1f}, {100 * high:.1f}]" in text
    low, high = score["closedSetTop1"]["ci95"]
    assert f"[{100 * low:.1f}, {100 * high:.1f}]" in text


def test_bootstrap_intervals_follow_the_seed() -> None:
    records = [
        answer(s, "genuine", s.upper(), {s.upper(): (6.0 + i % 3, 0.5), "Q": (2.0 + i % 5, 0.2)})
        for i, s in enumerate("abcdefgh" * 3)
    ] + [answer(f"u{i}", "unknown", None, {"A": (1.0 + i, 0.1)}) for i in range(8)]
    first = build_report(records, bootstrap=100, seed=3)["score"]["openSetEer"]["ci95"]
    assert first == build_report(records, bootstrap=100, seed=3)["score"]["openSetEer"]["ci95"]


# --- plots ---------------------------------------------------------------------------------------


def test_plot_paths_follow_the_json_report_or_the_plots_folder(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "tel.json"
    assert plot_paths(out, None) == (tmp_path / "runs" / "tel.det.png", tmp_path / "runs" / "tel.scores.png")
    assert plot_paths(out, tmp_path / "p") == (
        tmp_path / "p" / "tel.det.png",
        tmp_path / "p" / "tel.scores.png",
    )
    assert plot_paths(None, tmp_path) == (tmp_path / "evaluate.det.png", tmp_path / "evaluate.scores.png")
    assert plot_paths(None, None) is None


@pytest.mark.slow
def test_plots_are_written_as_valid_pngs(tmp_path: Path) -> None:
    records = synthetic_answers()
    report = build_report(records, bootstrap=0)
    det, scores = tmp_path / "new" / "r.det.png", tmp_path / "new" / "r.scores.png"
    assert write_plots(records, report, det, scores) == [det, scores]
    for path in (det, scores):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    # Without unknown-speaker answers there is no open-set curve, but still a pairwise one.
    genuine_only = [r for r in records if r.kind == "genuine"]
    assert write_plots(genuine_only, build_report(genuine_only, bootstrap=0), det, scores) == [det, scores]
