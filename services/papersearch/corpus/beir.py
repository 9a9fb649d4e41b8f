"""Reader for a BEIR ``corpus.jsonl``: ``_id``, ``title``, ``text`` and optional ``metadata``.

Ids are normalised as the API's are (corpus/paper.checked_id: stripped, NFC), and so are the
qrels' (evaluation/beir), so judgments still match. ``text`` becomes the abstract; a record
without it is skipped, and either it or the title may be empty, not both. The metadata's
``url``, ``authors``, ``published`` and ``categories`` are read as a JSON Lines paper's fields
are (corpus/jsonl), so that filters match them, except that an authors string is one name (BEIR
sets write "Surname, Initials"); other metadata is not read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from papersearch.corpus.jsonl import (
    RecordError,
    filtered_fields,
    read_json_lines,
    record_id,
    text_field,
)
from papersearch.corpus.paper import Paper, Skipped, within_limits

CORPUS_FILE = "corpus.jsonl"


def read_beir(path: Path) -> Iterator[tuple[str, Paper | Skipped]]:
    """Read a BEIR dataset directory (its ``corpus.jsonl``) or the corpus file itself (each
    result after its "file:line")."""
    return read_json_lines(path / CORPUS_FILE if path.is_dir() else path, paper_from_beir)


def paper_from_beir(record: Mapping[str, Any]) -> Paper:
    """Map one BEIR corpus object to a paper; raises ValueError when it cannot be one."""
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RecordError("'metadata' must be an object")
    if "text" not in record:  # read as a title alone, abstracts under another key went unread
        named = (", not 'abstract' (a JSON Lines paper's key): rename it"
                 if "abstract" in record else ' ("" where a paper has none)')
        raise RecordError(f"no 'text': BEIR puts the abstract under 'text'{named}")
    return within_limits(Paper(
        id=record_id(record, "_id"),
        title=text_field(record, "title"),
        abstract=text_field(record, "text"),
        url=text_field(metadata, "url") or None,
        # "Surname, Initials" (CACM, CISI, Cranfield): a string is one name, a list names each
        **filtered_fields(metadata, split_authors=False),
    ))
