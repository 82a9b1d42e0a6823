"""The data of the decision study: every eval-speech clip through every channel, and the real
telephone calls as they are, rendered and embedded once (see `devtools.channels`,
`devtools.embeddings`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from devtools import channels
from devtools.embeddings import Embedded, Embedding
from devtools.sets import EVAL_SPEECH, EVAL_TELEPHONE, REPO_ROOT, manifest_rows
from service.audio.pipeline import SpeechDetector
from service.config import Settings

log = logging.getLogger(__name__)

WORK = REPO_ROOT / "data" / "study"


def render_all(work: Path = WORK) -> dict[str, Path]:
    """Render eval-speech through every channel; returns channel -> manifest path."""
    clips = manifest_rows(EVAL_SPEECH)
    audio = Settings().audio
    detector = SpeechDetector(audio.vad_threshold, audio.vad_narrowband_threshold)
    noise = channels.real_noise(manifest_rows(EVAL_TELEPHONE), detector.regions)
    out = {}
    for name, apply in channels.channels(noise).items():
        out[name] = channels.render(clips, name, apply, work / "speech" / name)
        log.info("rendered %s", name)
    return out


def embed_all(work: Path = WORK, context_s: float = 0.0) -> dict[str, Embedded]:
    """Every channel of eval-speech (key: channel name), the narrowband twins of its 16 kHz clips
    (key: "twin") and eval-telephone (key: "telephone"). `context_s`: see `Embedding`."""
    manifests = render_all(work)
    embedding = Embedding(context_s=context_s)
    out = {name: embedding.manifest(path, work / "cache") for name, path in manifests.items()}
    # What enrollment stores beside each 16 kHz clip's vector: its narrowband twin.
    out["twin"] = embedding.manifest(manifests["clean"], work / "cache", twin=True)
    out["telephone"] = embedding.manifest(EVAL_TELEPHONE / "manifest.csv", work / "cache")
    return out


# The conditions whose clips are also embedded as crops of several durations (`crop_all`).
CROPPED = ("telephone", "mulaw", "amrnb", "opus", "clean")


def crop_all(work: Path = WORK, names: tuple[str, ...] = CROPPED) -> dict[str, np.ndarray]:
    """The crops (`Embedding.crops`) of every clip of the conditions `names` (channel names of
    `embed_all`, "telephone": eval-telephone), in the order of their manifests."""
    embedding = Embedding()
    out = {}
    for name in names:
        manifest = (
            EVAL_TELEPHONE / "manifest.csv"
            if name == "telephone"
            else work / "speech" / name / "manifest.csv"
        )
        out[name] = embedding.crops(manifest, work / "cache")
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    embed_all()
    crop_all()
