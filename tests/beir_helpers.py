"""Small judged collections written to disk in BEIR format for the evaluation tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path


def write_beir(folder: Path, docs: Mapping[str, str], queries: Mapping[str, str],
               qrels: Iterable[tuple[str, str, int]]) -> Path:
    """corpus.jsonl (untitled documents), queries.jsonl and qrels/test.tsv under ``folder``."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs.items()))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{score}\n" for q, d, score in qrels))
    return folder
