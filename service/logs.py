"""Structured (JSON lines) logging for the service. Keys and audio never go into a record."""

from __future__ import annotations

import json
import logging
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class StripQueryStrings(logging.Filter):
    """uvicorn's access records carry the full path with its query string, where an API key may be
    (`?apikey=`); keep the path only, however the app is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3:
            path = args[2]
            if isinstance(path, str):
                record.args = (*args[:2], path.split("?", 1)[0], *args[3:])
        return True


def protect_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, StripQueryStrings) for f in access.filters):
        access.addFilter(StripQueryStrings())


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints query strings, which may hold an API key: the service logs its
    # own access lines (path only) instead.
    logging.getLogger("uvicorn.access").disabled = True
