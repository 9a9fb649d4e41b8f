"""Hard-negative mining for weakly supervised reranker training.

Each paper with a title and an abstract gives queries (its title; its abstract's first
sentence) and a positive (its own abstract). Negatives are other abstracts that BM25 or the
dense encoder rank high for that query, minus likely false negatives: near-duplicate papers
(dense cosine to the positive at or above a threshold, or the same normalised title).
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from papersearch.corpus.paper import Paper, normalise_title
from papersearch.encoder.runtime import Encoder
from papersearch.index.sparse import Bm25Encoder
from papersearch.settings import QueryKind

MIN_ABSTRACT_WORDS = 20
_FIRST_SENTENCE = re.compile(r"(.{30,400}?[.!?])\s+(.+)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class TrainingExample:
    query: str
    positive: str
    negatives: tuple[str, ...]


def usable(papers: Sequence[Paper]) -> list[Paper]:
    """Papers that give a (title, abstract) pair, one per normalised title."""
    seen: set[str] = set()
    out = []
    for paper in papers:
        key = normalise_title(paper.title)
        if key and len(paper.abstract.split()) >= MIN_ABSTRACT_WORDS and key not in seen:
            seen.add(key)
            out.append(paper)
    return out


def bm25_rankings(queries: Sequence[str], docs: Sequence[str], depth: int) -> list[list[int]]:
    """Top-``depth`` document indices per query under BM25 with IDF (Qdrant's term weights)."""
    bm25 = Bm25Encoder()
    postings: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for doc_id, vector in enumerate(bm25.documents(docs)):
        for term, weight in zip(vector.indices, vector.values, strict=True):
            postings[term].append((doc_id, weight))
    n = len(docs)
    rankings = []
    for vector in (bm25.query(q) for q in queries):
        scores = np.zeros(n, dtype=np.float32)
        for term in vector.indices:
            hits = postings.get(term, [])
            idf = math.log(1 + (n - len(hits) + 0.5) / (len(hits) + 0.5))
            for doc_id, weight in hits:
                scores[doc_id] += idf * weight
        rankings.append(list(np.argsort(-scores, kind="stable")[:depth]))
    return rankings


def split_first_sentence(text: str) -> tuple[str, str] | None:
    """(first sentence, rest) when both are substantial, else None."""
    match = _FIRST_SENTENCE.match(text)
    if match is None or len(match.group(2).split()) < MIN_ABSTRACT_WORDS:
        return None
    return match.group(1), match.group(2)


def mine(
    papers: Sequence[Paper],
    encoder: Encoder,
    *,
    negatives: int,
    depth: int,
    duplicate_cosine: float,
    seed: int,
    query_kinds: Sequence[QueryKind] = ("title",),
) -> list[TrainingExample]:
    """Build (query, own passage, mined negatives) examples, deterministically for ``seed``.

    Query kinds: a paper's ``title`` against full abstracts, and an abstract's
    ``first_sentence`` (a natural-language description, like a user's request) against
    abstracts with their first sentence removed, so the answer is never a verbatim copy.
    """
    papers = usable(papers)
    abstracts = [p.abstract for p in papers]
    splits = [split_first_sentence(a) for a in abstracts]
    rests = [s[1] if s else a for s, a in zip(splits, abstracts, strict=True)]
    queries: list[tuple[str, int, QueryKind]] = []
    for i, paper in enumerate(papers):
        if "title" in query_kinds:
            queries.append((paper.title, i, "title"))
        if "first_sentence" in query_kinds and (split := splits[i]) is not None:
            queries.append((split[0], i, "first_sentence"))
    texts = [q for q, _, _ in queries]
    docs = encoder.encode_documents(abstracts)
    dense_scores = encoder.encode_queries(texts) @ docs.T
    dense = np.argsort(-dense_scores, axis=1, kind="stable")[:, :depth]
    lexical = bm25_rankings(texts, abstracts, depth)
    keys = [normalise_title(p.title) for p in papers]
    rng = random.Random(seed)
    examples = []
    for q, (text, i, kind) in enumerate(queries):

        def clean(ranked: Sequence[int], i: int = i) -> list[int]:
            return [
                int(j) for j in ranked
                if j != i and keys[j] != keys[i] and float(docs[i] @ docs[j]) < duplicate_cosine
            ]

        from_bm25, from_dense = clean(lexical[q]), clean(dense[q])
        chosen = rng.sample(from_bm25, min(len(from_bm25), negatives // 2))
        rest = [j for j in from_dense if j not in chosen]
        chosen += rng.sample(rest, min(len(rest), negatives - len(chosen)))
        passages = abstracts if kind == "title" else rests
        if len(chosen) == negatives:
            examples.append(
                TrainingExample(text, passages[i], tuple(passages[j] for j in chosen))
            )
    rng.shuffle(examples)
    return examples
