"""The collection pointer an embedder migration swaps (both backends), model references, and
how the gateway's collections resolve the pointer. Fast: no models, no Ray."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from papersearch.cli import main
from papersearch.corpus.paper import Paper
from papersearch.errors import NotReady
from papersearch.index.errors import StoreError, StoreUnavailable
from papersearch.index.pointer import EdgePointers, Pointer, Pointers, ServerPointers
from papersearch.index.server import ServerStore
from papersearch.models.manifest import MANIFEST, ModelNotFound, ModelRef
from papersearch.pipeline.collections import Bound, Collections, View
from papersearch.pipeline.migration import MigrationFailed, MigrationRefused, Migrator
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
    pointers.write(MOVED.swapped(1_764_000_000_000))
    assert pointers.read() == Pointer("papers", "old@1", "papers-bbbbbbbbbbbb", "new@2",
                                      1_764_000_000_000)
    (tmp_path / "papers.live.json").write_text(json.dumps(MOVED.to_json() | {
        "swapped_at_ms": "yesterday"}))
    with pytest.raises(StoreError, match="swapped_at_ms 'yesterday' is no time in ms"):
        pointers.read()
    (tmp_path / "papers.live.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable collection pointer"):
        pointers.read()
    (tmp_path / "papers.live.json").write_text(json.dumps({"live": "x"}))
    with pytest.raises(StoreError, match="unreadable"):
        pointers.read()


@pytest.mark.parametrize("names", [{"previous": "../victim"}, {"previous": ""},
                                   {"live": "papers/../.."}, {"previous": 7}])
def test_a_pointer_naming_no_collection_is_refused_and_nothing_is_dropped(
        tmp_path: Path, names: dict[str, object]) -> None:
    """An embedded collection is a folder that --finish deletes: a pointer edited to name a
    path (or nothing) is refused as it is read, and drop() never leaves data_dir."""
    victim = tmp_path / "victim"
    victim.mkdir()
    data_dir = tmp_path / "index"
    pointers = EdgePointers(IndexSettings(data_dir=data_dir))
    pointers.write(MOVED)
    (data_dir / "papers.live.json").write_text(json.dumps(MOVED.to_json() | names))
    with pytest.raises(StoreError, match="is no collection name"):
        pointers.read()
    for name in ("../victim", "", "."):
        with pytest.raises(StoreError, match="refusing to delete"):
            pointers.drop(name)
    assert victim.is_dir() and data_dir.is_dir()


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


def test_a_pointer_the_process_cannot_read_is_the_index_unavailable(tmp_path: Path) -> None:
    """A data dir or pointer file the gateway could not read (its permissions; here a name too
    long for the file system) raised the OSError itself: INTERNAL to every caller, never
    retried, where the index says UNAVAILABLE for the same data dir."""
    from papersearch.gateway.errors import to_status

    pointers = EdgePointers(IndexSettings(data_dir=tmp_path / ("x" * 300)))
    collections = Collections(Settings(), make_pointers=lambda _: pointers)
    with pytest.raises(StoreUnavailable, match="cannot read collection pointer") as unread:
        asyncio.run(collections.live())
    code, message = to_status(unread.value)
    assert code.name == "UNAVAILABLE" and "the index is unavailable" in message


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
    from ray._private import services

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster's address file there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # nor any other Ray on this machine: "auto" joins whatever GCS `ps` shows (another test's
    # cluster still shutting down, a `make run`), and hung connecting to a dying one
    monkeypatch.setattr(services, "_find_address_from_flag", lambda flag: [])
    services.find_gcs_addresses.cache_clear()  # type: ignore[attr-defined]
    assert main(["index", "migrate", "--finish"]) == 2
    assert "no Ray cluster at 'auto'" in capsys.readouterr().err


class Opened:
    """An index access that counts its opens and closes: each one is added to ``opened``, a
    list of the test's own (a list on the class kept the opens of an earlier run)."""

    def __init__(self, opened: list[Opened]) -> None:
        self.closed = False
        opened.append(self)

    async def close(self) -> None:
        self.closed = True


def _one_embedder(tmp_path: Path) -> Settings:
    """Settings whose model repository holds one embedder, minilm@1 (its manifest only)."""
    repository = tmp_path / "models"
    (repository / "minilm" / "1").mkdir(parents=True)
    (repository / "minilm" / "1" / MANIFEST).write_text(json.dumps(
        {"name": "minilm", "version": 1, "kind": "embedder", "source": "s", "fingerprint": "f",
         "max_length": 8, "dim": 4, "files": {"model.onnx": "a" * 64}}))
    return Settings(models={"repository": repository, "embedder_name": "minilm"})


def test_a_failed_or_cancelled_resolve_leaves_nothing_open(tmp_path: Path) -> None:
    """The previous collection failing to open: the live collection was opened, dropped
    unclosed, and opened again on every call (5 calls, 5 opens, 0 closes). A call cancelled
    while the collection opens in its thread leaves the open to the next call, which takes it
    over: the open had been closed and begun again at every call, so an open longer than the
    health poll's timeout never let readiness come. Closing the collections closes an open
    nobody took over."""
    settings = _one_embedder(tmp_path)

    class Swapped(Unreachable):
        def read(self) -> Pointer | None:
            return Pointer("papers-new", "minilm@1", "papers", "minilm@1")

    class Unmigrated(Unreachable):
        def read(self) -> Pointer | None:
            return None

    opened: list[Opened] = []

    def live_only(_: Settings, view: View) -> Opened:
        if view.collection == "papers":
            raise StoreUnavailable("the previous collection is not reachable")
        return Opened(opened)

    def slow_open(_: Settings, __: object) -> Opened:
        time.sleep(0.2)
        return Opened(opened)

    async def resolves() -> None:
        collections = Collections(settings, make_access=live_only,  # type: ignore[arg-type]
                                  make_pointers=lambda _: Swapped(settings.index), retry_s=0)
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match="previous collection"):
                await collections.live()
        assert len(opened) == 3 and all(a.closed for a in opened)
        opened.clear()
        cancelled = Collections(settings, make_access=slow_open,  # type: ignore[arg-type]
                                make_pointers=lambda _: Unmigrated(settings.index))
        for _ in range(3):  # polls shorter than the open
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(cancelled.live(), 0.05)
        live = await asyncio.wait_for(cancelled.live(), 1.0)
        assert len(opened) == 1 and live.index is opened[0] and not opened[0].closed
        await cancelled.close()
        assert opened[0].closed
        opened.clear()
        left = Collections(settings, make_access=slow_open,  # type: ignore[arg-type]
                           make_pointers=lambda _: Unmigrated(settings.index))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(left.live(), 0.05)
        await left.close()  # waits for the open in its thread, then closes it
        assert len(opened) == 1 and opened[0].closed
        opened.clear()
        # closed while a caller waits on the open, and closed twice at once (the drain, then
        # the replica's own close): the loop over the opens had failed "dictionary changed
        # size during iteration"; the caller is told, and nothing is opened after the close
        racing = Collections(settings, make_access=slow_open,  # type: ignore[arg-type]
                             make_pointers=lambda _: Unmigrated(settings.index))
        waiting = asyncio.ensure_future(racing.live())
        await asyncio.sleep(0.05)
        await asyncio.gather(racing.close(), racing.close())
        with pytest.raises(NotReady, match="collections are closed"):
            await waiting
        assert len(opened) == 1 and opened[0].closed

    asyncio.run(resolves())


def test_a_missing_previous_embedder_leaves_the_live_collection_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A restart with only the new model exported (an image that dropped the old one) made
    every call, searches of the live collection and --finish included, fail with
    ModelNotFound. Now the live collection is served; --rollback and a new start are refused
    saying why; --finish deletes the previous collection; an export of the model brings the
    migration's other collection back."""
    settings = _one_embedder(tmp_path)
    swapped = Pointer("papers-new", "minilm@1", "papers", "old@1")

    class Recorded(Unreachable):
        def __init__(self, settings: IndexSettings) -> None:
            super().__init__(settings)
            self.pointer: Pointer | None = swapped
            self.dropped: list[str] = []

        def read(self) -> Pointer | None:
            return self.pointer

        def write(self, pointer: Pointer) -> None:
            self.pointer = pointer

        def drop(self, collection: str) -> None:
            self.dropped.append(collection)

    pointers = Recorded(settings.index)
    indexes: dict[str, FakeIndex] = {}

    def access(_: Settings, view: View) -> FakeIndex:
        return indexes.setdefault(view.collection, FakeIndex())

    async def encode(_: ModelRef, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), 4), np.float32)

    def migrator() -> Migrator:
        collections = Collections(settings, make_access=access,  # type: ignore[arg-type]
                                  make_pointers=lambda _: pointers)
        return Migrator(collections, encode, batch=8)

    async def steps() -> None:
        first = migrator()
        live = await first.collections.live()
        assert live.view.collection == "papers-new" and first.collections.other is None
        assert list(indexes) == ["papers-new"]  # the previous one is not opened
        with pytest.raises(MigrationRefused, match=r"--rollback: the previous embedder old@1 "
                                                   r"of papers is not exported here"):
            await first.rollback()
        with pytest.raises(MigrationRefused, match=r"run `papersearch index migrate --finish` "
                                                   r"first"):
            await first.start(ModelRef.parse("minilm", settings.models.repository))
        for _ in range(5):  # what every request does: said once, not at each
            await first.resume()
        assert caplog.text.count("its previous embedder missing") == 1
        # exported again: the other collection is bound, and a rollback could run
        shutil.copytree(settings.models.repository / "minilm",
                        settings.models.repository / "old")
        again = migrator()
        await again.resume()
        assert again.collections.other is not None and again.mirror is not None
        shutil.rmtree(settings.models.repository / "old")
        report = await migrator().finish()
        assert report.live_collection == "papers-new" and report.warning is None
        assert pointers.pointer == Pointer("papers-new", "minilm@1")
        assert pointers.dropped == ["papers"]

    asyncio.run(steps())


class FakeIndex:
    """A collection's stand-in for the migration's own logic (the real one: test_migration)."""

    def __init__(self) -> None:
        self.data: dict[str, Paper] = {}

    async def upsert(self, papers: list[Paper], dense: np.ndarray) -> int:
        self.data.update((p.point_id, p) for p in papers)
        return len(papers)

    async def delete(self, ids: list[str]) -> int:
        return 0

    async def papers(self, point_ids: list[str]) -> list[Paper]:
        return [self.data[p] for p in point_ids if p in self.data]

    async def point_ids(self) -> list[str]:
        return list(self.data)

    async def ready(self) -> int:
        return len(self.data)

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Flaky(Unreachable):
    """A pointer store whose write lands, then reports a failure (a rename whose directory
    fsync failed, a server whose answer was lost), and whose reads fail ``unreadable`` times."""

    def __init__(self, settings: IndexSettings, pointer: Pointer, unreadable: int = 0,
                 held: bool = False) -> None:
        super().__init__(settings)
        self.pointer, self.unreadable, self.held = pointer, unreadable, held
        self.dropped: list[str] = []
        self.entered, self.proceed = threading.Event(), threading.Event()

    def read(self) -> Pointer | None:
        if self.unreadable > 0:
            self.unreadable -= 1
            raise StoreUnavailable("qdrant: deadline exceeded")
        if self.held:  # the read-back after a failed write: held as the write is
            self.entered.set()
            assert self.proceed.wait(10)
        return self.pointer

    def write(self, pointer: Pointer) -> None:
        """Lands, then reports a failure; ``held``: waits for ``proceed`` first, and lands
        without one."""
        if self.held:
            self.entered.set()
            assert self.proceed.wait(10)
            self.pointer = pointer
            return
        self.pointer = pointer
        raise StoreUnavailable("qdrant: deadline exceeded")

    def drop(self, collection: str) -> None:
        self.dropped.append(collection)


def swapped_gateway(pointers_of: Callable[[Pointer], Flaky]) -> tuple[Migrator, Flaky]:
    """A gateway mid-migration: live papers-new (embedder b), other papers (a), mirrored."""
    from papersearch.pipeline.migration import Migrator

    new = Bound(View("papers-new", ModelRef("b", 1), "shaB", 4), FakeIndex())  # type: ignore[arg-type]
    old = Bound(View("papers", ModelRef("a", 1), "shaA", 4), FakeIndex())  # type: ignore[arg-type]
    swapped = Pointer("papers-new", "b@1", "papers", "a@1")
    pointers = pointers_of(swapped)
    collections = Collections(Settings(), make_pointers=lambda _: pointers)
    collections.switch(new, old, swapped)

    async def encode(_: ModelRef, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), 4), np.float32)

    return Migrator(collections, encode, batch=8), pointers


def test_a_pointer_write_that_failed_but_went_through_stands() -> None:
    """The gateway kept its old view while the pointer named the new one: ingest jobs (and a
    restarted gateway) then wrote where it did not search."""
    migrator, pointers = swapped_gateway(lambda p: Flaky(IndexSettings(), p))
    report = asyncio.run(migrator.rollback())
    assert pointers.pointer.live == "papers" == migrator.collections.current.view.collection
    assert report.warning is not None and "reads back as written" in report.warning


def test_an_unknown_commit_keeps_both_collections_written_and_is_settled_next() -> None:
    """A write that failed and a pointer that could not be read back: mirroring was turned
    off and the gateway kept writing to one collection while the pointer may name the other.
    Now both keep getting every write, and the next step follows the pointer, then stops."""
    migrator, pointers = swapped_gateway(lambda p: Flaky(IndexSettings(), p, unreadable=1))

    async def steps() -> None:
        with pytest.raises(MigrationFailed, match="unknown"):
            await migrator.rollback()
        live = migrator.collections.current
        assert live is not None and live.view.collection == "papers-new"  # not switched
        paper = Paper(id="acked", title="A write meanwhile", abstract="lands in both")
        assert migrator.mirror is not None
        await migrator.mirror.upsert(live, [paper], np.zeros((1, 4), np.float32))
        other = migrator.collections.other
        assert other is not None
        assert paper.point_id in live.index.data and paper.point_id in other.index.data  # type: ignore[attr-defined]
        with pytest.raises(MigrationRefused, match="had taken effect after all"):
            await migrator.finish()  # what the operator runs next: it settles, then stops
        assert migrator.collections.current.view.collection == "papers" == pointers.pointer.live
        assert pointers.dropped == []  # nothing else done

    asyncio.run(steps())


def test_a_cancelled_swap_returns_only_once_its_pointer_is_written() -> None:
    """The write goes on in its thread when the step is cancelled, a second time too (a
    client's cancel, then a shutdown's): the cleanup after the cancel must see the outcome;
    one that read the old pointer dropped the collection the finished write then named."""
    migrator, pointers = swapped_gateway(lambda p: Flaky(IndexSettings(), p, held=True))
    back = Pointer("papers", "a@1", "papers-new", "b@1")
    switched: list[Pointer] = []

    async def cancelled_twice() -> None:
        step = asyncio.ensure_future(migrator._commit(back, lambda: switched.append(back)))
        assert await asyncio.to_thread(pointers.entered.wait, 10)  # the write is running
        for _ in range(2):
            step.cancel()
            await asyncio.sleep(0.05)
            assert not step.done()  # waits for the write, cancelled once or twice
        pointers.proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await step
        assert pointers.pointer == back and switched == [back]  # written, then switched

    asyncio.run(cancelled_twice())


def test_a_finish_cancelled_at_its_commit_still_drops_the_collection_it_left() -> None:
    """A finish cancelled while its pointer was written switched the gateway, but its caller
    never ran the drop: the collection the pointer no longer names stayed open and on disk,
    and nothing would drop it later."""
    migrator, pointers = swapped_gateway(lambda p: Flaky(IndexSettings(), p, held=True))

    async def cancelled_finish() -> None:
        step = asyncio.ensure_future(migrator.finish())
        assert await asyncio.to_thread(pointers.entered.wait, 10)  # the write is running
        step.cancel()
        await asyncio.sleep(0.05)
        pointers.proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await step
        assert pointers.pointer.previous is None and pointers.dropped == ["papers"]

    asyncio.run(cancelled_finish())


def test_a_cancel_during_the_read_back_still_switches_to_a_written_pointer() -> None:
    """The read-back after a failed write was not shielded: a cancel there left the gateway
    on the old view (and a start's cleanup dropped the collection the pointer named)."""
    class ReadHeld(Flaky):
        def write(self, pointer: Pointer) -> None:
            self.held = True  # the write lands and fails at once; the read-back is held
            self.pointer = pointer
            raise StoreUnavailable("qdrant: deadline exceeded")

    migrator, pointers = swapped_gateway(lambda p: ReadHeld(IndexSettings(), p))
    back = Pointer("papers", "a@1", "papers-new", "b@1")
    switched: list[Pointer] = []

    async def cancelled_in_the_read() -> None:
        step = asyncio.ensure_future(migrator._commit(back, lambda: switched.append(back)))
        assert await asyncio.to_thread(pointers.entered.wait, 10)  # reading back
        step.cancel()
        await asyncio.sleep(0.05)
        assert not step.done()
        pointers.proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await step
        assert switched == [back]  # it read back as written: switched, then the cancel

    asyncio.run(cancelled_in_the_read())


def test_a_finish_settled_later_also_drops_the_collection_it_left() -> None:
    """Settled as taken effect, a finish switched and stopped mirroring, but the collection
    it left stayed open and on disk with nothing to drop it."""
    migrator, pointers = swapped_gateway(lambda p: Flaky(IndexSettings(), p, unreadable=1))

    async def steps() -> None:
        with pytest.raises(MigrationFailed, match="unknown"):
            await migrator.finish()
        assert pointers.dropped == [] and migrator.mirror is not None  # both still written
        with pytest.raises(MigrationRefused, match="had taken effect after all"):
            await migrator.rollback()
        assert pointers.dropped == ["papers"] and migrator.mirror is None
        assert migrator.collections.other is None

    asyncio.run(steps())


def test_a_version_the_pointer_names_missing_or_damaged_says_to_restore_it(
        embedder_dir: Path, tmp_path: Path) -> None:
    """After a migration the pointer names the embedder's exact version. That version damaged
    or deleted, the error said "export the model again", which made a new version the pointer
    does not name: the index stayed down. It says which version to restore."""
    from papersearch.models.manifest import ModelCorrupt
    from papersearch.pipeline.collections import live_view, previous_view
    from papersearch.settings import Settings

    name = embedder_dir.parent.name
    shutil.copytree(embedder_dir, tmp_path / name / "1")
    shutil.copytree(embedder_dir, tmp_path / name / "2")
    manifest = json.loads((tmp_path / name / "2" / MANIFEST).read_text())
    (tmp_path / name / "2" / MANIFEST).write_text(json.dumps({**manifest, "version": 2}))
    settings = Settings(models={"repository": tmp_path, "embedder_name": name})
    pointer = Pointer("papers-b", f"{name}@2", "papers-a", f"{name}@1")
    assert live_view(settings, pointer).embedder == ModelRef(name, 2)
    (tmp_path / name / "2" / MANIFEST).write_text("{")
    with pytest.raises(ModelCorrupt, match=rf"collection papers-b was built by {name}@2, which "
                                           "the migration pointer names: restore that"):
        live_view(settings, pointer)
    shutil.rmtree(tmp_path / name / "1")
    with pytest.raises(ModelNotFound, match=rf"has no version 1 .* \(collection papers-a was "
                                            rf"built by {name}@1"):
        previous_view(settings, pointer)
