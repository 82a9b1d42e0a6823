"""Diarization quality on conversations built from the shared sets (DER, speaker count, turn changes).

python -m scripts.eval_diarization [--per-condition 8] [--half 1] [--json OUT]  (report half: minutes)
python -m scripts.eval_diarization --tune                          (the voice rule grid on half 0)
python -m scripts.eval_diarization --tune-windows [--cache FILE]   (the window groups' stop, half 0)
python -m scripts.eval_diarization --time-call 10                 (one 10-minute call, timed)
"""

from devtools.diarization import main

if __name__ == "__main__":
    raise SystemExit(main())
