"""Structured logging: one configuration call, JSON or key=value text lines."""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items()
        if k not in _RESERVED and not k.startswith("_")  # Ray adds private record fields
    }


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as strings (JSON has no such numbers: a strict parser
    refused the whole line) and numpy scalars as numbers (``default=str`` quoted them)."""
    if isinstance(value, dict):  # keys as strings, but for those json.dumps writes as is (a
        # float key it wrote as its number, NaN included; a tuple key failed the whole record)
        return {k if isinstance(k, str | int | bool) or k is None else str(k): _finite(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()  # a numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            # UTC to the millisecond: lines of one second ordered, and matched across machines
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(_finite(payload), default=str, allow_nan=False)


def _text_value(value: Any) -> str:
    """A value as logfmt writes it: quoted, with escapes, where it holds a blank, a quote, an
    equals sign or a line break (a value with a newline forged a log line of its own)."""
    text = str(value)
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _extras(record).items())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: "
        # a line break in the message (an argument's text) would start a forged line
        message = record.getMessage().replace("\r", "\\r").replace("\n", "\\n")
        line += message + (f" {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# Loggers that a library gives a stderr handler of its own, not propagating, when it is first
# imported: their lines came in the library's format (not JSON) and at its level, not ours.
LIBRARY_LOGGERS = ("ray", "ray.serve", "ray.data", "transformers")
_configured = False  # configure_logging has run in this process
# the filters of the library handlers removed, by logger: our handler applies them to that
# logger's records (Serve's drops its access lines when the Serve config turns them off)
_library_filters: dict[str, list[Any]] = {}


def _for_console(record: logging.LogRecord) -> bool:
    """False for a record its library keeps off the console and in its log files only (Ray
    Serve's access lines, log_to_stderr=False or its handler's filter; Ray Data's hide=True):
    our handler replaces the library's, which dropped them."""
    if getattr(record, "log_to_stderr", None) is False or getattr(record, "hide", None) is True:
        return False
    owners = [name for name in _library_filters
              if record.name == name or record.name.startswith(name + ".")]
    if not owners:
        return True
    owner = max(owners, key=len)  # the handler that took its records: they stopped there
    return all(bool(f.filter(record) if hasattr(f, "filter") else f(record))
               for f in _library_filters[owner])


def _is_console(handler: logging.Handler) -> bool:
    return (isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler))


def route_library_logs() -> None:
    """Once configure_logging has run: the LIBRARY_LOGGERS' console handlers removed, their
    records passed on to the root's handler (their file handlers stay: Ray Serve's replica
    logs). A library installs its handler when first imported: call this again after importing
    one (the CLI imports Ray and transformers late, after configure_logging). Without
    configure_logging (a test, a program importing papersearch) nothing replaces them."""
    if not _configured:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)  # by name: the library need not be imported
        console = [h for h in logger.handlers if _is_console(h)]
        if logger.handlers and not console:
            # to its files only, as asked: Serve with RAY_SERVE_LOG_TO_STDERR=0, whose stderr
            # is then a stream into this logger (passed on, a line would come back forever)
            continue
        for handler in console:
            kept = _library_filters.setdefault(name, [])
            kept.extend(f for f in handler.filters if f not in kept)
            logger.removeHandler(handler)
        logger.propagate = True


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Every line on stderr in ``fmt`` and at ``level`` at least: ours, the libraries' (a
    library may keep its logger at a lower level, e.g. Ray's at INFO: the handler's level
    drops those lines) and Python warnings (a library's UserWarning was printed raw)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.setLevel(level.upper())
    handler.addFilter(_for_console)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    global _configured
    _configured = True
    route_library_logs()
    logging.captureWarnings(True)


class OnChange:
    """A condition met again and again (at every health poll, every call) logged once per
    reason in a row: ``said(reason)`` logs ``message`` with it when it differs from the last
    one logged; ``clear()`` once the condition is over (true if it was on), so that its return
    is logged again."""

    def __init__(self, logger: logging.Logger, message: str, level: int = logging.WARNING
                 ) -> None:
        self.logger, self.message, self.level = logger, message, level
        self.last: str | None = None

    def said(self, reason: str) -> None:
        if reason != self.last:
            self.last = reason
            self.logger.log(self.level, self.message, extra={"reason": reason})

    def clear(self) -> bool:
        was_on, self.last = self.last is not None, None
        return was_on
