"""The bench: the service against its baselines, side by side in one run (see devtools/bench/).

python -m scripts.bench [--only core,enroll,http,index,gpu] [--json OUT] [--help]
"""

from devtools.bench.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
