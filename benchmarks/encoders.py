"""Encoder throughput: torch eager vs onnxruntime fp32 and int8, embedder and reranker.

    python benchmarks/encoders.py --threads 1 --batch-sizes 1 32 > encoders.json

Prints one JSON document on stdout; progress goes to stderr. Every variant of a model gets the
same inputs (real abstracts from the sample corpus; (title, abstract) pairs for the reranker) in
the same batches, runs on the same number of threads, and is timed including tokenisation.
Batches are formed the way the runtime forms them: the timed texts sorted by token count, then
cut into consecutive batches, each padded to its longest member; the int8 graph, as served
(``models.int8_alone``), then runs each text of a batch in its own call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
import transformers
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.logs import configure_logging
from papersearch.modelbuild.export import CrossEncoderGraph, EmbedderGraph
from papersearch.modelbuild.sources import resolve_source
from papersearch.models.manifest import Manifest, ModelKind, ModelNotFound, model_dir, read_manifest
from papersearch.models.runtime import OnnxModel, Precision, RuntimeOptions
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings

log = logging.getLogger("benchmarks.encoders")

Input = str | tuple[str, str]
Batch = list[Input]
Runner = Callable[[Batch], object]

KINDS: tuple[ModelKind, ...] = ("embedder", "reranker")
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
DEFAULT_BATCH_SIZES = (1, 32)
DEFAULT_TEXTS = {1: 64}
DEFAULT_TEXTS_OTHERWISE = 256
ORDER = "length-sorted: timed texts sorted by token count, then consecutive batches"
WARMUP = "one untimed pass over the shortest and the longest batch per variant"


def parse_args(argv: Sequence[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=settings.models.intra_op_threads,
        help="onnxruntime intra-op and torch threads (default: models.intra_op_threads; "
        "0: all cores)",
    )
    parser.add_argument(
        "--texts",
        type=int,
        help=f"texts timed per variant and batch size (default: 64 at batch 1, "
        f"{DEFAULT_TEXTS_OTHERWISE} otherwise)",
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES), metavar="N",
        help="batch sizes to time (default: 1 32)",
    )
    args = parser.parse_args(argv)
    if args.threads < 0 or (args.texts is not None and args.texts < 1):
        parser.error("--threads must be >= 0 and --texts >= 1")
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be >= 1")
    return args


def load_papers(corpus_dir: Path, count: int) -> list[Paper]:
    """The first ``count`` papers with both a title and an abstract."""
    complete = (p for p in read_corpus(corpus_dir) if p.title and p.abstract)
    papers = list(itertools.islice(complete, count))
    if len(papers) < count:
        raise SystemExit(f"{corpus_dir}: {len(papers)} papers with a title and abstract, "
                         f"{count} needed")
    return papers


def model_inputs(kind: ModelKind, papers: Sequence[Paper]) -> list[Input]:
    if kind == "embedder":
        return [p.text for p in papers]
    return [(p.title, p.abstract) for p in papers]


def load_onnx(path: Path, kind: ModelKind, options: RuntimeOptions) -> tuple[OnnxModel, Runner]:
    """The runtime class serving uses, and a call that embeds or scores one batch with it."""
    if kind == "embedder":
        encoder = Encoder(path, options)
        return encoder, lambda batch: encoder.encode(batch, "document")
    reranker = Reranker(path, options)
    return reranker, lambda batch: reranker.score_pairs(batch)


def load_torch(manifest: Manifest, cache_dir: Path) -> tuple[torch.nn.Module, Any]:
    """The manifest's source weights as the same torch module that was exported, in fp32."""
    source = resolve_source(manifest.source, cache_dir)
    kwargs: dict[str, Any] = {"local_files_only": source.is_local}
    tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    model: torch.nn.Module
    if manifest.kind == "embedder":
        backbone = AutoModel.from_pretrained(source.location, **kwargs)
        model = EmbedderGraph(backbone, manifest.pooling or "mean", manifest.normalize)
    else:
        classifier = AutoModelForSequenceClassification.from_pretrained(source.location, **kwargs)
        model = CrossEncoderGraph(classifier)
    return model.float().eval(), tokenizer


def torch_runner(model: torch.nn.Module, tokenizer: Any, manifest: Manifest) -> Runner:
    """Tokenise like the runtime (pad to longest, truncate to max_length) and run eagerly."""
    options = {"padding": True, "max_length": manifest.max_length, "return_tensors": "pt",
               "return_token_type_ids": True}

    def run(batch: Batch) -> torch.Tensor:
        if manifest.kind == "reranker":
            queries, passages = zip(*batch, strict=True)
            enc = tokenizer(list(queries), list(passages), truncation="only_second", **options)
        else:
            enc = tokenizer([manifest.document_prefix + str(t) for t in batch], truncation=True,
                            **options)
        with torch.no_grad():
            return model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])

    return run


def token_counts(model: OnnxModel, inputs: Sequence[Input]) -> list[int]:
    """Tokens per input after truncation, as the runtime's tokenizer produces them."""
    prefix = model.manifest.document_prefix
    texts = [i if isinstance(i, tuple) else prefix + i for i in inputs]
    return [len(e.ids) for e in model.tokenizer.encode_batch(texts)]


def make_batches(inputs: Sequence[Input], counts: Sequence[int], size: int) -> list[Batch]:
    order = sorted(range(len(inputs)), key=lambda i: counts[i])
    return [[inputs[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


def texts_per_second(runner: Runner, batches: Sequence[Batch]) -> float:
    for batch in (batches[0], batches[-1]):
        runner(batch)
    started = time.perf_counter()
    for batch in batches:
        runner(batch)
    elapsed = time.perf_counter() - started
    return sum(len(b) for b in batches) / elapsed


def bench_batch_size(
    runners: dict[str, Runner], inputs: Sequence[Input], counts: Sequence[int], size: int
) -> dict[str, Any]:
    batches = make_batches(inputs, counts, size)
    rates: dict[str, float] = {}
    for variant, runner in runners.items():
        log.info("timing", extra={"variant": variant, "batch_size": size, "texts": len(inputs)})
        rates[variant] = texts_per_second(runner, batches)
    return {
        "texts": len(inputs),
        "batches": len(batches),
        "mean_tokens": round(sum(counts) / len(counts), 1),
        "texts_per_s": {k: round(v, 2) for k, v in rates.items()},
        "ratios": {
            f"ort_{p}/torch": round(rates[f"ort_{p}"] / rates["torch"], 2) for p in PRECISIONS
        },
    }


def bench_model(
    kind: ModelKind, settings: Settings, papers: Sequence[Paper], texts: dict[int, int],
    threads: int,
) -> dict[str, Any]:
    models = settings.models
    name = models.embedder_name if kind == "embedder" else models.reranker_name
    try:
        path = model_dir(models.repository, name)
    except ModelNotFound as error:
        log.warning("model skipped", extra={"model": name, "reason": str(error)})
        return {"name": name, "skipped": str(error)}
    manifest = read_manifest(path)
    log.info("loading", extra={"model": name, "version": manifest.version})
    torch_model, tokenizer = load_torch(manifest, models.cache_dir)
    largest_batch = max(texts)  # every call then is a single session run
    onnx = {p: load_onnx(path, kind, RuntimeOptions(p, threads, largest_batch)) for p in PRECISIONS}
    runners = {"torch": torch_runner(torch_model, tokenizer, manifest)}
    runners |= {f"ort_{p}": run for p, (_, run) in onnx.items()}
    inputs = model_inputs(kind, papers)
    counts = token_counts(onnx["fp32"][0], inputs)
    results = {
        str(size): bench_batch_size(runners, inputs[:n], counts[:n], size)
        for size, n in texts.items()
    }
    return {
        "name": name, "version": manifest.version, "source": manifest.source,
        "max_length": manifest.max_length, "parity": manifest.parity, "results": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings()
    args = parse_args(argv, settings)
    configure_logging(settings.log_level, settings.log_format)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    texts = {b: args.texts or DEFAULT_TEXTS.get(b, DEFAULT_TEXTS_OTHERWISE)
             for b in args.batch_sizes}
    papers = load_papers(settings.corpus_dir, max(texts.values()))
    models = {kind: bench_model(kind, settings, papers, texts, threads) for kind in KINDS}
    report = {
        "threads": threads,
        "order": ORDER,
        "warmup": WARMUP,
        "timed": "tokenisation + inference, fp32 torch under torch.no_grad",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": ort.__version__, "transformers": transformers.__version__},
        "corpus": str(settings.corpus_dir),
        "models": models,
    }
    print(json.dumps(report, indent=2))
    if all("skipped" in model for model in models.values()):  # nothing measured
        print("encoders.py: error: no model to measure: `papersearch models export` makes the "
              "embedder, `papersearch models train-reranker` the reranker", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
