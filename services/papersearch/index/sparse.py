"""BM25 sparse vectors from Qdrant's own model, the same for every backend.

``qdrant_edge.Bm25`` (k=1.2, b=0.75, English word tokenizer, stopwords and Snowball stemmer) is
the model the Qdrant server runs for ``Document(model="qdrant/bm25")``, with three of its fixed
choices made settings: how text becomes words (``index.bm25_tokenizer``: the word tokenizer,
as Qdrant's; the same with accents folded; or its multilingual tokenizer, which also splits
Chinese (Japanese and Thai in part), folded too), the mean document length its length normalisation
assumes (Qdrant's 256 words; ``index.bm25_avg_len``, the corpus's own mean) and how a query
term said several times counts (Qdrant: once; ``index.bm25_query_k3``). Documents get BM25
term-frequency weights, computed from ``document_text``: the paper's text with its title said
``index.bm25_title_weight`` times (1: ``Paper.text`` as is); queries and the dense encoder's
text are unaffected.
IDF is not in the vectors: the collection's sparse vector has Qdrant's IDF modifier, so the
engine applies it at search time from its own statistics (the embedded engine's count deleted
papers until they are vacuumed: README, Indexing and search).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from papersearch.corpus.paper import Paper, model_text

if TYPE_CHECKING:
    from papersearch.settings import Bm25Tokenizer


class SparseLike(Protocol):
    """Anything with parallel ``indices`` and ``values`` (ours, qdrant-edge's, qdrant-client's)."""

    @property
    def indices(self) -> Sequence[int]: ...

    @property
    def values(self) -> Sequence[float]: ...


@dataclass(frozen=True, slots=True)
class SparseVector:
    """A backend-neutral sparse vector: term hashes and weights."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.values):
            raise ValueError("sparse vector indices and values differ in length")

    @classmethod
    def of(cls, vector: SparseLike) -> SparseVector:
        if isinstance(vector, SparseVector):
            return vector
        return cls(tuple(map(int, vector.indices)), tuple(map(float, vector.values)))

    def __len__(self) -> int:
        return len(self.indices)


DEFAULT_AVG_LEN = 200.0


def document_text(paper: Paper, title_weight: int = 1) -> str:
    """The text BM25 weighs for a paper: its title ``title_weight`` times, then its abstract.
    Weight 1 is ``Paper.text`` exactly; a paper without a title is its abstract at any weight.
    Its words are what ``index.bm25_avg_len`` should average (evaluation/harness.mean_words)."""
    if title_weight < 1:
        raise ValueError(f"BM25 title weight must be >= 1, got {title_weight}")
    if title_weight == 1 or not paper.title:
        return paper.text
    titles = ". ".join([paper.title] * title_weight)
    return f"{titles}. {paper.abstract}" if paper.abstract else titles


class Bm25Encoder:
    """Turns papers, texts and queries into BM25 sparse vectors."""

    def __init__(self, avg_len: float = DEFAULT_AVG_LEN, query_k3: float = 0.0,
                 title_weight: int = 1, tokenizer: Bm25Tokenizer = "word") -> None:
        if not avg_len > 0 or query_k3 < 0 or title_weight < 1:
            raise ValueError(f"BM25 needs avg_len > 0, query_k3 >= 0 and title_weight >= 1, "
                             f"got {avg_len}, {query_k3}, {title_weight}")
        import qdrant_edge  # here: the request types (index/query.py) and the gRPC client that
        # uses them import this module, and must not load the storage engine (slow to import:
        # README, Results, Figures behind the limits)

        config = qdrant_edge.Bm25Config(avg_len=avg_len, ascii_folding=tokenizer != "word")
        if tokenizer == "multilingual":
            config = qdrant_edge.Bm25Config(avg_len=avg_len, ascii_folding=True,
                                            tokenizer=qdrant_edge.TokenizerType.Multilingual)
        self._model = qdrant_edge.Bm25(config)
        self.query_k3 = query_k3
        self.title_weight = title_weight

    def document(self, text: str) -> SparseVector:
        return SparseVector.of(self._model.embed_document(model_text(text)))

    def documents(self, texts: Iterable[str]) -> list[SparseVector]:
        return [self.document(text) for text in texts]

    def papers(self, papers: Iterable[Paper]) -> list[SparseVector]:
        """Papers' document vectors, from ``document_text`` with this encoder's title weight:
        what the index stores for them."""
        return [self.document(document_text(p, self.title_weight)) for p in papers]

    def query(self, text: str) -> SparseVector:
        """Each term once (weight 1), or with query_k3 > 0 its count f in the query saturated
        as (k3 + 1) f / (k3 + f): words are tokenized one by one and their terms counted.
        NFKC-normalised first, as documents are (corpus/paper.model_text): a decomposed
        accent (text pasted from macOS) made other terms than the papers' and matched none."""
        text = model_text(text)
        if self.query_k3 == 0:
            return SparseVector.of(self._model.embed_query(text))
        counts: Counter[int] = Counter()
        for word in text.split():
            counts.update(int(i) for i in self._model.embed_query(word).indices)
        k3 = self.query_k3
        terms = sorted(counts.items())
        return SparseVector(tuple(t for t, _ in terms),
                            tuple((k3 + 1) * f / (k3 + f) for _, f in terms))
