"""Logging of Fulcrum's long-running processes: ``--log-level`` and ``--log-format text|json``.

JSON is one object per line (``time``, ``level``, ``logger``, ``msg``, and ``exc`` with the
traceback), for a log pipeline to parse; text is for a person at a terminal.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

import orjson

LEVELS = ("debug", "info", "warning", "error")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every logger's records at ``level`` or above to stderr, in ``fmt``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", choices=LEVELS, default="info", help="least severe level logged (info)"
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text for a person (default), json: one object per line for a log pipeline",
    )
