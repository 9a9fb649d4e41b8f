"""Loaders for a BEIR dataset's topics: ``queries.jsonl`` and ``qrels/<split>.tsv``.

The corpus itself is read by :func:`papersearch.corpus.beir.read_beir`. Malformed lines raise
ValueError naming ``file:line``; a missing file raises FileNotFoundError naming its path.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from papersearch.corpus.jsonl import MAX_LINE_BYTES, bounded_lines, record_id
from papersearch.corpus.paper import checked_id, clean_text, quoted

QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"

# A grade: ASCII digits, an optional sign. int() alone also takes "1_0" (10) and other scripts'
# digits ("\u0663": 3), which no qrels writer means as a grade.
_GRADE = re.compile(r"[+-]?[0-9]+")
# A number as a judgment's score may be written (1, 1.0, 1e0): a first line with one is data
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def read_queries(dataset_dir: Path) -> dict[str, tuple[str, int]]:
    """Query id → (query text, its length as written: the service limits a query's length
    before it cleans it)."""
    path = dataset_dir / QUERIES_FILE
    queries: dict[str, tuple[str, int]] = {}
    for source, line in _lines(path):
        query_id, text, written = _parse_query(source, line)
        if query_id in queries:
            raise ValueError(f"{source}: duplicate query id {query_id!r}")
        queries[query_id] = text, written
    return queries


def load_qrels(dataset_dir: Path, split: str = "test") -> dict[str, dict[str, int]]:
    """Query id → corpus id → graded score, from ``qrels/<split>.tsv`` (tab separated; a first
    non-blank line naming the columns is a header, whatever the names: BEIR's ``query-id
    corpus-id score``, ``query_id doc_id relevance``, ...)."""
    path = _qrels_file(dataset_dir, split)
    qrels: dict[str, dict[str, int]] = {}
    header: tuple[str, tuple[str, ...]] | None = None  # the first line's, if it is one
    for number, (source, line) in enumerate(_lines(path)):
        fields = tuple(field.strip() for field in line.split("\t"))
        if number == 0 and _header(fields):
            header = source, fields
            continue
        query_id, doc_id, score = _parse_judgment(source, fields, first=number == 0)
        judgments = qrels.setdefault(query_id, {})
        if judgments.get(doc_id, score) != score:
            raise ValueError(f"{source}: conflicting score for {query_id!r}, {doc_id!r}")
        judgments[doc_id] = score
    if header is not None and unicodedata.normalize("NFC", header[1][0]) in qrels:
        # "q1<TAB>d1<TAB>high" before q1's other judgments: a judgment with a mistyped grade,
        # which taken as a header vanished without a word
        _parse_judgment(*header, first=True)
    return qrels


def _qrels_file(dataset_dir: Path, split: str) -> Path:
    """``qrels/<split>.tsv``. Where it is missing beside other splits, the error names them: a
    set with dev.tsv alone read "no such file: .../test.tsv", and not why that file."""
    path = dataset_dir / QRELS_DIR / f"{split}.tsv"
    if path.is_file() or not path.parent.is_dir():
        return path  # a missing one is said by _lines
    others = sorted(p.name for p in path.parent.glob("*.tsv"))
    if others:
        raise FileNotFoundError(f"no such file: {path} (the split read: `papersearch eval` and "
                                f"`tune` judge on test.tsv); {path.parent} holds "
                                f"{', '.join(others)}: copy or rename the one to judge on to "
                                f"{split}.tsv")
    return path


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    """Non-blank lines (without the line ending) with their ``file:line``."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with path.open("rb") as handle:
        for lineno, raw in enumerate(bounded_lines(handle), start=1):
            source = f"{path}:{lineno}"
            if raw is None:
                raise ValueError(f"{source}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                # a byte order mark (files saved by Excel or Notepad) is no part of a line, on
                # any line: files joined with cat keep each one's (as corpus/jsonl.py reads)
                line = raw.decode("utf-8-sig").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{source}: invalid UTF-8: {exc.reason}") from None
            if line.strip():
                yield source, line


def _parse_query(source: str, line: str) -> tuple[str, str, int]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: invalid JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(record).__name__}")
    text = record.get("text")
    # cleaned as the service cleans a query (pipeline/query.SearchQuery.validate): a soft
    # hyphen or zero-width space left in made BM25 terms the served query does not have
    if not isinstance(text, str) or not (cleaned := clean_text(text)):
        raise ValueError(f"{source}: missing or empty 'text'")
    try:
        return record_id(record, "_id"), cleaned, len(text)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _header(fields: tuple[str, ...]) -> bool:
    """Whether a first line is a header: three columns named, whatever the names, the score's
    a word (it holds a letter) and not a number. Only known names were taken, and
    "query-id<TAB>passage-id<TAB>score" failed as "score must be an integer, got 'score'"; a
    number (1.0) is a judgment's score, refused as one."""
    score = fields[-1]
    return (len(fields) == 3 and all(fields) and any(c.isalpha() for c in score)
            and not _NUMBER.fullmatch(score))


def _parse_judgment(source: str, fields: tuple[str, ...], first: bool = False
                    ) -> tuple[str, str, int]:
    if len(fields) != 3 or not all(fields):
        line = "\t".join(fields)  # cut: a file with CR line endings is one line, echoed whole
        raise ValueError(f"{source}: expected 'query-id<TAB>corpus-id<TAB>score', got "
                         f"{quoted(line)}")
    query_id, doc_id, score = fields
    if not _GRADE.fullmatch(score):
        hint = " (a header line names the columns, e.g. query-id, corpus-id, score)"
        raise ValueError(f"{source}: score must be an integer, got {quoted(score)}"
                         f"{hint if first else ''}")
    grade = int(score)
    try:  # normalised as the queries' and the corpus' ids are, or a judgment would match none
        return checked_id(query_id, "query-id"), checked_id(doc_id, "corpus-id"), grade
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
