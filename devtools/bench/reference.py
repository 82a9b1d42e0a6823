"""speechbrain's own `EncoderClassifier`, built offline from a model folder: the baseline that the
benchmarks hold the service's model core against.

speechbrain's loader wants the files under its own names in a folder it may write into, so the
model folder's files are linked (not copied) into a temporary folder and loaded from there; nothing
is ever fetched. This is the one place outside `service/embedding` that imports speechbrain: it is
the yardstick, never on the service's path.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

LINKED = ("hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt")


class SpeechbrainReference:
    """`EncoderClassifier.encode_batch` on one waveform at a time, on `device` ("cpu", "cuda")."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        from speechbrain.inference.speaker import EncoderClassifier

        self.device = device
        with tempfile.TemporaryDirectory(prefix="speakerid-reference-") as tmp:
            workdir = Path(tmp)
            for name in LINKED:
                (workdir / name).symlink_to(folder / name)
            # speechbrain's label encoder reads a .txt; the model folder ships it as .ckpt.
            shutil.copy(folder / "label_encoder.ckpt", workdir / "label_encoder.txt")
            # Every file is read while loading, so the folder can go once this returns.
            self.classifier: Any = EncoderClassifier.from_hparams(
                source=str(workdir),
                savedir=str(workdir),
                overrides={"pretrained_path": str(workdir)},
                run_opts={"device": device},
            )

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """One 1-D float32 16 kHz waveform -> its ``(dim,)`` float32 vector (not length-normalised)."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
        with torch.inference_mode():
            out = self.classifier.encode_batch(batch)  # (1, 1, dim), on the device
        return np.asarray(out.reshape(-1).float().cpu().numpy(), dtype=np.float32)
