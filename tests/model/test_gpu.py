"""The GPU path: runs wherever torch sees a CUDA device, skipped with the reason elsewhere."""

from __future__ import annotations

import pytest
import torch

from devtools.clips import load_clip
from service.embedding import weights
from service.embedding.ecapa import EcapaEmbedder
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
