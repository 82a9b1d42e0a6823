"""Identify throughput through nginx with one and then two `speakerid serve` replicas, in one run
(see devtools/topology.py).

    python -m scripts.scale_out [--database URL] [--seconds 30] [--clients 4]

Without --database, a fresh SQLite file; a PostgreSQL URL names an empty database to use. Each
replica runs the model on one torch thread, so the ratio says how far adding a replica (and its
cores) adds capacity on this machine.
"""

from devtools.topology import main

if __name__ == "__main__":
    raise SystemExit(main())
