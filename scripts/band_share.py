"""Measure how much speech power lies above the telephone band per channel (the wideband test).

Usage: python -m scripts.band_share   (needs `python -m scripts.calibrate_decisions` rendered clips)
"""

from devtools.bands import main

if __name__ == "__main__":
    raise SystemExit(main())
