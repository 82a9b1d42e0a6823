"""On-prem speaker enrollment and identification service."""

__version__ = "0.1.0"
