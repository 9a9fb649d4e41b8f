"""Hard-negative mining for weakly supervised reranker training.

Each paper with a title and an abstract gives a query (the title) and a positive (its own
abstract). Negatives are other abstracts that BM25 or the dense encoder rank high for that
title, minus likely false negatives: near-duplicate papers (dense cosine to the positive at or
above a threshold, or the same normalised title).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from papersearch.corpus.paper import Paper, normalise_title
from papersearch.encoder.runtime import Encoder
from papersearch.index.sparse import Bm25Encoder

MIN_ABSTRACT_WORDS = 20


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


def mine(
    papers: Sequence[Paper],
    encoder: Encoder,
    *,
    negatives: int,
    depth: int,
    duplicate_cosine: float,
    seed: int,
) -> list[TrainingExample]:
    """Build (title, own abstract, mined negatives) examples, deterministically for ``seed``."""
    papers = usable(papers)
    titles = [p.title for p in papers]
    abstracts = [p.abstract for p in papers]
    docs = encoder.encode_documents(abstracts)
    dense_scores = encoder.encode_queries(titles) @ docs.T
    dense = np.argsort(-dense_scores, axis=1, kind="stable")[:, :depth]
    lexical = bm25_rankings(titles, abstracts, depth)
    keys = [normalise_title(t) for t in titles]
    rng = random.Random(seed)
    examples = []
    for i in range(len(papers)):

        def clean(ranked: Sequence[int], i: int = i) -> list[int]:
            return [
                int(j) for j in ranked
                if j != i and keys[j] != keys[i] and float(docs[i] @ docs[j]) < duplicate_cosine
            ]

        from_bm25, from_dense = clean(lexical[i]), clean(dense[i])
        chosen = rng.sample(from_bm25, min(len(from_bm25), negatives // 2))
        rest = [j for j in from_dense if j not in chosen]
        chosen += rng.sample(rest, min(len(rest), negatives - len(chosen)))
        if len(chosen) == negatives:
            examples.append(
                TrainingExample(titles[i], abstracts[i], tuple(abstracts[j] for j in chosen))
            )
    rng.shuffle(examples)
    return examples
