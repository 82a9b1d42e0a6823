"""Measure nuisance attribute projection (channel and session compensation) in the decision rule:
learnt on half 0 of eval-speech, reported on half 1 per condition and on real telephone calls.

Usage: python -m scripts.nuisance_study [--ks 0,2,4,8,16,32] [--taus 10,100] [--lams 0.1,0.5,2]
    [--tops 100,400,2000]
"""

from devtools.nuisance import main

if __name__ == "__main__":
    raise SystemExit(main())
