"""Where the shared evaluation sets live (beside the checkout, never copied into it)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from service.tools.inputs import InputError, ManifestRow, read_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = (REPO_ROOT / ".." / "shared").resolve()
EVAL_SPEECH = SHARED / "eval-speech"
EVAL_TELEPHONE = SHARED / "eval-telephone"


def manifest_rows(
    folder: Path, required: Iterable[str] = ("path", "speaker"), name: str = "manifest.csv"
) -> list[ManifestRow]:
    """The rows of the set's manifest (`name` in `folder`, paths relative to it); a missing set is
    an `InputError` that says where."""
    if not (folder / name).is_file():
        raise InputError(f"no evaluation set at {folder} ({name} missing)")
    return read_manifest(folder / name, required)
