"""Development tooling, never shipped: the one `speakerid serve` subprocess launcher, clips of the
evaluation sets, the bench, the fuzz, soak and crash harnesses, channel conditions, embedding caches,
calibration studies.

Imports run one way: scripts and tests import devtools, devtools imports service, never back
(tests/unit/test_layout.py checks it).
"""
