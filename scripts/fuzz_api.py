"""Fuzz the running service's API and audio routes (see devtools/fuzz.py).

.venv/bin/python -m scripts.fuzz_api [--help]
"""

from devtools.fuzz import main

if __name__ == "__main__":
    raise SystemExit(main())
