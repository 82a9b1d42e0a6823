"""Crash test: acknowledged enrollments and deletes survive SIGKILL, and the index follows the database.

    .venv/bin/python -m scripts.crash_test --database-url URL --cycles 20 [--clients 4] [--seed N]

`speakerid serve` runs as a child process (its own process group) on a free loopback port. Each cycle,
several client threads enroll real eval-speech clips (base64 FLAC/WAV; native and compatible routes)
to a small pool of speaker ids and delete speakers, logging every request with a logical clock at
send and at answer; a random moment into the load the server is killed with SIGKILL, restarted, and
once it is ready the database and the index are checked against the log:

- every acknowledged (2xx) enrollment whose sample no later delete could have removed is present;
- every sample present comes from a request that may have committed (2xx, in flight at the kill, or
  a 5xx, which may have failed after its commit) and that no acknowledged delete followed for
  certain: a speaker whose delete was acknowledged holds nothing enrolled before that delete;
- the database is consistent in itself: each speaker's sample count, speech seconds, spread,
  centroid and status agree with its sample rows, no sample lacks its speaker, no speaker row is
  empty, every speaker has a change-log entry;
- the restarted server's index holds exactly the database's speakers and vectors: an unrestricted
  `POST /v1/identify` with `topK` above the pool size returns every indexed speaker of the tenant
  as a candidate, with its complete flag and its cosine to the probe clip, which must equal the
  stored centroid's cosine to the probe's own vector (enrolled once in a tenant of its own and read
  back from the database); `speakerIds=[id]` is a 404 for every pool speaker the database does not
  have. Nothing is added to the product to look inside it.

A request with no answer (in flight at the kill) may have either outcome and is not counted either
way. Clips are chosen so the duplicate and mismatch gates have no reason to refuse: each speaker id
enrolls clips of one eval-speech reader, each clip at most once per speaker lifetime (a refusal is
not an error; it is just not acknowledged). Exits non-zero on any loss, resurrection, inconsistency,
index mismatch or server error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from devtools.clips import SetClip, set_clips
from devtools.server import ServerProcess, create_key, speakerid
from devtools.sets import EVAL_SPEECH
from service.config import Settings
from service.enrollment.policy import EnrollmentPolicy, centroid_and_spread, missing
from service.enrollment.ports import SampleRecord, SpeakerRecord, SpeakerStatus
from service.main import enrollment_policy
from service.storage.repository import SqlStore
from service.storage.tables import Change, Sample, Speaker
from service.tools.client import parse_error

READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0
# Clips this long keep requests short (more operations per load window) with speech to spare.
CLIP_SECONDS = (2.5, 8.0)
DURATION_MATCH_S = 0.01  # a stored sample's duration_seconds identifies its clip within one reader
COSINE_TOLERANCE = 1e-3  # identify rounds cosines to 4 decimals; the model run adds float noise


# --- the speech -----------------------------------------------------------------------------------


def load_speech(speech: Path, speakers: int, rng: random.Random) -> tuple[dict[str, list[SetClip]], SetClip]:
    """`speakers` readers with their clips (durations distinct within a reader, so a stored sample's
    duration names its clip), and one clip of a reader outside the pool to probe the index with."""
    rows = set_clips(speech)
    by_reader: dict[str, list[SetClip]] = defaultdict(list)
    for row in rows:
        by_reader[row.speaker].append(row)
    usable: dict[str, list[SetClip]] = {}
    for reader, items in sorted(by_reader.items()):
        picked: list[SetClip] = []
        for clip in sorted(items, key=lambda c: c.duration_s):
            d = clip.duration_s
            if CLIP_SECONDS[0] <= d <= CLIP_SECONDS[1] and all(
                abs(d - p.duration_s) > 4 * DURATION_MATCH_S for p in picked
            ):
                picked.append(clip)
        if len(picked) >= 4:
            usable[reader] = picked
    if len(usable) < speakers:
        raise SystemExit(f"only {len(usable)} eval-speech readers have enough clips; asked for {speakers}")
    chosen = sorted(rng.sample(sorted(usable), speakers))
    pool: dict[str, list[SetClip]] = {}
    for reader in chosen:
        # The file's own length, not the manifest's rounded one: it is what the server stores.
        exact = [(c, sf.info(str(c.file))) for c in usable[reader]]
        pool[f"spk-{reader}"] = [dataclasses.replace(c, duration_s=i.frames / i.samplerate) for c, i in exact]
    probes = [c for c in rows if len(by_reader[c.speaker]) == 1 and 4.0 <= c.duration_s <= 8.0]
    return pool, min(probes, key=lambda c: c.path)


# --- the operation log ----------------------------------------------------------------------------


@dataclass
class Op:
    """One request. `start` and `end` come from one logical clock: the server acted on the request,
    if at all, between them. `end` of a request left without an answer is the kill."""

    cycle: int
    client: int
    kind: str  # "enroll" or "delete"
    route: str  # "native" or "compat"
    speaker: str
    clip: SetClip | None
    start: int
    end: int | None = None
    status: int | None = None
    sample_id: str | None = None
    error: str | None = None  # a transport error, or the error code of a refusal or a 5xx
    failed: int | None = None  # the clock when the request failed without an answer

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def uncertain(self) -> bool:
        """No answer, or a 5xx (which may have failed after its commit): either outcome is allowed."""
        return self.status is None or self.status >= 500

    @property
    def may_have_committed(self) -> bool:
        return self.acked or self.uncertain


class Workload:
    """The shared state of the client threads: clock, operation log, clips used per speaker."""

    def __init__(
        self, pool: dict[str, list[SetClip]], delete_fraction: float, compat_fraction: float
    ) -> None:
        self.pool = pool
        self.delete_fraction = delete_fraction
        self.compat_fraction = compat_fraction
        self.ops: list[Op] = []
        self.used: dict[str, set[str]] = {s: set() for s in pool}  # clips sent in the current lifetime
        self._clock = 0
        self._lock = threading.Lock()
        self.acknowledged = threading.Event()  # set on every 2xx, for kills right after an answer

    def tick(self) -> int:
        with self._lock:
            self._clock += 1
            return self._clock

    def next_op(self, rng: random.Random, cycle: int, client: int) -> Op:
        speaker = rng.choice(sorted(self.pool))
        route = "compat" if rng.random() < self.compat_fraction else "native"
        with self._lock:
            unused = [c for c in self.pool[speaker] if c.path not in self.used[speaker]]
            if not unused or rng.random() < self.delete_fraction:
                return Op(cycle, client, "delete", route, speaker, None, start=0)
            clip = rng.choice(unused)
            self.used[speaker].add(clip.path)
        return Op(cycle, client, "enroll", route, speaker, clip, start=0)

    def send(self, http: httpx.Client, op: Op) -> None:
        op.start = self.tick()
        try:
            response = _request(http, op)
        except httpx.HTTPError as exc:
            op.failed = self.tick()
            op.error = f"{type(exc).__name__}: {exc}"[:200]
        else:
            op.end = self.tick()
            op.status = response.status_code
            if response.status_code >= 400:
                op.error = parse_error(response).code
            if op.acked:
                self.acknowledged.set()
            if op.kind == "enroll" and op.route == "native" and response.status_code == 201:
                op.sample_id = response.json()["lastSample"]["sampleId"]
            if op.kind == "delete" and op.acked:
                with self._lock:
                    self.used[op.speaker] = set()  # a new lifetime: every clip may come again
        with self._lock:
            self.ops.append(op)

    def close_cycle(self, cycle: int, kill_tick: int) -> None:
        """Requests of `cycle` left without an answer may have committed until the kill, no later."""
        with self._lock:
            for op in self.ops:
                if op.cycle == cycle and op.end is None:
                    op.end = max(kill_tick, op.start)

    def forget_lifetimes(self, present: set[str]) -> None:
        """A speaker the database no longer has starts a new lifetime."""
        with self._lock:
            for speaker in self.pool:
                if speaker not in present:
                    self.used[speaker] = set()


def _request(http: httpx.Client, op: Op) -> httpx.Response:
    if op.kind == "enroll":
        assert op.clip is not None
        if op.route == "native":
            return http.post(f"/v1/speakers/{op.speaker}/enrollments", json=op.clip.audio_fields)
        body = {**op.clip.audio_fields, "speakerId": op.speaker}
        return http.post("/audio/generic/api/v1/sync/diarization/enroll", json=body)
    if op.route == "native":
        return http.delete(f"/v1/speakers/{op.speaker}")
    return http.post("/audio/generic/api/v1/sync/diarization/delete", json={"speakerId": op.speaker})


def client_loop(
    workload: Workload, base_url: str, key: str, cycle: int, client: int, seed: int, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=REQUEST_TIMEOUT_S) as http:
        while not stop.is_set():
            op = workload.next_op(rng, cycle, client)
            workload.send(http, op)
            if op.status is None and not stop.is_set():
                time.sleep(0.05)  # a transport error while the server should be up: do not spin


# --- the database, read directly ------------------------------------------------------------------


@dataclass
class Snapshot:
    speakers: dict[str, SpeakerRecord]  # by external id
    samples: dict[str, list[SampleRecord]]  # by speaker external id
    orphan_samples: int  # samples (of any tenant) whose speaker row is missing
    logged_speakers: set[int]  # speaker row ids that appear in the change log

    def indexed(self) -> dict[str, bool]:
        """What the index should hold for the tenant: speakers with a centroid -> complete."""
        return {
            s.external_id: s.status == SpeakerStatus.COMPLETE
            for s in self.speakers.values()
            if s.centroid is not None
        }


@contextmanager
def opened(url: str) -> Iterator[SqlStore]:
    """The service's own store on the database, for reading what a run left there."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield SqlStore(engine)
    finally:
        engine.dispose()


def read_database(url: str, key: str) -> Snapshot:
    """The rows of the tenant of `key`, read through the service's store."""
    with opened(url) as store:
        found = store.authenticate(key)
        assert found is not None, "the run's key is valid"
        speakers = {s.external_id: s for s in store.list_speakers(found.tenant_id)}
        with store.transaction() as tx:
            samples = {ext: tx.samples(s.id) for ext, s in speakers.items()}
        # Rows the store has no reason to read: a sample left without its speaker, the change log.
        with store.engine.connect() as conn:
            orphans = conn.scalar(
                select(func.count()).select_from(Sample).where(Sample.speaker_id.not_in(select(Speaker.id)))
            )
            logged = set(
                conn.scalars(select(Change.speaker_id).where(Change.tenant_id == found.tenant_id).distinct())
            )
    return Snapshot(speakers, {k: v for k, v in samples.items() if v}, orphans or 0, logged)


def consistency_problems(snap: Snapshot, policy: EnrollmentPolicy) -> list[str]:
    """Each speaker row agrees with its sample rows, as one transaction wrote them."""
    problems = []
    if snap.orphan_samples:
        problems.append(f"{snap.orphan_samples} sample rows whose speaker row is missing")
    for ext, speaker in sorted(snap.speakers.items()):
        rows = snap.samples.get(ext, [])
        where = f"speaker {ext}"
        if not rows:
            problems.append(f"{where}: a speaker row without samples")
        if speaker.id not in snap.logged_speakers:
            problems.append(f"{where}: no change-log entry")
        if speaker.sample_count != len(rows):
            problems.append(f"{where}: sample_count {speaker.sample_count} but {len(rows)} sample rows")
        if not rows:
            continue
        current = [r for r in rows if r.model_sha256 == speaker.model_sha256]
        speech = sum(r.speech_seconds for r in current)
        if abs(speech - speaker.speech_seconds) > 1e-3:
            problems.append(
                f"{where}: speech_seconds {speaker.speech_seconds:.3f}, samples sum to {speech:.3f}"
            )
        if speaker.centroid is None or not current:
            problems.append(f"{where}: {len(rows)} samples but no centroid")
            continue
        centre, spread = centroid_and_spread([r.vector for r in current])
        agreement = float(centre @ speaker.centroid)
        if agreement < 0.9999:
            problems.append(f"{where}: centroid is not the mean of its samples (cosine {agreement:.5f})")
        if abs(spread - speaker.spread) > 1e-4:
            problems.append(f"{where}: spread {speaker.spread:.5f}, samples give {spread:.5f}")
        complete = not missing(len(current), speech, spread, policy)
        if complete != (speaker.status == SpeakerStatus.COMPLETE):
            problems.append(f"{where}: status {speaker.status!r} but the samples say complete={complete}")
    return problems


# --- the check against the log --------------------------------------------------------------------


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)  # acknowledged enrollments missing
    resurrected: list[str] = field(default_factory=list)  # acknowledged deletes undone
    phantoms: list[str] = field(default_factory=list)  # samples no request explains
    # samples whose request had no answer (or a 5xx) but committed: the kill fell after the commit
    inflight_committed: set[str] = field(default_factory=set)

    def problems(self) -> list[str]:
        return [*self.lost, *self.resurrected, *self.phantoms]

    def merge(self, other: Verdict) -> None:
        """Add what a later check found. A later delete can excuse a sample missing now, so each
        check's findings are kept rather than only the last one's."""
        for mine, theirs in (
            (self.lost, other.lost),
            (self.resurrected, other.resurrected),
            (self.phantoms, other.phantoms),
        ):
            mine.extend(p for p in theirs if p not in mine)
        self.inflight_committed |= other.inflight_committed


def clip_of(sample: SampleRecord, clips: Sequence[SetClip]) -> SetClip | None:
    near = [c for c in clips if abs(c.duration_s - sample.duration_seconds) <= DURATION_MATCH_S]
    return near[0] if len(near) == 1 else None


def judge(ops: Sequence[Op], snap: Snapshot, pool: dict[str, list[SetClip]]) -> Verdict:
    """The database against the whole log so far (every request in it has its `end`)."""
    verdict = Verdict()
    by_speaker: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_speaker[op.speaker].append(op)
    sample_home = {s.sample_id: speaker for speaker, rows in snap.samples.items() for s in rows}
    for speaker, clips in pool.items():
        mine = by_speaker.get(speaker, [])
        enrolls = [o for o in mine if o.kind == "enroll"]
        removers = [o for o in mine if o.kind == "delete" and o.may_have_committed]
        acked_deletes = [o for o in mine if o.kind == "delete" and o.acked]
        rows = snap.samples.get(speaker, [])
        present_ids = {r.sample_id for r in rows}
        row_clips = {r.sample_id: clip_of(r, clips) for r in rows}
        present_clips = Counter(c.path for c in row_clips.values() if c is not None)

        # An acknowledged enrollment must still be there unless a delete may have come after it.
        for e in enrolls:
            if not e.acked or any(_end(d) > e.start for d in removers):
                continue
            assert e.clip is not None
            if e.sample_id is not None:
                here = e.sample_id in present_ids
                if not here and e.sample_id in sample_home:
                    home = sample_home[e.sample_id]
                    verdict.phantoms.append(
                        f"sample {e.sample_id} enrolled to {speaker} is stored under {home}"
                    )
            else:
                here = present_clips[e.clip.path] > 0
            if not here:
                verdict.lost.append(
                    f"cycle {e.cycle}: {e.route} enrollment of {e.clip.path} to {speaker} "
                    f"(sample {e.sample_id or '?'}) answered {e.status}, not in the database"
                )

        # Every stored sample comes from a request that may have committed, and no acknowledged
        # delete came after that request for certain.
        undone: dict[int, Op] = {}
        for row in rows:
            clip = row_clips[row.sample_id]
            if clip is None:
                verdict.phantoms.append(
                    f"{speaker}: sample {row.sample_id} ({row.duration_seconds:.3f} s) "
                    f"is no clip of reader {clips[0].speaker}"
                )
                continue
            sources = [
                e
                for e in enrolls
                if e.may_have_committed and e.clip == clip and e.sample_id in (None, row.sample_id)
            ]
            if any(e.sample_id == row.sample_id for e in sources):
                sources = [e for e in sources if e.sample_id == row.sample_id]
            if not sources:
                verdict.phantoms.append(
                    f"{speaker}: sample {row.sample_id} of {clip.path}: no request that may have "
                    "committed could have stored it"
                )
                continue
            alive = [e for e in sources if not any(d.start > _end(e) for d in acked_deletes)]
            if not alive:
                for e in sources:
                    undone.update({id(d): d for d in acked_deletes if d.start > _end(e)})
            elif all(e.uncertain for e in alive):
                verdict.inflight_committed.add(row.sample_id)
        verdict.resurrected += [
            f"cycle {d.cycle}: {d.route} delete of {speaker} answered {d.status}, "
            "yet samples enrolled before it are in the database"
            for d in undone.values()
        ]
        twice = sorted(path for path, n in present_clips.items() if n > 1)
        if twice:
            verdict.phantoms.append(f"{speaker}: the same clip stored more than once: {twice}")
    return verdict


def _end(op: Op) -> int:
    assert op.end is not None, "every request is closed before it is judged"
    return op.end


@dataclass(frozen=True)
class Probe:
    """A clip to identify with, and its normalised embedding as the server computes it."""

    clip: SetClip
    vector: np.ndarray


def make_probe(server_url: str, env: dict[str, str], tenant: str, clip: SetClip, database_url: str) -> Probe:
    """Enroll the probe clip once, in a tenant of its own, and read its vector back from the
    database: the cosines identify reports for it then say which vector the index holds."""
    key = create_key(env, tenant)
    with httpx.Client(base_url=server_url, headers={"X-API-Key": key}, timeout=REQUEST_TIMEOUT_S) as http:
        answer = http.post("/v1/speakers/probe/enrollments", json=clip.audio_fields)
        answer.raise_for_status()
        sample_id = answer.json()["lastSample"]["sampleId"]
    with opened(database_url) as store:
        found = store.authenticate(key)
        speaker = store.get_speaker(found.tenant_id, "probe") if found is not None else None
        sample = store.latest_sample(speaker.id) if speaker is not None else None
    if sample is None or sample.sample_id != sample_id:
        raise RuntimeError(f"the probe's sample {sample_id} was acknowledged but is not in the database")
    return Probe(clip, sample.vector)


def index_problems(
    http: httpx.Client, snap: Snapshot, pool: dict[str, list[SetClip]], probe: Probe
) -> list[str]:
    """The restarted server's index against the database, through the public API only: which
    speakers it holds, their complete flags, and (by the probe's cosines) their vectors."""
    problems = []
    expected = snap.indexed()
    response = http.post("/v1/identify", json={**probe.clip.audio_fields, "topK": 100})
    if not expected:  # no one enrolled: every voice is unknown, with no candidate to name
        body = response.json() if response.status_code == 200 else {}
        if body.get("candidates") != [] or body.get("speakerId") is not None:
            problems.append(
                f"identify with nothing indexed answered {response.status_code}: {response.text[:200]}"
            )
    elif response.status_code != 200:
        problems.append(f"identify answered {response.status_code}: {response.text[:200]}")
    else:
        candidates = response.json()["candidates"]
        found = {c["speakerId"]: bool(c["complete"]) for c in candidates}
        for c in candidates:
            row = snap.speakers.get(c["speakerId"])
            if row is None or row.centroid is None:
                continue
            stored = float(row.centroid @ probe.vector)
            if abs(stored - c["cosine"]) > COSINE_TOLERANCE:
                problems.append(
                    f"index vector of {c['speakerId']} is not the database's: the probe's cosine is "
                    f"{c['cosine']} in the index, {stored:.4f} with the stored centroid"
                )
        if found != expected:
            extra = sorted(set(found) - set(expected))
            gone = sorted(set(expected) - set(found))
            flags = sorted(s for s in set(found) & set(expected) if found[s] != expected[s])
            problems.append(
                f"index != database: extra {extra}, missing {gone}, complete flag differs {flags}"
            )
    for speaker in sorted(set(pool) - set(expected)):
        answer = http.post("/v1/identify", json={**probe.clip.audio_fields, "speakerIds": [speaker]})
        if answer.status_code != 404:
            problems.append(
                f"identify speakerIds=[{speaker}] (not in the database) answered {answer.status_code}"
            )
    return problems


# --- the run --------------------------------------------------------------------------------------


@dataclass
class CycleResult:
    cycle: int
    on_ack: bool  # killed the moment an answer arrived, rather than at a random time
    window_s: float
    ops: int
    acked: int
    unanswered: int
    restart_s: float
    speakers: int
    samples: int
    problems: list[str]


@dataclass
class Report:
    database: str
    cycles: list[CycleResult] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    verdict: Verdict = field(default_factory=Verdict)
    inconsistencies: list[str] = field(default_factory=list)
    index_mismatches: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 5xx answers, tracebacks in the log
    transport_errors: list[str] = field(default_factory=list)  # no answer while the server was up
    runtime_s: float = 0.0

    @property
    def ok(self) -> bool:
        v = self.verdict
        return not (
            v.lost
            or v.resurrected
            or v.phantoms
            or self.inconsistencies
            or self.index_mismatches
            or self.server_errors
            or self.transport_errors
        )

    def summary(self) -> str:
        ops = self.ops
        enrolls = [o for o in ops if o.kind == "enroll"]
        deletes = [o for o in ops if o.kind == "delete"]
        refused = Counter(
            f"{o.status} {o.error}" for o in ops if o.status is not None and 400 <= o.status < 500
        )
        restarts = [c.restart_s for c in self.cycles]
        v = self.verdict
        lines = [
            f"crash test on {self.database}: {len(self.cycles)} cycles survived in {self.runtime_s:.0f} s",
            f"  kills just after a 2xx arrived: {sum(c.on_ack for c in self.cycles)}, "
            f"at a random moment: {sum(not c.on_ack for c in self.cycles)}",
            f"  operations sent: {len(ops)} ({len(enrolls)} enroll, {len(deletes)} delete)",
            f"  acknowledged: {sum(o.acked for o in ops)} "
            f"({sum(o.acked for o in enrolls)} enrollments, {sum(o.acked for o in deletes)} deletes)",
            f"  refused (4xx, not acknowledged): {sum(refused.values())} {dict(sorted(refused.items()))}",
            f"  in flight at a kill (no answer): {sum(o.status is None for o in ops)}; "
            f"enrollments among them that committed anyway: {len(v.inflight_committed)}",
            f"  restart to ready: mean {np.mean(restarts) if restarts else 0:.1f} s, "
            f"max {max(restarts, default=0):.1f} s",
            f"  acknowledged enrollments lost: {len(v.lost)}",
            f"  acknowledged deletes resurrected: {len(v.resurrected)}",
            f"  samples no request explains: {len(v.phantoms)}",
            f"  database inconsistencies: {len(self.inconsistencies)}",
            f"  index != database: {len(self.index_mismatches)}",
            f"  server errors (5xx, tracebacks): {len(self.server_errors)}",
            f"  transport errors while the server was up: {len(self.transport_errors)}",
        ]
        for title, items in (
            ("lost", v.lost),
            ("resurrected", v.resurrected),
            ("unexplained", v.phantoms),
            ("inconsistent", self.inconsistencies),
            ("index", self.index_mismatches),
            ("server error", self.server_errors),
            ("transport", self.transport_errors),
        ):
            lines.extend(f"  {title}: {item}" for item in items[:20])
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


@contextmanager
def work_folder(log_dir: Path | None) -> Iterator[Path]:
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        yield log_dir
        return
    folder = Path(tempfile.mkdtemp(prefix="crash-test-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def server_log_problems(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [
        f"{path.name}: {line.strip()[:200]}"
        for line in text.splitlines()
        if "Traceback" in line or "ERROR" in line
    ]


def run_crash_test(
    database_url: str,
    cycles: int = 20,
    clients: int = 4,
    seed: int = 0,
    *,
    speakers: int = 8,
    window_s: tuple[float, float] = (0.5, 4.0),
    delete_fraction: float = 0.15,
    compat_fraction: float = 0.3,
    kill_on_ack: float = 0.5,
    migrate: bool = True,
    speech: Path = EVAL_SPEECH,
    log_dir: Path | None = None,
    echo: bool = True,
) -> Report:
    """Run the crash test against the database at `database_url` (a tenant of its own is created)."""
    began = time.monotonic()
    rng = random.Random(seed)
    pool, probe_clip = load_speech(speech, speakers, rng)
    env = {
        **os.environ,
        "SPK_DATABASE_URL": database_url,
        "SPK_AUTH__RATE_LIMIT_PER_MINUTE": "0",
        "SPK_LOG_LEVEL": "WARNING",
    }
    settings = Settings(database_url=database_url)
    policy = enrollment_policy(settings)
    if migrate:
        speakerid(env, "migrate")
    tenant = f"crash-{uuid.uuid4().hex[:8]}"
    key = create_key(env, tenant)
    workload = Workload(pool, delete_fraction, compat_fraction)
    report = Report(database=settings.resolved_database_url().split("://", 1)[0])
    seen: set[str] = set()

    def say(text: str) -> None:
        if echo:
            print(text, flush=True)

    with work_folder(log_dir) as folder:
        server = ServerProcess(env, folder)
        try:
            server.start()
            first = server.wait_ready(READY_TIMEOUT_S)
            say(f"server ready in {first:.1f} s; tenant {tenant}; speakers {sorted(pool)}")
            probe = make_probe(server.url, env, f"{tenant}-probe", probe_clip, database_url)
            for cycle in range(1, cycles + 1):
                result = _one_cycle(cycle, rng, workload, server, key, clients, window_s, kill_on_ack, report)
                snap = read_database(database_url, key)
                verdict = judge(workload.ops, snap, pool)
                inconsistent = consistency_problems(snap, policy)
                with httpx.Client(
                    base_url=server.url, headers={"X-API-Key": key}, timeout=REQUEST_TIMEOUT_S
                ) as http:
                    index = index_problems(http, snap, pool, probe)
                workload.forget_lifetimes(set(snap.speakers))
                report.verdict.merge(verdict)
                # A lasting inconsistency is reported once, from the first check that saw it.
                report.inconsistencies += [f"cycle {cycle}: {p}" for p in inconsistent if p not in seen]
                seen.update(inconsistent)
                report.index_mismatches += [f"cycle {cycle}: {p}" for p in index]
                result.speakers = len(snap.speakers)
                result.samples = sum(len(v) for v in snap.samples.values())
                result.problems = [*verdict.problems(), *inconsistent, *index]
                report.cycles.append(result)
                when = "just after a 2xx" if result.on_ack else "at random"
                say(
                    f"cycle {cycle:2d}: killed {when} {result.window_s:.1f} s into the load; "
                    f"{result.ops} requests, "
                    f"{result.acked} acknowledged, {result.unanswered} unanswered; ready again in "
                    f"{result.restart_s:.1f} s; {result.speakers} speakers, {result.samples} samples; "
                    f"{'ok' if not result.problems else f'{len(result.problems)} PROBLEMS'}"
                )
        finally:
            server.stop()
            for path in sorted(folder.glob("server-*.log")):
                report.server_errors += server_log_problems(path)
    report.ops = workload.ops
    report.server_errors += [
        f"cycle {o.cycle}: {o.kind} {o.route} {o.speaker} answered {o.status} {o.error}"
        for o in workload.ops
        if o.status is not None and o.status >= 500
    ]
    report.runtime_s = time.monotonic() - began
    return report


def _one_cycle(
    cycle: int,
    rng: random.Random,
    workload: Workload,
    server: ServerProcess,
    key: str,
    clients: int,
    window_s: tuple[float, float],
    kill_on_ack: float,
    report: Report,
) -> CycleResult:
    """Load, SIGKILL at a random moment (or the moment a 2xx arrives), restart, wait until ready."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=client_loop,
            args=(workload, server.url, key, cycle, i, rng.randrange(2**32), stop),
            name=f"crash-client-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    window = rng.uniform(*window_s)
    on_ack = rng.random() < kill_on_ack
    began = time.monotonic()
    for t in threads:
        t.start()
    if on_ack:
        # Right after an answer is where an acknowledgement sent before its commit would show.
        time.sleep(window_s[0])
        workload.acknowledged.clear()
        workload.acknowledged.wait(timeout=window - window_s[0])
    else:
        time.sleep(window)
    stop.set()
    kill_tick = workload.tick()
    server.kill()
    window = time.monotonic() - began
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S)
    workload.close_cycle(cycle, kill_tick)
    mine = [o for o in workload.ops if o.cycle == cycle]
    # A request that failed without an answer before the kill had a live server to talk to.
    report.transport_errors += [
        f"cycle {cycle}: {o.kind} {o.speaker}: {o.error}"
        for o in mine
        if o.failed is not None and o.failed < kill_tick
    ]
    server.start()
    restart = server.wait_ready(READY_TIMEOUT_S)
    return CycleResult(
        cycle=cycle,
        on_ack=on_ack and workload.acknowledged.is_set(),
        window_s=window,
        ops=len(mine),
        acked=sum(o.acked for o in mine),
        unanswered=sum(o.status is None for o in mine),
        restart_s=restart,
        speakers=0,
        samples=0,
        problems=[],
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True, help="SQLAlchemy URL, e.g. sqlite:///crash.db")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None, help="random by default; printed for a rerun")
    ap.add_argument("--speakers", type=int, default=8, help="speaker ids in the pool (one reader each)")
    ap.add_argument("--min-window", type=float, default=0.5, help="earliest kill, seconds into the load")
    ap.add_argument("--max-window", type=float, default=4.0, help="latest kill, seconds into the load")
    ap.add_argument(
        "--kill-on-ack", type=float, default=0.5, help="fraction of kills made the moment a 2xx arrives"
    )
    ap.add_argument("--log-dir", type=Path, help="keep the server logs here")
    ap.add_argument("--json", type=Path, help="write the summary numbers here")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed}", flush=True)
    report = run_crash_test(
        args.database_url,
        args.cycles,
        args.clients,
        seed,
        speakers=args.speakers,
        window_s=(args.min_window, args.max_window),
        kill_on_ack=args.kill_on_ack,
        log_dir=args.log_dir,
    )
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(numbers(report), indent=2))
    return 0 if report.ok else 1


def numbers(report: Report) -> dict[str, Any]:
    ops = report.ops
    return {
        "database": report.database,
        "cycles": len(report.cycles),
        "kills_on_ack": sum(c.on_ack for c in report.cycles),
        "operations": len(ops),
        "acknowledged": sum(o.acked for o in ops),
        "acknowledged_enrollments": sum(o.acked for o in ops if o.kind == "enroll"),
        "acknowledged_deletes": sum(o.acked for o in ops if o.kind == "delete"),
        "unanswered": sum(o.status is None for o in ops),
        "inflight_committed": len(report.verdict.inflight_committed),
        "lost": len(report.verdict.lost),
        "resurrected": len(report.verdict.resurrected),
        "unexplained": len(report.verdict.phantoms),
        "inconsistencies": len(report.inconsistencies),
        "index_mismatches": len(report.index_mismatches),
        "server_errors": len(report.server_errors),
        "transport_errors": len(report.transport_errors),
        "runtime_s": round(report.runtime_s, 1),
    }
