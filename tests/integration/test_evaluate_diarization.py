"""`speakerid evaluate --diarization` against the real service over HTTP, on a built conversation,
its DER checked against pyannote.metrics on the same answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

from devtools.clips import silence_flac
from devtools.conversations import build, speech_source
from devtools.diarization import reference
from service.cli import main
from tests.conftest import LiveServer, needs_speech, new_key


@needs_speech
@pytest.mark.model
def test_evaluate_diarization_scores_a_built_conversation(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = build(speech_source(1), seed=5, speakers=2, overlap=False, turns=6)
    (tmp_path / "call.flac").write_bytes(c.flac())
    (tmp_path / "call.rttm").write_text(c.rttm())
    # A file the service refuses (no speech it can hear) still counts: its reference speech is missed.
    (tmp_path / "quiet.flac").write_bytes(silence_flac(3.0))
    (tmp_path / "quiet.rttm").write_text("SPEAKER quiet 1 0.500 2.000 <NA> <NA> a <NA> <NA>\n")
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "rttm"], ["call.flac", "call.rttm"], ["quiet.flac", "quiet.rttm"]])
    out = tmp_path / "report.json"
    key = new_key(live.settings, "evaluate-diarization")
    argv = [
        "evaluate",
        str(manifest),
        "--diarization",
        "--url",
        live.url,
        "--api-key",
        key,
        "--json",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr()
    document = json.loads(out.read_text())
    report, (answer, quiet) = document["report"], document["files"]
    assert report["answered"] == 1 and report["refused"] == 1 and report["count_right"] == 1.0
    assert "audio.InsufficientSpeech" in quiet["error"]
    hyp = Annotation()
    for i, s in enumerate(answer["segments"]):
        hyp[Segment(s["start"], s["end"]), i] = s["speaker_id"]
    theirs = DiarizationErrorRate(collar=0.25)(reference(c), hyp)
    assert report["der_answered"] == pytest.approx(theirs, abs=0.002)
    assert report["der_answered"] < 0.1
    # The refused file's 2 s (less the collar's 0.25 s) are missed speech on top.
    assert report["der"] > report["der_answered"] and report["missed"] > 0
    capsys.readouterr()
    wrong = [a if a != key else "sk_never-issued" for a in argv]
    assert main(wrong) == 2  # the run itself is refused, once, not every file as a 401
    assert capsys.readouterr().err.count("auth.InvalidKey") == 1


def test_an_rttm_of_several_recordings_gives_each_file_its_own_turns(tmp_path: Path) -> None:
    from service.tools.evaluate_diarization import read_rttm

    both = tmp_path / "set.rttm"
    both.write_text(
        "SPEAKER call1 1 0.00 1.50 <NA> <NA> a <NA> <NA>\n"
        "SPEAKER call2 1 0.00 3.00 <NA> <NA> b <NA> <NA>\n"
        "SPEAKER call1 1 2.00 1.00 <NA> <NA> c <NA> <NA>\n"
    )
    assert read_rttm(both, "call1") == [("a", 0.0, 1.5), ("c", 2.0, 3.0)]
    assert read_rttm(both, "call2") == [("b", 0.0, 3.0)]
    assert read_rttm(both, "call3") == []  # a recording the file gives no line has no speech
    one = tmp_path / "one.rttm"
    one.write_text("SPEAKER whatever 1 0.00 1.50 <NA> <NA> a <NA> <NA>\n")
    assert read_rttm(one, "call1") == [("a", 0.0, 1.5)]  # one recording: its id need not match


def test_evaluate_diarization_refuses_a_manifest_without_references(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,speaker\ncall.flac,a\n")
    argv = ["evaluate", str(manifest), "--diarization", "--url", "http://127.0.0.1:9", "--api-key", "k"]
    assert main(argv) == 2
