"""Export a SPLADE masked-language model to ONNX with its pooling inside the graph.

The graph takes ``input_ids``/``attention_mask``/``token_type_ids`` (dynamic batch and sequence
axes) and returns one vocabulary-sized weight vector per text: the maximum over its tokens of
``log(1 + relu(MLM logits))``, padding left out. fp32 only. The ONNX outputs must match torch
(max |diff| <= 1e-4) before the metadata file is written; the directory is built beside its
final place and renamed into it, so a directory with ``splade.json`` is a finished export and
one exported from the same source and options is reused. encoder/splade.py runs it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from papersearch.durable import exclusive, remove_stale, staged
from papersearch.encoder.splade import GRAPH_FILE, META_FILE, TOKENIZER_FILE, SpladeEncoder
from papersearch.modelbuild.export import (
    FP32_MAX_ABS_DIFF,
    OPSET,
    ParityError,
    source_digest,
    terminal_bars_only,
)
from papersearch.modelbuild.sources import ResolvedSource

EXPORT_FORMAT = 1  # bump when the graph changes: invalidates cached exports
_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class SpladeGraph(torch.nn.Module):
    """Masked LM + SPLADE max pooling, exported as one graph."""

    def __init__(self, masked_lm: torch.nn.Module) -> None:
        super().__init__()
        self.masked_lm = masked_lm

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        logits = self.masked_lm(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits
        # log(1 + relu(x)) is monotone: pooling the logits first gives the same weights with
        # one pass over the (batch, tokens, vocabulary) tensor instead of four (README:
        # Results, Figures behind the limits).
        padding = attention_mask.unsqueeze(-1) == 0
        pooled = logits.masked_fill(padding, float("-inf")).amax(dim=1)
        return torch.log1p(torch.relu(pooled))


def export_splade(
    source: ResolvedSource, exports: Path, max_length: int, parity_texts: Sequence[str]
) -> Path:
    """The export of ``source`` under ``exports`` (made unless one exists); its directory."""
    if not source.is_local:
        raise ValueError(f"{source.spec}: export a local or pypi: source")
    fingerprint = _fingerprint(source, max_length)
    target = exports / f"splade-{fingerprint[:12]}"
    if (target / META_FILE).is_file():
        return target
    if len(parity_texts) < 2:
        raise ValueError("the parity check needs at least 2 texts")
    with exclusive(exports / f".{target.name}.lock", f"export of {target.name}"):
        remove_stale(exports, target.name)  # an export of it killed mid-way
        if not (target / META_FILE).is_file():  # not made by the lock's previous holder
            with staged(target, replace=True) as staging:
                _export_into(source, staging, max_length, fingerprint, parity_texts)
    return target


def load_torch(location: str) -> tuple[SpladeGraph, Any]:
    """The torch graph (eval mode, eager attention) and its Hugging Face tokenizer."""
    terminal_bars_only()
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    masked_lm = AutoModelForMaskedLM.from_pretrained(
        location, local_files_only=True, attn_implementation="eager"
    )
    return SpladeGraph(masked_lm).eval(), tokenizer


def torch_weights(
    graph: SpladeGraph, tokenizer: Any, texts: Sequence[str], max_length: int
) -> np.ndarray:
    """Reference (texts, vocabulary) weights from torch, one padded batch."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        return graph(*(batch[n] for n in _NAMES)).numpy().astype(np.float32)


def _fingerprint(source: ResolvedSource, max_length: int) -> str:
    digest = hashlib.sha256(json.dumps([source.spec, max_length, OPSET, EXPORT_FORMAT]).encode())
    digest.update(source_digest(Path(source.location)).encode())
    return digest.hexdigest()


def _export_into(source: ResolvedSource, target: Path, max_length: int, fingerprint: str,
                 texts: Sequence[str]) -> None:
    graph, tokenizer = load_torch(source.location)
    tokenizer.backend_tokenizer.save(str(target / TOKENIZER_FILE))
    example = tokenizer(["a short example", "a somewhat longer example text"], padding=True,
                        return_tensors="pt", return_token_type_ids=True)
    axes = {n: {0: "batch", 1: "sequence"} for n in _NAMES} | {"weights": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter; the parity check below is the judge
        torch.onnx.export(graph, tuple(example[n] for n in _NAMES), str(target / GRAPH_FILE),
                          input_names=_NAMES, output_names=["weights"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    config: Any = graph.masked_lm.config  # a transformers config: dynamic attributes
    vocab_size = int(config.vocab_size)
    meta: dict[str, Any] = {"source": source.spec, "fingerprint": fingerprint,
                            "max_length": max_length, "vocab_size": vocab_size}
    (target / META_FILE).write_text(json.dumps(meta))  # the runtime reads it for the check
    reference = torch_weights(graph, tokenizer, texts, max_length)
    exported = SpladeEncoder(target).weights(texts)
    max_diff = float(np.abs(exported - reference).max())
    if not max_diff <= FP32_MAX_ABS_DIFF:  # NaN too; the caller removes the unfinished dir
        raise ParityError(f"{source.spec}: SPLADE ONNX vs torch max |diff| {max_diff:.2e}")
    meta["parity"] = {"fp32_max_abs_diff": max_diff, "texts": len(texts)}
    (target / META_FILE).write_text(json.dumps(meta, indent=2))
