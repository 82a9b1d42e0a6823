"""How much of a clip's speech power lies above the telephone band, per channel condition: the
measurement behind `service.audio.band.WIDEBAND_SHARE`.

For eval-speech as recorded (16 kHz), through MP3 at 24 kbit/s, and through G.711 then resampled to
16 kHz (8 kHz audio a client upsampled before sending it), and for the real calls of eval-telephone:
the range of `high_band_share` over the speech the front end finds in each clip.
"""

from __future__ import annotations

import logging

import numpy as np

from devtools import channels as C
from devtools.sets import EVAL_TELEPHONE, manifest
from devtools.study import WORK
from service.audio import MODEL_RATE
from service.audio.band import WIDEBAND_SHARE, high_band_share
from service.audio.decode import DecodedAudio
from service.audio.pipeline import SpeechDetector, prepare
from service.config import Settings
from service.tools.inputs import ManifestRow

log = logging.getLogger(__name__)


def shares(folder_manifest: list[ManifestRow], detector: SpeechDetector, to_16k: bool = False) -> np.ndarray:
    out = []
    for row in folder_manifest:
        samples, rate = C.decode_mono(row.path.read_bytes())
        if to_16k:
            samples, rate = C.resample(samples, rate, MODEL_RATE), MODEL_RATE
        prepared = prepare(DecodedAudio(samples[None, :], rate), detector, None)
        speech = prepared.speech_wave()
        if len(speech) >= MODEL_RATE // 2:
            out.append(high_band_share(speech))
    return np.array(out)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    detector = SpeechDetector(Settings().audio.vad_threshold)
    sets = {
        "eval-speech 16 kHz": (manifest(WORK / "speech" / "clean"), False),
        "eval-speech MP3 24 kbit/s": (manifest(WORK / "speech" / "mp3"), False),
        "eval-speech G.711, resampled to 16 kHz": (manifest(WORK / "speech" / "mulaw"), True),
        "eval-telephone (8 kHz calls)": (manifest(EVAL_TELEPHONE), False),
    }
    print(f"share of speech power above 3.8 kHz (wideband from {WIDEBAND_SHARE:g})")
    for name, (rows, up) in sets.items():
        s = shares(rows, detector, up)
        wide = int((s >= WIDEBAND_SHARE).sum())
        print(
            f"{name}: {len(s)} clips, {s.min():.2g}-{s.max():.2g} "
            f"(median {np.median(s):.2g}), wideband {wide}"
        )
    return 0
