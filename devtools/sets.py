"""Where the shared evaluation sets live (beside the checkout, never copied into it)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from service.tools.inputs import InputError, ManifestRow, read_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = (REPO_ROOT / ".." / "shared").resolve()
EVAL_SPEECH = SHARED / "eval-speech"
EVAL_TELEPHONE = SHARED / "eval-telephone"


def manifest_rows(folder: Path, required: Iterable[str] = ("path", "speaker")) -> list[ManifestRow]:
    """The rows of the set's ``manifest.csv``; a missing set is an `InputError` that says where."""
    if not (folder / "manifest.csv").is_file():
        raise InputError(f"no evaluation set at {folder} (manifest.csv missing)")
    return read_manifest(folder / "manifest.csv", required)
