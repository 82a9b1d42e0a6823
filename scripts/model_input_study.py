"""What the model is given: the speech joined (the service) against context around it, the whole
clip, and narrowband fixes; pairwise EER per channel (see devtools/model_input.py).

Usage: python -m scripts.model_input_study [--half 0|1] [--no-telephone]
       (needs the clips `python -m scripts.calibrate_decisions` renders)
"""

from devtools.model_input import main

if __name__ == "__main__":
    raise SystemExit(main())
