"""`papersearch ingest --ray`: document encoding as Ray Data batch inference.

The driver (this process) reads each corpus with the same readers, skip and duplicate rules as
the one-process path, and leaves out the papers already stored (unless ``update``). Ray Data
encodes the rest: ``map_batches`` over an actor pool of ONNX encoders (``ingest.ray_encoders``,
by default one per CPU the cluster offers), each actor loading the model once. Vectors stream
back as they are ready, and this process alone writes them, with their BM25 terms, to the
index in batches: one writer, as the embedded engine requires (its shard lives in this
process), and bounded for a Qdrant server. Point ids, resume and update work as in
ingest/pipeline.py: a batch is written only once encoded, and a rerun skips what is stored.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from tqdm import tqdm

from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.index.store import Store
from papersearch.ingest.pipeline import unstored
from papersearch.retriever.retriever import Retriever
from papersearch.serving.launcher import LOCAL_RAY_ENV
from papersearch.settings import IngestSettings, ModelSettings, Settings

log = logging.getLogger(__name__)


class EncodeActor:
    """One ONNX encoder per Ray actor. Each input row is one encoder batch (row numbers and
    texts), cut by the driver as the one-process path cuts them: int8 activations are scaled
    per batch, so the same batches give the same vectors. Output: a row per paper."""

    def __init__(self, models: ModelSettings) -> None:
        self.encoder = Encoder.from_settings(models)

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
    if address is None:
        temp_dir = tempfile.mkdtemp(prefix="ps-ingest-")  # short: socket paths are limited
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", _temp_dir=temp_dir)
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def encoder_count(ingest: IngestSettings) -> int:
    """ingest.ray_encoders, or as many actors as the cluster's CPUs hold."""
    if ingest.ray_encoders:
        return ingest.ray_encoders
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int(cpus // ingest.ray_cpus_per_encoder))


class RayIngester:
    """Ingester's contract (``ingest``, ``written``) with encoding on a Ray cluster; call it
    inside ``ray_cluster``."""

    def __init__(self, store: Store, encoder: Encoder, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.retriever = Retriever(store)
        self.written = 0
        store.ensure_collection(encoder.dim, encoder.sha256)  # the embedder the actors load

    def ingest(self, papers: Iterable[Paper], *, update: bool = False, progress: bool = True
               ) -> tuple[int, int]:
        """Write every paper not yet stored (all of them with ``update``); (written, present)."""
        listed = list(papers)
        fresh = listed if update else unstored(self.store, listed)
        written = 0
        if fresh:
            with tqdm(desc="ingest (ray)", unit="paper", total=len(fresh),
                      disable=not progress) as bar:
                for rows, dense in self._encoded(fresh):
                    batch = [fresh[int(row)] for row in rows]
                    written += self.retriever.upsert(batch, dense)
                    self.written += len(batch)
                    bar.update(len(batch))
        self.store.optimize()
        return written, len(listed) - len(fresh)

    def _encoded(self, papers: list[Paper]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, their vectors) per written batch, in the order Ray finishes them."""
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours shows the ETA
        ingest, models = self.settings.ingest, self.settings.models
        actors = encoder_count(ingest)
        log.info("ray ingest", extra={"papers": len(papers), "encoders": actors,
                                      "batch": models.batch_size})
        size = models.batch_size
        items: list[dict[str, Any]] = [
            {"rows": list(range(start, min(start + size, len(papers)))),
             "texts": [p.text for p in papers[start : start + size]]}
            for start in range(0, len(papers), size)]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors))
        encoded = dataset.map_batches(
            EncodeActor, fn_constructor_args=(models,), batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=ingest.ray_cpus_per_encoder)
        for out in encoded.iter_batches(batch_size=self.settings.index.upsert_batch_size,
                                        batch_format="numpy"):
            yield out["row"], np.asarray(out["dense"], dtype=np.float32)
