"""Hubness statistics and querybank normalisation (evaluation/qbnorm.py) on toy data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from papersearch.evaluation.qbnorm import (
    QueryBank,
    dis_rescore,
    hubness,
    hubness_of,
    k_occurrence,
    uniform_hubness,
)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float64)
    return v / np.linalg.norm(v)


# Three documents: a "hub" in the middle of the space, two specific ones at its sides.
DOCS = ["hub", "left", "right"]
DOC_VECTORS = np.array([unit(1, 0, 0), unit(1, 1, 0), unit(1, -1, 0)])


def ranked_for(query: np.ndarray) -> list[tuple[str, float]]:
    scores = DOC_VECTORS @ query
    return [(DOCS[i], float(scores[i])) for i in np.argsort(-scores)]


def test_k_occurrence_counts_distinct_top_k_and_ignores_unknown_ids() -> None:
    run = {"q1": ["a", "a", "b", "c"], "q2": ["b", "x", "a"], "q3": []}
    assert k_occurrence(run, ["a", "b", "c", "d"], k=2).tolist() == [1, 2, 0, 0]


def test_hubness_of_a_run_where_one_document_is_everyones_top() -> None:
    documents = [f"d{i}" for i in range(200)]
    run = {f"q{i}": ["d0", f"d{1 + i}"] for i in range(50)}  # d0 in all, d1..d50 once each
    stats = hubness(run, documents, k=2)
    assert stats.max == 50
    assert stats.anti_hubs == 200 - 51
    assert stats.top1pct_share == pytest.approx(51 / 100)  # top 2 documents: d0 and one more
    assert stats.skewness > 5
    assert stats.to_dict()["anti_hub_share"] == round(149 / 200, 4)


def test_hubness_of_an_even_spread_has_no_skew() -> None:
    stats = hubness_of(np.full(100, 3), queries=30, k=10)
    assert stats.skewness == 0.0
    assert stats.top1pct_share == pytest.approx(0.01)
    assert stats.anti_hubs == 0


def test_uniform_hubness_fills_every_slot_with_distinct_documents() -> None:
    stats = uniform_hubness(queries=500, documents=1000, k=10, seed=1)
    # 5000 slots over 1000 documents: about 5 each, e^-5 of them never drawn, little skew
    assert stats.anti_hubs == pytest.approx(1000 * (1 - 10 / 1000) ** 500, abs=15)
    assert abs(stats.skewness) < 1
    assert stats.max < 20


def test_the_inverted_softmax_demotes_a_hub_for_a_query_whose_top_is_the_hub() -> None:
    # every bank query sits near the hub, some slightly left, some slightly right
    bank = QueryBank(np.array([unit(1, 0.1, 0), unit(1, -0.1, 0), unit(1, 0, 0.1)]),
                     (None, None, None), beta=20.0)
    assert bank.activation_set(DOCS, DOC_VECTORS) == frozenset({"hub"})
    # a bank query whose only candidate is its own source names no document (argmax of a row
    # of -inf named the first: "hub")
    alone = QueryBank(np.array([unit(1, 0, 0)]), ("left",), beta=20.0)
    assert alone.activation_set(["left"], DOC_VECTORS[1:2]) == frozenset()
    penalties = dict(zip(DOCS, bank.penalties(DOCS, DOC_VECTORS).tolist(), strict=True))
    assert penalties["hub"] > penalties["left"] and penalties["hub"] > penalties["right"]

    query = unit(1, 0.35, 0)  # closest to the hub, but leaning left
    ranked = ranked_for(query)
    assert ranked[0][0] == "hub"
    rescored = dis_rescore(ranked, penalties, bank.activation_set(DOCS, DOC_VECTORS))
    assert rescored[0][0] == "left"  # the hub is demoted
    # the same order as the inverted softmax exp(beta s(q, d)) / sum_b exp(beta s(b, d))
    sims = bank.similarities(DOC_VECTORS)
    inverted = {d: math.exp(20 * s) / np.exp(20 * sims[:, i]).sum()
                for i, (d, s) in enumerate(zip(DOCS, DOC_VECTORS @ query, strict=True))}
    assert [d for d, _ in rescored] == sorted(inverted, key=lambda d: -inverted[d])


def test_a_query_whose_top_is_not_a_hub_is_left_unchanged() -> None:
    bank = QueryBank(np.array([unit(1, 0.1, 0), unit(1, -0.1, 0)]), (None, None), beta=20.0)
    activation = bank.activation_set(DOCS, DOC_VECTORS)
    penalties = dict(zip(DOCS, bank.penalties(DOCS, DOC_VECTORS).tolist(), strict=True))
    ranked = ranked_for(unit(0.2, -1, 0))  # right's own query
    assert ranked[0][0] == "right"
    assert dis_rescore(ranked, penalties, activation) == ranked
    assert dis_rescore([], penalties, activation) == []


def test_a_bank_query_made_from_a_document_does_not_count_against_it() -> None:
    vectors = np.array([DOC_VECTORS[1], unit(1, 0.05, 0)])  # left's own title, one near the hub
    masked = QueryBank(vectors, ("left", None), beta=10.0)
    unmasked = QueryBank(vectors, (None, None), beta=10.0)
    # left is its own title's top 1 only when unmasked
    assert "left" in unmasked.activation_set(DOCS, DOC_VECTORS)
    assert masked.activation_set(DOCS, DOC_VECTORS) == frozenset({"hub"})
    penalty = masked.penalties(DOCS, DOC_VECTORS)
    # left's penalty comes from the other bank query alone (a bank of one: lse - log 1)
    assert penalty[1] == pytest.approx(float(vectors[1] @ DOC_VECTORS[1]))
    assert penalty[1] < unmasked.penalties(DOCS, DOC_VECTORS)[1]
    # a document whose only bank query is its own gets no penalty
    alone = QueryBank(vectors[:1], ("left",), beta=10.0)
    assert alone.penalties(DOCS, DOC_VECTORS)[1] == 0.0


def test_a_querybank_must_be_usable() -> None:
    with pytest.raises(ValueError, match="empty"):
        QueryBank(np.zeros((0, 3)), (), beta=1.0)
    with pytest.raises(ValueError, match="source"):
        QueryBank(np.zeros((2, 3)), (None,), beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        QueryBank(np.zeros((1, 3)), (None,), beta=0.0)
