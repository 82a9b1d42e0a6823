"""Time a 10 s enrollment end to end over HTTP next to the bare model forward and speechbrain's own
`EncoderClassifier.encode_batch`, all on the same clips, in one run, and print the ratios.

    .venv/bin/python scripts/bench_enroll.py [--clips 12] [--threads 2] [--precision fp32]

The core and enroll sections of `speakerid bench` (service/tools/bench.py), which measures more
(HTTP concurrency, index, GPU): `speakerid bench --only core,enroll` is the same run.
"""

from __future__ import annotations

import argparse
import sys

from service.cli import main as speakerid


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--precision", default="fp32", help="the model core's and the server's")
    args = parser.parse_args()
    argv = ["bench", "--only", "core,enroll", "--clips", str(args.clips), "--eer-clips", "0"]
    argv += ["--precision", args.precision, "--serve-precision", args.precision]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return speakerid(argv)


if __name__ == "__main__":
    sys.exit(main())
