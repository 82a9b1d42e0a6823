"""Identify throughput through nginx with one and then two `speakerid serve` replicas, in one run.

    python -m scripts.scale_out [--database URL] [--seconds 30] [--clients 4]

Without --database, a fresh SQLite file; a PostgreSQL URL names an empty database to use. Each
replica runs the model on one torch thread, so the ratio says how far adding a replica (and its
cores) adds capacity on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from devtools.topology import one_and_two_replicas


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", help="SQLAlchemy URL of an empty database (default: a new SQLite file)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time per configuration")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="speakerid-scale-") as folder:
        url = args.database or f"sqlite:///{Path(folder) / 'speakerid.db'}"
        one, two = one_and_two_replicas(url, args.seconds, args.clients, Path(folder))
    print(f"one replica:  {one:.2f} identify requests/s")
    print(f"two replicas: {two:.2f} identify requests/s")
    print(f"ratio: {two / one:.2f}")


if __name__ == "__main__":
    main()
