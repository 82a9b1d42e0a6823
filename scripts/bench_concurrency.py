"""Does concurrency cost throughput? Identify of one ~10 s clip by 1 client, then by N at once
(see devtools/bench/concurrency.py).

    python -m scripts.bench_concurrency [--clients 8] [--seconds 20] [--route native|compat]
"""

from devtools.bench.concurrency import main

if __name__ == "__main__":
    raise SystemExit(main())
