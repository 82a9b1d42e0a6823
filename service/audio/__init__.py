"""Audio in: decode, mix, resample, speech detection, quality checks, content fingerprints."""

# The model's input rate: every waveform past the front end is mono float32 at this rate.
MODEL_RATE = 16_000
