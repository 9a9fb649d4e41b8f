"""Query texts for a load test: a file (one a line) or titles and phrases from a corpus."""

from __future__ import annotations

import random
from pathlib import Path

from papersearch.corpus.readers import read_corpus

PHRASE_WORDS = (3, 8)  # shortest and longest abstract span taken as a query
_EDGE_PUNCTUATION = ".,;:()[]\"'"


def load_queries(path: Path | None, corpus_dir: Path, seed: int) -> list[str]:
    """The queries of ``path`` (a repeated line stays repeated: a hot query), or by default the
    corpus's, de-duplicated; shuffled either way."""
    if path is not None:
        queries = queries_from_file(path)
    else:
        queries = list(dict.fromkeys(queries_from_corpus(corpus_dir, seed)))
    random.Random(seed).shuffle(queries)
    return queries


def queries_from_file(path: Path) -> list[str]:
    """Non-blank lines, stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"no such queries file: {path}")
    queries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    queries = [q for q in queries if q]
    if not queries:
        raise ValueError(f"queries file {path} has no non-blank line")
    return queries


def queries_from_corpus(corpus_dir: Path, seed: int) -> list[str]:
    """Every paper's title, plus one 3-8 word span of its abstract."""
    rng = random.Random(seed)
    queries = []
    for paper in read_corpus(corpus_dir):
        if paper.title:
            queries.append(paper.title)
        words = paper.abstract.split()
        if len(words) >= PHRASE_WORDS[0]:
            length = rng.randint(PHRASE_WORDS[0], min(PHRASE_WORDS[1], len(words)))
            start = rng.randrange(len(words) - length + 1)
            phrase = " ".join(words[start:start + length]).strip(_EDGE_PUNCTUATION)
            if phrase:
                queries.append(phrase)
    if not queries:
        raise ValueError(f"corpus {corpus_dir} yields no query")
    return queries
