"""Development tooling, never shipped: channel conditions, embedding caches, calibration studies.

Imports run one way: scripts and tests import devtools, devtools imports service, never back.
"""
