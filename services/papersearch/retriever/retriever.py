"""Dense, sparse (BM25) and hybrid search over the index for an already-encoded query."""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import groupby

import numpy as np

from papersearch.corpus.paper import Paper, point_id
from papersearch.index.errors import PaperNotFound
from papersearch.index.plan import Program
from papersearch.index.query import Examples, Hit, Mode, SearchFilter, SearchRequest
from papersearch.index.sparse import Bm25Encoder
from papersearch.index.store import Store
from papersearch.retriever.feedback import Feedback, hold_a_term


@dataclass(frozen=True, slots=True)
class Retrieved:
    """A search's hits, and whether query feedback expanded its query (retriever/feedback.py):
    asked for or on by default, it runs only on hybrid searches with BM25 terms that some
    paper holds (retriever/feedback.py)."""

    hits: list[Hit]
    feedback: bool
    mode: Mode  # the search that ran: a hybrid query without BM25 terms runs as dense


class Retriever:
    """Turns (query text, query vector) into a Qdrant request, and papers into points: BM25
    terms are computed here, for queries and documents alike, and hybrid queries expanded by
    pseudo-relevance feedback (retriever/feedback.py) when it is on. Each method has a ``*_program``
    twin (index/plan.py) for callers that run the engine steps themselves (the gateway); the
    twin of ``search`` is ``retrieve_program``, which also says whether feedback ran."""

    def __init__(self, store: Store) -> None:
        self.store = store
        index = store.settings
        self.bm25 = Bm25Encoder(index.bm25_avg_len, index.bm25_query_k3, index.bm25_title_weight,
                                index.bm25_tokenizer)
        self.feedback = Feedback.from_settings(store.settings)

    def search(
        self,
        text: str,
        vector: np.ndarray | Sequence[float] | None,
        *,
        mode: Mode = "hybrid",
        limit: int = 10,
        filter: SearchFilter | None = None,
        explain: bool = False,
        feedback: bool | None = None,
    ) -> list[Hit]:
        """The hits of ``retrieve_program``, run here."""
        return self.store.execute(self.retrieve_program(text, vector, mode, limit, filter,
                                                        explain, feedback)).hits

    def retrieve_program(
        self,
        text: str,
        vector: np.ndarray | Sequence[float] | None,
        mode: Mode = "hybrid",
        limit: int = 10,
        filter: SearchFilter | None = None,
        explain: bool = False,
        feedback: bool | None = None,
    ) -> Program[Retrieved]:
        """The hits, and whether query feedback expanded the query; with ``explain``, each hit
        with its Explanation (index/explain.py). Query feedback runs on hybrid searches with
        BM25 terms where ``feedback`` says so (None: ``index.prf_enabled``), with the
        ``index.prf_*`` values."""
        sparse = self.bm25.query(text) if mode in ("sparse", "hybrid") else None
        if sparse is not None and len(sparse) == 0 and mode == "sparse":
            return Retrieved([], False, mode)  # only stopwords or punctuation: no match
        if sparse is not None and len(sparse) == 0:
            mode, sparse = "dense", None
        request = SearchRequest(
            mode=mode,
            dense=vector if mode != "sparse" else None,
            sparse=sparse,
            limit=limit,
            filter=filter or SearchFilter(),
        )
        asked = request
        expansion = self.feedback if feedback is None else replace(self.feedback,
                                                                   enabled=feedback)
        if mode == "hybrid" and expansion.docs:
            top = yield from self.store.feedback_program(replace(request, limit=expansion.docs))
            # No paper holds a word of the query (a misspelt name, a word the corpus lacks):
            # the first pass was the dense side's, and expanding put its papers' terms in
            # place of the words typed (README, Results: Query feedback). The top papers
            # answer at once where they hold one; a fusion may rank a paper that does below
            # them (dbsf, a heavy dense weight), so the index is asked where they do not.
            if hold_a_term(request.sparse_vector(), top) or (
                    yield from self.store.any_match_program(request)):
                request = expansion.expand(request, top)
        hits = yield from self.store.query_program(request)
        if explain:  # the stages as searched: the expanded query's, with feedback
            hits = yield from self.store.explain_program(request, hits, self.term_labels(text))
        if request is not asked:  # each hit's dense score: its cosine to the query as asked
            hits = yield from self.store.cosines_program(asked.dense_vector(), hits)
        return Retrieved(hits, request is not asked, mode)

    def term_labels(self, text: str) -> dict[int, str]:
        """BM25 term index -> the part of a query word it came from (the first, if several
        do): "GPT-4" gives "GPT" and "4", "title:Layer" "title" and "Layer" (each of the
        word's terms had been labelled with the whole word: a paper holding "4" was said to
        match "GPT-4", twice); the word where its parts give other terms than it (a script
        the multilingual tokenizer splits). Terms that feedback added have none."""
        labels: dict[int, str] = {}
        for word in text.split():
            for part in word_parts(word):
                for index in self.bm25.query(part).indices:
                    labels.setdefault(int(index), part)
            for index in self.bm25.query(word).indices:
                labels.setdefault(int(index), word.strip(string.punctuation) or word)
        return labels

    def similar(self, examples: Examples, limit: int = 10,
                filter: SearchFilter | None = None) -> list[Hit]:
        return self.store.similar(examples, limit, filter)

    def upsert(self, papers: Sequence[Paper], dense: np.ndarray) -> int:
        return self.store.execute(self.upsert_program(papers, dense))

    def upsert_program(self, papers: Sequence[Paper], dense: np.ndarray) -> Program[int]:
        """Write papers with their dense vectors; the BM25 vectors come from their text
        (index/sparse.document_text: the title repeated ``index.bm25_title_weight`` times)."""
        sparse = self.bm25.papers(papers)
        return (yield from self.store.upsert_program(papers, dense, sparse))

    def delete(self, paper_ids: Sequence[str]) -> int:
        return self.store.execute(self.delete_program(paper_ids))

    def delete_program(self, paper_ids: Sequence[str]) -> Program[int]:
        """Delete papers; returns how many of them were stored (each id once). Counted by point
        id alone, without reading payloads."""
        present = yield from self.store.existing_ids_program(point_id(pid) for pid in paper_ids)
        yield from self.store.delete_program(paper_ids)
        return len(present)

    def get(self, paper_id: str) -> Paper:
        return self.store.execute(self.get_program(paper_id))

    def get_program(self, paper_id: str) -> Program[Paper]:
        papers = yield from self.store.get_program([paper_id])
        if not papers:
            raise PaperNotFound(paper_id)
        return papers[0]


def word_parts(word: str) -> list[str]:
    """The runs of letters, marks and digits in ``word``: the pieces BM25's tokenizers split a
    word into ("GPT-4", "title:Layer", "snake_case"). Marks too: Thai writes its vowels and
    tones as combining marks, and a word cut at them gave a label no term came from."""
    return ["".join(run) for inside, run in groupby(
        word, lambda c: unicodedata.category(c)[0] in "LMN") if inside]
