"""Measure the audio and enrollment thresholds of `service/calibration.py` on real speech (see
devtools/gates.py).

    python -m scripts.calibrate [--manifest PATH] [--out results.json]
"""

from devtools.gates import main

if __name__ == "__main__":
    raise SystemExit(main())
