"""The two log line formats: JSON any strict parser reads, and key=value text a value cannot
break into two lines (fast)."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from typing import Any

import numpy as np
import pytest

from papersearch.logs import JsonFormatter, TextFormatter, configure_logging, route_library_logs


def record(**extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("papersearch.test", logging.INFO, __file__, 1, "trained", None, None)
    made.__dict__.update(extra)
    return made


def strict(text: str) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    parsed: dict[str, Any] = json.loads(text, parse_constant=refuse)
    return parsed


def test_json_lines_hold_no_nan_and_keep_numpy_numbers() -> None:
    """NaN and Infinity (a diverged training run's final_loss) made the line invalid JSON."""
    line = strict(JsonFormatter().format(record(
        final_loss=float("nan"), worst=float("-inf"), agreement=np.float32(0.5),
        parity={"cosine": float("inf")}, counts=[np.int64(3)], by={float("nan"): 1},
        keyed={("a", 1): 2, np.int64(7): 3, 4: 5})))
    assert line["final_loss"] == "nan" and line["worst"] == "-inf"
    assert line["agreement"] == 0.5 and line["parity"] == {"cosine": "inf"}
    assert line["counts"] == [3] and line["by"] == {"nan": 1}
    assert line["keyed"] == {"('a', 1)": 2, "7": 3, "4": 5}  # a tuple key had lost the record
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])  # UTC, ms


def test_a_text_value_cannot_forge_a_line_or_a_field() -> None:
    line = TextFormatter().format(record(
        reason="x y\n12:00:00 ERROR   papersearch.gateway: forged", path="/tmp/a", n=3,
        detail='say "hi"', pair="a=b"))
    assert "\n" not in line
    assert line.endswith(' reason="x y\\n12:00:00 ERROR   papersearch.gateway: forged" '
                         'path=/tmp/a n=3 detail="say \\"hi\\"" pair="a=b"')


def test_a_message_argument_cannot_forge_a_line() -> None:
    made = logging.LogRecord("papersearch.test", logging.WARNING, __file__, 1,
                             "store said: %s", ("no\r\n12:00:00 ERROR   forged",), None)
    line = TextFormatter().format(made)
    assert "\n" not in line and "\r" not in line
    assert line.endswith("store said: no\\r\\n12:00:00 ERROR   forged")


def library_console(name: str, level: int = logging.INFO) -> io.StringIO:
    """What Ray and transformers do when imported: a stderr handler of their own on their
    logger, which does not propagate (here into a buffer, to see what it still printed)."""
    stream = io.StringIO()
    lg = logging.getLogger(name)
    lg.handlers[:] = [logging.StreamHandler(stream)]
    lg.propagate = False
    lg.setLevel(level)
    return stream


def json_lines(text: str) -> list[dict[str, Any]]:
    return [strict(line) for line in text.splitlines()]


def test_library_lines_come_in_our_format_at_our_level(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """Ray's, Ray Serve's and transformers' own handlers printed their lines in their format
    (among JSON lines on Kubernetes) and below log_level (Ray's logger is at INFO)."""
    ray, transformers = library_console("ray"), library_console("transformers", logging.WARNING)
    configure_logging("WARNING", "json")
    serve = library_console("ray.serve")  # a library imported after: the CLI imports Ray late
    route_library_logs()
    logging.getLogger("ray.util.client").info("Ray's INFO line, below WARNING")
    logging.getLogger("ray.util.client").warning("Ray's warning")
    logging.getLogger("ray.serve").warning("Serve's warning")
    logging.getLogger("ray.serve").warning("an access line", extra={"log_to_stderr": False})
    logging.getLogger("ray.data").warning("Ray Data's hidden line", extra={"hide": True})
    logging.getLogger("transformers.modeling_utils").warning("transformers' warning")
    assert ray.getvalue() == transformers.getvalue() == serve.getvalue() == ""
    lines = json_lines(capsys.readouterr().err)
    assert [(line["logger"], line["msg"]) for line in lines] == [
        ("ray.util.client", "Ray's warning"), ("ray.serve", "Serve's warning"),
        ("transformers.modeling_utils", "transformers' warning")]


def test_a_library_handlers_filters_still_apply(capsys: pytest.CaptureFixture[str]) -> None:
    """Serve's console handler carries the filter that drops access lines when the Serve
    config turns them off (enable_access_log: false): removed, every model call printed one."""
    serve = library_console("ray.serve")
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.handlers[0].addFilter(
        lambda record: not getattr(record, "serve_access_log", False))
    configure_logging("INFO", "json")
    serve_logger.info("CALL encode OK 3.1ms", extra={"serve_access_log": True})
    serve_logger.info("a replica started")
    logging.getLogger("ray.util").info("Ray's own line, not Serve's filter's business",
                                       extra={"serve_access_log": True})
    assert serve.getvalue() == ""
    assert [line["msg"] for line in json_lines(capsys.readouterr().err)] == [
        "a replica started", "Ray's own line, not Serve's filter's business"]


def test_a_library_logging_to_files_only_is_left_so() -> None:
    """Serve with RAY_SERVE_LOG_TO_STDERR=0: its logger writes to files only, and stderr is a
    stream into that logger; passed on to ours, a line would come back to it forever."""
    serve = logging.getLogger("ray.serve")
    files_only = logging.NullHandler()
    serve.handlers[:], serve.propagate = [files_only], False
    configure_logging("INFO", "json")
    assert serve.handlers == [files_only] and serve.propagate is False


def test_library_handlers_stay_without_configure_logging() -> None:
    """A program importing papersearch (a test) keeps the libraries' own console lines."""
    stream = library_console("ray")
    route_library_logs()
    logging.getLogger("ray").info("still Ray's")
    assert stream.getvalue() == "still Ray's\n"


def test_warnings_come_as_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A library's warnings.warn (Ray Client's UserWarning) was printed raw, on two lines."""
    warnings.simplefilter("always")
    configure_logging("INFO", "json")
    warnings.warn("Ray Client connection timed out", UserWarning, stacklevel=1)
    (line,) = json_lines(capsys.readouterr().err)
    assert line["logger"] == "py.warnings" and line["level"] == "WARNING"
    assert "UserWarning: Ray Client connection timed out" in line["msg"]
    configure_logging("ERROR", "json")
    warnings.warn("below ERROR", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == ""
