"""Speaker search at scale: the service's index against exact (brute-force) search, side by side.

    .venv/bin/python scripts/bench_index.py [--sizes 10000 100000 1000000] [--queries 1000] [--nprobe N]

What is measured and how: service/tools/bench_index.py.
"""

from __future__ import annotations

import argparse
import sys

from service.tools.bench_index import format_rows, run_index_bench


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: the service's)")
    args = parser.parse_args()
    rows = run_index_bench(
        args.sizes, args.queries, args.nprobe, progress=lambda note: print(note, file=sys.stderr, flush=True)
    )
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
