"""Narrowband twins with the real model on real speech, over HTTP: speakers enrolled from 16 kHz
eval-speech clips are named when they call in over G.711 (8 kHz mu-law), against the twins the
enrollment stored, while voices the tenant never enrolled stay unknown over the same channel."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from devtools.clips import g711_bytes, load_clip, manifest
from service.storage.tables import Sample, Speaker
from tests.conftest import LiveServer, b64, flac_body, needs_speech, new_key

pytestmark = [needs_speech, pytest.mark.model, pytest.mark.slow]

SPEAKERS = 4  # enrolled on 3 clips each, called in on a 4th
UNKNOWN = 4  # one-clip speakers


def _clips() -> tuple[dict[str, list[str]], list[str]]:
    by: dict[str, list[str]] = {}
    for row in manifest():
        by.setdefault(row.speaker, []).append(row.path)
    enrolled = {s: p[:4] for s, p in sorted(by.items()) if len(p) >= 6}
    unknown = [p[0] for s, p in sorted(by.items()) if len(p) == 1][:UNKNOWN]
    return dict(list(enrolled.items())[:SPEAKERS]), unknown


def _call(path: str) -> dict[str, object]:
    """The clip as a telephone call delivers it: raw G.711 mu-law at 8 kHz."""
    clip = load_clip(path)
    return {
        "content": b64(g711_bytes(clip.samples, clip.sample_rate, "mulaw")),
        "encoding": "MULAW",
        "sampleRate": 8000,
    }


@pytest.fixture(scope="module")
def tenant(live: LiveServer) -> Iterator[httpx.Client]:
    enrolled, _ = _clips()
    with live.client(new_key(live.settings, "twins")) as c:
        for speaker, paths in enrolled.items():
            for path in paths[:3]:
                r = c.post("/audio/generic/api/v1/sync/diarization/enroll", json=flac_body(path, speaker))
                assert r.status_code == 200, r.text
        yield c


def test_16k_enrollments_store_twins_and_a_narrowband_centroid(
    live: LiveServer, tenant: httpx.Client
) -> None:
    enrolled, _ = _clips()
    with live.engine.connect() as conn:
        rows = conn.execute(
            select(
                Speaker.external_id,
                Speaker.centroid,
                Speaker.narrow_centroid,
                Sample.vector,
                Sample.narrow_vector,
            )
            .join(Sample, Sample.speaker_id == Speaker.id)
            .where(Speaker.external_id.in_(list(enrolled)))
        ).all()
    assert len(rows) == 3 * len(enrolled)
    for _, centroid, narrow_centroid, vector, twin in rows:
        assert twin is not None and len(twin) == len(vector) and twin != vector
        assert narrow_centroid is not None and narrow_centroid != centroid


def test_enrolled_speakers_are_named_over_g711(tenant: httpx.Client) -> None:
    enrolled, _ = _clips()
    for speaker, paths in enrolled.items():
        r = tenant.post("/v1/identify", json=_call(paths[3]))
        assert r.status_code == 200, r.text
        found = r.json()
        assert found["channel"] == "narrowband"
        assert found["speakerId"] == speaker and found["score"] >= found["threshold"], (speaker, found)
        check = tenant.post("/v1/verify", json={**_call(paths[3]), "speakerId": speaker}).json()
        assert check["match"] and check["channel"] == "narrowband", (speaker, check)
    # The compatible identify names the speaker for most of the call's speech, and no one else.
    speaker, paths = next(iter(enrolled.items()))
    segments = tenant.post("/audio/generic/api/v1/sync/diarization/identify", json=_call(paths[3])).json()
    assert {s["speakerId"] for s in segments} <= {speaker, "unknown"}, segments
    theirs = sum(s["end"] - s["start"] for s in segments if s["speakerId"] == speaker)
    assert theirs >= 0.5 * sum(s["end"] - s["start"] for s in segments), segments
    # The same speakers heard at 16 kHz are scored in the wide band.
    speaker, paths = next(iter(enrolled.items()))
    wide = tenant.post("/v1/identify", json=flac_body(paths[3])).json()
    assert wide["channel"] == "wideband" and wide["speakerId"] == speaker


def test_unknown_voices_over_g711_stay_unknown(tenant: httpx.Client) -> None:
    _, unknown = _clips()
    for path in unknown:
        r = tenant.post("/v1/identify", json=_call(path))
        assert r.status_code == 200, r.text
        assert r.json()["speakerId"] is None, (path, r.json())
        assert r.json()["channel"] == "narrowband"
