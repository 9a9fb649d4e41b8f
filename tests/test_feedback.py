"""Pseudo-relevance feedback (retriever/feedback.py): the expansions by hand, and the Retriever's
second pass against the real engines (qdrant-edge and qdrant-client local mode)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from papersearch.index.query import SearchFilter, SearchRequest
from papersearch.index.sparse import SparseVector
from papersearch.index.store import Store
from papersearch.retriever.feedback import Feedback, expand_dense, expand_sparse
from papersearch.retriever.retriever import Retriever
from papersearch.settings import IndexSettings
from tests.test_index import BM25, DENSE, PAPERS, RARE, RARE_AT, ids, loaded  # noqa: F401

pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]


def test_expand_dense_by_hand() -> None:
    query, docs = (1.0, 0.0), [(0.0, 1.0), (0.0, 0.5)]
    # (1, 0) + 0.5 * (0, 0.75) = (1, 0.375), renormalised
    expected = np.array([1.0, 0.375]) / np.hypot(1.0, 0.375)
    assert expand_dense(query, docs, 0.5) == pytest.approx(tuple(expected))
    assert expand_dense(query, docs, 0.0) == pytest.approx(query)


def test_expand_sparse_by_hand() -> None:
    query = SparseVector((1, 2), (1.0, 1.0))
    docs = [SparseVector((2, 3), (1.0, 3.0)), SparseVector((3, 4), (1.0, 1.0))]
    # per doc distributions: {2: .25, 3: .75}, {3: .5, 4: .5}; mean: 2 .125, 3 .625, 4 .25
    expanded = expand_sparse(query, docs, terms=2, weight=0.5)
    got = dict(zip(expanded.indices, expanded.values, strict=True))
    assert got == pytest.approx({1: 1.0, 2: 1.0, 3: 0.5, 4: 0.5 * 0.25 / 0.625})
    assert expand_sparse(query, docs, terms=2, weight=0.0) == query
    assert expand_sparse(query, [], terms=2, weight=0.5) == query
    assert expand_sparse(query, [SparseVector((), ())], terms=2, weight=0.5) == query


def test_expand_sparse_ties_go_to_the_term_met_first() -> None:
    query = SparseVector((), ())
    docs = [SparseVector((9, 5), (1.0, 1.0)), SparseVector((5, 7), (1.0, 1.0))]
    # mean distribution: 9 .25, 5 .5, 7 .25: 5 first, then 9 (met before 7)
    expanded = expand_sparse(query, docs, terms=2, weight=1.0)
    assert expanded == SparseVector((5, 9), (1.0, 0.5))


FEEDBACK = {"prf_enabled": True, "prf_dense_docs": 2, "prf_dense_weight": 0.6, "prf_sparse_docs": 3,
            "prf_sparse_terms": 5, "prf_sparse_weight": 0.5}


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_second_pass_is_the_hybrid_search_of_the_expanded_query(loaded: Store,  # noqa: F811
                                                                 fusion: str) -> None:
    """The Retriever's hybrid search with feedback = the plain search of the query expanded
    by hand from the plain search's own top papers."""
    text, vector = f"graph protein {RARE}", DENSE[RARE_AT]
    saved = loaded.settings
    try:
        loaded.settings = saved.model_copy(update={"fusion": fusion, "prf_enabled": False})
        plain = Retriever(loaded)
        first = plain.search(text, vector, limit=3)
        loaded.settings = saved.model_copy(update={"fusion": fusion, **FEEDBACK})
        with_feedback = Retriever(loaded)
        top = loaded.get([h.paper.id for h in first])
        records = loaded.execute(loaded.feedback_program(SearchRequest(
            dense=vector, sparse=BM25.query(text), limit=3)))
        assert [r.point_id for r in records] == [h.paper.point_id for h in first]
        assert all(r.payload is None for r in records)  # vectors only
        assert all(r.dense is not None for r in records)
        dense = expand_dense(tuple(vector.tolist()), [r.dense for r in records[:2]
                                                      if r.dense is not None], 0.6)
        sparse = expand_sparse(BM25.query(text), BM25.documents(p.text for p in top), 5, 0.5)
        by_hand = loaded.query(SearchRequest(dense=dense, sparse=sparse, limit=5))
        got = with_feedback.search(text, vector, limit=5)
        assert ids(got) == ids(by_hand)
        assert [h.score for h in got] == pytest.approx([h.score for h in by_hand])
        assert with_feedback.search(text, vector, mode="dense", limit=5) == plain.search(
            text, vector, mode="dense", limit=5)  # dense and sparse modes: one pass
    finally:
        loaded.settings = saved


def test_hits_keep_their_cosine_to_the_query_as_asked(loaded: Store) -> None:  # noqa: F811
    """Feedback searches with an expanded vector, but a hit's dense score (what min_relevance
    cuts on) is its cosine to the query vector as asked; the explanation keeps the searched
    stage's score (the expanded vector's, which the fusion used)."""
    saved = loaded.settings
    try:
        loaded.settings = saved.model_copy(update=FEEDBACK)
        vector = DENSE[RARE_AT]
        hits = Retriever(loaded).search(f"graph protein {RARE}", vector, limit=5, explain=True)
        by_id = {p.point_id: v for p, v in zip(PAPERS, DENSE, strict=True)}
        assert len(hits) == 5
        for hit in hits:
            cosine = float(np.dot(by_id[hit.paper.point_id], vector))
            assert hit.dense_score == pytest.approx(cosine, abs=1e-5)
        searched = [(h.explanation.dense.score, h.dense_score) for h in hits
                    if h.explanation and h.explanation.dense
                    and h.explanation.dense.score is not None]
        assert searched and any(abs(e - asked) > 1e-3 for e, asked in searched)
    finally:
        loaded.settings = saved


def test_feedback_asked_per_search(loaded: Store) -> None:  # noqa: F811
    """``feedback`` per search overrides index.prf_enabled either way (the prf_* values stay
    the configured ones); None follows the setting."""
    text, vector = f"graph protein {RARE}", DENSE[RARE_AT]
    saved = loaded.settings
    try:
        loaded.settings = saved.model_copy(update=FEEDBACK)
        on = Retriever(loaded).search(text, vector, limit=5)
        loaded.settings = saved.model_copy(update={**FEEDBACK, "prf_enabled": False})
        off_setting = Retriever(loaded)
        plain = off_setting.search(text, vector, limit=5)
        assert ids(on) != ids(plain)
        assert off_setting.search(text, vector, limit=5, feedback=True) == on
        assert off_setting.search(text, vector, limit=5, feedback=None) == plain
        ran = {asked: loaded.execute(off_setting.retrieve_program(text, vector, limit=5,
                                                                  feedback=asked)).feedback
               for asked in (True, False, None)}
        assert ran == {True: True, False: False, None: False}
        loaded.settings = saved.model_copy(update=FEEDBACK)
        assert Retriever(loaded).search(text, vector, limit=5, feedback=False) == plain
    finally:
        loaded.settings = saved


def test_feedback_that_adds_nothing_is_not_said_to_have_run(loaded: Store) -> None:  # noqa: F811
    """Top papers with no BM25 term and no dense side: the expansion changes nothing, so the
    search is the plain one and does not say feedback ran (it did, and paid a second pass)."""
    text, vector = f"graph protein {RARE}", DENSE[RARE_AT]
    saved = loaded.settings
    try:
        loaded.settings = saved.model_copy(update={**FEEDBACK, "prf_enabled": False})
        plain = loaded.execute(Retriever(loaded).retrieve_program(text, vector, limit=5))
        loaded.settings = saved.model_copy(update={**FEEDBACK, "prf_dense_docs": 0})
        retriever = Retriever(loaded)
        request = SearchRequest(mode="hybrid", dense=vector, sparse=retriever.bm25.query(text),
                                limit=5)
        stripped = [replace(record, sparse=None) for record in loaded.execute(
            loaded.feedback_program(replace(request, limit=3)))]
        assert stripped and retriever.feedback.expand(request, stripped) is request
        assert retriever.feedback.expand(request, []) is request
        ran = loaded.execute(retriever.retrieve_program(text, vector, limit=5))
        assert ran.feedback is True and ran.hits != plain.hits  # the BM25 side adds terms
    finally:
        loaded.settings = saved


def test_no_feedback_for_a_query_whose_words_no_paper_holds(
        loaded: Store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A query whose BM25 terms no paper holds (a misspelt name, a word the corpus lacks: the
    first pass was the dense side's) is searched as asked: the expansion had put the top
    papers' terms in place of the words typed. One that some paper holds is expanded even
    where the top papers do not hold it (a fusion may rank that paper below them: dbsf)."""
    vector = DENSE[RARE_AT]
    saved = loaded.settings
    try:
        loaded.settings = saved.model_copy(update={**FEEDBACK, "prf_enabled": False})
        plain = loaded.execute(Retriever(loaded).retrieve_program("zqxjvw", vector, limit=5))
        loaded.settings = saved.model_copy(update=FEEDBACK)
        retriever = Retriever(loaded)
        ran = loaded.execute(retriever.retrieve_program("zqxjvw", vector, limit=5))
        assert ran.mode == "hybrid" and ran.hits  # the word has a term; no paper holds it
        assert ran.feedback is False and ran.hits == plain.hits

        def asked(text: str, flt: SearchFilter | None = None) -> bool:
            return loaded.execute(loaded.any_match_program(SearchRequest(
                dense=vector, sparse=retriever.bm25.query(text), filter=flt or SearchFilter())))

        assert asked(RARE) and not asked("zqxjvw")
        assert not asked(RARE, SearchFilter(categories=("no.SUCH",)))
        first_pass = loaded.feedback_program  # top papers without the query's term
        monkeypatch.setattr(loaded, "feedback_program", lambda request: [
            replace(r, sparse=None) for r in (yield from first_pass(request))])
        assert loaded.execute(retriever.retrieve_program(RARE, vector, limit=5)).feedback
        assert not loaded.execute(retriever.retrieve_program("zqxjvw", vector, limit=5)).feedback
    finally:
        loaded.settings = saved


def test_feedback_respects_the_filter(loaded: Store) -> None:  # noqa: F811
    saved = loaded.settings
    try:
        loaded.settings = saved.model_copy(update=FEEDBACK)
        flt = SearchFilter(categories=("cs.CV",))
        hits = Retriever(loaded).search(RARE, DENSE[0], limit=10, filter=flt)
        assert hits and all("cs.CV" in h.paper.categories for h in hits)
        # a filter nothing passes: no papers to expand from, so no feedback said to have run
        nothing = SearchFilter(categories=("no.SUCH",))
        empty = loaded.execute(Retriever(loaded).retrieve_program(RARE, DENSE[0], limit=10,
                                                                  filter=nothing))
        assert empty.hits == [] and empty.feedback is False
    finally:
        loaded.settings = saved


def test_feedback_settings() -> None:
    feedback = Feedback(True, 3, 0.6, 10, 20, 0.5)
    assert feedback.docs == 10
    assert replace(feedback, dense_docs=0, sparse_docs=0).docs == 0
    assert replace(feedback, enabled=False).docs == 0
    # a side with a weight of 0 adds nothing: its papers are not fetched for it
    assert replace(feedback, sparse_weight=0.0).docs == 3
    assert replace(feedback, dense_weight=0.0).docs == 10
    assert replace(feedback, dense_weight=0.0, sparse_weight=0.0).docs == 0
    assert Feedback.from_settings(IndexSettings()).docs == 10  # on by default
    assert Feedback.from_settings(IndexSettings(prf_enabled=False)).docs == 0
