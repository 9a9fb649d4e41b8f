"""How `papersearch ingest --ray` places its encoder actors (ingest/distributed.encoder_pool):
CPU actors on a GPU-less cluster, GPU actors running the fp32 graph on onnxruntime's CUDA
provider where the cluster has GPUs, and a clear refusal of GPUs the cluster does not have."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from papersearch.ingest.distributed import EncoderPool, NoGpu, encoder_pool
from papersearch.models.runtime import CPU_PROVIDER, CUDA_PROVIDER
from papersearch.settings import IngestSettings, ModelSettings


@pytest.mark.parametrize(("ingest", "resources", "expected"), [
    ({}, {"CPU": 16.0}, EncoderPool(16, 1.0, 0.0)),
    ({"ray_cpus_per_encoder": 2.0}, {"CPU": 7.0}, EncoderPool(3, 2.0, 0.0)),
    ({}, {"CPU": 16.0, "GPU": 2.0}, EncoderPool(2, 1.0, 1.0)),  # GPUs there: used
    ({"ray_gpus_per_encoder": 0.25}, {"CPU": 16.0, "GPU": 2.0}, EncoderPool(8, 1.0, 0.25)),
    ({"ray_gpus_per_encoder": 0}, {"CPU": 16.0, "GPU": 2.0}, EncoderPool(16, 1.0, 0.0)),
    ({"ray_encoders": 3}, {"CPU": 16.0, "GPU": 2.0}, EncoderPool(3, 1.0, 1.0)),
    ({"ray_encoders": 5}, {"CPU": 2.0}, EncoderPool(5, 1.0, 0.0)),
])
def test_actors_follow_the_cluster(ingest: dict[str, float], resources: dict[str, float],
                                   expected: EncoderPool) -> None:
    """One node, all of it free."""
    assert encoder_pool(IngestSettings(**ingest), resources, [resources]) == expected


def test_one_actor_waits_for_room_others_hold() -> None:
    """Only 2 of the node's 8 CPUs free, 4 asked per encoder: one, placed when room frees."""
    assert encoder_pool(IngestSettings(ray_cpus_per_encoder=4.0), {"CPU": 2.0},
                        [{"CPU": 8.0}]) == EncoderPool(1, 4.0, 0.0)


def test_gpu_actors_run_fp32_on_cuda_and_cpu_actors_keep_the_settings() -> None:
    models = ModelSettings(precision="int8")
    gpu, cpu = EncoderPool(2, 1.0, 1.0), EncoderPool(2, 1.0, 0.0)
    assert gpu.providers == (CUDA_PROVIDER, CPU_PROVIDER)
    assert gpu.models(models).precision == "fp32" and models.precision == "int8"
    assert cpu.providers == (CPU_PROVIDER,) and cpu.models(models) == models


def test_gpus_asked_of_a_cluster_without_any_are_refused() -> None:
    with pytest.raises(NoGpu, match=r"is 1.0 but the Ray cluster has no GPU \(set it to 0"):
        encoder_pool(IngestSettings(ray_gpus_per_encoder=1.0), {"CPU": 16.0}, [{"CPU": 16.0}])


@pytest.mark.slow
def test_actors_load_the_embedder_the_collection_was_built_with(
    embedder_dir: Path, tmp_path: Path,
) -> None:
    """After a migration the live collection is another embedder's (its pointer names it):
    the actors loaded models.embedder_name's latest all the same, and wrote its vectors."""
    import numpy as np

    from papersearch.encoder.runtime import Encoder
    from papersearch.index.errors import EmbedderMismatch
    from papersearch.ingest.distributed import EncodeActor
    from papersearch.models.manifest import ModelRef

    other = tmp_path / "other" / "1"
    shutil.copytree(embedder_dir, other)
    live = Encoder(other)
    models = ModelSettings(repository=tmp_path, embedder_name="minilm-l6", precision="fp32")
    actor = EncodeActor(models, (CPU_PROVIDER,), ModelRef("other", 1), live.sha256)
    assert actor.encoder.version_dir == other
    out = actor({"rows": np.array([[0, 1]]), "texts": np.array([["a text", "another"]])})
    assert list(out["row"]) == [0, 1] and out["dense"].shape == (2, live.dim)
    with pytest.raises(EmbedderMismatch, match="not the model the collection was built with"):
        EncodeActor(models, (CPU_PROVIDER,), ModelRef("other", 1), "f" * 64)


def test_a_local_ray_that_does_not_start_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray gives its raylet a fixed 30 s to register and then raises a bare Exception: on a
    busy machine `ingest --ray` ended in a Ray traceback."""
    import ray

    from papersearch.ingest.distributed import NoRayCluster, ray_cluster

    def timed_out(**_: object) -> None:
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", timed_out)
    with pytest.raises(NoRayCluster, match=r"could not start a local Ray instance: The current "
                                           r"node timed out during startup\. \(on a busy"):
        with ray_cluster(None):
            pass

    def cut_short(**_: object) -> None:  # an import inside ray.init cut short by Ctrl-C
        raise ImportError("cannot import name 'x'") from KeyboardInterrupt()

    monkeypatch.setattr(ray, "init", cut_short)
    with pytest.raises(ImportError), ray_cluster(None):  # the CLI's "interrupted" line, exit 130
        pass
