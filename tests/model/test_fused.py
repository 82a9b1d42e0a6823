"""The rewritten model (service/embedding/fused.py) against speechbrain's own modules in fp32, on
real speech, one clip at a time and in padded batches; and the start-up self-check that picks it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devtools.clips import load_clip
from service.embedding import ecapa, weights
from service.embedding.ecapa import EcapaEmbedder
from service.embedding.fused import FusedEcapa, FusionUnsupported, Matmul
from service.errors import StartupError
from tests.conftest import needs_speech
from tests.model.test_ecapa import cosine

pytestmark = [needs_speech, pytest.mark.model]

# Lengths from 1.7 s to 15 s, two corpora, so padded batches mask very different shares of frames.
CLIPS = [
    "librispeech/test-other/367/367-130732-0003.flac",
    "librispeech/test-other/367/367-130732-0002.flac",
    "librispeech/test-clean/61/61-70968-0002.flac",
    "vctk/p226/p226_008.wav",
    "vctk/p225/p225_003.wav",
]
FLOORS = {"fused-fp32": 0.99999, "fused-bf16": 0.9995, "fused-int8": 0.999}


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    return [load_clip(p).as_float() for p in CLIPS]


@pytest.fixture(scope="module")
def unbucketed() -> EcapaEmbedder:
    """speechbrain's modules in fp32, batches padded to their longest clip only (as speechbrain)."""
    return EcapaEmbedder(weights.resolve(None), "cpu", "fp32", length_bucket=1)


@pytest.mark.parametrize("precision", list(FLOORS))
def test_fused_paths_keep_the_fp32_vectors_clip_by_clip_and_in_padded_batches(
    unbucketed: EcapaEmbedder, waves: list[np.ndarray], precision: str
) -> None:
    fused = EcapaEmbedder(weights.resolve(None), "cpu", precision, length_bucket=1)  # type: ignore[arg-type]
    assert fused.precision == precision
    assert fused.self_check_cosine >= ecapa.SELF_CHECK_COSINE
    alone = [unbucketed.embed(w) for w in waves]
    # One batch: every clip but the longest is padded, and masked by its relative length.
    batched_fp32 = unbucketed.embed_batch(waves)
    batched = fused.embed_batch(waves)
    for k, path in enumerate(CLIPS):
        assert cosine(fused.embed(waves[k]), alone[k]) >= FLOORS[precision], path
        assert cosine(batched[k], batched_fp32[k]) >= FLOORS[precision], path
        # Padding barely moves a vector, as in speechbrain's own model.
        assert cosine(batched[k], alone[k]) >= 0.999, path


def test_the_folded_layers_compute_speechbrains_arithmetic(
    unbucketed: EcapaEmbedder, waves: list[np.ndarray]
) -> None:
    """The fp32 rewrite is the same function, not a close one: vectors agree to float rounding."""
    batch, lens = unbucketed.preprocess(waves)
    with torch.inference_mode():
        feats = unbucketed.mean_var_norm(unbucketed.compute_features(batch), lens)
        theirs = unbucketed.embedding_model(feats, lens).reshape(len(waves), -1)
        ours = FusedEcapa(unbucketed.embedding_model).eval()(feats, lens)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= 2e-3 * float(theirs.abs().max())


def test_same_and_different_speakers_stay_apart_on_the_int8_path(unbucketed: EcapaEmbedder) -> None:
    int8 = EcapaEmbedder(weights.resolve(None), "cpu", "fused-int8")
    same = [load_clip(p).as_float() for p in CLIPS[:2]]  # two clips of one LibriSpeech reader
    other = load_clip(CLIPS[3]).as_float()
    for model in (unbucketed, int8):
        a, b, c = (model.embed(w) for w in (*same, other))
        assert cosine(a, b) > cosine(a, c) + 0.3


def test_auto_falls_back_when_a_path_fails_its_self_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A path whose vectors drift from fp32 (here: int8 with its weights' scales off by 30 %) is
    not used; the next one is, and an explicit request for it is refused."""
    original = FusedEcapa.__init__

    def drifted(
        self: FusedEcapa, model: object, dtype: torch.dtype = torch.float32, int8: bool = False
    ) -> None:
        original(self, model, dtype, int8)
        for module in self.modules():
            if isinstance(module, Matmul) and module.int8:
                module.scale = module.scale * torch.linspace(0.7, 1.3, len(module.scale))[:, None]

    monkeypatch.setattr(FusedEcapa, "__init__", drifted)
    monkeypatch.setattr(ecapa, "native_int8", lambda device: True)
    auto = EcapaEmbedder(weights.resolve(None), "cpu", "auto")
    assert auto.precision == ecapa.precision_candidates("auto", torch.device("cpu"))[1]
    assert auto.self_check_cosine >= ecapa.SELF_CHECK_COSINE
    with pytest.raises(StartupError, match="fused-int8: cosine"):
        EcapaEmbedder(weights.resolve(None), "cpu", "fused-int8")


def test_a_model_the_rewrite_does_not_know_keeps_speechbrains_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: FusedEcapa, *args: object, **kwargs: object) -> None:
        raise FusionUnsupported("not speechbrain's ECAPA_TDNN: Other")

    monkeypatch.setattr(FusedEcapa, "__init__", refuse)
    auto = EcapaEmbedder(weights.resolve(None), "cpu", "auto")
    assert not auto.precision.startswith("fused-")
    with pytest.raises(StartupError, match="ECAPA_TDNN"):
        EcapaEmbedder(weights.resolve(None), "cpu", "fused-bf16")


@pytest.mark.skipif(
    not ecapa.compiler_available(torch.device("cpu")), reason="no C++ compiler for torch.compile here"
)
def test_the_compiled_path_keeps_the_vectors(unbucketed: EcapaEmbedder, waves: list[np.ndarray]) -> None:
    """SPK_COMPILE=on: the fused model under torch.compile (what a GPU runs by default), here on
    the CPU: the self-check's batch of two, then single clips of other lengths (shapes symbolic).
    Few calls: each new batch size compiles again, minutes on a small CPU."""
    compiled = EcapaEmbedder(weights.resolve(None), "cpu", "fused-int8", compile="on")
    assert compiled.compiled and compiled.precision == "fused-int8"
    assert compiled.self_check_cosine >= ecapa.SELF_CHECK_COSINE
    for k in (0, 3):
        assert cosine(compiled.embed(waves[k]), unbucketed.embed(waves[k])) >= FLOORS["fused-int8"], CLIPS[k]
