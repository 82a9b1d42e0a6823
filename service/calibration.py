"""Calibrated defaults, in one place, with the measurements behind them.

Every figure below was measured with `scripts/calibrate.py` on ../shared/eval-speech (real
LibriSpeech and VCTK speech) through the service's own audio pipeline and model. Settings can
override each one (see `service.config`).
"""

# --- audio gates ---------------------------------------------------------------------------------
MIN_SPEECH_SECONDS = 1.0
MAX_CLIPPED_FRACTION = 0.01
MIN_SNR_DB = 3.0

# --- enrollment ----------------------------------------------------------------------------------
MIN_SAMPLES = 3
MIN_TOTAL_SPEECH_SECONDS = 20.0
MIN_SPREAD = 0.05
DUPLICATE_COSINE = 0.95
MISMATCH_COSINE = 0.25

# --- identification ------------------------------------------------------------------------------
IDENTIFY_THRESHOLD = 0.5
VERIFY_THRESHOLD = 0.5
SEGMENT_THRESHOLD = 0.35
PRIOR_WEIGHT = 5.0
MIN_IDENTIFY_SPEECH_SECONDS = 1.0
