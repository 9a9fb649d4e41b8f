"""Reader for JSON Lines papers, and the line-by-line machinery the BEIR reader shares.

One object a line: ``id`` (or ``paper_id``, the API's name for it: a file of the API's papers
reads as it is; a null or blank one of the two is absent) and ``title`` or ``abstract`` are
required; ``authors`` is a list or a "a, b" string, ``published`` an ISO date, ``categories``
a list (or a comma- or space-separated string), ``url`` a string. Other fields are not read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

from papersearch.corpus.paper import (
    Paper,
    Skipped,
    checked_id,
    clean_text,
    quoted,
    within_limits,
)

# The longest line read: a paper at every limit of within_limits, each character written as a
# \uXXXX escape, is under half a MiB; past this a line is skipped unread, not held whole in
# memory
MAX_LINE_BYTES = 1 << 20
# ISO 8601's reduced precision, common in metadata exports: a year, or a year and month
_REDUCED_DATE = re.compile(r"\d{4}(?:-\d{2})?")
# A JSON Lines paper's id, by either name (paper_id: the API's)
ID_KEYS = ("id", "paper_id")


class RecordError(ValueError):
    """A JSON object that cannot become a paper; the message says why."""


def read_jsonl(path: Path) -> Iterator[tuple[str, Paper | Skipped]]:
    """Read a JSON Lines file of papers (each result after its "file:line")."""
    return read_json_lines(path, paper_from_json)


def read_json_lines(
    path: Path, to_paper: Callable[[Mapping[str, Any]], Paper]
) -> Iterator[tuple[str, Paper | Skipped]]:
    """Turn each non-blank line into a paper; a line that fails comes out as Skipped. Each
    comes after its "file:line": a paper does not carry where it was read, and a later paper
    under its id is reported with both places."""
    with path.open("rb") as handle:
        for lineno, line in enumerate(bounded_lines(handle), start=1):
            source = f"{path}:{lineno}"
            if line is None:
                yield source, Skipped(source, f"line longer than {MAX_LINE_BYTES} bytes")
            elif line.strip():
                yield source, _parse_line(source, line, to_paper)


def bounded_lines(handle: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary file, each at most ``limit`` bytes; None in place of a longer one,
    whose bytes are read past in pieces of ``limit``, never held whole."""
    while line := handle.readline(limit + 1):
        if line.endswith(b"\n") or len(line) <= limit:  # limit bytes and its line ending
            yield line
            continue
        while not line.endswith(b"\n") and (line := handle.readline(limit)):
            pass
        yield None


def _parse_line(
    source: str, line: bytes, to_paper: Callable[[Mapping[str, Any]], Paper]
) -> Paper | Skipped:
    try:
        # decoded here (given bytes, json guesses UTF-16 or UTF-32 from leading NULs); a
        # byte order mark on any line: files joined with cat keep each one's
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Skipped(source, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise RecordError(f"expected a JSON object, got {type(record).__name__}")
        return to_paper(record)
    except json.JSONDecodeError as exc:
        return Skipped(source, f"invalid JSON: {exc.msg}")
    except RecursionError:
        return Skipped(source, "invalid JSON: nested too deeply")
    except ValueError as exc:  # RecordError, bad UTF-8, Paper's own checks
        return Skipped(source, str(exc))


def paper_from_json(record: Mapping[str, Any]) -> Paper:
    """Map one JSON object to a paper; raises ValueError when it cannot be one (also past a
    limit the API enforces)."""
    return within_limits(Paper(
        id=_paper_id(record),
        title=text_field(record, "title"),
        abstract=text_field(record, "abstract"),
        url=text_field(record, "url") or None,
        **filtered_fields(record),
    ))


def _paper_id(record: Mapping[str, Any]) -> str:
    """The paper's id: ``id``, or ``paper_id`` (the API's name for it). A null or blank one is
    taken as absent: a dataframe export writes both columns, one of them empty. Two that
    differ are refused, not one of them chosen: which paper the line means cannot be told,
    and either choice would file its text under the other paper's id without a word."""
    given = [key for key in ID_KEYS if not _blank(record.get(key))]
    if not given:
        also = " and 'paper_id'" if "paper_id" in record else ""
        raise RecordError(f"missing or empty 'id'{also}")
    ids = {record_id(record, key) for key in given}
    if len(ids) > 1:
        raise RecordError("'id' and 'paper_id' name two papers: give one")
    return ids.pop()


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def filtered_fields(record: Mapping[str, Any], *, split_authors: bool = True
                    ) -> dict[str, Any]:
    """The fields search filters match, as Paper's keyword arguments: ``authors`` (a list, or
    one "a, b" string; with ``split_authors`` off, a string is one name), ``published`` (an
    ISO date, or a year) and ``categories`` (a list, or one comma- or space-separated string);
    absent ones are empty."""
    return {"authors": _names(record, "authors", r"," if split_authors else None),
            "published": _published(record.get("published")),
            "categories": _names(record, "categories", r"[,\s]")}


def record_id(record: Mapping[str, Any], key: str) -> str:
    """A required id: a non-empty string or an integer, normalised and checked as the gateway
    does (corpus/paper.checked_id: an id ingested and the same id given to the API are one
    paper)."""
    value = record.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # checked too: 300 digits are past the API's id limit
    if value is None or value == "":
        raise RecordError(f"missing or empty {key!r}")
    if not isinstance(value, str):
        raise RecordError(f"{key!r} must be a string or an integer, got {type(value).__name__}")
    try:
        return checked_id(value, repr(key))
    except ValueError as error:
        raise RecordError(str(error)) from None


def text_field(record: Mapping[str, Any], key: str) -> str:
    """An optional string field, cleaned; absent or null gives ""."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{key!r} must be a string, got {type(value).__name__}")
    return clean_text(value)


def _names(record: Mapping[str, Any], key: str, separator: str | None
           ) -> tuple[str, ...]:
    value = record.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = re.split(separator, value) if separator else [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RecordError(f"{key!r} must be a list of strings or a string")
    return tuple(name for item in value if (name := clean_text(item)))


def _published(value: Any) -> date | None:
    """An ISO date, a year or a month; absent, null or blank (whitespace only) is no date, as
    the API reads a blank date (api/convert.date_from_proto)."""
    if _blank(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1000 <= value <= 9999:
        value = str(value)  # a year as a number, as metadata exports often write it
    if not isinstance(value, str):
        raise RecordError(f"'published' must be an ISO date string or a year, got "
                          f"{type(value).__name__} {quoted(json.dumps(value))}")
    text = value.strip()
    if _REDUCED_DATE.fullmatch(text):  # "2024" or "2024-03": the period's first day
        text += "-01-01" if len(text) == 4 else "-01"
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        raise RecordError(f"'published' is not an ISO date (YYYY-MM-DD, YYYY-MM or YYYY): "
                          f"{value!r}") from None
