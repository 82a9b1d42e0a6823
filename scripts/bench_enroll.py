"""Time a 10 s enrollment end to end over HTTP next to the bare model forward and speechbrain's own
`EncoderClassifier.encode_batch`, all on the same clips, in one run, and print the ratios.

    .venv/bin/python scripts/bench_enroll.py [--clips 12] [--threads 2]

The service runs as a separate `speakerid serve` process on a temporary SQLite database; each
request enrolls a different clip (about 10 s, real speech from ../shared/eval-speech) as FLAC.
"""

from __future__ import annotations

import argparse
import base64
import csv
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval-speech"


def ten_second_clips(count: int) -> list[Path]:
    with (EVAL / "manifest.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if 9.0 <= float(r["duration_s"]) <= 11.0]
    return [EVAL / r["path"] for r in rows[:count]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_calls(fn: object, items: list[np.ndarray], repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        for item in items:
            start = time.perf_counter()
            fn(item)  # type: ignore[operator]
            out.append(time.perf_counter() - start)
    return out


def reference_classifier(folder: Path, workdir: Path) -> object:
    from speechbrain.inference.speaker import EncoderClassifier

    for name in ("hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt"):
        (workdir / name).symlink_to(folder / name)
    shutil.copy(folder / "label_encoder.ckpt", workdir / "label_encoder.txt")
    return EncoderClassifier.from_hparams(
        source=str(workdir), savedir=str(workdir), overrides={"pretrained_path": str(workdir)}
    )


def bench_http(clips: list[Path], threads: int, precision: str) -> list[float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-enroll-"))
    env = {
        **os.environ,
        "SPK_DATA_DIR": str(workdir),
        "SPK_TORCH_THREADS": str(threads),
        "SPK_PRECISION": precision,
        "SPK_LOG_LEVEL": "WARNING",
        "SPK_AUTH__RATE_LIMIT_PER_MINUTE": "0",
    }
    cli = str(REPO / ".venv" / "bin" / "speakerid")
    subprocess.run([cli, "migrate"], env=env, check=True, capture_output=True)
    key = (
        subprocess.run(
            [cli, "keys", "create", "--tenant", "bench"], env=env, check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    server = subprocess.Popen([cli, "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            times = []
            for n, clip in enumerate(clips):
                body = {
                    "content": base64.b64encode(clip.read_bytes()).decode(),
                    "encoding": "FLAC",
                    "sampleRate": 16000,
                    "speakerId": f"bench-{n}",
                }
                start = time.perf_counter()
                answer = client.post("/audio/generic/api/v1/sync/diarization/enroll", json=body)
                times.append(time.perf_counter() - start)
                answer.raise_for_status()
        return times[1:]  # the first request pays one-off costs
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from service.embedding import weights
    from service.embedding.ecapa import EcapaEmbedder

    clips = ten_second_clips(args.clips)
    waves = [sf.read(p, dtype="float32")[0] for p in clips]
    seconds = statistics.mean(len(w) / 16000 for w in waves)
    files = weights.resolve(None)
    core = EcapaEmbedder(files, "cpu", args.precision)
    reference = reference_classifier(files.folder, Path(tempfile.mkdtemp(prefix="bench-sb-")))

    def speechbrain(wave: np.ndarray) -> None:
        with torch.inference_mode():
            reference.encode_batch(torch.from_numpy(wave)[None])  # type: ignore[attr-defined]

    time_calls(core.embed, waves[:2])
    time_calls(speechbrain, waves[:2])
    ours = statistics.median(time_calls(core.embed, waves, repeat=2))
    theirs = statistics.median(time_calls(speechbrain, waves, repeat=2))
    http = bench_http(clips, args.threads, args.precision)
    enroll = statistics.median(http)

    print(f"clips: {len(waves)} real speech clips, mean {seconds:.1f} s, {args.threads} torch threads")
    print(f"speechbrain encode_batch (baseline) : {1000 * theirs:7.1f} ms median")
    print(f"service core forward ({args.precision})      : {1000 * ours:7.1f} ms median")
    print(
        f"enrollment over HTTP, end to end    : {1000 * enroll:7.1f} ms median, p90 "
        f"{1000 * float(np.percentile(http, 90)):.1f} ms"
    )
    print(f"ratio enrollment / core forward     : {enroll / ours:.2f}x")
    print(f"ratio speechbrain / core forward    : {theirs / ours:.2f}x (core speed-up)")
    print(f"ratio speechbrain / enrollment      : {theirs / enroll:.2f}x (client-visible speed-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
