"""Set the decision rule's defaults on half of eval-speech's speakers and report them on the other
half, on every channel condition, leave one condition out, and on real telephone calls.

Usage: python -m scripts.calibrate_decisions [results.json]   (first run embeds ~2,600 clips: ~25 min)
"""

from devtools.calibration import main

if __name__ == "__main__":
    raise SystemExit(main())
