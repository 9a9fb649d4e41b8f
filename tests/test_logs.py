"""The two log line formats: JSON any strict parser reads, and key=value text a value cannot
break into two lines (fast)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np

from papersearch.logs import JsonFormatter, TextFormatter


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
