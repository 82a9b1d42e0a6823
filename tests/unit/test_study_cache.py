"""The study's vector caches are keyed by what was embedded, not by where the checkout lies."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from devtools.embeddings import Embedding


def _embedding(precision: str = "bf16", narrowband: float | None = None) -> Embedding:
    embedding = Embedding.__new__(Embedding)  # the key needs the model's identity, not its weights
    cast(Any, embedding).model = SimpleNamespace(checksum="0575cb64", precision=precision)
    cast(Any, embedding).detector = SimpleNamespace(threshold=0.5, narrowband_threshold=narrowband)
    cast(Any, embedding).context_s = 0.0
    return embedding


def _manifest(root: Path, folder: str, clip: bytes) -> Path:
    (root / folder).mkdir(parents=True)
    (root / folder / "a.flac").write_bytes(clip)
    manifest = root / folder / "manifest.csv"
    manifest.write_text("path,speaker\na.flac,s1\n")
    return manifest


def test_the_same_clips_in_another_checkout_share_a_key(tmp_path: Path) -> None:
    one = _manifest(tmp_path / "main" / "data", "mulaw", b"x" * 100)
    other = _manifest(tmp_path / "elsewhere" / "data", "mulaw", b"y" * 100)
    assert _embedding()._key(one) == _embedding()._key(other)


def test_what_was_embedded_changes_the_key(tmp_path: Path) -> None:
    base = _manifest(tmp_path / "a", "mulaw", b"x" * 100)
    key = _embedding()._key(base)
    assert _embedding()._key(_manifest(tmp_path / "b", "mulaw", b"x" * 101)) != key  # re-rendered clip
    assert _embedding()._key(_manifest(tmp_path / "c", "alaw", b"x" * 100)) != key  # another condition
    assert _embedding("fused-int8")._key(base) != key  # another model path
    assert _embedding(narrowband=0.25)._key(base) != key  # calls heard by another speech detector
    assert _embedding()._key(base, "twin") != key
