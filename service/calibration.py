"""Calibrated defaults, in one place, with the measurements behind them.

Measured on ../shared/eval-speech (271 real LibriSpeech and VCTK clips, 22 speakers with >= 6 clips
and 80 one-clip impostors) through the service's own audio pipeline and model, with
`scripts/calibrate.py` (enrollment gates) and `speakerid evaluate` (identification). Conditions:
16 kHz as stored, 8 kHz FLAC, and 8 kHz G.711 mu-law band-limited to 300-3400 Hz. Caveat: the set is
small and the thresholds were chosen on the same clips they are reported on; it has no other
held-out speech. Settings override every value (see `service.config`).
"""

# --- audio gates ---------------------------------------------------------------------------------
# Net speech (silero-vad) per clip: the shortest of the 271 real clips holds 0.86 s, the 1st
# percentile 1.15 s. One second is the least a voiceprint sample should hold; identification
# accepts down to 0.8 s so that no real clip of the set is refused there.
MIN_SPEECH_SECONDS = 1.0
MIN_IDENTIFY_SPEECH_SECONDS = 0.8
# No real clip has any sample at full scale (highest fraction 0.00002 after 8 kHz encoding).
MAX_CLIPPED_FRACTION = 0.01
# Lowest estimated SNR of a real clip: 12.3 dB (16 kHz), 10.5 dB over all conditions. White noise
# at -5 dB SNR measures about 1-1.5 dB and is refused.
MIN_SNR_DB = 3.0

# --- enrollment ----------------------------------------------------------------------------------
MIN_SAMPLES = 3
# Three 10-20 s utterances carry 25-45 s of net speech; three 6 s VCTK sentences carry 16-18 s and
# need a fourth sample.
MIN_TOTAL_SPEECH_SECONDS = 20.0
# Spread = mean cosine distance of the samples to their centroid. Three distinct utterances of one
# speaker from one session: 0.031-0.127 at 16 kHz (22 speakers), lowest 0.025 over all 832 triples
# and all three conditions. Set below every distinct set; near-copies are refused by the checks
# below before they can count.
MIN_SPREAD = 0.022
# Cosine between different utterances of one speaker reaches 0.937, while re-encoded or noisy
# copies of one clip go as low as 0.61: embeddings cannot tell them apart, so the cosine check only
# catches (near-)identical audio (0.02 above the highest distinct pair), and the content fingerprint
# does the rest.
DUPLICATE_COSINE = 0.96
# Fingerprint agreement (0..1) of copies of one recording (66 clips): 8 kHz FLAC p5 0.90, MP3 p5
# 0.54, noise at 20 dB p5 0.28, at 10 dB p5 0.15. The comparison also tries speeds within +-10 %
# and time reversal; on 39 clips of 2.2 s and more (22 speakers), copies played at speed 0.9 score
# 0.26-0.37 (median 0.32), 0.95: 0.16-0.33 (0.24), 1.05: 0.19-0.37 (0.30), 1.1: 0.18-0.37 (0.28),
# 44.1/48 kHz mix-ups 0.17-0.30 (0.23), backwards 0.32-0.84 (0.44). Two different utterances of
# one speaker, all 771 pairs within the 22 speakers (sessions mixed): at most 0.132 (median 0.090,
# p99 0.115); before the speed and reversal search at most 0.150, from shared near-digital silence,
# which the fingerprint now ignores.
DUPLICATE_FINGERPRINT = 0.15
# Cosine of a new sample to the centroid of the speaker's earlier samples (1 or 2 of them): genuine
# at least 0.33 within a channel and 0.19 across 16 kHz / 8 kHz mu-law; at 0.20 no genuine sample is
# refused within a channel and 1 of 169 across channels, while 90-92 % of other speakers' clips are
# refused at 16 kHz (but only 46-65 % at 8 kHz, where all voices sound more alike: the gate stops
# clearly different voices, it is not a verification).
MISMATCH_COSINE = 0.20

# --- identification ------------------------------------------------------------------------------
# Scores are cosines after removing the tenant's domain mean (see `service.enrollment.scoring`).
# With 22 speakers enrolled on 3 clips each, over 125 genuine and 80 unknown-speaker clips:
# 16 kHz: 5th-percentile genuine score 0.58, highest unknown-speaker score 0.39;
#  8 kHz: 5th-percentile genuine score 0.54, highest unknown-speaker score 0.47.
IDENTIFY_THRESHOLD = 0.50
VERIFY_THRESHOLD = 0.50
# Windows of 2 s in compatible identify score lower than whole clips; long stretches are re-checked
# at IDENTIFY_THRESHOLD.
SEGMENT_THRESHOLD = 0.35
# The domain mean counts the prior (the model prototypes' mean) as this many speakers, so a tenant
# with few speakers is not centred on those few voices.
PRIOR_WEIGHT = 5.0
