"""Weakly supervised training examples for the reranker, mined with the first stage.

Each paper with a title and an abstract gives pseudo-queries shaped like users' (query kinds),
each answered by a passage from which the query's own words were taken out:

- ``title``: the title, answered by the abstract (less a leading copy of the title);
- ``first_sentence``: the abstract's first sentence, answered by the rest of the abstract;
- ``claim``: a findings or conclusion sentence of the abstract (the last one with a cue such as
  "we show" or "results", else the last sentence), answered by the title and the abstract
  without it;
- ``keywords``: 2-4 of the paper's most salient words (tf-idf within its corpus, words found in
  at least two papers), in text order, answered by the title and abstract.

Each corpus is searched on its own by the hybrid first stage as it is served: dense cosine and
BM25 (IDF and mean length of that corpus), each divided by its top score, convexly weighted.
A pseudo-query is kept only if that search ranks its own paper in its top ``roundtrip_top_n``
(round-trip filtering: a query that does not find its paper is likely noise). Its negatives are
drawn at random from the same search's top ``depth``, minus likely false negatives (near
duplicates: dense cosine to the positive at or above a threshold, or the same normalised title).
Each example carries the fused first-stage scores of its passages, for score distillation.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from papersearch.corpus.paper import Paper, normalise_title
from papersearch.encoder.runtime import Encoder
from papersearch.index.sparse import Bm25Encoder
from papersearch.settings import QueryKind

MIN_ABSTRACT_WORDS = 20
CLAIM_WORDS = (6, 60)  # a claim sentence's length, in words
KEYWORDS = (2, 4)  # words per keyword query, drawn from the paper's KEYWORD_POOL best
KEYWORD_POOL = 6
_FIRST_SENTENCE = re.compile(r"(.{30,400}?[.!?])\s+(.+)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAIM_CUE = re.compile(
    r"\b(we (show|find|found|demonstrate|observe|conclude|prove)|results?|shows?|shown|"
    r"outperform\w*|achiev\w*|improv\w*|conclu\w*|indicat\w*|suggest\w*|reveal\w*)\b",
    re.IGNORECASE,
)
_NOT_A_CLAIM = re.compile(r"https?://|github|available at", re.IGNORECASE)
_WORD = re.compile(r"[a-z][a-z-]{2,}")


@dataclass(frozen=True, slots=True)
class TrainingExample:
    query: str
    positive: str
    negatives: tuple[str, ...]
    teacher: tuple[float, ...] = ()  # fused first-stage scores: the positive's, the negatives'


@dataclass(frozen=True, slots=True)
class PseudoQuery:
    text: str
    source: int  # index of the paper it was taken from
    kind: QueryKind


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


def body(paper: Paper) -> str:
    """The abstract without a leading copy of the title (Cranfield's abstracts start with it)."""
    words = paper.abstract.split()
    title_words = len(paper.title.split())
    if normalise_title(" ".join(words[:title_words])) == normalise_title(paper.title):
        return " ".join(words[title_words:])
    return paper.abstract


def split_first_sentence(text: str) -> tuple[str, str] | None:
    """(first sentence, rest) when both are substantial, else None."""
    match = _FIRST_SENTENCE.match(text)
    if match is None or len(match.group(2).split()) < MIN_ABSTRACT_WORDS:
        return None
    return match.group(1), match.group(2)


def claim_sentence(abstract: str) -> str | None:
    """The abstract's last findings-like sentence (never its first), else its last sentence;
    None when no sentence after the first has a claim's length."""
    sentences = [
        s for s in _SENTENCE_END.split(abstract.strip())[1:]
        if CLAIM_WORDS[0] <= len(s.split()) <= CLAIM_WORDS[1] and not _NOT_A_CLAIM.search(s)
    ]
    cued = [s for s in sentences if _CLAIM_CUE.search(s)]
    return (cued or sentences or [None])[-1]


def without(text: str, sentence: str) -> str:
    return " ".join(text.replace(sentence, " ").split())


def keyword_queries(texts: Sequence[str], rng: random.Random) -> list[str | None]:
    """Per text: 2-4 of its KEYWORD_POOL highest tf-idf words (idf over ``texts``; words in one
    text only are left out: names, typos), in the order the text first uses them."""
    words = [_WORD.findall(text.lower()) for text in texts]
    df = Counter(w for ws in words for w in set(ws))
    queries: list[str | None] = []
    for ws in words:
        tf = Counter(w for w in ws if df[w] > 1)
        pool = sorted(tf, key=lambda w: (-tf[w] * math.log(len(texts) / df[w]), w))
        pool = pool[:KEYWORD_POOL]
        if len(pool) < KEYWORDS[0]:
            queries.append(None)
            continue
        chosen = set(rng.sample(pool, min(len(pool), rng.randint(*KEYWORDS))))
        queries.append(" ".join(w for w in dict.fromkeys(ws) if w in chosen))
    return queries


def pseudo_queries(
    papers: Sequence[Paper], kinds: Sequence[QueryKind], rng: random.Random
) -> tuple[list[PseudoQuery], dict[QueryKind, list[str]]]:
    """The queries of each kind, and per kind every paper's passage (the text a query of that
    kind is answered by; also what a negative of that kind shows)."""
    texts = [p.text for p in papers]
    bodies = [body(p) for p in papers]
    firsts = [split_first_sentence(b) for b in bodies]
    claims = [claim_sentence(b) for b in bodies]
    made: Mapping[QueryKind, Sequence[str | None]] = {
        "title": [p.title for p in papers],
        "first_sentence": [s[0] if s else None for s in firsts],
        "claim": claims,
        "keywords": keyword_queries(texts, rng) if "keywords" in kinds else [None] * len(papers),
    }
    passages: dict[QueryKind, list[str]] = {
        "title": bodies,
        "first_sentence": [s[1] if s else b for s, b in zip(firsts, bodies, strict=True)],
        "claim": [without(t, c) if c else t for t, c in zip(texts, claims, strict=True)],
        "keywords": texts,
    }
    queries = [PseudoQuery(text, i, kind) for i in range(len(papers)) for kind in kinds
               if (text := made[kind][i])]
    return queries, passages


def bm25_scores(queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    """(query, doc) BM25 scores as the index computes them: Qdrant's model with the docs' own
    mean length, IDF from the docs, each query term once."""
    bm25 = Bm25Encoder(avg_len=float(np.mean([len(d.split()) for d in docs])))
    vectors = bm25.documents(docs)
    rows = {term: n for n, term in enumerate(dict.fromkeys(t for v in vectors for t in v.indices))}
    weights = np.zeros((len(rows), len(docs)), dtype=np.float32)  # term x doc
    for doc, vector in enumerate(vectors):
        weights[[rows[t] for t in vector.indices], doc] = vector.values
    df = (weights > 0).sum(axis=1, keepdims=True)
    weights *= np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    scores = np.zeros((len(queries), len(docs)), dtype=np.float32)
    for n, query in enumerate(queries):
        vector = bm25.query(query)
        found = [(rows[t], w) for t, w in zip(vector.indices, vector.values, strict=True)
                 if t in rows]
        if found:
            scores[n] = np.array([w for _, w in found], dtype=np.float32) @ weights[
                [r for r, _ in found]]
    return scores


def fused_scores(dense: np.ndarray, lexical: np.ndarray, dense_weight: float) -> np.ndarray:
    """The convex hybrid fusion (index/fusion.py) over whole rows: each row divided by its top
    score when positive, then ``dense_weight * dense + (1 - dense_weight) * lexical``."""

    def by_top(scores: np.ndarray) -> np.ndarray:
        top = scores.max(axis=1, keepdims=True)
        return np.where(top > 0, scores / np.where(top > 0, top, 1), scores)

    return dense_weight * by_top(dense) + (1 - dense_weight) * by_top(lexical)


def mine(
    papers: Sequence[Paper],
    encoder: Encoder,
    *,
    negatives: int,
    depth: int,
    duplicate_cosine: float,
    seed: int,
    query_kinds: Sequence[QueryKind] = ("title",),
    dense_weight: float = 0.6,
    roundtrip_top_n: int = 0,
) -> list[TrainingExample]:
    """Examples from one corpus (searched as one collection), deterministically for ``seed``;
    none from a corpus of fewer than ``negatives`` + 1 usable papers (a query's negatives are
    other papers), and none where the round trip keeps no query. ``roundtrip_top_n`` 0 keeps
    every query."""
    papers = usable(papers)
    rng = random.Random(seed)
    queries, passages = pseudo_queries(papers, query_kinds, rng)
    if len(papers) < negatives + 1 or not queries:  # no query, or too few papers for its
        return []  # negatives
    texts = [p.text for p in papers]
    docs = encoder.encode_documents(texts)
    query_texts = [q.text for q in queries]
    fused = fused_scores(encoder.encode_queries(query_texts) @ docs.T,
                         bm25_scores(query_texts, texts), dense_weight)
    ranked = np.argsort(-fused, axis=1, kind="stable")[:, : max(depth, roundtrip_top_n)]
    keys = [normalise_title(p.title) for p in papers]
    examples = []
    for row, query in enumerate(queries):
        i = query.source
        if roundtrip_top_n and i not in ranked[row, :roundtrip_top_n]:
            continue
        candidates = [
            int(j) for j in ranked[row, :depth]
            if j != i and keys[j] != keys[i] and float(docs[i] @ docs[j]) < duplicate_cosine
        ]
        if len(candidates) < negatives:
            continue
        chosen = rng.sample(candidates, negatives)
        shown = passages[query.kind]
        examples.append(TrainingExample(
            query.text, shown[i], tuple(shown[j] for j in chosen),
            tuple(round(float(fused[row, j]), 6) for j in (i, *chosen)),
        ))
    return examples


def sample(examples: Sequence[TrainingExample], limit: int | None, seed: int) -> (
    list[TrainingExample]
):
    """The examples in a seeded random order, the first ``limit`` of them (None: all)."""
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:limit]
