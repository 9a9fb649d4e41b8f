"""Shared onnxruntime + tokenizers machinery. Never imports torch."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer, normalizers

from papersearch.models.manifest import (
    DEFAULT_ENCODING,
    ENCODING_KEY,
    ENCODING_RECORDED_SINCE,
    FP32_FILE,
    INT8_FILE,
    MANIFEST,
    TOKENIZER_FILE,
    Manifest,
    ModelCorrupt,
    ProviderUnavailable,
    checked_file,
    read_manifest,
)
from papersearch.models.parity import ModelInput, SelfCheck, agreement, cpu_int8_flags
from papersearch.settings import DEFAULT_INT8_SCHEME, ModelSettings, Precision

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


class InvalidInput(ValueError):
    """Input texts a model cannot process (empty, not a string)."""


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    precision: Precision = "int8"
    intra_op_threads: int = 1
    batch_size: int = 32
    providers: tuple[str, ...] = (CPU_PROVIDER,)  # onnxruntime execution providers, in order
    int8_alone: bool = True  # an int8 graph runs one text per call (see OnnxModel.run_sorted)


def check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise InvalidInput(f"{what}: expected a sequence of strings, got a single string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"{what}[{i}]: expected str, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInput(f"{what}[{i}] is empty")


def read_tokenizer(path: str) -> Tokenizer:
    """An export's tokenizer, unpadded, reading texts in their NFKC form first (as BM25 does:
    corpus/paper.model_text): its own normaliser left ligatures and full-width letters as
    [UNK]. Texts without compatibility characters, every judged set's and the sample's, give
    the same tokens."""
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_padding()
    own = tokenizer.normalizer
    tokenizer.normalizer = (normalizers.NFKC() if own is None
                            else normalizers.Sequence([normalizers.NFKC(), own]))
    return tokenizer


class OnnxModel:
    """An exported model version: ONNX session, tokenizer and manifest.

    Asked for int8, it first checks the int8 graph against the manifest's fp32 reference
    outputs on this CPU and serves fp32 if they disagree (``precision`` says which runs).
    """

    def __init__(
        self, version_dir: Path, options: RuntimeOptions, *, verify_int8: bool = True
    ) -> None:
        self.manifest: Manifest = read_manifest(version_dir)
        self.options = options
        self.version_dir = version_dir
        tokenizer_file = str(checked_file(version_dir, self.manifest, TOKENIZER_FILE))
        self.tokenizer = read_tokenizer(tokenizer_file)
        # A reranker's (query, passage) pairs are cut as in its training (modelbuild/
        # training.py): the query to query_tokens(max_length), then only the passage (cutting
        # both evenly, longest_first scored long queries on other inputs than it learnt on).
        self._queries: Tokenizer | None = None  # a reranker's query, measured uncut
        if self.manifest.kind == "reranker":
            self._queries = read_tokenizer(tokenizer_file)
            self._queries.no_truncation()
        self.tokenizer.enable_truncation(
            self.manifest.max_length,
            strategy="only_second" if self._queries is not None else "longest_first")
        self.precision: Precision = options.precision
        self.int8_agreement: float | None = None  # the self-check's result on this CPU
        self._open(options.precision)
        if options.precision == "int8" and verify_int8:
            self._verify_int8()

    @staticmethod
    def runtime_options(models: ModelSettings, providers: tuple[str, ...] = (CPU_PROVIDER,)
                        ) -> RuntimeOptions:
        """The runtime options the model settings ask for."""
        return RuntimeOptions(models.precision, models.intra_op_threads, models.batch_size,
                              providers, models.int8_alone)

    @property
    def numerics(self) -> str:
        """How this runtime computes outputs beyond the graph's identity (the manifest's digest):
        ``fp32``, ``int8`` (one row per call) or ``int8-batched<batch size>`` (a row's output
        moves with its batch-mates, so with how many there are: run_sorted), with the int8
        scheme's name after it where the export used another than the default. Stored vectors
        made one way are not the other ways'."""
        if self.precision == "fp32":
            return "fp32"
        calls = ("int8" if self.options.int8_alone
                 else f"int8-batched{self.options.batch_size}")
        scheme = self.manifest.quantization.get("scheme", DEFAULT_INT8_SCHEME)
        return calls if scheme == DEFAULT_INT8_SCHEME else f"{calls}-{scheme}"

    def _open(self, precision: Precision) -> None:
        graph = checked_file(self.version_dir, self.manifest,
                             INT8_FILE if precision == "int8" else FP32_FILE)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = self.options.intra_op_threads
        session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        wanted = self.options.providers[0]
        if wanted not in ort.get_available_providers():
            raise ProviderUnavailable(
                f"onnxruntime {ort.__version__} here has no {wanted} (it offers "
                f"{', '.join(ort.get_available_providers())}): install the onnxruntime build "
                f"that has it (onnxruntime-gpu for CUDA) in place of onnxruntime")
        self.session = ort.InferenceSession(
            str(graph), sess_options=session_options, providers=list(self.options.providers)
        )
        if wanted not in self.session.get_providers():  # e.g. CUDA libraries not found
            raise ProviderUnavailable(
                f"onnxruntime could not start {wanted} for {graph.name} (the session got "
                f"{', '.join(self.session.get_providers())}); its log above says why")
        width = self.session.get_outputs()[0].shape[-1]
        if self.manifest.dim is not None and isinstance(width, int) and width != self.manifest.dim:
            raise ModelCorrupt(  # was "cannot reshape array", naming no file
                f"{self.version_dir / MANIFEST}: dim {self.manifest.dim}, where {graph.name} "
                f"gives {width} numbers a text (the manifest edited?): delete "
                f"{self.version_dir} and export the model again")
        if self.manifest.kind == "embedder":
            self._check_encoding(graph)
        self._input_names = {i.name for i in self.session.get_inputs()}
        self.precision = precision

    def _check_encoding(self, graph: Path) -> None:
        """ModelCorrupt where the manifest's token limit or prefixes are not the ones the
        graph was exported with (its metadata; none recorded: the default, for an export
        since encodings were recorded): an edited manifest fed queries otherwise than the
        stored papers, with no error, and `models export` found it current."""
        recorded = self.session.get_modelmeta().custom_metadata_map.get(ENCODING_KEY)
        if recorded is None and self.manifest.created < ENCODING_RECORDED_SINCE:
            return  # exported before: a non-default encoding was not recorded then
        try:
            exported = DEFAULT_ENCODING if recorded is None else json.loads(recorded)
        except ValueError:
            exported = {"unreadable": recorded}
        if exported != self.manifest.encoding:
            raise ModelCorrupt(
                f"{self.version_dir / MANIFEST}: encoding {self.manifest.encoding} where "
                f"{graph.name} was exported with {exported} (the manifest edited?): delete "
                f"{self.version_dir} and export the model again")

    def _verify_int8(self) -> None:
        """Serve int8 only if it agrees with the stored fp32 outputs on this CPU."""
        about = {"model": self.manifest.name, "version": self.manifest.version,
                 "cpu_flags": ",".join(cpu_int8_flags()) or "none"}
        if not self.manifest.selfcheck:
            log.warning("int8 not verifiable (the export has no self-check): serving fp32",
                        extra=about)
            self._open("fp32")
            return
        check = SelfCheck.from_dict(self.manifest.selfcheck)
        self.int8_agreement = round(
            agreement(self.manifest.kind, check.reference, self.outputs(check.inputs)), 5)
        about |= {"agreement": self.int8_agreement, "threshold": check.threshold}
        if not self.int8_agreement >= check.threshold:
            log.warning("int8 disagrees with fp32 on this CPU: serving fp32", extra=about)
            self._open("fp32")
        else:
            log.info("int8 self-check passed", extra=about)

    def outputs(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        """Raw graph outputs, one row per input (texts, or (query, passage) pairs), as given:
        no prefixes added. What the parity checks and the self-check compare."""
        width = self.manifest.dim or 1
        return self.run_sorted(self.tokenize(inputs), width, lambda x: x.reshape(len(x), width))

    def tokenize(self, inputs: Sequence[ModelInput]) -> list[Encoding]:
        """Token ids of texts, or of (query, passage) pairs with the query cut first to
        ``query_tokens`` of max_length: the passage alone is cut to fit."""
        if self._queries is None:
            return self.tokenizer.encode_batch(list(inputs))
        pairs = [pair for pair in inputs if isinstance(pair, tuple | list) and len(pair) == 2]
        if len(pairs) != len(inputs):
            raise InvalidInput("a reranker scores (query, passage) pairs, not single texts")
        # each query cut once: a search's pairs share one (its window of up to 30 passages)
        fitted = {query: self._fit(query) for query, _ in pairs}
        return self.tokenizer.encode_batch([(fitted[query], passage) for query, passage in pairs])

    def _fit(self, query: str) -> str:
        assert self._queries is not None
        offsets = self._queries.encode(query, add_special_tokens=False).offsets
        return cut_query(query, offsets, query_tokens(self.manifest.max_length))


    def run_sorted(
        self, encodings: Sequence[Encoding], width: int, post: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Run encodings in length-sorted batches; rows come back in input order.

        An int8 graph quantizes its activations with one dynamic range per call, padding
        included, so a row's output would move with the rows it shares a call with (a served
        query's vector with other users' queries). With ``int8_alone`` each row runs alone and
        its output depends on its own text only; fp32 rows do not interact and run batched.
        """
        out = np.empty((len(encodings), width), dtype=np.float32)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        alone = self.precision == "int8" and self.options.int8_alone
        step = 1 if alone else self.options.batch_size
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            (result,) = self.session.run(
                None, padded_feeds([encodings[i] for i in rows], self._input_names))
            out[rows] = post(np.asarray(result, dtype=np.float32)).reshape(len(rows), width)
        return out


def cut_query(query: str, offsets: Sequence[tuple[int, int]], tokens: int) -> str:
    """``query`` up to the end of its ``tokens``-th token (``offsets``: its tokens' character
    spans, without special tokens): how training and serving cut a reranker's query."""
    return query if len(offsets) <= tokens else query[:offsets[tokens - 1][1]]


def query_tokens(max_length: int) -> int:
    """A reranker query's share of a pair's ``max_length`` tokens, in training and serving:
    all but 32 (half where that is more), so that the passage keeps room."""
    return max(max_length // 2, max_length - 32)


def padded_feeds(encodings: Sequence[Encoding], inputs: Container[str]) -> dict[str, np.ndarray]:
    """A BERT-style graph's inputs for a batch, those of ``inputs`` (the graph's: a
    DistilBERT-based one takes no token types) among ids, attention mask and token types,
    padded with zeros to the longest encoding."""
    shape = (len(encodings), max(len(e.ids) for e in encodings))
    ids = np.zeros(shape, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    types = np.zeros(shape, dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: feed for name, feed in feeds.items() if name in inputs}
