"""Enrollment over real HTTP with the real model on real speech, on a real SQLite file."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from devtools.clips import encode_recipe, load_clip
from service.storage.tables import Sample, Speaker
from tests.conftest import LiveServer, b64, flac_body, needs_speech

pytestmark = [needs_speech, pytest.mark.model]

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
DELETE = "/audio/generic/api/v1/sync/diarization/delete"
LIST = "/audio/generic/api/v2/sync/diarization/get_enrolled_speakers"

# One reader, one recording session, three different utterances of 11-16 s.
ALICE = [
    "librispeech/test-other/367/367-130732-0002.flac",
    "librispeech/test-other/367/367-130732-0003.flac",
    "librispeech/test-other/367/367-130732-0005.flac",
]
OTHER_VOICE = "librispeech/test-other/2609/2609-156975-0004.flac"  # a man; ls-367 is a woman
EIGHT_K = "librispeech/train-clean-100/32/32-21625-0000.flac"


def rows_of(live: LiveServer, speaker_id: str) -> tuple[int, int]:
    """(speaker rows, sample rows) stored for a speakerId, read from the database itself."""
    engine = live.services.runtime.engine
    with engine.connect() as conn:
        speakers = conn.execute(select(Speaker.id).where(Speaker.external_id == speaker_id)).all()
        ids = [s[0] for s in speakers]
        samples = conn.execute(select(Sample.id).where(Sample.speaker_id.in_(ids))).all()
    return len(speakers), len(samples)


def speaker_row_id(live: LiveServer, speaker_id: str) -> int:
    engine = live.services.runtime.engine
    with engine.connect() as conn:
        return int(conn.execute(select(Speaker.id).where(Speaker.external_id == speaker_id)).scalar_one())


def test_three_utterances_reach_complete(own_client: httpx.Client, own_tenant: str) -> None:
    answers = [own_client.post(ENROLL, json=flac_body(path, "alice")) for path in ALICE]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert [a.json()["message"] for a in answers] == ["Success", "Success", "Complete"]
    # The hosted API's body says only "Success"; headers say how far, as the native status does.
    progress = [float(a.headers["X-Enrollment-Progress"]) for a in answers]
    assert 0 < progress[0] < progress[1] < progress[2] == 1.0
    assert "more samples" in answers[0].headers["X-Enrollment-Missing"]
    assert answers[2].headers["X-Enrollment-Missing"] == ""

    status = own_client.get("/v1/speakers/alice").json()
    assert status["status"] == "complete"
    assert status["samples"] == 3
    assert status["progress"] == 1.0 and status["missing"] == []
    listed = own_client.get(LIST).json()
    assert listed["developer_id"] == own_tenant
    assert {"speaker_id": "alice", "enrollment_complete": "True"} in listed["enrolled_speaker_ids"]


def test_same_clip_twice_is_refused_as_duplicate(own_client: httpx.Client, live: LiveServer) -> None:
    first = own_client.post(ENROLL, json=flac_body(ALICE[0], "dup"))
    assert first.json() == {"message": "Success"}
    again = own_client.post(ENROLL, json=flac_body(ALICE[0], "dup"))
    assert again.status_code == 409
    assert again.json()["fault"]["detail"]["errorcode"] == "enrollment.DuplicateSample"
    assert rows_of(live, "dup") == (1, 1)


def test_noisy_telephone_copy_of_a_sample_is_refused(own_client: httpx.Client, live: LiveServer) -> None:
    clip = load_clip(ALICE[1])
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(len(clip.samples)) * clip.samples.std() / 10  # 20 dB SNR
    copy = np.clip(clip.samples + noise, -32768, 32767).astype(np.int16)
    assert own_client.post(ENROLL, json=flac_body(ALICE[1], "copycat")).status_code == 200
    body = {"content": b64(encode_recipe(copy, clip.sample_rate, "flac8k")), "encoding": "FLAC"}
    again = own_client.post(ENROLL, json={**body, "speakerId": "copycat"})
    assert again.status_code == 409, again.text
    assert again.json()["fault"]["detail"]["errorcode"] == "enrollment.DuplicateSample"
    assert rows_of(live, "copycat") == (1, 1)


def test_another_voice_is_refused_as_mismatch(own_client: httpx.Client, live: LiveServer) -> None:
    assert own_client.post(ENROLL, json=flac_body(ALICE[1], "mixed")).status_code == 200
    other = own_client.post(ENROLL, json=flac_body(OTHER_VOICE, "mixed"))
    assert other.status_code == 409
    assert other.json()["fault"]["detail"]["errorcode"] == "enrollment.SpeakerMismatch"
    assert rows_of(live, "mixed") == (1, 1)


def test_eight_khz_flac_enrolls(own_client: httpx.Client) -> None:
    clip = load_clip(EIGHT_K)
    body = {"content": b64(encode_recipe(clip.samples, clip.sample_rate, "flac8k")), "encoding": "FLAC"}
    answer = own_client.post(ENROLL, json={**body, "sampleRate": 8000, "speakerId": "phone"})
    assert answer.json() == {"message": "Success"}
    status = own_client.get("/v1/speakers/phone").json()
    assert status["samples"] == 1
    assert status["lastSample"]["speechSeconds"] > 10


def test_native_routes_enroll_list_and_delete_a_sample(own_client: httpx.Client, live: LiveServer) -> None:
    raw = own_client.post(
        "/v1/speakers/native.1/enrollments",
        content=load_clip(ALICE[0]).path.read_bytes(),
        headers={"Content-Type": "audio/flac"},
    )
    assert raw.status_code == 201, raw.text
    first = raw.json()
    assert first["status"] == "enrolling" and first["samples"] == 1
    assert first["lastSample"]["snrDb"] > 10 and "more samples" in first["missing"]
    assert 0 < first["progress"] < 1

    second = own_client.post("/v1/speakers/native.1/enrollments", json=flac_body(ALICE[1]))
    assert second.status_code == 201 and second.json()["samples"] == 2
    page = own_client.get("/v1/speakers", params={"limit": 1000}).json()
    listed = {s["speakerId"]: s for s in page["speakers"]}
    # A list gives each speaker's status as its own route does, its latest sample too.
    assert listed["native.1"]["lastSample"] == second.json()["lastSample"]
    assert listed["native.1"] == {**own_client.get("/v1/speakers/native.1").json(), "warnings": None}

    sample_id = second.json()["lastSample"]["sampleId"]
    assert own_client.delete(f"/v1/speakers/native.1/enrollments/{sample_id}").status_code == 204
    assert own_client.get("/v1/speakers/native.1").json()["samples"] == 1
    assert rows_of(live, "native.1") == (1, 1)
    assert own_client.delete(f"/v1/speakers/native.1/enrollments/{sample_id}").status_code == 404
    assert own_client.delete("/v1/speakers/native.1").status_code == 204
    assert rows_of(live, "native.1") == (0, 0)


def test_a_raw_body_is_recognised_or_taken_as_the_content_type_says(own_client: httpx.Client) -> None:
    clip = load_clip(ALICE[0])
    uploads = [
        (clip.path.read_bytes(), "application/octet-stream", {}),  # the bytes say FLAC
        (np.asarray(clip.samples, dtype=">i2").tobytes(), f"audio/L16; rate={clip.sample_rate}", {}),
        (np.asarray(clip.samples, dtype="<i2").tobytes(), "application/octet-stream", {"encoding": "PCM"}),
    ]
    speech = []
    for i, (data, content_type, query) in enumerate(uploads):
        answer = own_client.post(
            f"/v1/speakers/raw.{i}/enrollments",
            content=data,
            headers={"Content-Type": content_type},
            params={**query, "sampleRate": clip.sample_rate} if query else None,
        )
        assert answer.status_code == 201, (content_type, answer.text)
        speech.append(answer.json()["speechSeconds"])
        # A recording belongs to one speaker: free it for the next way of sending it.
        assert own_client.delete(f"/v1/speakers/raw.{i}").status_code == 204
    assert max(speech) - min(speech) < 0.05, speech  # the same samples, however they came
    stereo = own_client.post(
        "/v1/speakers/raw.9/enrollments",
        content=bytes(64000),
        headers={"Content-Type": "audio/L16; rate=16000; channels=2"},
    )
    assert stereo.status_code == 400 and "one channel" in stereo.json()["error"]["message"]


def test_a_failed_index_refresh_does_not_fail_a_committed_enrollment(
    own_client: httpx.Client, live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def blip() -> None:
        raise ConnectionError("database went away for a moment")

    monkeypatch.setattr(live.services.enrollment, "after_commit", blip)
    answer = own_client.post(ENROLL, json=flac_body(ALICE[2], "blip"))
    assert answer.status_code == 200 and answer.json() == {"message": "Success"}
    assert rows_of(live, "blip") == (1, 1)
    row_id = speaker_row_id(live, "blip")
    follower = live.services.runtime.follower
    follower.catch_up()  # what the background follower does every poll
    assert row_id in live.index_ids()


def test_metrics_count_requests_and_index(own_client: httpx.Client, live: LiveServer) -> None:
    text = httpx.get(f"{live.url}/metrics").text
    assert (
        'speakerid_requests_total{method="POST",route="/audio/generic/api/v1/sync/diarization/enroll"' in text
    )
    assert "speakerid_embedding_seconds_count" in text
    size = next(line for line in text.splitlines() if line.startswith("speakerid_index_speakers "))
    assert float(size.split()[1]) == len(live.index_ids())
