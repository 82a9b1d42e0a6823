"""Audio in: decode, mix, resample, speech detection, quality checks, content fingerprints."""

from enum import StrEnum

# The model's input rate: every waveform past the front end is mono float32 at this rate.
MODEL_RATE = 16_000


class Band(StrEnum):
    """The channel a clip was heard through, as far as its spectrum tells (`service.audio.band`
    decides it); the values are public. Here, away from the signal code, so that what only names a
    band (the database layer, the API's schemas, the operator's command line) does not load torch."""

    WIDE = "wideband"
    NARROW = "narrowband"
