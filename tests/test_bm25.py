"""BM25 vectors (index/sparse.py): Qdrant's model with the corpus's mean length and an
optional query-term saturation, and the eval harness's per-dataset mean."""

from __future__ import annotations

import pytest

from papersearch.corpus.paper import Paper
from papersearch.evaluation.harness import mean_words
from papersearch.index.sparse import Bm25Encoder

TEXT = "retrieval of retrieval systems for information retrieval"


def test_a_query_counts_each_term_once_by_default() -> None:
    vector = Bm25Encoder().query(TEXT)
    assert len(vector) == 3 and set(vector.values) == {1.0}  # stopwords gone, stems once


def test_query_k3_saturates_repeated_terms() -> None:
    once = Bm25Encoder().query(TEXT)
    vector = Bm25Encoder(query_k3=1.0).query(TEXT)
    assert vector.indices == tuple(sorted(once.indices))  # the same terms
    weights = sorted(vector.values)
    assert weights == pytest.approx([1.0, 1.0, 2 * 3 / (1 + 3)])  # "retrieval" said 3 times
    raw = Bm25Encoder(query_k3=1e9).query(TEXT)
    assert sorted(raw.values) == pytest.approx([1.0, 1.0, 3.0])


def test_the_mean_length_normalises_documents() -> None:
    """A document longer than the assumed mean gets lower term weights."""
    long_text = TEXT + " " + " ".join(f"word{i}" for i in range(40))
    as_long = Bm25Encoder(avg_len=50.0).document(long_text)
    as_short = Bm25Encoder(avg_len=5.0).document(long_text)
    assert as_long.indices == as_short.indices
    assert all(a > b for a, b in zip(as_long.values, as_short.values, strict=True))


@pytest.mark.parametrize(("avg_len", "k3"), [(0.0, 0.0), (-1.0, 0.0), (100.0, -0.5)])
def test_bad_parameters_are_refused(avg_len: float, k3: float) -> None:
    with pytest.raises(ValueError, match="BM25 needs avg_len > 0 and query_k3 >= 0"):
        Bm25Encoder(avg_len, k3)


def test_mean_words_of_a_corpus() -> None:
    papers = [Paper(id="a", title="Two words", abstract="and three more"),
              Paper(id="b", title="One", abstract="")]
    assert mean_words(papers) == pytest.approx(((2 + 3) + 1) / 2)
    with pytest.raises(ValueError, match="empty corpus"):
        mean_words([])
