"""Evaluation datasets: BEIR folders with human judgments, and a known-item set built from a
paper corpus (query = a paper's title, target = that paper, index built from abstracts only)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import CorpusFormat, detect_format, read_corpus
from papersearch.evaluation.beir import load_qrels, load_queries


@dataclass(frozen=True, slots=True)
class EvalDataset:
    name: str
    papers: Callable[[], Iterable[Paper]]
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]


def load_dataset(path: Path) -> EvalDataset:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) or, for any other corpus,
    its known-item set."""
    if detect_format(path) == CorpusFormat.BEIR and (path / "queries.jsonl").is_file():
        return EvalDataset(
            name=path.resolve().name,
            papers=lambda: read_corpus(path),
            queries=load_queries(path),
            qrels=load_qrels(path),
        )
    return known_item(path)


def known_item(path: Path) -> EvalDataset:
    papers = [p for p in read_corpus(path) if p.title.strip() and p.abstract.strip()]
    return EvalDataset(
        name=f"{path.resolve().name}-known-item",
        papers=lambda: [replace(p, title="") for p in papers],
        queries={p.id: p.title for p in papers},
        qrels={p.id: {p.id: 1} for p in papers},
    )
