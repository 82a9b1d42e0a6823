"""Operator tools that talk to a running service over HTTP (evaluate, enroll-bulk)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the tools' subcommands to the `speakerid` parser."""
    from service.tools import enroll_bulk, evaluate

    enroll_bulk.add_parser(sub)
    evaluate.add_parser(sub)
