"""Structured (JSON lines) logging for the service. Keys and audio never go into a record."""

from __future__ import annotations

import json
import logging
import re
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


# A query string right after a path or URL (`/v1/identify/stream?apikey=...`), and the lines of a
# WebSocket handshake's headers that carry credentials (`< x-api-key: ...`, at DEBUG).
_QUERY = re.compile(r'(?<=[\w/.\-])\?[^\s"]+')
_CREDENTIAL_HEADER = re.compile(
    r"^([<>] (?:authorization|proxy-authorization|x-api-key|cookie|set-cookie)): .*$", re.IGNORECASE
)
# Loggers of the server underneath the app that write request lines of their own: uvicorn's
# WebSocket protocols log "WebSocket /path?query" [accepted] to uvicorn.error, and the websockets
# library, with uvicorn's logger or its own, the handshake's headers at DEBUG.
_SERVER_LOGGERS = ("uvicorn.error", "websockets.server", "websockets.client", "websockets.protocol")
# httpx and httpcore log every outbound request line at INFO: a `url` input's pre-signed query or a
# webhook address's token (often in the path) is the tenant's secret. Their warnings still show.
_CLIENT_LOGGERS = ("httpx", "httpcore")


class RedactRequestLines(logging.Filter):
    """Query strings and credential headers out of what third-party servers log: an API key may be
    in either (`?apikey=`, `X-API-Key`, `Authorization`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit: logging reports it, as before
            return True
        cleaned = _CREDENTIAL_HEADER.sub(r"\1: [redacted]", _QUERY.sub("", message))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def _add_once(logger: logging.Logger | logging.Handler, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def protect_access_log() -> None:
    """Keys and outbound addresses out of other libraries' records, however the app is served."""
    _add_once(logging.getLogger("uvicorn.access"), StripQueryStrings)
    for name in _SERVER_LOGGERS:
        _add_once(logging.getLogger(name), RedactRequestLines)
    for name in _CLIENT_LOGGERS:
        client = logging.getLogger(name)
        client.setLevel(max(client.level, logging.WARNING))


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactRequestLines())  # records of loggers made after protect_access_log too
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints query strings, which may hold an API key: the service logs its
    # own access lines (path only) instead.
    logging.getLogger("uvicorn.access").disabled = True
