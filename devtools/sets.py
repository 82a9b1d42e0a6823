"""Where the shared evaluation sets live (beside the checkout, never copied into it)."""

from __future__ import annotations

from pathlib import Path

from service.tools.inputs import ManifestRow, read_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = (REPO_ROOT / ".." / "shared").resolve()
EVAL_SPEECH = SHARED / "eval-speech"
EVAL_TELEPHONE = SHARED / "eval-telephone"


def manifest(folder: Path) -> list[ManifestRow]:
    return read_manifest(folder / "manifest.csv")
