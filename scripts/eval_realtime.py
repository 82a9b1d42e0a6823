"""Realtime streams' accuracy on conversations of enrolled and unknown readers, chunk by chunk
against whole-file identify (devtools/stream_accuracy.py).

python -m scripts.eval_realtime [--half 1] [--per-rate 12] [--hold-margin M] [--json OUT]  (~15 min)
"""

from devtools.stream_accuracy import main

if __name__ == "__main__":
    raise SystemExit(main())
