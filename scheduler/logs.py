"""Log output: plain lines for a terminal, or one JSON object per line for a log collector.

``log_format = "json"`` makes every record, the server's own included, a single line that
journald, Loki or Elasticsearch can take apart without a parsing rule. A line written while
a request is handled carries its ``request_id``, as do the request's audit entries.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from scheduler.audit import current_request_id

TEXT_FORMAT = "%(levelname)s %(name)s %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
# uvicorn's color_message repeats the message with terminal colours.
_IGNORED = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}
)


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, the record's extras, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _IGNORED and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """Set up the root logger (keeps handlers others installed, such as pytest's)."""
    root = logging.getLogger()
    if log_format != "json":
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
        return
    streams = [h for h in root.handlers if type(h) is logging.StreamHandler]
    if not streams:
        streams = [logging.StreamHandler(sys.stderr)]
        root.addHandler(streams[0])
    for handler in streams:
        handler.setFormatter(JsonFormatter())
    root.setLevel(level.upper())


def uvicorn_config(level: str, log_format: str) -> dict[str, Any]:
    """uvicorn's ``log_config``: its defaults for text, the JSON formatter otherwise."""
    from uvicorn.config import LOGGING_CONFIG

    if log_format != "json":
        return LOGGING_CONFIG
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"level": level.upper()},
        },
    }
