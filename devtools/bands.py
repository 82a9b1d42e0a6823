"""How much of a clip's speech power lies above the telephone band, per channel condition: the
measurement behind `service.audio.band.WIDEBAND_SHARE`; and what the narrowband index costs in
memory (`--index-memory N`: the bench's random population of N speakers, each with a twin centroid
of its own, indexed in one band and in both, each in a fresh process).

For eval-speech as recorded (16 kHz), through MP3 at 24 kbit/s, and through G.711 then resampled to
16 kHz (8 kHz audio a client upsampled before sending it), and for the real calls of eval-telephone:
the range of `high_band_share` over the speech the front end finds in each clip.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys

import numpy as np

from devtools import channels as C
from devtools.bench.index import DIM, population, rss_gb
from devtools.sets import EVAL_TELEPHONE, manifest_rows
from devtools.study import WORK
from service.audio import MODEL_RATE
from service.audio.band import WIDEBAND_SHARE, high_band_share
from service.audio.decode import DecodedAudio
from service.audio.pipeline import SpeechDetector, prepare
from service.config import Settings
from service.enrollment.ports import IndexEntry
from service.storage.index import BandedIndex
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


def index_rss(n: int, twins: bool) -> dict[str, object]:
    """Resident memory of an index of `n` speakers (one band, or both with their twin centroids,
    counted too) over that of the wideband entries."""
    rng = np.random.default_rng(n)
    wide = population(n, rng)
    entries = [IndexEntry(i + 1, 1, f"s{i}", True, wide[i]) for i in range(n)]
    before, _ = rss_gb()
    if twins:  # one array per speaker, as the store reads them
        narrow = population(n, rng)
        entries = [dataclasses.replace(e, narrow_centroid=narrow[i].copy()) for i, e in enumerate(entries)]
        del narrow
    index = BandedIndex(DIM, twins=twins)
    index.replace(entries)
    after, _ = rss_gb()
    return {"speakers": n, "twins": twins, "kind": index.kind, "index_gb": after - before, "rss_gb": after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--index-memory", type=int, metavar="N", help="measure the index's memory at N speakers"
    )
    parser.add_argument("--twins", choices=("on", "off"), help=argparse.SUPPRESS)  # one measurement's process
    args = parser.parse_args(argv)
    if args.index_memory and args.twins:
        print(json.dumps(index_rss(args.index_memory, args.twins == "on")))
        return 0
    if args.index_memory:
        for twins in ("off", "on"):
            command = [sys.executable, "-m", "scripts.band_share", "--index-memory", str(args.index_memory)]
            out = subprocess.run([*command, "--twins", twins], check=True, capture_output=True, text=True)
            print(out.stdout.strip().splitlines()[-1])
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    audio = Settings().audio
    detector = SpeechDetector(audio.vad_threshold, audio.vad_narrowband_threshold)
    sets = {
        "eval-speech 16 kHz": (manifest_rows(WORK / "speech" / "clean"), False),
        "eval-speech MP3 24 kbit/s": (manifest_rows(WORK / "speech" / "mp3"), False),
        "eval-speech G.711, resampled to 16 kHz": (manifest_rows(WORK / "speech" / "mulaw"), True),
        "eval-telephone (8 kHz calls)": (manifest_rows(EVAL_TELEPHONE), False),
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
