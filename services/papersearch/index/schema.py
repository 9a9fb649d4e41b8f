"""The collection layout both backends build: vectors, payload, payload indexes, identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, get_args

from papersearch.corpus.paper import Paper
from papersearch.index.errors import EmbedderMismatch, StoreError, WeightingMismatch
from papersearch.settings import Bm25Tokenizer, IndexSettings, Quantization

DENSE = "dense"  # cosine, HNSW, optional int8 scalar quantization
SPARSE = "bm25"  # BM25 term weights, IDF modifier applied by the engine
# The newest identity layout read and written: 2 records a BM25 tokenizer other than word
# (a word collection is still written as 1, which releases before 2 read alike)
SCHEMA_VERSION = 2

# When a point was last written: milliseconds since the epoch on the writer's clock, stamped
# by Store.upsert. Saved searches find what was indexed lately with it (Store.indexed_since).
INDEXED_AT = "indexed_at"

PayloadIndexKind = Literal["datetime", "keyword", "integer"]
PAYLOAD_INDEXES: Mapping[str, PayloadIndexKind] = {
    "published": "datetime",
    "categories": "keyword",
    "authors": "keyword",
    INDEXED_AT: "integer",
}


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """How to build a new collection."""

    dim: int
    hnsw_m: int
    hnsw_ef_construct: int
    quantization: Quantization
    on_disk_vectors: bool = False
    on_disk_payload: bool = False

    @classmethod
    def of(cls, settings: IndexSettings, dim: int) -> CollectionSpec:
        return cls(dim, settings.hnsw_m, settings.hnsw_ef_construct, settings.quantization,
                   settings.on_disk_vectors, settings.on_disk_payload)


@dataclass(frozen=True, slots=True)
class Bm25Weighting:
    """How the stored papers' BM25 weights were computed (index/sparse.py, the document side):
    papers written with another would be weighed two ways in one collection, unseen. The
    tokenizer makes the words of queries too: a collection's own is required to search it."""

    avg_len: float
    title_weight: int
    tokenizer: Bm25Tokenizer = "word"  # collections recorded before it had the word tokenizer

    @classmethod
    def of(cls, settings: IndexSettings) -> Bm25Weighting:
        return cls(settings.bm25_avg_len, settings.bm25_title_weight, settings.bm25_tokenizer)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"avg_len": self.avg_len, "title_weight": self.title_weight}
        if self.tokenizer != "word":  # a word collection's record as before it was a setting
            data["tokenizer"] = self.tokenizer
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Bm25Weighting:
        tokenizer = data.get("tokenizer", "word")
        if tokenizer not in get_args(Bm25Tokenizer):
            raise ValueError(f"BM25 tokenizer {tokenizer!r} is not one this papersearch knows "
                             f"({', '.join(get_args(Bm25Tokenizer))})")
        return cls(float(data["avg_len"]), int(data["title_weight"]), tokenizer)

    def require(self, recorded: Bm25Weighting | None, where: str) -> None:
        """WeightingMismatch unless papers written now are weighed as ``recorded`` says the
        stored ones were (None: a collection from before it was recorded, taken as it is)."""
        if recorded is not None and recorded != self:
            raise WeightingMismatch(
                f"{where} holds papers whose BM25 weights were computed with index."
                f"bm25_avg_len={recorded.avg_len:g}, index.bm25_title_weight="
                f"{recorded.title_weight} and index.bm25_tokenizer={recorded.tokenizer}, and "
                f"this process has {self.avg_len:g}, {self.title_weight} and {self.tokenizer}: "
                "writing would weigh papers two ways in one collection. Set them back, or "
                "ingest into another index.collection")

    def require_words(self, recorded: Bm25Weighting | None, where: str) -> None:
        """WeightingMismatch unless queries made now have the words ``recorded`` says the
        stored papers have (another tokenizer: a query's accented or unspaced words would
        match none of theirs, unseen). A collection that records no weighting was written
        before there was another tokenizer than word."""
        words = "word" if recorded is None else recorded.tokenizer
        if words != self.tokenizer:
            raise WeightingMismatch(
                f"{where} holds papers whose BM25 words were made with index.bm25_tokenizer="
                f"{words}, and this process has {self.tokenizer}: its queries' words would "
                "not be the papers'. Set it back, or ingest into another index.collection")


@dataclass(frozen=True, slots=True)
class EmbedderIdentity:
    """Which embedder built the dense vectors: its manifest sha256 and output dimension; with
    how the BM25 weights were computed where the collection records it (not part of the
    identity's equality: an embedder's collection, whatever its weighting)."""

    sha256: str
    dim: int
    bm25: Bm25Weighting | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.sha256:
            raise ValueError("embedder sha256 must be non-empty")
        if self.dim < 1:
            raise ValueError(f"embedder dim must be positive, got {self.dim}")

    def to_json(self) -> dict[str, Any]:
        # schema 2 only for what a release before it would misread (another tokenizer than
        # word: it would search and write the collection with word's), so that it refuses it
        words = self.bm25 is not None and self.bm25.tokenizer != "word"
        data: dict[str, Any] = {"schema": SCHEMA_VERSION if words else 1,
                                "embedder_sha256": self.sha256,
                                "dim": self.dim}
        if self.bm25 is not None:
            data["bm25"] = self.bm25.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbedderIdentity:
        """The identity a collection records; ValueError for one a newer papersearch wrote
        (its ``schema`` past SCHEMA_VERSION: a layout this version cannot know; read as 1,
        it was opened as if it were one)."""
        schema = data.get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise ValueError(f"schema {schema!r} is not a version number")
        if schema > SCHEMA_VERSION:
            raise ValueError(f"written by a newer papersearch (index schema {schema}; this one "
                             f"reads up to {SCHEMA_VERSION}): upgrade papersearch to use it")
        bm25 = data.get("bm25")
        return cls(str(data["embedder_sha256"]), int(data["dim"]),
                   None if bm25 is None else Bm25Weighting.from_json(bm25))

    def require(self, stored: EmbedderIdentity, where: str) -> None:
        """Raise EmbedderMismatch unless ``stored`` (the collection's) is this identity, and
        WeightingMismatch unless its BM25 words are this one's (both before the index is
        loaded)."""
        if stored != self:
            raise EmbedderMismatch(
                f"{where} was built by embedder {stored.sha256[:12]} (dim {stored.dim}) but "
                f"embedder {self.sha256[:12]} (dim {self.dim}) is in use (`papersearch models "
                "info` shows the configured one's): switch the embedder back, move the index to "
                "this one (`papersearch index migrate --embedder NAME`, on a running gateway), "
                "or ingest into another index.data_dir or index.collection"
            )
        if self.bm25 is not None:
            self.bm25.require_words(stored.bm25, where)


def to_payload(paper: Paper) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "paper_id": paper.id,
        "title": paper.title,
        "abstract": paper.abstract,
        "authors": list(paper.authors),
        "categories": list(paper.categories),
    }
    if paper.published is not None:
        payload["published"] = paper.published.isoformat()
    if paper.url is not None:
        payload["url"] = paper.url
    return payload


def from_payload(payload: Mapping[str, Any]) -> Paper:
    """The paper a point's payload holds; StoreError for one without its id (a damaged index:
    it was a bare KeyError 'paper_id' from wherever a paper was read)."""
    if "paper_id" not in payload:
        raise StoreError("a stored point's payload has no paper_id: the index is damaged "
                         "(its payloads lost); ingest again into a fresh index.data_dir or "
                         "index.collection")
    published = payload.get("published")
    return Paper(
        id=payload["paper_id"],
        title=payload.get("title", ""),
        abstract=payload.get("abstract", ""),
        authors=tuple(payload.get("authors") or ()),
        published=date.fromisoformat(published[:10]) if published else None,
        categories=tuple(payload.get("categories") or ()),
        url=payload.get("url"),
    )
