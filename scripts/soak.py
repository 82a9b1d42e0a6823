"""Soak: a bounded load on loopback against a `speakerid serve` process (see devtools/soak.py).

python -m scripts.soak [--minutes 10] [--threads 8] [--max-requests 20000] [--long-clips]
"""

from devtools.soak import main

if __name__ == "__main__":
    raise SystemExit(main())
