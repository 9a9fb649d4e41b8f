"""`papersearch ingest --ray`: document encoding as Ray Data batch inference.

The driver (this process) reads each corpus with the same readers, skip and duplicate rules as
the one-process path, and leaves out the papers already stored (unless ``update``). Ray Data
encodes the rest: ``map_batches`` over an actor pool of ONNX encoders, each actor loading the
model once (``encoder_pool``): on CPUs, by default one actor per CPU the cluster offers; where
the cluster has GPUs, by default one actor per GPU, each running the fp32 graph on
onnxruntime's CUDA provider (the workers then need the onnxruntime-gpu build). Vectors stream
back as they are ready, and this process alone writes them, with their BM25 terms, to the
index in batches: one writer, as the embedded engine requires (its shard lives in this
process), and bounded for a Qdrant server. Point ids, resume and update work as in
ingest/pipeline.py: a batch is written only once encoded, and a rerun skips what is stored.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.index.errors import EmbedderMismatch
from papersearch.index.store import Store
from papersearch.ingest.pipeline import checked_write, unstored
from papersearch.models.manifest import FP32_FILE, ModelRef, ProviderUnavailable
from papersearch.models.runtime import CPU_PROVIDER, CUDA_PROVIDER
from papersearch.retriever.retriever import Retriever
from papersearch.serving.launcher import LOCAL_RAY_ENV
from papersearch.settings import IngestSettings, ModelSettings, Settings

log = logging.getLogger(__name__)


def worker_embedder(repository: str, embedder: ModelRef) -> tuple[str, str]:
    """On a Ray worker: the path of ``embedder`` in its repository and that model's digest as
    the fp32 graph's bytes give it (a file changed after its export is not that model)."""
    from papersearch.models.manifest import checked_file, read_manifest

    path = embedder.path(Path(repository))
    manifest = read_manifest(path)
    checked_file(path, manifest, FP32_FILE)
    return str(path), manifest.sha256


def check_worker_embedder(pool: EncoderPool, models: ModelSettings, embedder: ModelRef,
                          sha256: str) -> None:
    """Before any actor starts: a task placed as an encoder actor finds the collection's
    embedder in its models.repository (the workers' may differ from the driver's), else one
    line says which model it found or what is missing (an actor's failed check had ended the
    run in a Ray traceback)."""
    import ray

    probe = ray.remote(num_cpus=pool.cpus, num_gpus=pool.gpus)(worker_embedder)
    try:
        path, found = ray.get(probe.remote(str(models.repository), embedder))
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
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        yield
        return
    temp_dir = None
    try:
        if address is None:  # Ray counts the CPUs, a container's limit included
            temp_dir = tempfile.mkdtemp(prefix="ps-ingest-")  # short: socket paths are limited
            try:
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


def encoder_pool(ingest: IngestSettings, resources: Mapping[str, float]) -> EncoderPool:
    """Actors for a cluster offering ``resources`` (ray.cluster_resources()): GPU actors if
    ``ingest.ray_gpus_per_encoder`` says so, or (unset) if the cluster has GPUs; then as many as
    the GPUs hold, else as many as the CPUs hold (``ingest.ray_encoders`` overrides either)."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    share = ingest.ray_gpus_per_encoder
    if share is None:
        share = 1.0 if gpus else 0.0
    if share and not gpus:
        raise NoGpu(f"ingest.ray_gpus_per_encoder is {share} but the Ray cluster has no GPU "
                    "(set it to 0 to encode on CPUs)")
    held = gpus // share if share else cpus // ingest.ray_cpus_per_encoder
    return EncoderPool(ingest.ray_encoders or max(1, int(held)), ingest.ray_cpus_per_encoder,
                       share)


def available_providers() -> list[str]:
    """This worker's onnxruntime execution providers."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def check_gpu_workers(pool: EncoderPool) -> None:
    """Before any actor starts: a task placed as a GPU actor finds the CUDA provider in its
    onnxruntime (the CPU build lacks it), else ProviderUnavailable says what to install."""
    import ray

    probe = ray.remote(num_cpus=pool.cpus, num_gpus=pool.gpus)(available_providers)
    offered = ray.get(probe.remote())
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
                    written += checked_write(self, partial(self.retriever.upsert, batch, dense))
                    bar.update(len(batch))
        self.store.optimize()
        return written, len(listed) - len(fresh)

    def _encoded(self, papers: list[Paper]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, their vectors) per written batch, in the order Ray finishes them."""
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours shows the ETA
        models = self.settings.models
        pool = encoder_pool(self.settings.ingest, ray.cluster_resources())
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
        encoded = dataset.map_batches(
            EncodeActor, fn_constructor_args=(pool.models(models), pool.providers, *self.embedder),
            batch_size=1,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.cpus, num_gpus=pool.gpus or None)
        for out in encoded.iter_batches(batch_size=self.settings.index.upsert_batch_size,
                                        batch_format="numpy"):
            yield out["row"], np.asarray(out["dense"], dtype=np.float32)
