"""The one speakerId rule: 1 to 128 of ``[A-Za-z0-9_.-]``, not dots alone ("." and ".." are path
segments: a URL cannot name them). Schemas, native path parameters, the error message, the
database column and enroll-bulk's id derivation all read it from here."""

from __future__ import annotations

import re

ALLOWED = "A-Za-z0-9_.-"  # the body of a regex character class
MAX_LENGTH = 128
# "Not dots alone" as one allowed non-dot somewhere, without look-ahead (pydantic's regex lacks it).
PATTERN = rf"^[{ALLOWED}]*[A-Za-z0-9_-][{ALLOWED}]*$"
DESCRIPTION = f"1-{MAX_LENGTH} of [{ALLOWED}], not dots alone"
DISALLOWED_RUN = re.compile(rf"[^{ALLOWED}]+")


def is_speaker_id(name: str) -> bool:
    return len(name) <= MAX_LENGTH and re.fullmatch(PATTERN, name) is not None
