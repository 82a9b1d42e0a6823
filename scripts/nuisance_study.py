"""Measure nuisance attribute projection (channel and session compensation) in the decision rule:
learnt on half 0 of eval-speech, reported on half 1 per condition and on real telephone calls.

Usage: python -m scripts.nuisance_study [--ks 0,2,4,8,16,32] [--taus 10,30,100]
"""

from devtools.nuisance import main

if __name__ == "__main__":
    raise SystemExit(main())
