"""Reading the tools' inputs: manifests (CSV with `path,speaker`), and making valid speaker ids."""

from __future__ import annotations

import csv
import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.enrollment.speaker_ids import DISALLOWED_RUN, MAX_LENGTH, is_speaker_id


class InputError(ValueError):
    """The input cannot be used as given; the message says why."""


@dataclass(frozen=True)
class ManifestRow:
    """One line of a manifest: the file (resolved), how it was written, its speaker, other columns."""

    path: Path
    name: str
    speaker: str
    extra: dict[str, str] = field(default_factory=dict)


def read_manifest(csv_path: Path, required: Iterable[str] = ("path", "speaker")) -> list[ManifestRow]:
    """The rows of a CSV manifest in file order; relative paths resolve against the CSV's folder."""
    required = tuple(required)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in columns]
            if missing:
                has = ", ".join(columns) or "none"
                raise InputError(f"{csv_path}: missing column(s) {', '.join(missing)} (has: {has})")
            rows: list[ManifestRow] = []
            for line, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                name, speaker = row.pop("path"), row.pop("speaker", "")
                if not name or (not speaker and "speaker" in required):
                    raise InputError(f"{csv_path}:{line}: empty path or speaker")
                path = Path(name) if Path(name).is_absolute() else csv_path.parent / name
                rows.append(ManifestRow(path=path, name=name, speaker=speaker, extra=row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {csv_path}: {exc}") from exc
    return rows


def require_files(rows: Iterable[ManifestRow]) -> None:
    """InputError, naming one of them, if files a manifest lists are missing: a run stops before it
    sends anything rather than measure on fewer files than asked."""
    missing = [str(row.path) for row in rows if not row.path.is_file()]
    if missing:
        raise InputError(f"{len(missing)} file(s) of the manifest are missing, e.g. {missing[0]}")


def clean_id(name: str, max_len: int = MAX_LENGTH) -> str:
    """`name` made into a valid speaker id of at most `max_len` characters: accents dropped
    (José -> Jose), every other run of characters outside `[A-Za-z0-9_.-]` becomes one "_"."""
    if is_speaker_id(name) and len(name) <= max_len:
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = DISALLOWED_RUN.sub("_", ascii_name).strip("_")[:max_len]
    return cleaned if is_speaker_id(cleaned) else "speaker"


def speaker_ids(names: Iterable[str]) -> dict[str, str]:
    """A valid, distinct speaker id for every name, the same on every run whatever the order of the
    input or the other names in it. A valid name keeps itself; any other is cleaned (`clean_id`)
    and gets "-" and 8 hex digits of a hash of the name (NFC: "José" is one name however it was
    typed), so José -> Jose-<h1> and Josè -> Jose-<h2> stay apart, and neither moves when the
    other appears. InputError in the (1 in 4 billion) case where two ids still meet."""
    ids: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name in dict.fromkeys(names):
        sid = name if is_speaker_id(name) else _hashed_id(name)
        if owner.setdefault(sid, _nfc(name)) != _nfc(name):
            raise InputError(
                f"speaker names {owner[sid]!r} and {name!r} both become the id {sid}; rename one"
            )
        ids[name] = sid
    return ids


def _hashed_id(name: str) -> str:
    digest = hashlib.sha256(_nfc(name).encode("utf-8")).hexdigest()[:8]
    return f"{clean_id(name, MAX_LENGTH - 9)}-{digest}"


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)
