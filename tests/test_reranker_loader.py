"""RerankerLoader: a service starts without a reranker model and picks one up later."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from papersearch.models.manifest import ModelCorrupt, ModelNotFound, model_dir, sha256_file
from papersearch.reranker.loader import RerankerLoader
from papersearch.settings import ModelSettings, Settings

pytestmark = pytest.mark.slow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _loader(model_settings: Settings, repository: Path, clock: Clock) -> RerankerLoader:
    models = model_settings.models.model_copy(
        update={"repository": repository, "reload_poll_s": 10.0})
    return RerankerLoader(models, clock)


def _publish(reranker_dir: Path, repository: Path) -> None:
    """Put the version in place whole, as an export does."""
    staging = repository / reranker_dir.parent.name / f"{reranker_dir.name}.partial"
    shutil.copytree(reranker_dir, staging)
    staging.rename(staging.with_name(reranker_dir.name))


def _break(version: Path) -> None:
    """A version whose graphs do not load (listed so in its manifest: not a changed file)."""
    manifest = json.loads((version / "manifest.json").read_text())
    for graph in version.glob("*.onnx"):
        graph.write_bytes(b"not an onnx graph")
        manifest["files"][graph.name] = sha256_file(graph)
    (version / "manifest.json").write_text(json.dumps(manifest))


def _refused(loader: RerankerLoader, match: str, times: int = 3) -> None:
    for _ in range(times):
        with pytest.raises(ModelNotFound, match=match):
            loader.get()


def test_missing_model_is_picked_up_at_the_next_look(
    model_settings: Settings, reranker_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    loader = _loader(model_settings, tmp_path, clock)
    with caplog.at_level(logging.INFO, logger="papersearch.reranker.loader"):
        _refused(loader, "train-reranker")
        _publish(reranker_dir, tmp_path)
        with pytest.raises(ModelNotFound):  # not looked for again before reload_poll_s
            loader.get()
        clock.now += 10.0
        reranker = loader.get()
    scores = reranker.score("graph neural networks", ["message passing", "a bread recipe"])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert loader.get() is reranker  # loaded once
    assert caplog.text.count("no usable reranker model") == 1  # said once, not each look
    assert "reranker model loaded" in caplog.text


def test_a_newer_version_replaces_the_one_in_use_at_the_next_look(
    model_settings: Settings, reranker_dir: Path, tmp_path: Path,
) -> None:
    """A retrained reranker is picked up by a running replica within reload_poll_s, so that
    replicas started before and after it do not keep different models; one that does not load
    leaves the one in use."""
    _publish(reranker_dir, tmp_path)
    clock = Clock()
    loader = _loader(model_settings, tmp_path, clock)
    first = loader.get()
    newer = tmp_path / reranker_dir.parent.name / str(first.manifest.version + 1)
    shutil.copytree(reranker_dir, newer.with_name(newer.name + ".partial"))
    manifest = json.loads((newer.with_name(newer.name + ".partial") / "manifest.json")
                          .read_text())
    manifest["version"] = first.manifest.version + 1
    (newer.with_name(newer.name + ".partial") / "manifest.json").write_text(json.dumps(manifest))
    newer.with_name(newer.name + ".partial").rename(newer)
    assert loader.get() is first and not loader.due()  # not before reload_poll_s
    clock.now += 10.0
    second = loader.get()
    assert second is not first and second.manifest.version == first.manifest.version + 1
    broken = newer.with_name(str(first.manifest.version + 2))
    shutil.copytree(newer, broken)
    _break(broken)
    clock.now += 10.0
    assert loader.get() is second  # the broken newer one did not replace it
    # a replica starting now takes the newest version that loads, as the running ones hold
    started_later = _loader(model_settings, tmp_path, clock)
    assert started_later.get().manifest.version == second.manifest.version


def test_present_model_loads_at_once(model_settings: Settings, reranker_dir: Path) -> None:
    loader = _loader(model_settings, reranker_dir.parents[1], Clock())
    assert loader.get().manifest.version == int(reranker_dir.name)


def test_a_model_that_will_not_load_is_looked_at_again_later_not_at_every_search(
    model_settings: Settings, reranker_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A broken latest version (here its graph unreadable) answers like a missing one: first-
    stage results, one log line, and one load attempt (each costs ~1 s) until
    RETRY_FAILED_LOOKS looks later."""
    from papersearch.reranker import loader as loader_module

    _publish(reranker_dir, tmp_path)
    _break(tmp_path / reranker_dir.parent.name / reranker_dir.name)
    attempts = []
    load = loader_module.Reranker.from_settings
    monkeypatch.setattr(loader_module.Reranker, "from_settings",
                        lambda models, version=None: attempts.append(1) or load(models, version))
    clock = Clock()
    loader = _loader(model_settings, tmp_path, clock)
    with caplog.at_level(logging.INFO, logger="papersearch.reranker.loader"):
        _refused(loader, "could not be loaded")
        clock.now += 10.0
        _refused(loader, "could not be loaded", times=1)
    assert len(attempts) == 1 and caplog.text.count("no usable reranker model") == 1
    clock.now += loader_module.RETRY_FAILED_LOOKS * 10.0  # a passing failure is not for good
    _refused(loader, "could not be loaded", times=1)
    assert len(attempts) == 2 and caplog.text.count("no usable reranker model") == 1


class FakeReranker:
    """What the loader reads of a reranker (its folder, manifest version and files), loaded as
    Reranker.from_settings finds it: refused when missing or when its graph is not a graph."""

    def __init__(self, version_dir: Path) -> None:
        if (version_dir / "model.onnx").read_text() != "graph":
            raise ModelCorrupt(f"{version_dir}: model.onnx changed after the export")
        self.version_dir = version_dir
        self.manifest = SimpleNamespace(name="r", version=int(version_dir.name),
                                        files={"model.onnx": "digest"})

    @classmethod
    def from_settings(cls, models: ModelSettings, version: int | None = None) -> FakeReranker:
        return cls(model_dir(models.repository, models.reranker_name, version, "reranker"))


@pytest.mark.parametrize("withdrawn", ["removed", "damaged"])
def test_a_withdrawn_version_in_use_gives_way_to_the_newest_that_loads_even_older(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, withdrawn: str,
) -> None:
    """An operator rolling back deletes a bad newest version (or its files get damaged): the
    running replicas move to the version a replica starting now loads, older than theirs, and
    to none when none loads, rather than keep serving theirs from memory."""
    from papersearch.reranker import loader as loader_module

    monkeypatch.setattr(loader_module, "Reranker", FakeReranker)
    models = ModelSettings(repository=tmp_path, reload_poll_s=10.0)
    root = tmp_path / models.reranker_name
    for version in (1, 2, 3):
        (root / str(version)).mkdir(parents=True)
        (root / str(version) / "manifest.json").write_text("{}")
        (root / str(version) / "model.onnx").write_text("graph")

    def withdraw(version: int) -> None:
        if withdrawn == "removed":
            shutil.rmtree(root / str(version))
        else:
            (root / str(version) / "model.onnx").write_text("not a graph")

    clock = Clock()
    running = RerankerLoader(models, clock)
    assert running.get().manifest.version == 3
    withdraw(3)
    clock.now += 10.0
    assert running.get().manifest.version == 2
    assert RerankerLoader(models, clock).get().manifest.version == 2  # as one starting now
    clock.now += 10.0
    assert running.get().manifest.version == 2  # stays
    withdraw(2)
    withdraw(1)
    clock.now += 10.0
    _refused(running, "no other version loads" if withdrawn == "removed"
             else "changed after the export")


@pytest.mark.parametrize(("error", "said"), [
    (ModelNotFound("no exported model 'r'"), "no reranker model"),
    (ValueError("/m/minilm-l6/1 is not a reranker export"), "did not load"),
    (ModelCorrupt("r@1: model.onnx is missing"), "no reranker model"),
])
def test_an_in_process_search_falls_back_as_serving_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception,
    said: str,
) -> None:
    """A reranker that existed but did not load (reranker_name naming the embedder) failed an
    in-process search, where serving returned first-stage results."""
    from papersearch.pipeline import factory

    def refuse(models: ModelSettings) -> None:
        raise error

    monkeypatch.setattr(factory.Reranker, "from_settings", staticmethod(refuse))
    settings = Settings()
    settings = settings.model_copy(update={"search": settings.search.model_copy(
        update={"rerank_enabled": True})})
    with caplog.at_level(logging.WARNING, logger="papersearch.pipeline.factory"):
        assert factory.load_reranker(settings) is None
    # its own records only: a thread another test left (Ray Data's metrics poller) logs too
    (record,) = [r for r in caplog.records if r.name == factory.log.name]
    assert said in record.getMessage() and record.__dict__["reason"] == str(error)
