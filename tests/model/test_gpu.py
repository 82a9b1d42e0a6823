"""The GPU path: runs wherever torch sees a CUDA device, skipped with the reason elsewhere."""

from __future__ import annotations

import pytest
import torch

from devtools.clips import load_clip
from service.embedding import weights
from service.embedding.ecapa import SELF_CHECK_COSINE, EcapaEmbedder, compiler_available
from tests.conftest import needs_speech
from tests.model.test_ecapa import CLIPS, cosine, embed_concurrently

pytestmark = [
    needs_speech,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU on this machine"),
]


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.999), ("bf16", 0.99)])
def test_gpu_vectors_match_the_cpu(embedder: EcapaEmbedder, precision: str, floor: float) -> None:
    gpu = EcapaEmbedder(weights.resolve(None), "cuda", precision)  # type: ignore[arg-type]
    waves = [load_clip(p).as_float() for p in CLIPS]
    batched = embed_concurrently(gpu.embed_batch, waves)
    for wave, vector in zip(waves, batched, strict=True):
        assert cosine(vector, embedder.embed(wave)) >= floor


def test_gpu_auto_runs_the_fused_model_compiled_and_keeps_the_cpu_vectors(embedder: EcapaEmbedder) -> None:
    """SPK_PRECISION=auto on a GPU: the fused model in bf16 (where the GPU has it), under
    torch.compile where triton is there, having passed its self-check; vectors as the CPU's fp32."""
    auto = EcapaEmbedder(weights.resolve(None), "cuda", "auto")
    assert auto.precision == ("fused-bf16" if torch.cuda.is_bf16_supported() else "fused-fp32")
    assert auto.compiled == compiler_available(auto.torch_device), "torch.compile failed: see the log"
    assert auto.self_check_cosine >= SELF_CHECK_COSINE
    waves = [load_clip(p).as_float() for p in CLIPS]
    # Batches of different sizes and lengths: the compiled graph's shapes are symbolic.
    batched = embed_concurrently(auto.embed_batch, waves)
    for wave, vector in zip(waves, batched, strict=True):
        assert cosine(vector, embedder.embed(wave)) >= 0.999
        assert cosine(auto.embed(wave), embedder.embed(wave)) >= 0.999
