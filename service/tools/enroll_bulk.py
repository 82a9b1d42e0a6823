"""`speakerid enroll-bulk`: migrate many speakers into a running service over its compatible API.

Input is a folder with one subfolder per speaker, or a CSV with `path,speaker` columns. Each file
is one sample, sent base64 in JSON to ``POST /audio/generic/api/v1/sync/diarization/enroll``. A
speaker's samples go one at a time, in order (each is checked against the earlier ones); speakers
run in parallel. Every answered file is written to a JSON-lines state file, so a re-run skips it.
A file too large for one request (--max-bytes) is refused here, without reading it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from service.config import AudioSettings
from service.tools.audio import ENCODINGS, encoding_for, header_sample_rate
from service.tools.client import (
    INTERRUPTED,
    NEVER_RETRIED,
    TRANSIENT_STATUS,
    FatalHttpError,
    ServiceClient,
    add_connection_args,
    connect,
    error_of,
    reach,
)
from service.tools.inputs import InputError, read_manifest, speaker_ids
from service.tools.pool import run_bounded

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
ENROLLED = "/audio/generic/api/v1/sync/diarization/get_enrolled_speakers"
STATE_SUFFIX = ".enroll-bulk-state.jsonl"
# The service's default body limit (SPK_AUDIO__MAX_REQUEST_BYTES), read from its settings' declaration.
DEFAULT_MAX_BYTES: int = AudioSettings.model_fields["max_request_bytes"].default
DUPLICATE_SAMPLE = "enrollment.DuplicateSample"
ALREADY_ENROLLED = "already enrolled"  # the message of an acceptance inferred from a DuplicateSample
TOO_LARGE = "client.TooLarge"  # the errorcode of a file refused here, unsent


# --- the plan: which files, for which speaker ----------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One file to send. `key` names it in the state file: its path relative to the input's folder."""

    key: str
    path: Path
    speaker: str


@dataclass
class Plan:
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # speaker id -> samples in order
    renamed: dict[str, str] = field(default_factory=dict)  # name in the input -> speaker id sent
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, why it is not sent)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file or folder, why): fix, re-run

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.samples.values())


def plan_input(source: Path, encoding: str) -> Plan:
    """The samples of a speaker folder tree or a CSV manifest. With `encoding` "auto", files whose
    extension names no known encoding are ignored (and listed)."""
    unreadable: list[tuple[str, str]] = []
    if source.is_dir():
        base, named = source, list(_folder_files(source, unreadable))
    elif source.is_file():
        base = source.parent
        named = [(row.speaker, row.path) for row in read_manifest(source)]
    else:
        raise InputError(f"{source}: no such folder or file")
    ids = speaker_ids(name for name, _ in named)
    plan = Plan(renamed={name: sid for name, sid in ids.items() if name != sid})
    # A broken link's own path, not its target's: the link is what the operator must mend.
    plan.unreadable.extend(
        ((Path(_key(Path(path).parent, base)) / Path(path).name).as_posix(), why) for path, why in unreadable
    )
    listed: set[tuple[str, str]] = set()
    for name, path in named:
        key = _key(path, base)
        if encoding == "auto" and encoding_for(path) is None:
            plan.ignored.append((key, f"extension {path.suffix or '(none)'} is not audio"))
        elif (ids[name], key) in listed:  # one answer per file and speaker in the state file
            plan.ignored.append((key, f"listed again for {ids[name]}"))
        elif not path.is_file():
            plan.unreadable.append((key, "file not found"))
        else:
            listed.add((ids[name], key))
            plan.samples.setdefault(ids[name], []).append(Sample(key=key, path=path, speaker=ids[name]))
    return plan


def _folder_files(root: Path, unreadable: list[tuple[str, str]]) -> Iterator[tuple[str, Path]]:
    """(speaker folder name, file) for every file under each subfolder, in name order; hidden
    files and folders (".state", ".DS_Store") are not samples. A folder that cannot be listed is
    added to `unreadable` (its path, why), never passed over in silence."""

    def refused(exc: OSError) -> None:
        unreadable.append((str(exc.filename), f"folder unreadable ({exc.strerror or type(exc).__name__})"))

    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"{root}: cannot list the folder ({exc.strerror or exc})") from exc
    for folder in folders:
        found: list[Path] = []
        for parent, dirs, files in os.walk(folder, onerror=refused):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(Path(parent, name) for name in files if not name.startswith("."))
        for path in sorted(found):
            if path.is_file():
                yield folder.name, path
            elif path.is_symlink() and not path.exists():
                unreadable.append((str(path), f"broken link (to {os.readlink(path)}, which is missing)"))
            else:  # a socket, a FIFO, a device: nothing to send
                unreadable.append((str(path), "not a regular file"))


def _key(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def default_state_path(source: Path) -> Path:
    """Next to the input: folder `speakers/` -> `speakers.enroll-bulk-state.jsonl`, `x.csv` ->
    `x.enroll-bulk-state.jsonl` (a sibling, since the input folder may be read-only)."""
    source = source.resolve()
    stem = source.name if source.is_dir() else source.stem
    return source.parent / f"{stem}{STATE_SUFFIX}"


# --- the state file ------------------------------------------------------------------------------


def service_key(url: str) -> str:
    """The service a URL names, as the state file keys it: scheme and host lower case, no default
    port, no credentials, no trailing slash (`HTTP://Host:80/` -> `http://host`). Different names of
    one host (localhost, 127.0.0.1) stay different: only the operator knows they are the same."""
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL:
        return url.strip().rstrip("/")
    scheme, host, port = parsed.scheme.lower(), parsed.host.lower(), parsed.port
    if not scheme or not host:
        return url.strip().rstrip("/")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parsed.path.rstrip('/')}"


class StateFile:
    """JSON lines, one per answered file: accepted, or refused with a 4xx that retrying won't change.

    A line is keyed by (service, speaker id, file), so the same input can be migrated to another
    service with its own state; the service is its URL as `service_key` writes it. Lines are
    appended and flushed one by one, so an interrupted run loses at most the answers in flight; a
    torn last line is ignored on reading. Before a file is sent a "sent" line is written, so that a
    re-run can tell a file whose answer was lost (the service may hold it) from one never sent.
    """

    def __init__(self, path: Path, *, retry_refused: bool = False) -> None:
        self.path = path
        self.retry_refused = retry_refused
        self.records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.unanswered: set[tuple[str, str, str]] = set()  # sent by an earlier run, no answer since
        self._lock = threading.Lock()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    key = (service_key(record["url"]), record["speakerId"], record["file"])
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if record.get("result") == "sent":
                    self.unanswered.add(key)
                else:
                    self.unanswered.discard(key)
                    self.records[key] = record
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run, closed in close()

    def get(self, url: str, sample: Sample) -> dict[str, Any] | None:
        return self.records.get((service_key(url), sample.speaker, sample.key))

    def lost_answer(self, url: str, sample: Sample) -> bool:
        """Whether an earlier run sent the sample and got no answer (it may have been lost with that
        run, the service holding the sample)."""
        return (service_key(url), sample.speaker, sample.key) in self.unanswered

    def mark_sent(self, url: str, sample: Sample) -> None:
        self._write({"url": url, "speakerId": sample.speaker, "file": sample.key, "result": "sent"})

    def done(self, url: str, sample: Sample) -> bool:
        """Whether a run may skip the sample: it has an answer (only an acceptance, with retry_refused)."""
        record = self.get(url, sample)
        return record is not None and (record["result"] == "accepted" or not self.retry_refused)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records[(service_key(record["url"]), record["speakerId"], record["file"])] = record
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


# --- sending -------------------------------------------------------------------------------------


@dataclass
class Progress:
    """This run's counts, updated from the worker threads."""

    bar: tqdm[Any]
    accepted: int = 0
    already: int = 0  # of `accepted`: answered DuplicateSample after an earlier send of that file
    refused: int = 0
    unsent: Counter[str] = field(default_factory=Counter)  # why a file got no answer (re-run sends it)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, why) that could not be read
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cannot_read(self, sample: Sample, exc: OSError) -> None:
        with self.lock:
            self.unreadable.append((sample.key, f"file unreadable ({exc.strerror or type(exc).__name__})"))
            self.bar.update(1)

    def count(self, outcome: str, files: int = 1) -> None:
        with self.lock:
            if outcome in ("accepted", ALREADY_ENROLLED):
                self.accepted += files
                self.already += files if outcome == ALREADY_ENROLLED else 0
            elif outcome == "refused":
                self.refused += files
            else:
                self.unsent[outcome] += files
            self.bar.set_postfix(accepted=self.accepted, refused=self.refused, refresh=False)
            self.bar.update(files)


@dataclass(frozen=True)
class Options:
    url: str  # as `service_key` writes it
    encoding: str
    language_code: str
    max_bytes: int = DEFAULT_MAX_BYTES  # the service's request body limit


def too_large(sample: Sample, options: Options) -> str | None:
    """Why the sample cannot be sent in one request of `options.max_bytes` (its body is the file
    base64-encoded, 4 bytes per 3, in JSON), from its size alone; None if it fits. OSError if the
    file cannot be read."""
    size = sample.path.stat().st_size
    rest = {"content": "", "encoding": "LINEAR16", "languageCode": options.language_code}
    overhead = len(json.dumps({**rest, "speakerId": sample.speaker, "sampleRate": 192_000}).encode()) + 64
    body = 4 * -(-size // 3) + overhead
    if body <= options.max_bytes:
        return None
    most = (options.max_bytes - overhead) // 4 * 3
    return (
        f"too large: {size} bytes; a request of at most {options.max_bytes} bytes (--max-bytes) "
        f"carries a file of at most {max(most, 0)} bytes base64-encoded"
    )


def request_body(sample: Sample, options: Options) -> dict[str, Any]:
    """The compatible enroll body: base64 content, encoding from the extension (or as forced), and
    the file's own sample rate where its header gives it."""
    body: dict[str, Any] = {
        "content": base64.b64encode(sample.path.read_bytes()).decode("ascii"),
        "encoding": encoding_for(sample.path) if options.encoding == "auto" else options.encoding,
        "languageCode": options.language_code,
        "speakerId": sample.speaker,
    }
    rate = header_sample_rate(sample.path)
    if rate is not None:
        body["sampleRate"] = rate
    return body


def enroll_speaker(
    client: ServiceClient,
    samples: list[Sample],
    options: Options,
    state: StateFile,
    progress: Progress,
    stop: threading.Event,
) -> None:
    """Send one speaker's samples in order. A sample without an answer (the service stayed busy or
    unreachable through every retry) holds back the rest, so that a re-run keeps the order.

    A DuplicateSample answer to a file that may have reached the service before without an answer
    (sent by an earlier run that was stopped before its answer, or by a try whose connection broke)
    is the service holding that very file: it is recorded as accepted, "already enrolled". A file
    sent for the first time that gets one is a copy of another file, and is refused."""
    for i, sample in enumerate(samples):
        if stop.is_set():
            return
        record: dict[str, Any] = {"url": options.url, "speakerId": sample.speaker, "file": sample.key}
        try:
            why = too_large(sample, options)
            if why is not None:
                at = datetime.now(UTC).isoformat(timespec="seconds")
                state.add(
                    {
                        **record,
                        "status": None,
                        "at": at,
                        "result": "refused",
                        "errorcode": TOO_LARGE,
                        "faultstring": why,
                    }
                )
                progress.count("refused")
                continue
            body = request_body(sample, options)
        except OSError as exc:
            progress.cannot_read(sample, exc)
            continue
        lost_answer = state.lost_answer(options.url, sample)
        state.mark_sent(options.url, sample)
        try:
            answer = client.send("POST", ENROLL, json=body)
        except NEVER_RETRIED as exc:
            raise FatalHttpError(f"POST {client.url}{ENROLL}: {type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            progress.count(f"connection failed ({type(exc).__name__})")
            progress.count("held back behind an unsent sample", len(samples) - i - 1)
            return
        response = answer.response
        record["status"] = response.status_code
        record["at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if response.status_code in (404, 405):  # never an answer about a sample: the URL is wrong
            raise FatalHttpError(
                f"POST {client.url}{ENROLL}: HTTP {response.status_code}; is --url the service?"
            )
        code, text = error_of(response) if response.status_code != 200 else ("", "")
        if response.status_code == 200:
            state.add({**record, "result": "accepted", "message": _message(response)})
            progress.count("accepted")
        elif code == DUPLICATE_SAMPLE and (lost_answer or answer.repeated):
            state.add({**record, "result": "accepted", "message": ALREADY_ENROLLED, "errorcode": code})
            progress.count(ALREADY_ENROLLED)
        elif 400 <= response.status_code < 500 and response.status_code not in TRANSIENT_STATUS:
            state.add({**record, "result": "refused", "errorcode": code, "faultstring": text})
            progress.count("refused")
        else:
            progress.count(f"HTTP {response.status_code} {code}")
            progress.count("held back behind an unsent sample", len(samples) - i - 1)
            return


def _message(response: httpx.Response) -> str | None:
    """The compatible API's "Success" / "Complete" (None if the body is not that JSON)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("message") if isinstance(body, dict) else None


# --- the summary ---------------------------------------------------------------------------------


@dataclass
class Summary:
    speakers: int
    complete: list[str]
    enrolling: list[str]
    none_accepted: list[str]
    accepted: int
    already: int  # of `accepted`: found enrolled when sent again after a lost answer
    refused: Counter[str]
    refused_example: dict[str, str]
    skipped: int
    unsent: Counter[str]
    retries: int
    renamed: dict[str, str]
    ignored: list[tuple[str, str]]
    unreadable: list[tuple[str, str]]
    state_path: Path
    status_source: str

    def lines(self) -> list[str]:
        out = [
            f"speakers: {self.speakers} ({len(self.complete)} complete, {len(self.enrolling)} enrolling, "
            f"{len(self.none_accepted)} with no accepted sample; {self.status_source})",
            f"samples accepted: {self.accepted}"
            + (
                f" ({self.already} already enrolled: sent again after their answer was lost)"
                if self.already
                else ""
            ),
            f"samples refused: {sum(self.refused.values())}",
        ]
        width = max((len(code) for code in self.refused), default=0)
        for code, n in self.refused.most_common():
            out.append(f"  {code:<{width}}  {n:>5}  e.g. {self.refused_example[code]}")
        if self.none_accepted:
            out.append("speakers with no accepted sample: " + ", ".join(self.none_accepted[:20]))
        out.append(f"already answered in an earlier run (skipped): {self.skipped}; retries: {self.retries}")
        if self.unsent:
            out.append(f"not answered, sent again by a re-run: {sum(self.unsent.values())}")
            out.extend(f"  {why}: {n}" for why, n in self.unsent.most_common())
        if self.renamed:
            out.append(f"speaker names that are not valid ids were renamed ({len(self.renamed)}):")
            out.extend(f"  {name!r} -> {sid}" for name, sid in list(self.renamed.items())[:50])
        for title, entries in (
            ("files not sent", self.ignored),
            ("could not be read (fix, then run again)", self.unreadable),
        ):
            if entries:
                out.append(f"{title} ({len(entries)}):")
                out.extend(f"  {key}: {why}" for key, why in entries[:20])
                if len(entries) > 20:
                    out.append(f"  ... and {len(entries) - 20} more")
        out.append(f"state: {self.state_path}")
        return out


def summarise(
    plan: Plan, state: StateFile, url: str, progress: Progress, client: ServiceClient, skipped: int
) -> Summary:
    """Totals over the whole migration (earlier runs' answers come from the state file), and each
    speaker's status as the service reports it now."""
    accepted, already, refused, example = 0, 0, Counter[str](), dict[str, str]()
    last_message: dict[str, str] = {}
    for speaker, samples in plan.samples.items():
        for sample in samples:
            record = state.get(url, sample)
            if record is None:
                continue
            if record["result"] == "accepted":
                accepted += 1
                if record.get("message") == ALREADY_ENROLLED:
                    already += 1
                else:
                    last_message[speaker] = str(record.get("message"))
            else:
                code = str(record.get("errorcode"))
                refused[code] += 1
                example.setdefault(code, f"{sample.key}: {record.get('faultstring', '')}"[:120])
    complete_by_id, source = _service_status(client, last_message)
    complete = [s for s in plan.samples if complete_by_id.get(s) is True]
    enrolling = [s for s in plan.samples if complete_by_id.get(s) is False]
    none = [s for s in plan.samples if s not in complete_by_id]
    return Summary(
        speakers=len(plan.samples),
        complete=complete,
        enrolling=enrolling,
        none_accepted=none,
        accepted=accepted,
        already=already,
        refused=refused,
        refused_example=example,
        skipped=skipped,
        unsent=progress.unsent,
        retries=client.retries,
        renamed=plan.renamed,
        ignored=plan.ignored,
        unreadable=[*plan.unreadable, *progress.unreadable],
        state_path=state.path,
        status_source=source,
    )


def _service_status(client: ServiceClient, last_message: dict[str, str]) -> tuple[dict[str, bool], str]:
    """speaker id -> complete, from the service's list; from the last answers if that fails."""
    try:
        response = client.request("GET", ENROLLED)
        if response.status_code == 200:
            listed = response.json()["enrolled_speaker_ids"]
            return {s["speaker_id"]: s["enrollment_complete"] == "True" for s in listed}, "as listed now"
    except (httpx.HTTPError, FatalHttpError, ValueError, KeyError, TypeError):
        pass
    by_answer = {s: m == "Complete" for s, m in last_message.items()}
    return by_answer, "from the last answers; the speaker list was not available"


# --- the command ---------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "enroll-bulk",
        help="enroll many speakers from a folder or CSV through a running service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="MANIFEST_OR_FOLDER", help="speaker folders, or a CSV")
    add_connection_args(p)
    p.add_argument("--concurrency", type=int, default=4, help="speakers enrolled at once (default 4)")
    p.add_argument("--state", type=Path, help=f"resume file (default: next to the input, *{STATE_SUFFIX})")
    p.add_argument(
        "--encoding",
        default="auto",
        help=f"auto (from the extension: {', '.join(sorted(set(ENCODINGS.values())))}) or one for all files",
    )
    p.add_argument("--language-code", default="en-US")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help="the service's request size limit, its SPK_AUDIO__MAX_REQUEST_BYTES (default %(default)d): "
        "a file whose base64 body would pass it (about 3/4 of it) is refused here, unread",
    )
    p.add_argument(
        "--retry-refused", action="store_true", help="send again the files an earlier run had refused"
    )
    p.set_defaults(run=cmd_enroll_bulk)


def cmd_enroll_bulk(args: argparse.Namespace, _settings: object = None) -> int:
    """Exit status: 0 when every file has an answer (accepted or refused), 1 when some must be sent
    again (re-run to resume) or could not be read (a folder or file the summary names: a file of
    the input listed but missing, a broken link, or without permission), 2 when the input or the
    service refuses the run itself (an unreachable service or wrong --url, before anything is
    sent), 130 when the operator stopped it (Ctrl-C; run it again to resume)."""
    url = service_key(args.url)
    encoding = "auto" if args.encoding.lower() == "auto" else args.encoding.upper()
    state_path = args.state or default_state_path(args.input)
    try:
        if args.max_bytes < 1:
            raise InputError("--max-bytes must be a positive number of bytes")
        plan = plan_input(args.input, encoding)
        client = connect(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        reach(client)
    except FatalHttpError as exc:
        client.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        client.close()
        print("stopped: interrupted before anything was sent", file=sys.stderr)
        return INTERRUPTED
    try:
        state = StateFile(state_path, retry_refused=args.retry_refused)
    except OSError as exc:
        client.close()
        print(
            f"error: cannot use the state file {state_path} ({exc}); choose one with --state", file=sys.stderr
        )
        return 2
    options = Options(url=url, encoding=encoding, language_code=args.language_code, max_bytes=args.max_bytes)
    todo = {s: [x for x in samples if not state.done(url, x)] for s, samples in plan.samples.items()}
    pending = sum(len(x) for x in todo.values())
    print(
        f"{len(plan.samples)} speakers, {plan.total} files; {plan.total - pending} already answered",
        file=sys.stderr,
    )
    stop = threading.Event()
    client.stop = stop  # Ctrl-C ends the retries of requests in flight, not only the next files
    fatal: str | None = None
    interrupted = False
    with client, tqdm(total=pending, unit="file", desc="enroll-bulk", dynamic_ncols=True) as bar:
        progress = Progress(bar=bar)
        jobs = [
            partial(enroll_speaker, client, samples, options, state, progress, stop)
            for samples in todo.values()
            if samples
        ]
        try:
            run_bounded(jobs, args.concurrency, stop)
        except FatalHttpError as exc:
            fatal = str(exc)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            state.close()
        bar.close()
        summary = summarise(plan, state, url, progress, client, plan.total - pending)
    print("\n".join(summary.lines()))
    answered = plan.total - pending + progress.accepted + progress.refused
    if fatal:
        print(f"stopped: {fatal}", file=sys.stderr)
        return 2
    if interrupted:
        print("stopped: interrupted; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED
    return 0 if answered == plan.total and not summary.unreadable else 1
