"""`papersearch ingest --ray`: document encoding as Ray Data batch inference.

The driver (this process) reads each corpus with the same readers, skip and duplicate rules as
the one-process path, and leaves out the papers already stored (unless ``update``). Ray Data
encodes the rest: ``map_batches`` over an actor pool of ONNX encoders, each actor loading the
model once (``encoder_pool``): on CPUs, by default as many actors as the nodes' free CPUs
hold; where the cluster has GPUs, by default one actor per GPU, each running the fp32 graph on
onnxruntime's CUDA provider (the workers then need the onnxruntime-gpu build). Vectors stream
back as they are ready, and this process alone writes them, with their BM25 terms, to the
index in batches: one writer, as the embedded engine requires (its shard lives in this
process), and bounded for a Qdrant server. Point ids, resume and update work as in
ingest/pipeline.py: a batch is written only once encoded, and a rerun skips what is stored.
What Ray would otherwise wait on or retry forever, silently (the workers' logs do not reach
this process), ends the run in one line: an encoder no node can hold, no room for one within
``PROBE_TIMEOUT_S``, an actor that keeps dying (``ACTOR_RESTARTS``).
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tqdm import tqdm

from papersearch import interrupts
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.index.errors import EmbedderMismatch
from papersearch.index.store import Store
from papersearch.ingest.pipeline import unstored, write_encoded
from papersearch.local_ray import use_local_ray_env
from papersearch.logs import route_library_logs
from papersearch.models.manifest import (
    FP32_FILE,
    INT8_FILE,
    TOKENIZER_FILE,
    ModelRef,
    ProviderUnavailable,
)
from papersearch.models.runtime import CPU_PROVIDER, CUDA_PROVIDER
from papersearch.retriever.retriever import Retriever
from papersearch.settings import IngestSettings, ModelSettings, Settings

if TYPE_CHECKING:
    from ray.exceptions import RayError

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a probe task placed like an encoder may wait for its CPUs (and GPU) and run: a
# worker's start, its imports and the model files' digests take seconds; longer, the room is
# held by others (Serve replicas) or an autoscaler is still adding a node.
PROBE_TIMEOUT_S = 120.0
# Restarts of an encoder actor whose process died (and retries of its batch), then the run
# stops: Ray Data's default, unbounded, restarted an actor killed on every batch (out of
# memory) for as long as the run was left, with no word of it here.
ACTOR_RESTARTS = 2


def worker_embedder(repository: str, embedder: ModelRef, precision: str) -> tuple[str, str]:
    """On a Ray worker: the path of ``embedder`` in its repository and that model's digest as
    the fp32 graph's bytes give it (a file changed after its export is not that model), once
    the other files an encoder of ``precision`` loads are as exported too (the tokenizer, and
    for int8 its graph: a damaged one had ended the run in an actor's traceback)."""
    from papersearch.models.manifest import checked_file, read_manifest

    path = embedder.path(Path(repository))
    manifest = read_manifest(path)
    for name in (TOKENIZER_FILE, FP32_FILE, *((INT8_FILE,) if precision == "int8" else ())):
        checked_file(path, manifest, name)
    return str(path), manifest.sha256


def check_worker_embedder(pool: EncoderPool, models: ModelSettings, embedder: ModelRef,
                          sha256: str) -> None:
    """Before any actor starts: a task placed as an encoder actor finds the collection's
    embedder in its models.repository (the workers' may differ from the driver's), else one
    line says which model it found or what is missing (an actor's failed check had ended the
    run in a Ray traceback)."""
    import ray

    precision = pool.models(models).precision
    try:
        path, found = probed(pool, worker_embedder, str(models.repository), embedder, precision)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause if isinstance(error.cause, Exception) else error
        raise EmbedderMismatch(f"the Ray workers cannot load {embedder} from "
                               f"{models.repository}: {cause}") from None
    if found != sha256:
        raise EmbedderMismatch(f"the Ray worker's {path} (sha256 {found[:12]}) is not the model "
                               f"the collection was built with (sha256 {sha256[:12]})")


class EncodeActor:
    """One ONNX encoder per Ray actor. Each input row is one encoder batch (row numbers and
    texts), cut by the driver as the one-process path cuts them: int8 activations are scaled
    per batch, so the same batches give the same vectors. Output: a row per paper."""

    def __init__(self, models: ModelSettings, providers: tuple[str, ...], embedder: ModelRef,
                 sha256: str) -> None:
        # the embedder the driver checked the collection against (after a migration the one
        # its pointer names, not models.embedder_name's latest), from the same repository
        path = embedder.path(models.repository)
        self.encoder = Encoder(path, Encoder.runtime_options(models, providers))
        if self.encoder.sha256 != sha256:
            raise EmbedderMismatch(f"the Ray worker's {path} is not the model the collection "
                                   f"was built with (sha256 {sha256[:12]})")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [np.asarray(r, dtype=np.int64) for r in batch["rows"]]
        dense = [self.encoder.encode_documents([str(t) for t in texts])
                 for texts in batch["texts"]]
        return {"row": np.concatenate(rows), "dense": np.concatenate(dense)}


@contextmanager
def ray_cluster(address: str | None) -> Iterator[None]:
    """Connected to Ray for the block: ``address`` (e.g. ``auto``, ``ray://head:10001``), or
    a local instance of this machine's CPUs started (and stopped) here. A Ray already
    initialised in this process (a test's) is used as it is."""
    use_local_ray_env()
    import ray

    route_library_logs()  # Ray's console handler, installed at its import
    if ray.is_initialized():
        yield
        return
    temp_dir = None
    try:
        if address is None:  # Ray counts the CPUs, a container's limit included
            temp_dir = tempfile.mkdtemp(prefix="ps-ingest-")  # short: socket paths are limited
            try:
                with interrupts.handlers_kept():  # SIGTERM: the run's line, not exit 15
                    ray.init(include_dashboard=False, log_to_driver=False,
                             _node_ip_address="127.0.0.1", _temp_dir=temp_dir)
            except OSError as error:
                raise NoRayCluster(f"could not start a local Ray instance: {error}") from None
            except Exception as error:
                if type(error) is not Exception:  # a bug, or an import cut short by Ctrl-C
                    raise
                # Ray's own start failures, its fixed 30 s for the raylet to register among them
                raise NoRayCluster(f"could not start a local Ray instance: {error} (on a busy "
                                   "machine, run again)") from None
        else:
            _check_reachable(address)
            try:
                with interrupts.handlers_kept():
                    ray.init(address=address, log_to_driver=False)
            except ConnectionError as error:
                raise NoRayCluster(f"no Ray cluster at {address!r} to join ({error}): start "
                                   "the service or cluster first, or pass its address") from None
        yield
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """NoRayCluster at once if nothing answers at a ``host:port`` (or ``ray://host:port``)
    address: Ray's own connect retries its GCS for about 14 minutes first, silently."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto": Ray finds the address, or says at once that there is none
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise NoRayCluster(f"no Ray cluster at {address!r} to join (nothing answers at "
                           f"{host}:{port}: {error.strerror or error}): start the service or "
                           "cluster first, or pass its address") from None


class NoRayCluster(ValueError):
    """The Ray cluster named to join is not running or not reachable."""


class NoGpu(ValueError):
    """GPU encoders asked for on a Ray cluster that has no GPU."""


class NoNodeFits(ValueError):
    """No alive Ray node has the CPUs (and GPUs) one encoder actor asks for: Ray would wait
    for such a node forever."""


class NoRoom(TimeoutError):
    """No Ray node freed the resources of one encoder within PROBE_TIMEOUT_S."""


class EncodersFailed(ValueError):
    """The encoder actors could not start, or kept dying: a user error (one line, exit 2), as
    what fixes it is a setting or the workers' machines, not this code."""


@dataclass(frozen=True, slots=True)
class EncoderPool:
    """The encoder actors: how many, the Ray resources each reserves, and how each runs."""

    actors: int
    cpus: float
    gpus: float

    @property
    def providers(self) -> tuple[str, ...]:
        return (CUDA_PROVIDER, CPU_PROVIDER) if self.gpus else (CPU_PROVIDER,)

    def models(self, models: ModelSettings) -> ModelSettings:
        """What each actor loads: on a GPU the fp32 graph (int8's dynamic quantization is a
        CPU optimisation)."""
        return models.model_copy(update={"precision": "fp32"}) if self.gpus else models


def encoder_pool(ingest: IngestSettings, resources: Mapping[str, float],
                 nodes: Sequence[Mapping[str, float]]) -> EncoderPool:
    """Actors for a cluster with ``resources`` free (ray.available_resources()) on ``nodes``
    (each alive node's total: ``alive_nodes``): GPU
    actors if ``ingest.ray_gpus_per_encoder`` says so, or (unset) if the cluster has GPUs; then
    as many as fit, node by node (the cluster's total over-counts: 3 nodes of 3 CPUs hold 3
    actors of 2 CPUs, not 4), and no more than the free resources hold (what Serve replicas
    hold is not there to take); ``ingest.ray_encoders`` overrides the count. NoNodeFits where
    no node holds one actor; else at least one, which waits for room (the probes time out)."""
    gpus = sum(node.get("GPU", 0.0) for node in nodes)
    share = ingest.ray_gpus_per_encoder
    if share is None:
        share = 1.0 if gpus else 0.0
    if share and not gpus:
        raise NoGpu(f"ingest.ray_gpus_per_encoder is {share} but the Ray cluster has no GPU "
                    "(set it to 0 to encode on CPUs)")
    cpus = ingest.ray_cpus_per_encoder
    placed = sum(_held(node, cpus, share) for node in nodes)
    if not placed:
        settings = "ingest.ray_cpus_per_encoder" + (", ray_gpus_per_encoder" if share else "")
        raise NoNodeFits(f"no Ray node can hold an encoder: each asks for "
                         f"{_shape(cpus, share)} ({settings}) and the alive nodes have "
                         f"{_shapes(nodes) or 'none'}: ask for less, or add larger nodes")
    held = min(_held(resources, cpus, share), placed)
    return EncoderPool(ingest.ray_encoders or max(1, held), cpus, share)


def _held(resources: Mapping[str, float], cpus: float, gpus: float) -> int:
    """How many encoders of ``cpus`` CPUs and ``gpus`` GPUs ``resources`` hold (the epsilon:
    3 CPUs are 30 of 0.1, not 29.999...)."""
    counts = [math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)]
    if gpus:
        counts.append(math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
    return min(counts)


def _shape(cpus: float, gpus: float) -> str:
    return f"CPU {cpus:g}" + (f", GPU {gpus:g}" if gpus else "")


def _shapes(nodes: Sequence[Mapping[str, float]]) -> str:
    """``2 x (CPU 4), 1 x (CPU 0)``: the nodes' shapes, the most common first."""
    shapes = Counter(_shape(node.get("CPU", 0.0), node.get("GPU", 0.0)) for node in nodes)
    return ", ".join(f"{count} x ({shape})" for shape, count in shapes.most_common())


def alive_nodes() -> list[dict[str, float]]:
    """Each alive Ray node's total resources (ray.nodes() lists the dead ones too). Alive now:
    an autoscaler adds nodes of the shapes it has, and the deploy/ cluster keeps one worker of
    its one shape up."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def available_providers() -> list[str]:
    """This worker's onnxruntime execution providers."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def probed(pool: EncoderPool, probe: Callable[..., T], *args: Any) -> T:
    """``probe(*args)`` run as a task placed as an encoder actor is; NoRoom if it has not
    run within PROBE_TIMEOUT_S (Ray waits for the room silently, for ever)."""
    import ray

    task = ray.remote(num_cpus=pool.cpus, num_gpus=pool.gpus)(probe).remote(*args)
    try:
        result: T = ray.get(task, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(task)
        asked, free = _shape(pool.cpus, pool.gpus), _shape(*_free())
        raise NoRoom(f"no Ray node freed the resources of an encoder ({asked}) within "
                     f"{PROBE_TIMEOUT_S:g} s (free now: {free}): other work holds them (Serve "
                     "replicas, say); free some, add nodes, or set ingest.ray_cpus_per_encoder "
                     "lower") from None
    return result


def _free() -> tuple[float, float]:
    """The cluster's free CPUs and GPUs."""
    import ray

    free = ray.available_resources()
    return free.get("CPU", 0.0), free.get("GPU", 0.0)


def check_gpu_workers(pool: EncoderPool) -> None:
    """Before any actor starts: a task placed as a GPU actor finds the CUDA provider in its
    onnxruntime (the CPU build lacks it), else ProviderUnavailable says what to install."""
    offered = probed(pool, available_providers)
    if CUDA_PROVIDER not in offered:
        raise ProviderUnavailable(
            f"the Ray workers' onnxruntime has no {CUDA_PROVIDER} (it offers "
            f"{', '.join(offered)}): install onnxruntime-gpu in place of onnxruntime on the GPU "
            "workers, or set ingest.ray_gpus_per_encoder=0 to encode on CPUs")


class RayIngester:
    """Ingester's contract (``ingest``, ``written``) with encoding on a Ray cluster; call it
    inside ``ray_cluster``."""

    def __init__(self, store: Store, encoder: Encoder, settings: Settings,
                 check: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.settings = settings
        self.retriever = Retriever(store)
        self.check = check  # as Ingester's
        self.written = 0
        self.changed = 0
        store.ensure_collection(encoder.dim, encoder.sha256)
        # what the actors load: this encoder's model (by name and version), checked by digest
        self.embedder = ModelRef(encoder.manifest.name, encoder.manifest.version), encoder.sha256

    def ingest(self, papers: Iterable[Paper], *, update: bool = False, progress: bool = True
               ) -> tuple[int, int]:
        """Write every paper not yet stored (all of them with ``update``); (written, present)."""
        listed = list(papers)
        fresh, changed = (listed, 0) if update else unstored(self.store, listed)
        self.changed += changed
        written = 0
        if fresh:
            with tqdm(desc="ingest (ray)", unit="paper", total=len(fresh),
                      disable=None if progress else True) as bar:
                for rows, dense in self._encoded(fresh):
                    batch = [fresh[int(row)] for row in rows]
                    written += write_encoded(self, self.retriever, batch, dense)
                    bar.update(len(batch))
        self.store.optimize()
        return written, len(listed) - len(fresh)

    def _encoded(self, papers: list[Paper]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, their vectors) per written batch, in the order Ray finishes them."""
        import ray.data

        route_library_logs()  # Ray Data's console handler, installed at its import
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours shows the ETA
        models = self.settings.models
        pool = encoder_pool(self.settings.ingest, ray.available_resources(), alive_nodes())
        if pool.gpus:
            check_gpu_workers(pool)
        check_worker_embedder(pool, models, *self.embedder)
        log.info("ray ingest", extra={"papers": len(papers), "encoders": pool.actors,
                                      "gpus_per_encoder": pool.gpus, "batch": models.batch_size})
        size = models.batch_size
        items: list[dict[str, Any]] = [
            {"rows": list(range(start, min(start + size, len(papers)))),
             "texts": [p.text for p in papers[start : start + size]]}
            for start in range(0, len(papers), size)]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * pool.actors))
        del items  # Ray holds its copy: the driver need not keep a second one for the run
        with warnings.catch_warnings():  # Ray 2.60 names no parameter for them in its place
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            encoded = dataset.map_batches(
                EncodeActor,
                fn_constructor_args=(pool.models(models), pool.providers, *self.embedder),
                batch_size=1,
                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool.actors),
                num_cpus=pool.cpus, num_gpus=pool.gpus or None,
                max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
        try:
            for out in encoded.iter_batches(batch_size=self.settings.index.upsert_batch_size,
                                            batch_format="numpy"):
                yield out["row"], np.asarray(out["dense"], dtype=np.float32)
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as error:
            raise encoders_failed(error) from None


def encoders_failed(error: RayError) -> EncodersFailed:
    """One line for an encoder actor's end: the error its constructor raised (its last line:
    Ray's message carries the worker's traceback), or its process's deaths."""
    import ray

    if isinstance(error, ray.exceptions.RayActorError) and error.actor_init_failed:
        lines = str(error).strip().splitlines()
        return EncodersFailed(f"the Ray encoder actors could not start: {lines[-1].strip()}")
    how = ("its node was preempted" if isinstance(error, ray.exceptions.RayActorError)
           and error.preempted else "killed out of memory, most likely")
    return EncodersFailed(
        f"a Ray encoder actor's worker process died {ACTOR_RESTARTS + 1} times ({how}): set "
        "models.batch_size lower, or give each encoder more memory (a larger "
        "ingest.ray_cpus_per_encoder puts fewer on a node); the workers' Ray logs say more")
