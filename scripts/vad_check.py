"""The speech detector against silero's per-window loop on the shared sets (see devtools/vad.py).

python -m scripts.vad_check [--limit N] [--json OUT]
"""

from devtools.vad import main

if __name__ == "__main__":
    raise SystemExit(main())
