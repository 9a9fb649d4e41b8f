"""The collection pointer an embedder migration swaps (both backends), model references, and
how the gateway's collections resolve the pointer. Fast: no models, no Ray."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from papersearch.cli import main
from papersearch.index.errors import StoreError, StoreUnavailable
from papersearch.index.pointer import EdgePointers, Pointer, Pointers, ServerPointers
from papersearch.index.server import ServerStore
from papersearch.models.manifest import MANIFEST, ModelNotFound, ModelRef
from papersearch.pipeline.collections import Collections
from papersearch.settings import IndexSettings, Settings

MOVED = Pointer("papers-bbbbbbbbbbbb", "new@2", "papers", "old@1")


def test_edge_pointer_round_trip_and_swaps(tmp_path: Path) -> None:
    pointers = EdgePointers(IndexSettings(data_dir=tmp_path))
    assert pointers.read() is None
    pointers.write(MOVED)
    assert pointers.read() == MOVED
    assert (tmp_path / "papers.live.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    pointers.write(MOVED.swapped())
    assert pointers.read() == Pointer("papers", "old@1", "papers-bbbbbbbbbbbb", "new@2")
    assert MOVED.swapped().swapped() == MOVED
    assert MOVED.finished() == Pointer("papers-bbbbbbbbbbbb", "new@2")
    with pytest.raises(ValueError, match="no previous"):
        MOVED.finished().swapped()
    (tmp_path / "papers.live.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable collection pointer"):
        pointers.read()
    (tmp_path / "papers.live.json").write_text(json.dumps({"live": "x"}))
    with pytest.raises(StoreError, match="unreadable"):
        pointers.read()


def test_server_pointer_is_an_alias_and_keeps_the_identity(tmp_path: Path) -> None:
    client = QdrantClient(":memory:")
    settings = IndexSettings(backend="server", url="http://qdrant:6333")  # not dialled
    for name, sha in (("papers", "a" * 64), ("papers-bbbbbbbbbbbb", "b" * 64)):
        store = ServerStore(settings.model_copy(update={"collection": name}), client=client)
        store.ensure_collection(4, sha)
    pointers = ServerPointers(settings, client=client)
    assert pointers.read() is None
    pointers.write(MOVED)
    assert pointers.read() == MOVED
    aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
    assert aliases == {"papers.live": "papers-bbbbbbbbbbbb"}
    pointers.write(MOVED.swapped())  # the alias moves, in one request
    assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases} == {
        "papers.live": "papers"}
    assert pointers.read() == MOVED.swapped()
    # the collections' embedder identity survived the metadata the pointer added
    for name, sha in (("papers", "a" * 64), ("papers-bbbbbbbbbbbb", "b" * 64)):
        ServerStore(settings.model_copy(update={"collection": name}),
                    client=client).ensure_collection(4, sha, create=False)
    pointers.drop("papers-bbbbbbbbbbbb")
    assert not client.collection_exists("papers-bbbbbbbbbbbb")


def _repository(root: Path, *versions: tuple[str, int]) -> Path:
    for name, version in versions:
        (root / name / str(version)).mkdir(parents=True)
        (root / name / str(version) / MANIFEST).write_text("{}")
    return root


def test_model_references(tmp_path: Path) -> None:
    repository = _repository(tmp_path, ("minilm", 1), ("minilm", 3), ("other", 1))
    assert ModelRef.parse("minilm", repository) == ModelRef("minilm", 3)  # the latest
    assert str(ModelRef.parse("minilm@1", repository)) == "minilm@1"
    assert ModelRef("other", 1).path(repository) == repository / "other" / "1"
    for bad in ("", "@1", "minilm@", "minilm@one"):
        with pytest.raises(ValueError, match="NAME or NAME@VERSION"):
            ModelRef.parse(bad, repository)
    with pytest.raises(ModelNotFound, match="no version 2"):
        ModelRef.parse("minilm@2", repository)
    with pytest.raises(ModelNotFound, match="no exported model 'absent'"):
        ModelRef.parse("absent", repository)


class Unreachable(Pointers):
    def __init__(self, settings: IndexSettings) -> None:
        super().__init__(settings)
        self.reads = 0

    def read(self) -> Pointer | None:
        self.reads += 1
        raise StoreUnavailable("qdrant unreachable")

    def write(self, pointer: Pointer) -> None:
        raise AssertionError("not written")

    def drop(self, collection: str) -> None:
        raise AssertionError("not dropped")


def test_an_unreadable_pointer_is_asked_again_only_after_retry_s() -> None:
    now = [0.0]
    pointers = Unreachable(IndexSettings())
    collections = Collections(Settings(), make_pointers=lambda _: pointers, retry_s=1.0,
                              clock=lambda: now[0])

    async def attempts() -> None:
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await collections.live()
        assert pointers.reads == 1
        now[0] = 1.5
        with pytest.raises(StoreUnavailable):
            await collections.live()
        assert pointers.reads == 2

    asyncio.run(attempts())


def test_migrate_without_a_ray_cluster_is_one_line(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster's address file there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["index", "migrate", "--finish"]) == 2
    assert "no Ray cluster at 'auto'" in capsys.readouterr().err


class Opened:
    """An index access that counts its opens and closes."""

    opened: list[Opened] = []

    def __init__(self) -> None:
        self.closed = False
        Opened.opened.append(self)

    async def close(self) -> None:
        self.closed = True


def test_a_failed_or_cancelled_resolve_leaves_nothing_open(tmp_path: Path) -> None:
    """A pointer naming a previous embedder whose export is gone: the live collection was
    opened, dropped unclosed, and opened again on every call (5 calls, 5 opens, 0 closes). A
    call cancelled while the collection opens in its thread closes what the thread opened."""
    repository = tmp_path / "models"
    (repository / "minilm" / "1").mkdir(parents=True)
    (repository / "minilm" / "1" / MANIFEST).write_text(json.dumps(
        {"name": "minilm", "version": 1, "kind": "embedder", "source": "s", "fingerprint": "f",
         "max_length": 8, "dim": 4, "files": {"model.onnx": "a" * 64}}))
    settings = Settings(models={"repository": repository, "embedder_name": "minilm"})

    class Swapped(Unreachable):
        def read(self) -> Pointer | None:
            return Pointer("papers-new", "minilm@1", "papers", "deleted@1")

    class Unmigrated(Unreachable):
        def read(self) -> Pointer | None:
            return None

    def slow_open(_: Settings, __: object) -> Opened:
        time.sleep(0.2)
        return Opened()

    async def resolves() -> None:
        collections = Collections(settings, make_access=lambda s, v: Opened(),  # type: ignore[arg-type,return-value]
                                  make_pointers=lambda _: Swapped(settings.index), retry_s=0)
        for _ in range(3):
            with pytest.raises(ModelNotFound, match="deleted"):
                await collections.live()
        assert len(Opened.opened) == 3 and all(a.closed for a in Opened.opened)
        Opened.opened.clear()
        cancelled = Collections(settings, make_access=slow_open,  # type: ignore[arg-type]
                                make_pointers=lambda _: Unmigrated(settings.index))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cancelled.live(), 0.05)
        assert len(Opened.opened) == 1 and Opened.opened[0].closed

    asyncio.run(resolves())


def test_a_cancelled_swap_returns_only_once_its_pointer_is_written(tmp_path: Path) -> None:
    """The write goes on in its thread when the step is cancelled; the cleanup after the
    cancel reads the pointer, and read the old one while the new was being written: it dropped
    the collection the finished write then named live."""
    from papersearch.pipeline.migration import Migrator

    class Slow(Unreachable):
        written: Pointer | None = None

        def write(self, pointer: Pointer) -> None:
            time.sleep(0.3)
            self.written = pointer

    settings = Settings()
    pointers = Slow(settings.index)
    migrator = Migrator(Collections(settings, make_pointers=lambda _: pointers),
                        encode=None, batch=1)  # type: ignore[arg-type]
    swapped = Pointer("papers-new", "minilm@2", "papers", "minilm@1")

    async def cancelled() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(migrator._write_pointer(swapped), 0.05)
        assert pointers.written == swapped  # written before the cancel reached the caller

    asyncio.run(cancelled())
