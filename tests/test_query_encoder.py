"""The QueryEncoder replica's own logic, without Ray: loading the embedders calls name."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from papersearch.autoscaling import UTILIZATION
from papersearch.encoder import deployment
from papersearch.encoder.runtime import Encoder
from papersearch.settings import Settings
from papersearch.telemetry import metrics

pytestmark = pytest.mark.slow  # both load the exported embedder (embedder_dir)


def test_a_load_outlives_the_callers_cancelled_while_it_runs(
    model_settings: Settings, embedder_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first calls for another embedder (a migration's) with deadlines shorter than its
    load: each cancelled caller threw the load away and the next began it again (4 callers,
    4 loads, none kept). Now one load serves them all and the calls after."""
    replica = deployment.QueryEncoderDeployment.func_or_class(model_settings)
    loads: list[float] = []

    class SlowToLoad(Encoder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            loads.append(time.monotonic())
            time.sleep(0.4)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(deployment, "Encoder", SlowToLoad)
    other = model_settings.models.embedder_name  # by name, not name@version: another key

    async def calls() -> tuple[int, str]:
        for _ in range(4):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(replica.identity(other), 0.05)
        return await replica.identity(other)

    dim, sha = asyncio.run(calls())
    assert len(loads) == 1 and (dim, sha) == (replica._encoders[replica.default].dim,
                                              replica._encoders[replica.default].sha256)
    assert not replica._loads


def test_the_first_calls_for_another_embedder_share_one_batcher(
    model_settings: Settings, embedder_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls that arrived while another embedder loaded each made a batcher, the last kept:
    two ONNX batches ran at once on one replica (max_in_flight 1 is per batcher)."""
    replica = deployment.QueryEncoderDeployment.func_or_class(model_settings)

    class SlowToLoad(Encoder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(0.3)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(deployment, "Encoder", SlowToLoad)
    other = model_settings.models.embedder_name

    async def first_calls() -> list[Any]:
        batchers = await asyncio.gather(*(replica._coalescer(other) for _ in range(3)))
        vectors = await asyncio.gather(*(replica.encode([f"query {i}"], other)
                                         for i in range(3)))
        assert all(v.shape == (1, replica._encoders[replica.default].dim) for v in vectors)
        return batchers

    batchers = asyncio.run(first_calls())
    assert all(b is replica._batches[other] for b in batchers)


def test_the_busy_share_starts_when_the_model_is_loaded(
    model_settings: Settings, embedder_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The meter measured from before the load: a new replica's first report spread its busy
    time over the load's seconds too and read nearly idle for ~3 s (the smoothing window)."""
    loading = deployment.Encoder.from_settings

    def slow_load(*args: Any, **kwargs: Any) -> Encoder:
        time.sleep(2.0)  # a slow disk or a large model
        return loading(*args, **kwargs)

    monkeypatch.setattr(deployment.Encoder, "from_settings", slow_load)
    monkeypatch.setattr(deployment, "configure_logging", lambda *_: None)  # the suite's stays
    replica = deployment.QueryEncoderDeployment.func_or_class(model_settings)
    with replica.meter.busy():
        time.sleep(0.3)  # saturated from its first request
    report = asyncio.run(replica.record_autoscaling_stats())
    assert report[UTILIZATION] > 0.5  # 0.3 s of 2.3 s read 0.13


def test_document_calls_run_one_at_a_time(
    model_settings: Settings, embedder_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each document call (an upsert stream's batch, a migration's) ran at once on a thread of
    its own: six concurrent upserts were six ONNX runs on a replica that reserves one CPU,
    and its queries waited behind them."""
    import threading

    replica = deployment.QueryEncoderDeployment.func_or_class(model_settings)
    encoder = replica._encoders[replica.default]
    running, most = 0, 0
    lock = threading.Lock()
    encode_documents = encoder.encode_documents

    def counted(texts: Any) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)
            return encode_documents(texts)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(encoder, "encode_documents", counted)

    async def upserts() -> list[Any]:
        return await asyncio.gather(*(replica.encode_documents([f"paper {i}"])
                                      for i in range(6)))

    vectors = asyncio.run(upserts())
    assert [v.shape for v in vectors] == [(1, encoder.dim)] * 6
    assert most == 1


def test_a_replica_keeps_at_most_two_other_embedders_loaded(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each embedder a call named stayed loaded until the replica restarted: every finished
    migration left its old model in memory. The least recently used other one goes first;
    the configured one stays; a call naming an unloaded one loads it again."""
    name = model_settings.models.embedder_name
    manifest = json.loads((embedder_dir / "manifest.json").read_text())
    for version in (1, 2, 3, 4):  # four versions of one export, as a migrated repository
        folder = tmp_path / name / str(version)
        folder.mkdir(parents=True)
        for file in embedder_dir.iterdir():  # each version's manifest its own (a copied one
            if file.name != "manifest.json":  # naming another version is refused)
                (folder / file.name).symlink_to(file)
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    settings = model_settings.model_copy(update={"models": model_settings.models.model_copy(
        update={"repository": tmp_path})})
    replica = deployment.QueryEncoderDeployment.func_or_class(settings)
    assert deployment.EXTRA_EMBEDDERS == 2 and replica.default == f"{name}@4"  # the latest
    unloaded: list[str] = []
    monkeypatch.setattr(metrics(), "model_unloaded", lambda _, model: unloaded.append(model))

    async def calls() -> None:
        for version in (1, 2, 1, 3):  # 2 is the least recently used when 3 comes
            assert (await replica.encode(["a query"], f"{name}@{version}")).shape[0] == 1
        assert list(replica._encoders) == [f"{name}@4", f"{name}@1", f"{name}@3"]
        assert set(replica._batches) == {f"{name}@1", f"{name}@3"}
        assert (await replica.encode(["a query"], f"{name}@2")).shape[0] == 1  # loaded again
        assert list(replica._encoders) == [f"{name}@4", f"{name}@3", f"{name}@2"]
        assert (await replica.encode(["a query"])).shape[0] == 1  # the configured one

    asyncio.run(calls())
    assert unloaded == []  # each unloaded version's name still runs (@1): its gauge stays


def test_an_unloaded_embedder_s_precision_gauge_goes_to_zero(
    model_settings: Settings, embedder_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An embedder unloaded for another no longer runs in the replica: its precision gauge
    reads 0 (it read 1 until the replica restarted); while another version of its name is
    still loaded, the gauge (by model name) stays."""
    name = model_settings.models.embedder_name
    for other in ("other-a", "other-b", "other-c"):  # as exports of other names would be
        (tmp_path / other / "1").mkdir(parents=True)
        for part in embedder_dir.iterdir():
            if part.name != "manifest.json":
                (tmp_path / other / "1" / part.name).symlink_to(part)
        manifest = json.loads((embedder_dir / "manifest.json").read_text())
        (tmp_path / other / "1" / "manifest.json").write_text(
            json.dumps(manifest | {"name": other}))
    (tmp_path / name).mkdir()
    (tmp_path / name / "1").symlink_to(embedder_dir)
    settings = model_settings.model_copy(update={"models": model_settings.models.model_copy(
        update={"repository": tmp_path})})
    unloaded: list[tuple[str, str]] = []
    meter = metrics()
    replica = deployment.QueryEncoderDeployment.func_or_class(settings)
    monkeypatch.setattr(meter, "model_unloaded",
                        lambda deployment_name, model: unloaded.append((deployment_name, model)))

    async def calls() -> None:
        for other in ("other-a", "other-b", "other-c"):
            assert (await replica.encode(["a query"], f"{other}@1")).shape[0] == 1

    asyncio.run(calls())
    assert list(replica._encoders) == [f"{name}@1", "other-b@1", "other-c@1"]
    assert unloaded == [("QueryEncoder", "other-a")]
