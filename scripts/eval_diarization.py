"""Diarization quality on conversations built from the shared sets (DER, speaker count, turn changes).

python -m scripts.eval_diarization [--per-condition N] [--half 1] [--tune] [--time-call MINUTES]
"""

from __future__ import annotations

import sys

from devtools.diarization import main

if __name__ == "__main__":
    sys.exit(main())
