"""`papersearch eval`: index a dataset, run its queries in each mode, score the rankings.

The dataset's index lives in its own embedded (or server) collection named after the dataset
and the embedder, so it is built once and reused. Ranking uses the same functions as serving:
Retriever.search for the first stage, Reranker.score and rerank_hits for the rerank stage.
Each mode's report carries its wall time per query: query encoding (in batches) and searches,
and the reranker's scoring for the +rerank modes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import EvalDataset, check_judged_documents
from papersearch.evaluation.metrics import Report, evaluate
from papersearch.evaluation.modes import EvalMode, FirstStageMode, first_stage_of, search_of
from papersearch.index.errors import StoreError
from papersearch.index.factory import open_store
from papersearch.index.query import Hit, Mode
from papersearch.index.schema import CollectionSpec
from papersearch.index.sparse import document_text
from papersearch.index.store import Store
from papersearch.ingest.pipeline import Ingester
from papersearch.interrupts import Interrupted
from papersearch.paths import FolderRefused, make_folders
from papersearch.pipeline.search import rerank_hits
from papersearch.reranker.runtime import Reranker
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Bm25Tokenizer, IndexSettings, SearchSettings, Settings

log = logging.getLogger(__name__)

DEPTH = 100  # candidates per query: enough for Recall@100


@dataclass(frozen=True, slots=True)
class FirstStage:
    """Per query: the first-stage candidates, and reranker scores for its top window."""

    mode: Mode
    candidates: Mapping[str, Sequence[Hit]]
    rerank_scores: Mapping[str, np.ndarray] | None = None


def open_dataset_index(dataset: EvalDataset, settings: Settings, encoder: Encoder) -> Store:
    """The dataset's collection, ingested if needed (resumable, idempotent). BM25 normalises
    by the dataset's own mean words per paper, as a user sets ``index.bm25_avg_len`` for theirs;
    the collection's name carries it, since its documents' weights depend on it, and the
    encoder's numerics (fp32, int8 one text per call or in batches), since its vectors do."""
    title_weight = settings.index.bm25_title_weight
    papers = list(dataset.papers())  # read once: its mean, its digest and the ingest
    check_judged_documents(dataset, {paper.id for paper in papers})
    avg_len = round(mean_words(papers, title_weight), 1)
    name = index_name(dataset.name, corpus_digest(papers), encoder.sha256,
                      encoder.numerics, avg_len, title_weight,
                      CollectionSpec.of(settings.index, encoder.dim),
                      settings.index.bm25_tokenizer)
    place = ({"data_dir": _eval_root(settings) / name, "collection": "papers"}
             if settings.index.backend == "embedded" else {"collection": f"eval-{name}"})
    index = settings.index.model_copy(update={**place, "bm25_avg_len": avg_len})
    store = open_store(index)
    ingester = Ingester(store, encoder, settings.models.batch_size)
    try:
        written, present = ingester.ingest(papers, progress=True)
    except BaseException as error:
        store.close()
        if isinstance(error, KeyboardInterrupt):
            raise Interrupted(f"eval: {ingester.written:,} papers written to the {dataset.name} "
                              "index by this run; run again to resume") from None
        raise
    log.info("eval index ready", extra={"dataset": dataset.name, "upserted": written,
                                        "present": present, "points": store.count()})
    return store


def _eval_root(settings: Settings) -> Path:
    """``settings.eval_dir``, made: one this process may not write in is said as that
    setting's (the index's own message named index.data_dir, which eval does not use)."""
    setting = "eval_dir, PAPERSEARCH_EVAL_DIR"
    try:
        make_folders(settings.eval_dir, setting)
    except FolderRefused as error:
        raise StoreError(f"eval collections' folder {settings.eval_dir} cannot be made: "
                         f"{error}") from None
    if not os.access(settings.eval_dir, os.W_OK | os.X_OK):
        raise StoreError(f"eval collections' folder {settings.eval_dir} is not this process's "
                         f"to write in ({setting}: a folder this process may write)")
    return settings.eval_dir


def index_name(dataset: str, corpus: str, encoder_sha256: str, numerics: str, avg_len: float,
               title_weight: int = 1, layout: CollectionSpec | None = None,
               tokenizer: Bm25Tokenizer = "word") -> str:
    """A dataset's eval collection: one per corpus content (``corpus_digest``: ingest adds
    missing ids only, so an edited or shortened corpus would keep its old texts and its
    removed papers), encoder, its numerics (OnnxModel.numerics), set of document BM25
    weights and collection layout (an existing shard keeps the layout it was built with: int8
    quantization asked for later would measure float32). The title weight, the BM25 tokenizer
    and the layout are named only where they are not the defaults."""
    name = f"{dataset}-{corpus[:8]}-{encoder_sha256[:12]}-{numerics}-bm25len{avg_len:g}"
    if title_weight != 1:
        name += f"-title{title_weight}"
    if tokenizer != "word":
        name += f"-{tokenizer}"
    if layout is not None and layout != CollectionSpec.of(IndexSettings(), layout.dim):
        name += (f"-{layout.quantization}-m{layout.hnsw_m}-ef{layout.hnsw_ef_construct}"
                 + "-diskvectors" * layout.on_disk_vectors
                 + "-diskpayload" * layout.on_disk_payload)
    return name


def corpus_digest(papers: Iterable[Paper]) -> str:
    """sha256 of every paper's id and indexed fields, in order."""
    digest = hashlib.sha256()
    for paper in papers:
        fields = (paper.id, paper.title, paper.abstract, str(paper.published or ""),
                  *paper.authors, "\x1e", *paper.categories, paper.url or "")
        digest.update("\x1f".join(fields).encode() + b"\n")
    return digest.hexdigest()


def mean_words(papers: Iterable[Paper], title_weight: int = 1) -> float:
    """Mean whitespace-separated words per paper in the text BM25 weighs (title + abstract,
    the title ``title_weight`` times: index/sparse.document_text)."""
    words = count = 0
    for paper in papers:
        words += len(document_text(paper, title_weight).split())
        count += 1
    if count == 0:
        raise ValueError("an empty corpus has no mean length")
    return words / count


def first_stage(
    dataset: EvalDataset, retriever: Retriever, encoder: Encoder, stage: FirstStageMode
) -> dict[str, list[Hit]]:
    mode, feedback = search_of(stage)
    ids = list(dataset.queries)
    texts = [dataset.queries[q] for q in ids]
    vectors = encoder.encode_queries(texts) if mode != "sparse" else [None] * len(ids)
    return {
        qid: retriever.search(text, vector, mode=mode, limit=DEPTH, feedback=feedback)
        for qid, text, vector in tqdm(zip(ids, texts, vectors, strict=True), total=len(ids),
                                      desc=f"{dataset.name} {stage}", unit="query",
                                      disable=None)
    }


def score_windows(
    dataset: EvalDataset, candidates: Mapping[str, Sequence[Hit]], reranker: Reranker, top_n: int
) -> dict[str, np.ndarray]:
    return {
        qid: reranker.score(dataset.queries[qid], [h.paper.text for h in hits[:top_n]])
        if hits else np.zeros(0, dtype=np.float32)
        for qid, hits in tqdm(candidates.items(), desc=f"{dataset.name} rerank", unit="query",
                              disable=None)
    }


def ranking(stage: FirstStage, search: SearchSettings) -> dict[str, list[str]]:
    """Ranked paper ids per query: reranked and fused when scores are present."""
    if stage.rerank_scores is None:
        return {q: [h.paper.id for h in hits] for q, hits in stage.candidates.items()}
    return {
        q: [h.paper.id for h in rerank_hits(
            hits, stage.rerank_scores[q], stage.mode, DEPTH, search
        )]
        for q, hits in stage.candidates.items()
    }


def run_eval(
    dataset: EvalDataset,
    modes: Sequence[EvalMode],
    settings: Settings,
    encoder: Encoder,
    reranker: Reranker | None,
) -> dict[str, Report]:
    store = open_dataset_index(dataset, settings, encoder)
    try:
        retriever = Retriever(store)
        reports: dict[str, Report] = {}
        stages: dict[str, dict[str, list[Hit]]] = {}
        seconds: dict[str, float] = {}  # per first stage: encoding (in batches) and searches
        for mode in modes:
            base = first_stage_of(mode)
            if base not in stages:
                started = time.perf_counter()
                stages[base] = first_stage(dataset, retriever, encoder, base)
                seconds[base] = time.perf_counter() - started
            stage = FirstStage(search_of(base)[0], stages[base])
            spent = seconds[base]
            if mode.endswith("+rerank"):
                if reranker is None:
                    raise ValueError(f"mode {mode} needs a reranker")
                started = time.perf_counter()
                windows = score_windows(dataset, stage.candidates, reranker,
                                        settings.search.rerank_top_n)
                spent += time.perf_counter() - started
                stage = FirstStage(stage.mode, stage.candidates, windows)
            report = evaluate(ranking(stage, settings.search), dataset.qrels)
            per_query = 1000 * spent / max(len(dataset.queries), 1)
            reports[mode] = replace(report, ms_per_query=round(per_query, 2))
        return reports
    finally:
        store.close()
