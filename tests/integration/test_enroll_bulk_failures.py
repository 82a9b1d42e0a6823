"""`speakerid enroll-bulk` when things go wrong: files too large to send, a wrong --url, a service
restarting, answers lost with a killed client, names that must be mended, broken links, Ctrl-C.

The command runs whole (`service.cli.main`) against a fake service (httpx.MockTransport) that
answers like the real one; the resume against the real service is in test_tools.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from service.cli import main
from service.config import AudioSettings
from service.enrollment.speaker_ids import is_speaker_id
from service.tools import client as client_module
from service.tools import enroll_bulk
from service.tools.client import INTERRUPTED, RetryPolicy, ServiceClient
from service.tools.enroll_bulk import ENROLL, ENROLLED, service_key
from service.tools.inputs import speaker_ids

URL = "http://svc:8000"
Handler = Callable[[httpx.Request], httpx.Response]


def tone_wav(path: Path, seconds: float = 0.5, hz: float = 220.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16_000)) / 16_000
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16_000, subtype="PCM_16")


DUPLICATE = {"fault": {"faultstring": "a near-copy", "detail": {"errorcode": "enrollment.DuplicateSample"}}}


class FakeService:
    """The routes enroll-bulk uses. `enroll` answers each POST (default: 200 "Success")."""

    def __init__(self, enroll: Handler | None = None) -> None:
        self.enroll = enroll or (lambda _: httpx.Response(200, json={"message": "Success"}))
        self.posts: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/speakers":
            return httpx.Response(200, json={"speakers": [], "total": 0})
        if request.url.path == ENROLLED:
            return httpx.Response(200, json={"enrolled_speaker_ids": []})
        assert request.url.path == ENROLL
        self.posts.append(json.loads(request.content))
        return self.enroll(request)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeService], FakeService]:
    """Make enroll-bulk's client talk to the given fake service, with its own options otherwise."""

    def use(fake: FakeService) -> FakeService:
        def connect(args: argparse.Namespace) -> ServiceClient:
            client = client_module.connect(args)  # the command's own options
            return ServiceClient(
                client.url, client.api_key, retry=client.retry, transport=httpx.MockTransport(fake)
            )

        monkeypatch.setattr(enroll_bulk, "connect", connect)
        return fake

    return use


def enroll(capsys: pytest.CaptureFixture[str], source: Path, state: Path, *more: str) -> tuple[int, str, str]:
    code = main(["enroll-bulk", str(source), "--url", URL, "--api-key", "k", "--state", str(state), *more])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def answers(state: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in state.read_text().splitlines()]
    return [r for r in lines if r["result"] != "sent"]


# --- 1. a file over the service's request limit is refused here, unread --------------------------


def test_a_file_too_large_for_one_request_is_refused_without_reading_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    service: Callable[[FakeService], FakeService],
) -> None:
    default = AudioSettings.model_fields["max_request_bytes"].default
    assert default == enroll_bulk.DEFAULT_MAX_BYTES  # the service's own default, 25 MiB
    tone_wav(tmp_path / "in" / "ann" / "small.wav")
    big = tmp_path / "in" / "ann" / "big.wav"
    with open(big, "wb") as fh:  # sparse: 300 MB on paper, nothing on disk
        fh.truncate(300 * 1024 * 1024)
    sent_to_body: list[Path] = []
    real_body = enroll_bulk.request_body

    def request_body(sample: enroll_bulk.Sample, options: enroll_bulk.Options) -> dict[str, Any]:
        sent_to_body.append(sample.path)
        return real_body(sample, options)

    monkeypatch.setattr(enroll_bulk, "request_body", request_body)
    fake = service(FakeService())
    code, out, _ = enroll(capsys, tmp_path / "in", tmp_path / "state.jsonl")
    assert code == 0, out  # the big file has its answer: it will never fit
    assert sent_to_body == [tmp_path / "in" / "ann" / "small.wav"] and len(fake.posts) == 1
    (refused,) = [r for r in answers(tmp_path / "state.jsonl") if r["result"] == "refused"]
    assert refused["file"] == "ann/big.wav" and refused["errorcode"] == "client.TooLarge"
    assert f"a request of at most {default} bytes (--max-bytes)" in refused["faultstring"]
    assert "samples refused: 1" in out and "client.TooLarge" in out

    # A server configured for less: --max-bytes says so, and the small file is refused too.
    code, out, _ = enroll(capsys, tmp_path / "in", tmp_path / "state2.jsonl", "--max-bytes", "1000")
    assert code == 0 and len(fake.posts) == 1 and "samples refused: 2" in out


# --- 2. a wrong --url stops the run at once -------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "notaurl", "ftp://127.0.0.1:9"])
def test_a_service_it_cannot_reach_stops_the_run_before_it_sends_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    tone_wav(tmp_path / "in" / "ann" / "1.wav")
    state = tmp_path / "state.jsonl"
    argv = ["enroll-bulk", str(tmp_path / "in"), "--url", url, "--api-key", "k", "--state", str(state)]
    assert main(argv) == 2  # with the default retries: a refused connection is not waited out
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach {url} (")
    assert not state.exists() or state.read_text() == ""


def test_the_client_never_retries_what_cannot_succeed() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol.")

    slept: list[float] = []
    client = ServiceClient("http://svc", "k", transport=httpx.MockTransport(handler), sleep=slept.append)
    with pytest.raises(httpx.UnsupportedProtocol):
        client.request("GET", "/x")
    assert len(calls) == 1 and slept == []


# --- 3. answers lost with a killed client; the same service spelled differently -------------------


def test_a_file_whose_answer_was_lost_is_counted_once_enrolled_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], service: Callable[[FakeService], FakeService]
) -> None:
    for name, hz in (("1.wav", 220.0), ("2.wav", 330.0), ("3-copy.wav", 220.0)):  # 3 is a copy of 1
        tone_wav(tmp_path / "in" / "ann" / name, hz=hz)
    state = tmp_path / "state.jsonl"
    # The run before was killed with 1.wav in flight: sent, stored by the service, never answered.
    state.write_text(
        json.dumps({"url": URL, "speakerId": "ann", "file": "ann/1.wav", "result": "sent"}) + "\n"
    )
    held = {(tmp_path / "in" / "ann" / "1.wav").read_bytes()}

    def enroll_answer(request: httpx.Request) -> httpx.Response:  # the service refuses a copy
        content = base64.b64decode(json.loads(request.content)["content"])
        if content in held:
            return httpx.Response(409, json=DUPLICATE)
        held.add(content)
        return httpx.Response(200, json={"message": "Success"})

    fake = service(FakeService(enroll_answer))
    # Spelled with a trailing slash and capitals: the same service, the same state.
    argv = ["enroll-bulk", str(tmp_path / "in"), "--api-key", "k", "--state", str(state)]
    code = main([*argv, "--url", "HTTP://SVC:8000/"])
    out = capsys.readouterr().out
    assert code == 0, out
    results = {r["file"]: (r["result"], r.get("message"), r.get("errorcode")) for r in answers(state)}
    assert results == {
        "ann/1.wav": ("accepted", "already enrolled", "enrollment.DuplicateSample"),
        "ann/2.wav": ("accepted", "Success", None),
        "ann/3-copy.wav": ("refused", None, "enrollment.DuplicateSample"),  # never sent before: a copy
    }
    assert len(fake.posts) == 3
    assert "samples accepted: 2 (1 already enrolled: sent again after their answer was lost)" in out
    assert "samples refused: 1" in out

    # A re-run with the URL spelled a third way sends nothing: every file has its answer.
    code = main([*argv, "--url", URL + "/"])
    out = capsys.readouterr().out
    assert code == 0 and len(fake.posts) == 3 and "already answered in an earlier run (skipped): 3" in out


def test_the_state_keys_a_service_by_its_url_normalised() -> None:
    assert service_key("HTTP://LocalHost:80/") == "http://localhost"
    assert service_key("http://127.0.0.1:18001/") == service_key("http://127.0.0.1:18001")
    assert service_key("https://Svc.example:443/speakerid/") == "https://svc.example/speakerid"
    assert service_key("http://user:secret@svc:8000/") == "http://svc:8000"  # no credentials kept
    assert service_key("http://localhost:8000") != service_key("http://127.0.0.1:8000")


def test_a_connection_broken_after_sending_makes_a_duplicate_answer_an_enrolled_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], service: Callable[[FakeService], FakeService]
) -> None:
    tone_wav(tmp_path / "in" / "ann" / "1.wav")
    tries: list[int] = []

    def enroll_answer(request: httpx.Request) -> httpx.Response:
        tries.append(1)
        if len(tries) == 1:  # stored, then the connection broke before the answer
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(409, json=DUPLICATE)

    service(FakeService(enroll_answer))
    code, _, _ = enroll(capsys, tmp_path / "in", tmp_path / "state.jsonl")
    assert code == 0 and len(tries) == 2
    assert [(r["result"], r["message"]) for r in answers(tmp_path / "state.jsonl")] == [
        ("accepted", "already enrolled")
    ]


# --- 4. mended names: the same id on every run ------------------------------------------------------


def test_mended_speaker_ids_depend_on_the_name_alone() -> None:
    names = ["José", "Josè", "Jose", "a b", "///", ".."]
    ids = speaker_ids(names)
    assert ids["Jose"] == "Jose"  # a valid name keeps itself, no suffix
    assert len(set(ids.values())) == len(names) and all(is_speaker_id(i) for i in ids.values())
    assert ids["José"].startswith("Jose-") and ids["Josè"].startswith("Jose-")
    assert speaker_ids(reversed(names)) == ids  # whatever the order
    assert speaker_ids(["José"]) == {"José": ids["José"]}  # whatever else the input names
    assert speaker_ids(["Josè", "x y"])["Josè"] == ids["Josè"]
    nfd = "Jose\u0301"  # José typed as e + combining accent (as macOS names folders): one person
    assert speaker_ids([nfd])[nfd] == ids["José"]
    long = speaker_ids(["é" + "x" * 300])["é" + "x" * 300]
    assert len(long) == 128 and is_speaker_id(long)


def test_a_resorted_csv_sends_each_file_to_the_same_speaker_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], service: Callable[[FakeService], FakeService]
) -> None:
    rows = []
    for name, hz in (("José", 220.0), ("Josè", 330.0)):
        for i in range(2):
            path = tmp_path / f"{hz:.0f}-{i}.wav"
            tone_wav(path, hz=hz + 20 * i)
            rows.append(f"{path},{name}")
    state = tmp_path / "state.jsonl"
    first, second = tmp_path / "run1.csv", tmp_path / "run2.csv"
    first.write_text("path,speaker\n" + "\n".join(rows[:3]) + "\n")
    second.write_text("path,speaker\n" + "\n".join(reversed(rows)) + "\n")  # re-sorted, one more row
    fake = service(FakeService())
    assert enroll(capsys, first, state)[0] == 0
    assert enroll(capsys, second, tmp_path / "state.jsonl")[0] == 0
    ids = speaker_ids(["José", "Josè"])
    by_file = {(Path(r["file"]).name, r["speakerId"]) for r in answers(state)}
    assert by_file == {
        ("220-0.wav", ids["José"]),
        ("220-1.wav", ids["José"]),
        ("330-0.wav", ids["Josè"]),
        ("330-1.wav", ids["Josè"]),
    }
    assert len(fake.posts) == 4  # the re-sorted run sent only the new row


# --- 5. a broken link in a speaker folder is named -------------------------------------------------


def test_a_broken_link_in_a_speaker_folder_is_named_and_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], service: Callable[[FakeService], FakeService]
) -> None:
    tone_wav(tmp_path / "in" / "ann" / "ok.wav")
    os.symlink(tmp_path / "gone" / "moved.wav", tmp_path / "in" / "ann" / "moved.wav")
    os.mkfifo(tmp_path / "in" / "ann" / "pipe.wav")
    fake = service(FakeService())
    code, out, _ = enroll(capsys, tmp_path / "in", tmp_path / "state.jsonl")
    assert code == 1 and len(fake.posts) == 1
    assert "could not be read (fix, then run again) (2):" in out
    assert f"  ann/moved.wav: broken link (to {tmp_path / 'gone' / 'moved.wav'}, which is missing)" in out
    assert "  ann/pipe.wav: not a regular file" in out


# --- 6. a service restarting is waited out ---------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_connection_failures_are_retried_through_a_restart_then_given_up() -> None:
    clock = FakeClock()
    down_until = 20.0  # a slow restart: refused connections for 20 s (5 retries wait 15.5 s at most)

    def handler(request: httpx.Request) -> httpx.Response:
        if clock.now < down_until:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return httpx.Response(200, json={"message": "Success"})

    client = ServiceClient(
        "http://svc", "k", transport=httpx.MockTransport(handler), sleep=clock.sleep, clock=clock
    )
    assert client.request("POST", "/x").status_code == 200
    assert clock.now >= down_until and client.retries > 5  # more than the 5 retries of other errors
    assert max(clock.slept) <= RetryPolicy().reconnect_max_delay_s

    clock, down_until = FakeClock(), float("inf")  # never comes back: given up within the budget
    client = ServiceClient(
        "http://svc",
        "k",
        retry=RetryPolicy(reconnect_s=20.0),
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
    )
    with pytest.raises(httpx.ConnectError):
        client.request("POST", "/x")
    assert 15.0 <= clock.now <= 20.0


def test_a_stop_ends_the_wait_for_a_service_that_is_down() -> None:
    stop = threading.Event()
    stop.set()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    client = ServiceClient("http://svc", "k", transport=httpx.MockTransport(handler), stop=stop)
    with pytest.raises(httpx.ConnectError):
        client.request("POST", "/x")  # at once, not after a minute of retries
    assert client.retries == 0


# --- 7. Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_stops_enroll_bulk_with_130_and_keeps_the_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], service: Callable[[FakeService], FakeService]
) -> None:
    for i in range(3):
        tone_wav(tmp_path / "in" / "ann" / f"{i}.wav", hz=200.0 + 50 * i)

    def enroll_answer(request: httpx.Request) -> httpx.Response:
        if len(fake.posts) == 1:
            return httpx.Response(200, json={"message": "Success"})
        raise KeyboardInterrupt  # the operator's Ctrl-C, while the second file is in flight

    fake = service(FakeService(enroll_answer))
    code, out, err = enroll(capsys, tmp_path / "in", tmp_path / "state.jsonl")
    assert code == INTERRUPTED == 130
    assert "stopped: interrupted; run the same command again to resume" in err and "Traceback" not in err
    assert [r["file"] for r in answers(tmp_path / "state.jsonl")] == ["ann/0.wav"]
    assert "samples accepted: 1" in out
