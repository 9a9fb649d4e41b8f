"""BM25 vectors (index/sparse.py): Qdrant's model with the corpus's mean length, an optional
query-term saturation and title weight, and the eval harness's per-dataset mean and index name."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from papersearch.corpus.paper import Paper
from papersearch.evaluation.harness import corpus_digest, index_name, mean_words
from papersearch.index.edge import EdgeStore
from papersearch.index.query import SearchRequest
from papersearch.index.schema import CollectionSpec
from papersearch.index.sparse import Bm25Encoder, SparseVector, document_text
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Bm25Tokenizer, IndexSettings
from tests.conftest import benchmark

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
    with pytest.raises(ValueError, match="BM25 needs avg_len > 0, query_k3 >= 0"):
        Bm25Encoder(avg_len, k3)
    with pytest.raises(ValueError, match="title_weight >= 1"):
        Bm25Encoder(title_weight=0)


def test_mean_words_of_a_corpus() -> None:
    papers = [Paper(id="a", title="Two words", abstract="and three more"),
              Paper(id="b", title="One", abstract="")]
    assert mean_words(papers) == pytest.approx(((2 + 3) + 1) / 2)
    with pytest.raises(ValueError, match="empty corpus"):
        mean_words([])


PAPER = Paper(id="p", title="Register allocation",
              abstract="Graph colouring assigns variables to machine registers in compilers.")


def _weights(vector: SparseVector, words: str) -> list[float]:
    by_term = dict(zip(vector.indices, vector.values, strict=True))
    return [by_term[t] for t in Bm25Encoder().query(words).indices]


def test_title_weight_1_is_the_papers_text_as_before() -> None:
    assert document_text(PAPER) == document_text(PAPER, 1) == PAPER.text
    for encoder in (Bm25Encoder(avg_len=12.0), Bm25Encoder(avg_len=12.0, title_weight=1)):
        assert encoder.papers([PAPER]) == [Bm25Encoder(avg_len=12.0).document(PAPER.text)]


def test_title_weight_repeats_the_title_for_bm25() -> None:
    assert document_text(PAPER, 3) == ("Register allocation. Register allocation. "
                                       "Register allocation. " + PAPER.abstract)
    once = Bm25Encoder(avg_len=12.0).papers([PAPER])[0]
    thrice = Bm25Encoder(avg_len=12.0, title_weight=3).papers([PAPER])[0]
    assert set(thrice.indices) == set(once.indices)  # the same terms, weighed differently
    title, body = "allocation", "colouring compilers"  # "register" is in both
    assert all(a > b for a, b in zip(_weights(thrice, title), _weights(once, title), strict=True))
    assert all(a < b for a, b in zip(_weights(thrice, body), _weights(once, body), strict=True))
    assert max(_weights(thrice, title)) > max(_weights(thrice, body))
    # the title said three times, once as the abstract: the BM25 text the mean length counts
    no_title = Paper(id="q", title="", abstract=PAPER.abstract)
    assert document_text(no_title, 3) == no_title.text  # nothing to repeat
    title_only = Paper(id="t", title="Register allocation", abstract="")
    assert document_text(title_only, 2) == "Register allocation. Register allocation"
    with pytest.raises(ValueError, match="title weight must be >= 1"):
        document_text(PAPER, 0)


def test_the_retriever_stores_title_weighted_vectors(tmp_path: Path) -> None:
    """Ingestion and the gateway write through Retriever.upsert_program: the BM25 vectors the
    embedded index then holds follow index.bm25_title_weight (queries do not)."""
    vector = np.zeros((1, 4), dtype=np.float32)
    vector[0, 0] = 1.0
    stored = []
    for weight in (1, 3):
        settings = IndexSettings(data_dir=tmp_path / f"title{weight}", bm25_avg_len=12.0,
                                 bm25_title_weight=weight)
        store = EdgeStore(settings)
        try:
            store.ensure_collection(4, "e" * 64)
            retriever = Retriever(store)
            assert retriever.upsert([PAPER], vector) == 1
            (record,) = store.execute(store.feedback_program(
                SearchRequest(mode="hybrid", dense=vector[0],
                              sparse=retriever.bm25.query(PAPER.title), limit=1)))
        finally:
            store.close()
        assert record.sparse is not None
        (expected,) = Bm25Encoder(12.0, title_weight=weight).papers([PAPER])
        assert dict(zip(record.sparse.indices, record.sparse.values, strict=True)) == \
            pytest.approx(dict(zip(expected.indices, expected.values, strict=True)))
        assert retriever.bm25.query(PAPER.title) == Bm25Encoder(12.0).query(PAPER.title)
        stored.append(record.sparse)
    assert stored[0] != stored[1]


def test_mean_words_counts_the_repeated_title() -> None:
    papers = [Paper(id="a", title="Two words", abstract="and three more"),
              Paper(id="b", title="", abstract="four words right here")]
    assert mean_words(papers, 1) == mean_words(papers) == pytest.approx((5 + 4) / 2)
    assert mean_words(papers, 3) == pytest.approx((2 * 3 + 3 + 4) / 2)


def test_eval_index_name_carries_numerics_and_title_weight() -> None:
    """One eval collection per encoder numerics (vectors made with fp32, int8 alone or int8 in
    batches differ) and BM25 document weights; the title weight named only when not 1."""
    sha, corpus = "c0a025ec412e" + "0" * 52, "9f86d081" + "0" * 56
    assert (index_name("cacm", corpus, sha, "int8", 53.3)
            == "cacm-9f86d081-c0a025ec412e-int8-bm25len53.3")
    assert index_name("cacm", corpus, sha, "int8", 53.3, 1) == index_name(
        "cacm", corpus, sha, "int8", 53.3)
    assert index_name("cacm", corpus, sha, "fp32", 53.3, 2).endswith("-fp32-bm25len53.3-title2")
    assert len({index_name("cacm", corpus, sha, "int8", 53.3, w) for w in (1, 2, 3)}) == 3
    assert len({index_name("cacm", corpus, sha, n, 53.3)
                for n in ("fp32", "int8", "int8-batched")}) == 3


def test_eval_index_name_carries_a_layout_other_than_the_default() -> None:
    """An existing shard keeps the layout it was built with: `eval` with int8 quantization
    asked for reused the float32 collection and measured float32."""
    sha, corpus = "c0a025ec412e" + "0" * 52, "9f86d081" + "0" * 56
    plain = index_name("cacm", corpus, sha, "int8", 53.3)
    default = CollectionSpec.of(IndexSettings(), 384)
    assert index_name("cacm", corpus, sha, "int8", 53.3, layout=default) == plain
    int8 = CollectionSpec.of(IndexSettings(quantization="int8"), 384)
    assert index_name("cacm", corpus, sha, "int8", 53.3, layout=int8) == plain + "-int8-m16-ef100"
    wider = CollectionSpec.of(IndexSettings(hnsw_m=32, on_disk_vectors=True), 384)
    assert index_name("cacm", corpus, sha, "int8", 53.3, layout=wider).endswith(
        "-none-m32-ef100-diskvectors")


def test_an_edited_corpus_gets_another_eval_collection() -> None:
    """Ingest adds missing ids only: a corpus whose abstracts were edited or papers removed,
    with the same mean length, reused the old collection (old texts, removed papers found)."""
    papers = [Paper(id="a", title="Two words", abstract="and three more"),
              Paper(id="b", title="", abstract="four words right here")]
    edited = [papers[0], Paper(id="b", title="", abstract="four words right there")]
    assert mean_words(edited) == mean_words(papers)
    digests = {corpus_digest(p) for p in (papers, edited, papers[:1], papers[::-1])}
    assert len(digests) == 4 and corpus_digest(list(papers)) in digests


def test_a_decomposed_accent_in_a_query_matches_the_stored_text() -> None:
    """Stored texts are NFC (clean_text); a query typed or pasted with decomposed accents made
    other BM25 terms and matched none of them."""
    import unicodedata

    encoder = Bm25Encoder(avg_len=10.0)
    text = "na\u00efve caf\u00e9 r\u00e9sum\u00e9"
    stored = set(encoder.document(text).indices)
    for k3 in (0.0, 1.5):
        query = Bm25Encoder(avg_len=10.0, query_k3=k3).query(unicodedata.normalize("NFD", text))
        assert set(query.indices) == stored


def test_bm25_params_reads_the_engines_own_document_length() -> None:
    # benchmarks/bm25_params.py compares the mean length in whitespace words (what
    # index.bm25_avg_len counts) with the engine's tokens: stopwords dropped, repeats counted
    bm25_params = benchmark("bm25_params")
    assert bm25_params.engine_length(TEXT) == pytest.approx(5.0)  # "of", "for" dropped
    assert bm25_params.engine_length("retrieval retrieval") == pytest.approx(2.0)  # tf 2 only
    assert bm25_params.engine_length("") == 0.0


@pytest.mark.parametrize(("stored", "typed"), [
    ("E\ufb03cient \ufb01ne-tuning", "efficient fine-tuning"),  # ligatures from PDF text
    ("\uff22\uff25\uff32\uff34 pretraining", "BERT pretraining"),  # full-width letters
])
def test_compatibility_characters_match_what_a_user_types(stored: str, typed: str) -> None:
    """Documents and queries are read in their NFKC form (corpus/paper.model_text): a stored
    ligature or full-width word made BM25 terms no typed query holds."""
    encoder = Bm25Encoder(avg_len=10.0)
    assert set(encoder.query(typed).indices) == set(encoder.document(stored).indices)
    assert set(encoder.query(stored).indices) == set(encoder.document(typed).indices)


def test_eval_index_name_carries_a_tokenizer_other_than_word() -> None:
    sha, corpus = "c0a025ec412e" + "0" * 52, "9f86d081" + "0" * 56
    plain = index_name("cacm", corpus, sha, "int8", 53.3)
    assert index_name("cacm", corpus, sha, "int8", 53.3, tokenizer="word") == plain
    assert index_name("cacm", corpus, sha, "int8", 53.3, tokenizer="folded") == plain + "-folded"


def _shared(tokenizer: Bm25Tokenizer, query: str, document: str) -> int:
    encoder = Bm25Encoder(tokenizer=tokenizer)
    return len(set(encoder.query(query).indices) & set(encoder.document(document).indices))


def test_the_tokenizers_words() -> None:
    """word: a query spells a word as the paper does, accents included, and a run of Chinese
    is one word; folded: accents and ligatures folded; multilingual: folded, and Chinese
    split into words. English words (stemmed, stopwords dropped) the same in all three."""
    for tokenizer in get_args(Bm25Tokenizer):
        assert _shared(tokenizer, "transformers retrieval", "Transformer-based retrieving") == 2
        assert not Bm25Encoder(tokenizer=tokenizer).query("the of and").indices
    assert _shared("word", "naive Schrodinger", "A naïve Schrödinger solver") == 0
    for tokenizer in ("folded", "multilingual"):
        assert _shared(tokenizer, "naive Schrodinger", "A naïve Schrödinger solver") == 2
        assert _shared(tokenizer, "STRASSEN iklim", "Straßen und İklim") == 2
    title = "基于注意力机制的神经机器翻译"  # neural machine translation based on attention
    assert _shared("word", "注意力机制", title) == _shared("folded", "注意力机制", title) == 0
    assert _shared("multilingual", "注意力机制", title) >= 2
