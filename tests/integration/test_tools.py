"""The operator tools (`speakerid enroll-bulk`, `speakerid evaluate`) as real HTTP clients.

The HTTP plumbing of evaluate is checked against a fake service (httpx.MockTransport), and both
commands end to end against the real service (real model, real speech) served over loopback. The
metrics and evaluate's arithmetic on synthetic answers are in tests/unit.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
from pathlib import Path
from threading import Event
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from tqdm import tqdm

from devtools.clips import silence_flac
from devtools.sets import EVAL_SPEECH
from service.cli import main
from service.tools import enroll_bulk, evaluate
from service.tools.client import (
    INTERRUPTED,
    FatalHttpError,
    RetryPolicy,
    ServiceClient,
    error_of,
    retry_after_seconds,
)
from service.tools.enroll_bulk import Options, Progress, Sample, StateFile
from service.tools.evaluate import build_report, plan_eval, run_eval
from service.tools.inputs import ManifestRow, read_manifest, speaker_ids
from tests.conftest import LiveServer, needs_speech, new_key

# --- inputs ----------------------------------------------------------------------------------------


def test_speaker_ids_are_made_valid_and_distinct() -> None:
    ids = speaker_ids(["José García", "a b", "a_b", "x" * 200, "///", "ok-1.2"])
    # A name that must be mended gets a hash of itself, so its id never depends on the others.
    assert re.fullmatch(r"Jose_Garcia-[0-9a-f]{8}", ids["José García"])
    assert ids["a_b"] == "a_b" and re.fullmatch(r"a_b-[0-9a-f]{8}", ids["a b"])  # a valid name keeps itself
    assert re.fullmatch(r"x{119}-[0-9a-f]{8}", ids["x" * 200])
    assert re.fullmatch(r"speaker-[0-9a-f]{8}", ids["///"]) and ids["ok-1.2"] == "ok-1.2"
    dots = speaker_ids(["..", "a..b"])  # no id of dots alone
    assert re.fullmatch(r"speaker-[0-9a-f]{8}", dots[".."]) and dots["a..b"] == "a..b"


# --- the HTTP client -----------------------------------------------------------------------------


def scripted(answers: list[httpx.Response | Exception]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return httpx.MockTransport(handler), seen


def test_client_retries_busy_answers_and_respects_retry_after() -> None:
    transport, seen = scripted(
        [
            httpx.Response(
                429, headers={"Retry-After": "2"}, json={"error": {"code": "request.RateLimited"}}
            ),
            httpx.Response(503),
            httpx.ConnectError("refused"),
            httpx.Response(200, json={"message": "Success"}),
        ]
    )
    slept: list[float] = []
    client = ServiceClient("http://svc", "k", transport=transport, sleep=slept.append)
    assert client.request("POST", "/x", json={}).json() == {"message": "Success"}
    assert len(seen) == 4 and seen[0].headers["X-API-Key"] == "k"
    assert slept[0] == 2.0 and all(0 <= s <= 30 for s in slept) and client.retries == 3


def test_client_gives_up_and_stops_on_a_bad_key() -> None:
    transport, _ = scripted([httpx.Response(503)] * 3)
    busy = ServiceClient(
        "http://svc", "k", transport=transport, retry=RetryPolicy(attempts=3), sleep=lambda _: None
    )
    assert busy.request("GET", "/x").status_code == 503
    transport, _ = scripted([httpx.ConnectError("down")] * 2)
    down = ServiceClient(
        "http://svc",
        "k",
        transport=transport,
        retry=RetryPolicy(attempts=2, reconnect_s=0.0),
        sleep=lambda _: None,
    )
    with pytest.raises(httpx.ConnectError):
        down.request("GET", "/x")
    fault = {
        "fault": {"faultstring": "Missing or invalid API key", "detail": {"errorcode": "auth.InvalidKey"}}
    }
    transport, _ = scripted([httpx.Response(401, json=fault)])
    with pytest.raises(FatalHttpError, match=r"auth\.InvalidKey"):
        ServiceClient("http://svc", "bad", transport=transport).request("GET", "/x")


def test_error_codes_of_both_error_shapes() -> None:
    fault = {"fault": {"faultstring": "Too short", "detail": {"errorcode": "audio.InsufficientSpeech"}}}
    assert error_of(httpx.Response(422, json=fault)) == ("audio.InsufficientSpeech", "Too short")
    native = {"error": {"code": "speaker.NotFound", "message": "Speaker not found"}}
    assert error_of(httpx.Response(404, json=native)) == ("speaker.NotFound", "Speaker not found")
    assert error_of(httpx.Response(502, text="<html>bad gateway</html>"))[0] == "http.502"
    assert (
        retry_after_seconds(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
        == 0
    )


# --- evaluate against a fake service -------------------------------------------------------------


def tone_wav(path: Path, seconds: float, rate: int = 16_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="PCM_16")


class FakeService:
    """Answers like the service, telling clips apart by their length: speaker A's clips last 1 s,
    B's 1.5 s (and "refused" speaker R's 0.5 s are always refused); anything else is unknown."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, request.url.path, body))
        if request.method == "DELETE":
            return httpx.Response(204)
        data, rate = sf.read(io.BytesIO(base64.b64decode(body["content"])))
        assert body["encoding"] == "FLAC" and rate == body["sampleRate"]
        who = {1.0: "A", 1.5: "B", 0.5: "R"}.get(round(len(data) / rate, 1))
        if request.url.path.endswith("/enrollments"):
            if who == "R":
                return httpx.Response(
                    422, json={"error": {"code": "audio.InsufficientSpeech", "message": "short"}}
                )
            return httpx.Response(201, json={"status": "enrolling"})
        ids = body["speakerIds"]
        own = next((i for i in ids if who and i.endswith(f"-{who}")), None)
        candidates = [
            {
                "speakerId": i,
                "score": 9.0 if i == own else 1.0,
                "cosine": 0.8 if i == own else 0.1,
                "complete": False,
            }
            for i in ids
        ]
        candidates.sort(key=lambda c: -c["score"])
        return httpx.Response(
            200,
            json={
                "speakerId": own,
                "score": candidates[0]["score"],
                "threshold": 5.0,
                "candidates": candidates,
                "speechSeconds": 1.0,
            },
        )


@pytest.mark.parametrize("resample", [None, 8000])
def test_evaluate_talks_to_the_service_as_specified(tmp_path: Path, resample: int | None) -> None:
    rows = []
    for speaker, seconds, count in (("A", 1.0, 3), ("B", 1.5, 3), ("R", 0.5, 3), ("X", 2.0, 1)):
        for i in range(count):
            tone_wav(tmp_path / f"{speaker}{i}.wav", seconds)
            rows.append(ManifestRow(tmp_path / f"{speaker}{i}.wav", f"{speaker}{i}.wav", speaker))
    plan = plan_eval(rows, "eval-test", enroll_clips=2, min_clips=3)
    fake = FakeService()
    client = ServiceClient("http://svc", "k", transport=httpx.MockTransport(fake))
    run = run_eval(client, plan, resample=resample, concurrency=3, progress=False)

    assert run.active == ["eval-test-A", "eval-test-B"] and run.dropped == ["eval-test-R"]
    refused = [r for r in run.enrolled if not r.accepted]
    assert len(run.enrolled) == 6 and {r.errorcode for r in refused} == {"audio.InsufficientSpeech"}
    identifies = [body for _, path, body in fake.requests if path == "/v1/identify"]
    assert len(identifies) == 3  # A2, B2 genuine, X0 unknown; R's test clip is left out
    assert all(b["speakerIds"] == run.active and b["topK"] == 2 for b in identifies)
    rates = {b["sampleRate"] for _, path, b in fake.requests if path != "/v1/identify" and "sampleRate" in b}
    assert rates | {b["sampleRate"] for b in identifies} == {resample or 16_000}
    deleted = sorted(path for method, path, _ in fake.requests if method == "DELETE")
    assert deleted == [f"/v1/speakers/eval-test-{s}" for s in "ABR"]  # the dropped speaker too
    report = build_report(run.trials, bootstrap=0)
    assert report["score"]["closedSetTop1"]["count"] == 2 and report["score"]["openSetEer"]["eer"] == 0.0
    assert report["service"]["falseAccepts"]["count"] == 0


def test_ctrl_c_stops_evaluate_in_one_line_after_deleting_its_speakers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "speaker"])
        for speaker, seconds in (("A", 1.0), ("B", 1.5)):
            for i in range(3):
                tone_wav(tmp_path / f"{speaker}{i}.wav", seconds)
                writer.writerow([f"{speaker}{i}.wav", speaker])
    fake = FakeService()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/speakers":
            return httpx.Response(200, json={"speakers": [], "total": 0})
        if request.url.path == "/v1/identify":
            raise KeyboardInterrupt  # the operator's Ctrl-C while trials are in flight
        return fake(request)

    def connect(args: Any) -> ServiceClient:
        return ServiceClient(args.url, args.api_key, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(evaluate, "connect", connect)
    argv = ["evaluate", str(manifest), "--url", "http://svc", "--api-key", "k", "--min-clips", "3"]
    assert main([*argv, "--enroll-clips", "2"]) == INTERRUPTED == 130
    err = capsys.readouterr().err
    assert "stopped: interrupted, no report" in err and "Traceback" not in err
    deleted = sorted(path for method, path, _ in fake.requests if method == "DELETE")
    assert len(deleted) == 2 and all(p.startswith("/v1/speakers/eval-") for p in deleted)


# --- both commands against the real service ------------------------------------------------------

ALICE = [f"librispeech/test-other/367/367-130732-000{i}.flac" for i in (2, 3, 5)]
BOB = ["librispeech/test-clean/61/61-70968-0000.flac"]
EVAL_SPEAKERS = {
    "ls-61": [
        f"librispeech/test-clean/61/{n}.flac"
        for n in ("61-70968-0000", "61-70968-0001", "61-70970-0000", "61-70970-0002")
    ],
    "vctk-p226": [f"vctk/p226/p226_{n}.wav" for n in ("003", "005", "011", "024")],
    "ls-118": ["librispeech/impostors-train-clean-100/118-121721-0000.flac"],
    "ls-201": ["librispeech/impostors-train-clean-100/201-122255-0000.flac"],
}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def state_lines(path: Path) -> list[dict[str, Any]]:
    """The answers in a state file (not the "sent" lines written before each request)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r["result"] != "sent"]


@needs_speech
@pytest.mark.model
def test_enroll_bulk_from_folders_summarises_and_resumes(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = new_key(live.settings, "bulk-folders")
    root = tmp_path / "speakers"
    (root / "alice").mkdir(parents=True)
    (root / "Bob Smith").mkdir()
    for rel in ALICE[:2]:
        shutil.copy(EVAL_SPEECH / rel, root / "alice")
    shutil.copy(EVAL_SPEECH / BOB[0], root / "Bob Smith" / "a.flac")
    shutil.copy(EVAL_SPEECH / BOB[0], root / "Bob Smith" / "b-copy.flac")  # a duplicate: 409
    (root / "Bob Smith" / "c-silence.flac").write_bytes(silence_flac(3.0))  # no speech: 422
    (root / "Bob Smith" / "notes.txt").write_text("not audio")
    args: list[str | Path] = ["enroll-bulk", root, "--url", live.url, "--api-key", key, "--concurrency", "2"]

    code, out = run_cli(capsys, *args)
    assert code == 0, out
    state = tmp_path / "speakers.enroll-bulk-state.jsonl"
    assert len(state_lines(state)) == 5
    assert "speakers: 2 (0 complete, 2 enrolling" in out
    assert "samples accepted: 3" in out and "samples refused: 2" in out
    assert "enrollment.DuplicateSample" in out and "audio.InsufficientSpeech" in out
    bob = speaker_ids(["Bob Smith"])["Bob Smith"]
    assert f"'Bob Smith' -> {bob}" in out and "notes.txt: extension .txt is not audio" in out
    with live.client(key) as client:
        assert client.get(f"/v1/speakers/{bob}").json()["samples"] == 1

    # A third file for alice: a re-run sends only that one and completes her enrollment.
    shutil.copy(EVAL_SPEECH / ALICE[2], root / "alice")
    code, out = run_cli(capsys, *args)
    assert code == 0, out
    lines = state_lines(state)
    assert len(lines) == 6 and lines[-1]["file"] == "alice/367-130732-0005.flac"
    assert lines[-1]["result"] == "accepted" and lines[-1]["message"] == "Complete"
    assert "already answered in an earlier run (skipped): 5" in out
    assert "speakers: 2 (1 complete, 1 enrolling" in out and "samples accepted: 4" in out
    with live.client(key) as client:
        assert client.get("/v1/speakers/alice").json()["samples"] == 3

    # --retry-refused sends the two refused files again (and they are refused again).
    code, out = run_cli(capsys, *args, "--retry-refused")
    assert code == 0 and len(state_lines(state)) == 8
    assert "samples accepted: 4" in out and "samples refused: 2" in out


@needs_speech
@pytest.mark.model
def test_enroll_bulk_from_a_csv(live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_key(live.settings, "bulk-csv")
    (tmp_path / "audio").mkdir()
    shutil.copy(EVAL_SPEECH / ALICE[0], tmp_path / "audio" / "one.flac")
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "speaker", "note"])
        writer.writerow(["audio/one.flac", "carol", "relative to the CSV"])
        writer.writerow([str(EVAL_SPEECH / ALICE[1]), "carol", "absolute"])
        writer.writerow(["audio/missing.flac", "carol", ""])
        writer.writerow([str(EVAL_SPEECH / BOB[0]), "bad id!", "an id to mend"])
        writer.writerow(["audio/one.flac", "dave", "same audio, another speaker: refused"])
        writer.writerow(["audio/one.flac", "carol", "listed again: sent once"])
    state = tmp_path / "my-state.jsonl"
    # One speaker at a time, so that carol has one.flac before dave asks for it.
    code, out = run_cli(
        capsys,
        "enroll-bulk",
        manifest,
        "--url",
        live.url,
        "--api-key",
        key,
        "--state",
        state,
        "--concurrency",
        "1",
    )
    assert code == 1, out  # a file of the list is missing: the migration is not whole
    bad_id = speaker_ids(["bad id!"])["bad id!"]
    assert "samples accepted: 3" in out and f"'bad id!' -> {bad_id}" in out
    assert "could not be read (fix, then run again) (1):\n  audio/missing.flac: file not found" in out
    assert "audio/one.flac: listed again for carol" in out
    assert "enrollment.DuplicateRecording" in out
    assert {(r["speakerId"], r["result"]) for r in state_lines(state)} == {
        ("carol", "accepted"),
        (bad_id, "accepted"),
        ("dave", "refused"),
    }
    with live.client(key) as client:
        listed = client.get("/audio/generic/api/v1/sync/diarization/get_enrolled_speakers").json()
    assert sorted(s["speaker_id"] for s in listed["enrolled_speaker_ids"]) == sorted([bad_id, "carol"])


@needs_speech
@pytest.mark.model
def test_evaluate_end_to_end_on_a_tiny_manifest(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = new_key(live.settings, "evaluate")
    (tmp_path / "silence.flac").write_bytes(silence_flac(2.0))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "speaker", "duration_s", "sample_rate", "source", "license"])
        for speaker, paths in EVAL_SPEAKERS.items():
            writer.writerows([str(EVAL_SPEECH / p), speaker, "", "16000", "", ""] for p in paths)
        writer.writerow(["silence.flac", "nobody", "2.0", "8000", "", ""])
    out_json = tmp_path / "report.json"
    options = ["--enroll-clips", "2", "--min-clips", "4", "--json", str(out_json), "--bootstrap", "50"]
    code, out = run_cli(capsys, "evaluate", manifest, "--url", live.url, "--api-key", key, *options)
    assert code == 0, out
    assert "closed-set top-1 accuracy" in out and "pairwise EER" in out and "cosine baseline" in out
    assert "identify refused 1 clips, counted as rejects (0 genuine, 1 unknown)" in out  # the silence
    for png in (tmp_path / "report.det.png", tmp_path / "report.scores.png"):
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and "plots: " in out

    document = json.loads(out_json.read_text())
    assert document["run"]["tenantSpeakersBefore"] == 0 and "warning" not in capsys.readouterr().err
    report = document["metrics"]
    assert report["trials"]["genuine"] == 4 and report["trials"]["unknown"] == 2
    assert report["trials"]["failedByCode"] == {"audio.InsufficientSpeech": 1}  # the silent clip
    assert [r["accepted"] for r in document["enrollment"]] == [True] * 4
    for scoring in ("score", "cosine"):
        assert report[scoring]["closedSetTop1"]["count"] == 4  # a man and a man of another corpus
        assert (report[scoring]["openSetEer"]["targets"], report[scoring]["openSetEer"]["nontargets"]) == (
            4,
            2,
        )
        assert (report[scoring]["pairwiseEer"]["targets"], report[scoring]["pairwiseEer"]["nontargets"]) == (
            4,
            8,
        )
        assert 0.0 <= report[scoring]["pairwiseEer"]["eer"] <= 1.0
    trial = next(t for t in document["trials"] if t["kind"] == "genuine")
    assert {c["speakerId"] for c in trial["candidates"]} == set(document["run"]["speakers"].values())
    with live.client(key) as client:
        assert client.get("/v1/speakers").json()["total"] == 0  # the run cleaned up after itself


@needs_speech
@pytest.mark.model
def test_enroll_bulk_stops_at_a_wrong_url_or_key(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in" / "dave").mkdir(parents=True)
    shutil.copy(EVAL_SPEECH / BOB[0], tmp_path / "in" / "dave")
    state = tmp_path / "state.jsonl"
    key = new_key(live.settings, "bulk-wrong")
    for url, api_key in ((live.url + "/nope", key), (live.url, "not-a-key")):
        code, _ = run_cli(
            capsys, "enroll-bulk", tmp_path / "in", "--url", url, "--api-key", api_key, "--state", state
        )
        assert code == 2
        assert not state.exists() or state.read_text() == ""  # a corrected re-run sends everything


@needs_speech
@pytest.mark.model
def test_enroll_bulk_resumes_a_killed_run_without_counting_its_lost_answers_as_refused(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = new_key(live.settings, "bulk-resume")
    (tmp_path / "in" / "erin").mkdir(parents=True)
    for rel in ALICE[:2]:
        shutil.copy(EVAL_SPEECH / rel, tmp_path / "in" / "erin")
    first = tmp_path / "in" / "erin" / Path(ALICE[0]).name
    # A killed run: the first file was sent and stored by the service, its answer lost with the client.
    with live.client(key) as client:
        body = {
            "content": base64.b64encode(first.read_bytes()).decode(),
            "encoding": "FLAC",
            "languageCode": "en-US",
            "speakerId": "erin",
        }
        assert client.post(enroll_bulk.ENROLL, json=body).status_code == 200
    state = tmp_path / "state.jsonl"
    sent = {"url": live.url + "/", "speakerId": "erin", "file": f"erin/{first.name}", "result": "sent"}
    state.write_text(json.dumps(sent) + "\n")

    code, out = run_cli(
        capsys, "enroll-bulk", tmp_path / "in", "--url", live.url, "--api-key", key, "--state", state
    )
    assert code == 0, out
    assert "samples accepted: 2 (1 already enrolled" in out and "samples refused: 0" in out
    answer = state_lines(state)[0]
    assert (answer["file"], answer["result"], answer["errorcode"]) == (
        f"erin/{first.name}",
        "accepted",
        "enrollment.DuplicateSample",
    )
    with live.client(key) as client:
        assert client.get("/v1/speakers/erin").json()["samples"] == 2


def test_a_sample_without_an_answer_holds_back_the_rest_of_its_speaker(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        tone_wav(tmp_path / f"{i}.wav", 1.0)
        paths.append(tmp_path / f"{i}.wav")
    transport, seen = scripted([httpx.Response(200, json={"message": "Success"}), httpx.Response(503)])
    client = ServiceClient("http://svc", "k", transport=transport, retry=RetryPolicy(attempts=1))
    state = StateFile(tmp_path / "state.jsonl")
    samples = [Sample(key=p.name, path=p, speaker="s") for p in paths]
    with tqdm(disable=True) as bar:
        progress = Progress(bar=bar)
        enroll_bulk.enroll_speaker(
            client, samples, Options("http://svc", "auto", "en-US"), state, progress, Event()
        )
    state.close()
    assert len(seen) == 2 and json.loads(seen[0].content)["encoding"] == "WAV"
    assert json.loads(seen[0].content)["sampleRate"] == 16_000
    assert progress.accepted == 1 and progress.unsent == {
        "HTTP 503 http.503": 1,
        "held back behind an unsent sample": 1,
    }
    assert [r["file"] for r in state_lines(tmp_path / "state.jsonl")] == ["0.wav"]
    sent = [json.loads(line) for line in (tmp_path / "state.jsonl").read_text().splitlines()]
    assert [(r["file"], r["result"]) for r in sent] == [
        ("0.wav", "sent"),
        ("0.wav", "accepted"),
        ("1.wav", "sent"),
    ]


def test_folders_and_files_that_cannot_be_read_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "in"
    for speaker in ("open", "locked"):
        (root / speaker).mkdir(parents=True)
        tone_wav(root / speaker / "1.wav", 1.0)
    walk = os.walk

    def walk_refusing_locked(top: Any, onerror: Any = None, **kwargs: Any) -> Any:
        if Path(top).name == "locked":  # as for a folder without permission (root reads any)
            onerror(PermissionError(13, "Permission denied", str(top)))
            return iter(())
        return walk(top, onerror=onerror, **kwargs)

    monkeypatch.setattr(os, "walk", walk_refusing_locked)
    plan = enroll_bulk.plan_input(root, "auto")
    assert list(plan.samples) == ["open"]
    assert plan.unreadable == [("locked", "folder unreadable (Permission denied)")]

    # A file that cannot be read when it is sent is named too (here: a folder where a file was).
    (tmp_path / "gone.wav").mkdir()
    transport, seen = scripted([])
    client = ServiceClient("http://svc", "k", transport=transport, retry=RetryPolicy(attempts=1))
    with tqdm(disable=True) as bar:
        progress = Progress(bar=bar)
        enroll_bulk.enroll_speaker(
            client,
            [Sample(key="gone.wav", path=tmp_path / "gone.wav", speaker="s")],
            Options("http://svc", "auto", "en-US"),
            StateFile(tmp_path / "state.jsonl"),
            progress,
            Event(),
        )
    assert not seen and progress.unreadable == [("gone.wav", "file unreadable (Is a directory)")]


@pytest.mark.parametrize("diarization", [False, True])
def test_evaluate_stops_in_one_line_at_a_missing_file_or_a_service_it_cannot_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], diarization: bool
) -> None:
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "rttm"] if diarization else ["path", "speaker"])
        for i in range(3):
            tone_wav(tmp_path / f"{i}.wav", 1.0)
            writer.writerow([f"{i}.wav", "ref.rttm" if diarization else "a"])
    (tmp_path / "ref.rttm").write_text("SPEAKER 0 1 0.000 1.000 <NA> <NA> a <NA> <NA>\n")
    mode = ["--diarization"] if diarization else ["--min-clips", "3", "--enroll-clips", "2"]
    service = ["--url", "http://127.0.0.1:9", "--api-key", "k", "--retries", "0"]
    argv = ["evaluate", str(manifest), *mode, *service]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: cannot reach http://127.0.0.1:9 (ConnectError")
    (tmp_path / "1.wav").unlink()
    assert main(argv) == 2
    assert "error: 1 file(s) of the manifest are missing, e.g. " in capsys.readouterr().err


def test_read_manifest_needs_path_and_speaker(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,who\na.flac,x\n")
    with pytest.raises(ValueError, match="missing column"):
        read_manifest(bad)
