"""Zero-downtime embedder migration (pipeline/migration.py) under a concurrent search and write
loop: with both index backends in-process, and through the real service (Ray Serve + gRPC).

The second embedder is the same MiniLM weights exported with CLS pooling instead of mean
pooling: another graph (another sha) and other rankings. Probe searches are dense, so the
concurrent writes cannot change their answers: the loop writes papers about bread (far from
every probe) and re-writes sample papers unchanged. Every probe answer must then equal the
old embedder's list or the new one's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient

from papersearch.corpus.paper import Paper, point_id
from papersearch.corpus.readers import read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.index.edge import EdgeStore
from papersearch.index.plan import PointData, Program, Write
from papersearch.index.pointer import EdgePointers, Pointers, ServerPointers, physical_name
from papersearch.index.schema import to_payload
from papersearch.index.server import ServerStore
from papersearch.index.sparse import SparseVector
from papersearch.index.store import Store
from papersearch.models.manifest import ModelRef
from papersearch.pipeline.collections import Collections, View, settings_for
from papersearch.pipeline.index_access import IndexAccess
from papersearch.pipeline.migration import MigrationRefused
from papersearch.pipeline.query import SearchQuery
from papersearch.pipeline.search import SearchPipeline
from papersearch.pipeline.serve_backend import HandleBackend
from papersearch.retriever.opener import CollectionOpener
from papersearch.retriever.retriever import Retriever
from papersearch.settings import Settings
from tests.conftest import ROOT, SAMPLE_CORPUS
from tests.ports import free_port
from tests.test_index_access import async_twin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]

OLD, NEW = "minilm-l6", "minilm-cls"
PROBES = 8


@pytest.fixture(scope="module")
def cls_embedder(model_settings: Settings, embedder_dir: Path) -> Path:
    """MiniLM exported again with CLS pooling, as ``minilm-cls`` in the same repository."""
    from papersearch.modelbuild.prepare import export_cls_variant

    return export_cls_variant(model_settings, NEW)


@pytest.fixture(scope="module")
def papers() -> list[Paper]:
    return list(read_corpus(SAMPLE_CORPUS))[:160]


def quiet(papers: list[Paper], probes: list[str], encoders: list[Encoder]) -> list[Paper]:
    """Papers far from every probe's top 10 under each encoder: re-writing them (their vectors
    come out slightly different, int8 quantises per batch) cannot change a probe's answer."""
    far = np.ones(len(papers), dtype=bool)
    for encoder in encoders:
        cosines = encoder.encode_queries(probes) @ encoder.encode_documents(
            [p.text for p in papers]).T
        ranked = np.sort(cosines, axis=1)
        far &= (cosines < np.minimum(ranked[:, -10] - 0.01, ranked[:, -30])[:, None]).all(axis=0)
    return [p for p, keep in zip(papers, far, strict=True) if keep]


def bread(n: int) -> Paper:
    return Paper(id=f"bread-{n}", title=f"Sourdough bread, bake number {n}",
                 abstract="Flour, water and salt rested overnight, then baked in a hot oven.")


# -- the migration in-process, both backends -------------------------------------------------


class _Remote:
    """A deployment method stand-in: ``remote`` returns an awaitable task, as a handle does."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call

    def remote(self, *args: Any) -> asyncio.Task[Any]:
        return asyncio.ensure_future(self.call(*args))


class LocalModels:
    """The QueryEncoder deployment's methods run in this process with the real ONNX encoders
    (the served path is tested below, through Ray Serve). Documents whose text holds
    ``fail_for`` fail with ``fail_key``'s encoder, as an unavailable replica would: each text
    once with ``once``, else always."""

    def __init__(self, repository: Path, fail_for: str | None = None, once: bool = True,
                 delay_s: float = 0.0, fail_key: str = NEW) -> None:
        self.repository = repository
        self.delay_s = delay_s  # per call, as a remote replica's round trip
        self.fail_for = fail_for
        self.fail_key = fail_key
        self.once = once
        self.failed: set[str] = set()
        self.encoders: dict[str, Encoder] = {}
        self.encode = _Remote(self._queries)
        self.encode_documents = _Remote(self._documents)

    def encoder(self, key: str) -> Encoder:
        if key not in self.encoders:
            self.encoders[key] = Encoder(ModelRef.parse(key, self.repository).path(
                self.repository))
        return self.encoders[key]

    async def _queries(self, texts: list[str], key: str) -> np.ndarray:
        await asyncio.sleep(self.delay_s)  # searches are mid-encode when the swap comes
        return self.encoder(key).encode_queries(texts)

    async def _documents(self, texts: list[str], key: str) -> np.ndarray:
        await asyncio.sleep(self.delay_s)  # the copy's chunks interleave with the writes
        failing = {t for t in texts if self.fail_for and self.fail_for in t} - (
            self.failed if self.once else set())
        if failing and key.startswith(self.fail_key):
            self.failed |= failing
            raise RuntimeError("encoder replica unavailable")
        return self.encoder(key).encode_documents(texts)


class SharedServerStore(ServerStore):
    def _close(self) -> None:  # the test's shared local-mode client outlives each store
        pass


class SharedServerPointers(ServerPointers):
    def close(self) -> None:
        pass


def _collections(settings: Settings, client: QdrantClient | None
                 ) -> tuple[Collections, Callable[[str], Store]]:
    """Collections of the embedded backend, or (with a local-mode ``client``) of the server
    one, and a way to open any physical collection to inspect it."""
    if client is None:
        def inspect_edge(collection: str) -> Store:
            return EdgeStore(settings_for(settings, collection).index)
        return Collections(settings), inspect_edge

    def access(s: Settings, view: View) -> IndexAccess:
        return IndexAccess(CollectionOpener(
            settings_for(s, view.collection), view.dim, view.sha256,
            make_store=lambda st: SharedServerStore(st.index, client=client)),
            make_client=lambda _: async_twin(client))

    def pointers(s: Settings) -> Pointers:
        return SharedServerPointers(s.index, client=client)

    def inspect_server(collection: str) -> Store:
        return SharedServerStore(settings_for(settings, collection).index, client=client)
    return Collections(settings, access, pointers), inspect_server


def _fill(store: Store, encoder: Encoder, papers: list[Paper], legacy: int = 10) -> None:
    """``papers`` indexed; the first ``legacy`` as points written before the ``indexed_at``
    stamp existed (no such payload field)."""
    store.ensure_collection(encoder.dim, encoder.sha256, create=True)
    retriever = Retriever(store)
    dense = encoder.encode_documents([p.text for p in papers])
    retriever.upsert(papers[legacy:], dense[legacy:])
    old = [PointData(p.point_id, vector.tolist(), SparseVector.of(terms), to_payload(p))
           for p, vector, terms in zip(papers[:legacy], dense[:legacy], retriever.bm25.papers(
               papers[:legacy]), strict=True)]

    def unstamped() -> Program[None]:
        yield Write(tuple(old))

    store.execute(unstamped())


def _ids(store: Store, encoder: Encoder) -> set[str]:
    store.ensure_collection(encoder.dim, encoder.sha256)
    return set(store.execute(store.point_ids_program()))


class Loop:
    """Searches (dense probes) and writes (bread papers upserted and some deleted, sample
    papers re-written unchanged) until stopped; what was acknowledged is recorded."""

    def __init__(self, pipeline: SearchPipeline, backend: HandleBackend,
                 probes: list[str], papers: list[Paper]) -> None:
        self.pipeline, self.backend, self.probes, self.papers = pipeline, backend, probes, papers
        self.answers: list[tuple[int, tuple[str, ...]]] = []
        self.failures: list[str] = []
        self.kept: set[str] = set()
        self.deleted: set[str] = set()
        self.refused: set[str] = set()  # papers of writes not acknowledged (see ``writing``)
        self.stop = asyncio.Event()

    async def search(self, probe: int) -> tuple[str, ...]:
        result = await self.pipeline.search(SearchQuery(self.probes[probe], mode="dense",
                                                        rerank=False))
        return tuple(h.paper.id for h in result.hits)

    async def searching(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                self.answers.append((n % PROBES, await self.search(n % PROBES)))
            except Exception as error:  # noqa: BLE001 (counted: the test wants none)
                self.failures.append(repr(error))
            n += 1
            await asyncio.sleep(0)

    async def writing(self, marker: str = "") -> None:
        n = 0
        while not self.stop.is_set():
            batch = [bread(n + i) for i in range(3)]
            mirror = self.backend.migrator.mirror
            if marker and n % 9 == 0 and mirror is not None and mirror.copying:
                batch[0] = Paper(id=batch[0].id, title=batch[0].title + marker,
                                 abstract=batch[0].abstract)
            again = [self.papers[(n + i) % len(self.papers)] for i in range(3)]
            backend = self.backend.pinned()
            try:
                await backend.upsert(batch + again, await backend.encode_documents(
                    [p.text for p in batch + again]))
            except RuntimeError:  # the marked paper's first encode by the live embedder failed
                assert marker in batch[0].title
                self.refused.update(p.point_id for p in batch)
            else:
                self.kept.update(p.id for p in batch)
            if n % 6 == 0:
                gone = [bread(n).id]
                await self.backend.delete(gone)
                self.kept.difference_update(gone)
                self.deleted.update(gone)
            n += 3
            await asyncio.sleep(0.01)


class _Lost:
    """A collection whose writes fail after they may have been applied (the answer lost)."""

    def __init__(self) -> None:
        self.calls = 0

    async def upsert(self, papers: Any, dense: Any) -> int:
        self.calls += 1
        raise RuntimeError("qdrant upsert: the answer was lost")

    async def delete(self, paper_ids: Any) -> int:
        self.calls += 1
        raise RuntimeError("qdrant delete: the answer was lost")


def _lost_pair(*, live: str, copying: bool) -> tuple[Any, Any, Any]:
    """Collections papers-a and papers-b, mirrored, whose every write fails with its answer
    lost (_Lost), ``live`` the live one; no repository needed: nothing is encoded."""
    from papersearch.pipeline.collections import Bound
    from papersearch.pipeline.migration import Mirror

    ref = ModelRef("minilm-l6", 1)
    a, b = (Bound(View(name, ref, "sha", 4), cast(IndexAccess, _Lost()))
            for name in ("papers-a", "papers-b"))
    current = a if live == "papers-a" else b
    return a, b, Mirror((a, b), cast(Any, None), cast(Any, SimpleNamespace(current=current)),
                        copying=copying)


def test_a_failed_write_is_pending_for_the_other_collection() -> None:
    """A write that fails in the caller's collection may still have landed there: its ids are
    pending for the other one, whose reconcile or re-sync then copies their state across
    (as for a failed mirror write); the mirror is not written, the error reaches the client."""
    live, other, mirror = _lost_pair(live="papers-a", copying=True)
    paper = Paper(id="lost-1", title="A write whose answer was lost", abstract="")
    with pytest.raises(RuntimeError, match="answer was lost"):
        asyncio.run(mirror.upsert(live, [paper], np.zeros((1, 4), np.float32)))
    with pytest.raises(RuntimeError, match="answer was lost"):
        asyncio.run(mirror.delete(live, ["lost-2"]))
    assert mirror.missed_by("papers-b") == sorted([paper.point_id, point_id("lost-2")])
    assert mirror.missed_by("papers-a") == [] and cast(_Lost, other.index).calls == 0


def test_a_failed_write_pinned_to_the_old_view_after_the_swap_is_pending_for_the_old() -> None:
    """After the swap a write pinned to the old view (encoded before it) failed there: its ids
    were marked pending for the live collection, and --finish or --rollback then copied the
    old collection's stale paper over the live one's acknowledged version."""
    old, _, mirror = _lost_pair(live="papers-b", copying=False)
    paper = Paper(id="pinned-1", title="A write that waited through the swap", abstract="")
    with pytest.raises(RuntimeError, match="answer was lost"):
        asyncio.run(mirror.upsert(old, [paper], np.zeros((1, 4), np.float32)))
    assert mirror.missed_by("papers-a") == [paper.point_id]  # made what the live one holds
    assert mirror.missed_by("papers-b") == []


def test_an_embedded_collection_that_cannot_be_deleted_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drop on a read-only volume (migration's --finish) said nothing and left the whole
    collection on disk, so the finish never warned "delete it by hand"; a missing one is no
    error."""
    import errno
    import os

    from papersearch.index.errors import StoreError

    (tmp_path / "papers-old" / "segments").mkdir(parents=True)
    (tmp_path / "papers-old" / "segments" / "0.dat").write_bytes(b"x")
    pointers = EdgePointers(Settings(index={"data_dir": tmp_path}).index)

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patched:  # a read-only volume refuses renames too
        patched.setattr(os, "unlink", read_only)
        patched.setattr(os, "rename", read_only)
        with pytest.raises(StoreError, match="could not delete collection .*papers-old"):
            pointers.drop("papers-old")
    assert (tmp_path / "papers-old").exists()
    pointers.drop("papers-old")
    pointers.drop("papers-old")  # gone: no error
    assert not (tmp_path / "papers-old").exists()


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_migration_under_searches_and_writes(backend: str, sample_settings: Settings,
                                             embedder_dir: Path, cls_embedder: Path,
                                             papers: list[Paper], tmp_path: Path) -> None:
    settings = settings_for(sample_settings.model_copy(update={"index": sample_settings.index
                                                               .model_copy(update={
                                                                   "data_dir": tmp_path})}),
                            "papers")
    repository = settings.models.repository
    old, new = Encoder(embedder_dir), Encoder(cls_embedder)
    client = QdrantClient(":memory:") if backend == "server" else None
    collections, inspect = _collections(settings, client)
    with inspect("papers") as source:
        _fill(source, old, papers)
    settings = settings.model_copy(update={"serve": settings.serve.model_copy(
        update={"upsert_batch_size": 8})})  # the copy in 20 chunks
    models = LocalModels(repository, fail_for=" [mirror fails]", delay_s=0.02)
    handles = HandleBackend(models, None, collections, settings)  # type: ignore[arg-type]
    pipeline = SearchPipeline(handles, settings.search)
    probes = [p.title for p in papers[:PROBES * 5:5]]
    rewritten = quiet(papers, probes, [old, new])
    assert len(rewritten) >= 20
    loop = Loop(pipeline, handles, probes, rewritten)
    target = physical_name("papers", new.sha256)

    async def scenario() -> dict[str, Any]:
        before = [await loop.search(i) for i in range(PROBES)]
        tasks = [asyncio.create_task(loop.searching()) for _ in range(4)]
        tasks.append(asyncio.create_task(loop.writing(" [mirror fails]")))
        await asyncio.sleep(0.3)
        report = (await handles.migrator.start(ModelRef.parse(NEW, repository))).to_json()
        await asyncio.sleep(0.5)
        loop.stop.set()
        await asyncio.gather(*tasks)
        after = [await loop.search(i) for i in range(PROBES)]
        return {"before": before, "after": after, "report": report}

    outcome = asyncio.run(scenario())
    before, after, report = outcome["before"], outcome["after"], outcome["report"]
    assert loop.failures == []
    assert sum(b != a for b, a in zip(before, after, strict=True)) >= PROBES // 2, \
        "the two embedders should rank most probes differently"
    seen = {"old": 0, "new": 0}
    for probe, answer in loop.answers:
        assert answer in (before[probe], after[probe]), f"probe {probe}: a mixed answer"
        seen["old" if answer == before[probe] else "new"] += 1
    assert seen["old"] > 0 and seen["new"] > 0, seen
    assert report["live_collection"] == target and report["previous_collection"] == "papers"
    assert report["live_count"] == report["previous_count"] > len(papers)  # at the swap
    assert report["skipped_dirty"] > 0 and report["reconciled"] > 0  # a failed mirror write

    # No write lost, on either side: the previous collection is kept in step.
    asyncio.run(collections.close())
    expected = {point_id(p.id) for p in papers} | {point_id(i) for i in loop.kept}
    with inspect(target) as live, inspect("papers") as previous:
        for ids in (_ids(live, new), _ids(previous, old)):  # a refused write may have landed
            assert expected <= ids <= expected | loop.refused
            assert not {point_id(i) for i in loop.deleted} & ids

    # A gateway restarted now finds the swapped state in the pointer; rollback, then finish.
    # Its first write rewrites a paper, and that write's mirror into the old collection fails.
    restarted, _ = _collections(settings, client)
    models = LocalModels(repository, fail_for=" [shadow fails]", fail_key=OLD)
    handles = HandleBackend(models, None, restarted, settings)  # type: ignore[arg-type]
    rewritten_paper = Paper(id=papers[-1].id, title=papers[-1].title + " [shadow fails]",
                            abstract=papers[-1].abstract)
    loop.pipeline = SearchPipeline(handles, settings.search)

    async def back_and_finish() -> tuple[list[tuple[str, ...]], dict[str, Any]]:
        assert (await restarted.live()).view.collection == target
        with pytest.raises(MigrationRefused, match="swapped but not finished"):
            await handles.migrator.start(ModelRef.parse(OLD, repository))
        pinned = handles.pinned()
        await pinned.upsert([rewritten_paper], await pinned.encode_documents(
            [rewritten_paper.text]))
        assert handles.migrator.mirror is not None
        assert handles.migrator.mirror.missed_by("papers") == [rewritten_paper.point_id]
        await handles.migrator.rollback()
        assert (await handles.pinned().get(rewritten_paper.id)).title == rewritten_paper.title
        backend_now = handles.pinned()
        await backend_now.upsert([bread(9999)], await backend_now.encode_documents(
            [bread(9999).text]))
        rolled = [await loop.search(i) for i in range(PROBES)]
        finished = (await handles.migrator.finish()).to_json()
        await restarted.close()
        return rolled, finished

    rolled, finished = asyncio.run(back_and_finish())
    assert rolled == before
    assert finished["live_collection"] == "papers" and finished["previous_collection"] is None
    assert finished["live_count"] == len(expected) + 1
    with inspect("papers") as live:
        assert point_id("bread-9999") in _ids(live, old)
    if backend == "edge":
        assert not (tmp_path / target).exists()
        assert EdgePointers(settings.index).read() is not None


def test_an_update_another_writer_makes_during_the_reconcile_reaches_the_new_collection(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path,
        papers: list[Paper], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingest --update rewriting a paper while the reconcile scans (server backend: another
    process writes the same collection): the reconcile had read the stamps before, the counts
    still matched, the ingest's pointer check came before the swap, and the new live
    collection kept the old text (the right one dropped at --finish)."""
    settings = settings_for(sample_settings.model_copy(update={"index": sample_settings.index
                                                               .model_copy(update={
                                                                   "data_dir": tmp_path})}),
                            "papers")
    old, new = Encoder(embedder_dir), Encoder(cls_embedder)
    client = QdrantClient(":memory:")
    collections, inspect = _collections(settings, client)
    with inspect("papers") as source:
        _fill(source, old, papers[:20], legacy=1)
    updated = Paper(id=papers[3].id, title=papers[3].title + " (revised)",
                    abstract=papers[3].abstract)
    scans, written = 0, False
    point_ids, ready = IndexAccess.point_ids, IndexAccess.ready

    async def counting_scans(self: IndexAccess) -> list[str]:
        nonlocal scans
        scans += self.opener.settings.index.collection == "papers"
        return await point_ids(self)

    async def counted_while_written(self: IndexAccess) -> int:
        nonlocal written
        if self.opener.settings.index.collection == "papers" and scans == 2 and not written:
            written = True  # the reconcile has scanned and resynced: its counts come next
            with inspect("papers") as store:
                store.ensure_collection(old.dim, old.sha256)
                Retriever(store).upsert([updated], old.encode_documents([updated.text]))
        return await ready(self)

    monkeypatch.setattr(IndexAccess, "point_ids", counting_scans)
    monkeypatch.setattr(IndexAccess, "ready", counted_while_written)
    handles = HandleBackend(LocalModels(settings.models.repository), None, collections,
                            settings)  # type: ignore[arg-type]

    async def migrate() -> dict[str, Any]:
        report = (await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository)))
        await collections.close()
        return report.to_json()

    report = asyncio.run(migrate())
    assert written and report["warning"] is None
    with inspect(report["live_collection"]) as live:
        live.ensure_collection(new.dim, new.sha256)
        assert Retriever(live).get(updated.id).title == updated.title


def _refusing_copy(sample_settings: Settings, embedder_dir: Path, papers: list[Paper],
                   data_dir: Path) -> tuple[Settings, Collections, HandleBackend]:
    """A live collection of 20 papers in ``data_dir``, behind a backend whose new encoder
    refuses any paper about sourdough."""
    settings = sample_settings.model_copy(update={"index": sample_settings.index.model_copy(
        update={"data_dir": data_dir})})
    collections, inspect = _collections(settings, None)
    with inspect("papers") as source:
        _fill(source, Encoder(embedder_dir), papers[:20])
    handles = HandleBackend(LocalModels(settings.models.repository, fail_for="Sourdough",
                                        once=False), None,
                            collections, settings)  # type: ignore[arg-type]
    return settings, collections, handles


async def _copy_fails(handles: HandleBackend, collections: Collections,
                      repository: Path) -> None:
    """A sourdough paper written, then a start to the new encoder, whose copy fails on it:
    the live collection stays where it was."""
    backend = handles.pinned()
    await backend.upsert([bread(1)], await backend.encode_documents([bread(1).text]))
    with pytest.raises(RuntimeError, match="unavailable"):
        await handles.migrator.start(ModelRef.parse(NEW, repository))
    assert (await collections.live()).view.collection == "papers"
    await collections.close()


def test_refusals_leave_the_live_collection_alone(sample_settings: Settings, embedder_dir: Path,
                                                  cls_embedder: Path, papers: list[Paper],
                                                  tmp_path: Path) -> None:
    settings, collections, handles = _refusing_copy(sample_settings, embedder_dir, papers,
                                                    tmp_path)
    repository = settings.models.repository

    async def attempts() -> None:
        with pytest.raises(MigrationRefused, match="already built by"):
            await handles.migrator.start(ModelRef.parse(OLD, repository))
        for step in (handles.migrator.rollback, handles.migrator.finish):
            with pytest.raises(MigrationRefused, match="no migration is waiting"):
                await step()
        # The copy itself fails (the new encoder refuses a paper): the partial copy is dropped.
        await _copy_fails(handles, collections, repository)

    asyncio.run(attempts())
    assert not any(p.name.startswith("papers-") for p in tmp_path.iterdir())
    assert EdgePointers(settings.index).read() is None


def test_the_new_collection_is_optimized_and_on_disk_before_a_pointer_names_it(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is built as an ingest leaves an index (optimized: unbuilt, every dense search
    was exhaustive, for good), and each collection a pointer comes to name is flushed first:
    the copied points were in the write-ahead log only when --finish deleted the old copy."""
    settings, collections, handles = _refusing_copy(sample_settings, embedder_dir, papers,
                                                    tmp_path)
    events: list[tuple[str, str]] = []
    optimize, flush, write = EdgeStore.optimize, EdgeStore.flush, EdgePointers.write

    def spied(name: str, method: Callable[..., None]) -> Callable[..., None]:
        def call(self: Any, *args: Any) -> None:
            method(self, *args)
            events.append((name, args[0].live if args else self.path.name))
        return call

    monkeypatch.setattr(EdgeStore, "optimize", spied("optimize", optimize))
    monkeypatch.setattr(EdgeStore, "flush", spied("flush", flush))
    monkeypatch.setattr(EdgePointers, "write", spied("pointer", write))
    target = physical_name("papers", Encoder(cls_embedder).sha256)

    async def migrate() -> None:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        events.append(("swapped", ""))
        await handles.migrator.rollback()
        events.append(("rolled back", ""))
        await handles.migrator.finish()
        await collections.close()

    asyncio.run(migrate())
    assert events == [("optimize", target), ("flush", target), ("pointer", target),
                      ("swapped", ""), ("flush", "papers"), ("pointer", "papers"),
                      ("rolled back", ""), ("flush", "papers"), ("pointer", "papers")]
    assert not (tmp_path / target).exists()


def test_a_rollback_carries_back_what_another_writer_updated_after_the_swap(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path) -> None:
    """An ingest re-run after the swap writes to the live collection only (it follows the
    pointer; no mirror): a rollback had re-synced ids, not updates, so the paper it revised
    went back to its old version in silence."""
    settings, collections, handles = _refusing_copy(sample_settings, embedder_dir, papers,
                                                    tmp_path)
    revised = Paper(id=papers[3].id, title=papers[3].title + " (revised edition)",
                    abstract=papers[3].abstract)
    added = Paper(id="added-after-the-swap", title="A paper only the other writer added",
                  abstract="Written straight into the live collection after the swap.")
    new = Encoder(cls_embedder)

    async def migrate_update_roll_back() -> list[Paper]:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        live = await collections.live()
        assert live.view.collection == physical_name("papers", new.sha256)
        await live.index.upsert([revised, added],
                                new.encode_documents([revised.text, added.text]))
        await handles.migrator.rollback()
        back = await collections.live()
        assert back.view.collection == "papers"
        held = await back.index.papers([revised.point_id, added.point_id])
        await collections.close()
        return held

    held = asyncio.run(migrate_update_roll_back())
    assert sorted(p.title for p in held) == sorted([revised.title, added.title])


def test_writes_go_on_while_the_new_collection_is_optimized(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build takes the new collection's one worker thread: a write's mirror into it waited
    for the whole build (minutes on a large index). It is left to the reconcile now: the write
    is answered during the build, and the new collection holds it after the swap."""
    settings, collections, handles = _refusing_copy(sample_settings, embedder_dir, papers,
                                                    tmp_path)
    target = physical_name("papers", Encoder(cls_embedder).sha256)
    building, written = threading.Event(), threading.Event()
    answered_during_the_build: list[bool] = []
    optimize = EdgeStore.optimize

    def slow_build(self: EdgeStore) -> None:
        if self.path.name == target:
            building.set()  # the write, answered meanwhile, ends the build
            answered_during_the_build.append(written.wait(20))
        optimize(self)

    monkeypatch.setattr(EdgeStore, "optimize", slow_build)
    paper = Paper(id="during-the-build", title="A paper written while the index is built",
                  abstract="Its write is answered before the build ends.")

    async def write_during_the_build() -> None:
        while not building.is_set():
            await asyncio.sleep(0.01)
        backend = handles.pinned()
        await backend.upsert([paper], await backend.encode_documents([paper.text]))
        written.set()

    async def migrate() -> list[Paper]:
        writer = asyncio.create_task(write_during_the_build())
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        await writer
        held = await (await collections.live()).index.papers([paper.point_id])
        await collections.close()
        return held

    held = asyncio.run(migrate())
    assert answered_during_the_build == [True] and [p.title for p in held] == [paper.title]


def test_a_failed_close_still_drops_the_partial_copy(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    settings, collections, handles = _refusing_copy(sample_settings, embedder_dir, papers,
                                                    tmp_path)
    close = IndexAccess.close

    async def failing_close(self: IndexAccess) -> None:
        await close(self)
        if self.opener.settings.index.collection != "papers":
            raise OSError("flush failed")
    monkeypatch.setattr(IndexAccess, "close", failing_close)

    asyncio.run(_copy_fails(handles, collections, settings.models.repository))
    assert not any(p.name.startswith("papers-") for p in tmp_path.iterdir())
    assert "closing the partial collection failed" in caplog.text


def _in_place(sample_settings: Settings, embedder_dir: Path, papers: list[Paper],
              data_dir: Path, models: LocalModels | None = None
              ) -> tuple[Settings, Collections, HandleBackend]:
    """20 papers indexed by the old embedder in ``data_dir``, behind a backend whose models run
    in this process (``models``: LocalModels by default)."""
    settings = sample_settings.model_copy(update={"index": sample_settings.index.model_copy(
        update={"data_dir": data_dir})})
    collections, inspect = _collections(settings, None)
    with inspect("papers") as source:
        _fill(source, Encoder(embedder_dir), papers[:20])
    handles = HandleBackend(models or LocalModels(settings.models.repository), None,
                            collections, settings)  # type: ignore[arg-type]
    return settings, collections, handles


async def _write(handles: HandleBackend, paper: Paper) -> None:
    """``paper`` upserted through the gateway (mirrored while a migration runs)."""
    backend = handles.pinned()
    await backend.upsert([paper], await backend.encode_documents([paper.text]))


async def _write_around(handles: HandleBackend, collections: Collections, paper: Paper) -> None:
    """``paper`` upserted into the live collection alone, as another writer (an ingest job)
    does: no mirror."""
    live = await collections.live()
    await live.index.upsert([paper], await handles.encode_documents_by(live.view.embedder,
                                                                       [paper.text]))


async def _live_titles(collections: Collections, paper: Paper) -> list[str]:
    """The titles the live collection holds ``paper`` under; the collections closed after."""
    held = await (await collections.live()).index.papers([paper.point_id])
    await collections.close()
    return [p.title for p in held]


def _edition(paper: Paper, edition: str) -> Paper:
    return Paper(id=paper.id, title=f"{paper.title} ({edition})", abstract=paper.abstract)


def test_an_update_another_writer_makes_to_a_paper_the_gateway_wrote_reaches_the_new_collection(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A paper written through the gateway during the copy (mirrored), then updated by an
    ingest in the old collection only, longer than WRITER_SKEW_MS before the reconcile (0
    here): the reconcile skipped every id the gateway had written, and the new live collection
    kept the gateway's older version (the ingest's dropped at --finish)."""
    from papersearch.pipeline import migration

    monkeypatch.setattr(migration, "WRITER_SKEW_MS", 0)
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    ours, theirs = _edition(papers[5], "gateway edit"), _edition(papers[5], "ingest --update")
    copy = migration.Migrator._copy

    async def written_during_the_copy(self: Any, *args: Any) -> tuple[int, int]:
        await _write(handles, ours)  # dirty: the copy skips it, its mirror write carries it
        await asyncio.sleep(0.01)  # stamped later than the mirror write
        await _write_around(handles, collections, theirs)
        return await copy(self, *args)

    monkeypatch.setattr(migration.Migrator, "_copy", written_during_the_copy)

    async def migrate() -> list[str]:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        return await _live_titles(collections, theirs)

    assert asyncio.run(migrate()) == [theirs.title]


def test_an_update_another_writer_makes_while_the_mirror_write_waits_reaches_the_new_collection(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest's update lands in the old collection after the gateway's write there but
    before that write's mirror (which encodes with the other model and waits for the lock):
    the mirror's stamp is the later one, and the reconcile, comparing the two, kept the
    gateway's older version. The time the gateway's write had landed tells them apart."""
    from papersearch.pipeline import migration

    monkeypatch.setattr(migration, "WRITER_SKEW_MS", 0)
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    ours, theirs = _edition(papers[5], "gateway edit"), _edition(papers[5], "ingest --update")
    copy, mirror_upsert = migration.Migrator._copy, migration.Mirror._upsert
    armed: list[bool] = []

    async def slow_mirror(self: Any, other: Any, batch: Any) -> int:
        if armed:
            armed.pop()
            await asyncio.sleep(0.01)
            await _write_around(handles, collections, theirs)  # after ours landed
            await asyncio.sleep(0.01)  # the mirror write still encoding
        return await mirror_upsert(self, other, batch)  # type: ignore[no-any-return]

    async def written_during_the_copy(self: Any, *args: Any) -> tuple[int, int]:
        armed.append(True)
        await _write(handles, ours)
        return await copy(self, *args)

    monkeypatch.setattr(migration.Mirror, "_upsert", slow_mirror)
    monkeypatch.setattr(migration.Migrator, "_copy", written_during_the_copy)

    async def migrate() -> list[str]:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        return await _live_titles(collections, theirs)

    assert asyncio.run(migrate()) == [theirs.title]


@pytest.mark.parametrize("retried", [True, False])
@pytest.mark.parametrize("step", ["finish", "rollback"])
def test_a_failed_mirror_write_never_undoes_a_later_update(
        step: str, retried: bool, sample_settings: Settings, embedder_dir: Path,
        cls_embedder: Path, papers: list[Paper], tmp_path: Path) -> None:
    """After the swap, a write pinned to the old view whose mirror into the live collection
    failed (not acknowledged), sent again by its client (both writes made) or not, then an
    ingest's update of the same paper in the live collection: --finish and --rollback copied
    the old collection's version over the live one's, the ingest's update lost. The retry
    settles the failed write; without it the live collection's later stamp keeps the update."""
    models = LocalModels(sample_settings.models.repository, fail_for="[mirror fails]")
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path,
                                               models)
    failing = _edition(papers[3], "[mirror fails]")
    update = _edition(papers[3], "ingest --update")

    async def migrate_write_update() -> list[str]:
        pinned_old = handles.pinned()
        await pinned_old.bound()  # took the old view before the swap
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        with pytest.raises(RuntimeError, match="unavailable"):
            await pinned_old.upsert([failing], await pinned_old.encode_documents(
                [failing.text]))
        mirror = handles.migrator.mirror
        assert mirror is not None and mirror.missed_by(mirror.pair[1].view.collection) == [
            failing.point_id]
        if retried:  # the client sends it again: the live collection, then the old one
            await _write(handles, failing)
            assert mirror.pending == {}
        await asyncio.sleep(0.01)  # the update is stamped later
        await _write_around(handles, collections, update)
        await getattr(handles.migrator, step)()
        return await _live_titles(collections, update)

    assert asyncio.run(migrate_write_update()) == [update.title]


def test_settling_an_earlier_start_holds_writes_back(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start whose pointer write reported an error and could not be read back is settled by
    the next step: its pointer turns out written, so the gateway switches and copies the late
    writes. That copy ran while writes went on: a write answered between its read of the old
    collection and its write of the new live one was undone by the older copy."""
    from papersearch.index.errors import StoreUnavailable
    from papersearch.pipeline.migration import MigrationFailed

    armed: list[tuple[Paper, Paper]] = []  # the paper the settle copies, the one written then
    writes: list[asyncio.Task[None]] = []
    models = LocalModels(sample_settings.models.repository)
    documents = models._documents

    async def racing(texts: list[str], key: str) -> np.ndarray:
        if armed and key.startswith(NEW) and armed[0][0].text in texts:  # the settle's copy
            _, acknowledged = armed.pop()
            writes.append(asyncio.create_task(_write(handles, acknowledged)))
            await asyncio.sleep(0.3)  # the write goes through meanwhile, unless held back
        return await documents(texts, key)

    models.encode_documents = _Remote(racing)
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path,
                                               models)
    write, read = EdgePointers.write, EdgePointers.read
    failures = {"write": 1, "read": 0}

    def written_then_failed(self: EdgePointers, pointer: Any) -> None:
        write(self, pointer)
        if failures["write"]:
            failures["write"], failures["read"] = 0, 1
            raise OSError("fsync of the directory failed")

    def unreadable_once(self: EdgePointers) -> Any:
        if failures["read"]:
            failures["read"] = 0
            raise StoreUnavailable("cannot read the collection pointer")
        return read(self)

    monkeypatch.setattr(EdgePointers, "write", written_then_failed)
    monkeypatch.setattr(EdgePointers, "read", unreadable_once)
    before, after = _edition(papers[5], "first"), _edition(papers[5], "second")

    async def scenario() -> list[Paper]:
        with pytest.raises(MigrationFailed, match="cannot be read back"):
            await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        await _write(handles, before)  # mirrored both ways while unsettled
        armed.append((before, after))
        with pytest.raises(MigrationRefused, match="taken effect after all"):
            await handles.migrator.finish()
        await asyncio.gather(*writes)
        live = await collections.live()
        assert live.view.collection != "papers" and not armed
        held = await live.index.papers([after.point_id])
        await collections.close()
        return held

    assert [p.title for p in asyncio.run(scenario())] == [after.title]


@pytest.mark.parametrize("adds", ["once", "always"])
def test_a_paper_another_writer_adds_after_the_reconcile_is_matched_again(
        adds: str, sample_settings: Settings, embedder_dir: Path, cls_embedder: Path,
        papers: list[Paper], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingest adding a paper after the reconcile read the stamps and before the count check
    failed the whole start (the copy dropped); it is matched again now, and only a writer that
    keeps adding past MATCH_TRIES matches fails it, saying so."""
    from papersearch.pipeline import migration

    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    reconcile, match = migration.Migrator._reconcile, migration.Migrator._match
    added: list[Paper] = []

    async def add() -> None:
        added.append(bread(len(added)))
        await _write_around(handles, collections, added[-1])

    async def reconciled_then_added(self: Any, *args: Any) -> int:
        touched = await reconcile(self, *args)
        await add()
        return touched

    async def matched_then_added(self: Any, *args: Any) -> int:
        touched = await match(self, *args)
        if adds == "always":
            await add()
        return touched

    monkeypatch.setattr(migration.Migrator, "_reconcile", reconciled_then_added)
    monkeypatch.setattr(migration.Migrator, "_match", matched_then_added)

    async def migrate() -> tuple[str, list[Paper]]:
        try:
            await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        except migration.MigrationFailed as error:
            assert adds == "always" and f"matched {migration.MATCH_TRIES} times" in str(error)
        live = await collections.live()
        held = await live.index.papers([p.point_id for p in added])
        await collections.close()
        return live.view.collection, held

    live, held = asyncio.run(migrate())
    assert [p.id for p in held] == [p.id for p in added]
    if adds == "once":
        assert live == physical_name("papers", Encoder(cls_embedder).sha256)
        assert len(added) == 1
    else:
        assert live == "papers" and len(added) == migration.MATCH_TRIES
        assert not any(p.name.startswith("papers-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("another_writer", ["idle", "deletes"])
def test_the_write_pause_reads_no_id_list_unless_the_counts_differ(
        another_writer: str, sample_settings: Settings, embedder_dir: Path, cls_embedder: Path,
        papers: list[Paper], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both collections' ids are compared with writes going on (the prematch), so the pause's
    work grows with the writes made since, not with the index: no id list is read under it
    when the counts agree. A paper another writer deletes after the prematch's scans leaves
    no stamp: the new collection then holds one paper more, the count check compares the ids
    again under the pause, and the paper is not carried into the new live collection."""
    from papersearch.pipeline import migration

    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    prematch, point_ids = migration.Migrator._prematch, IndexAccess.point_ids
    paused: list[bool] = []  # per id scan: whether writes were held back
    doomed = papers[5]

    async def scanned(self: IndexAccess) -> list[str]:
        mirror = handles.migrator.mirror
        paused.append(mirror is not None and not mirror._open.is_set())
        return await point_ids(self)

    async def then_deleted(self: Any, *args: Any) -> int:
        touched = await prematch(self, *args)
        if another_writer == "deletes":
            await (await collections.live()).index.delete([doomed.id])
        return touched

    monkeypatch.setattr(IndexAccess, "point_ids", scanned)
    monkeypatch.setattr(migration.Migrator, "_prematch", then_deleted)

    async def migrate() -> tuple[list[Paper], int, int]:
        await _write(handles, bread(1))
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        live = await collections.live()
        assert live.view.collection != "papers"
        held = await live.index.papers([doomed.point_id])
        count = await live.index.ready()
        await collections.close()
        return held, count, len(paused)

    held, count, scans = asyncio.run(migrate())
    if another_writer == "idle":
        assert paused == [False] * 3  # the copy's scan and the prematch's two
        assert [p.id for p in held] == [doomed.id] and count == 21
    else:
        assert paused[:3] == [False] * 3 and paused[3:] == [True, True]
        assert held == [] and count == 20


def test_a_delete_and_an_add_by_another_writer_that_keep_the_counts_equal_are_matched(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer deletes a paper after the prematch's scans (no stamp) and adds one after
    the reconcile read the stamps: the counts agree, yet the new collection held the deleted
    paper, which the swap would have made live again. The added paper's stamp sends the ids
    to be matched in full."""
    from papersearch.pipeline import migration

    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    doomed, added = papers[5], bread(7)
    prematch, reconcile = migration.Migrator._prematch, migration.Migrator._reconcile

    async def then_deleted(self: Any, *args: Any) -> int:
        touched = await prematch(self, *args)
        await (await collections.live()).index.delete([doomed.id])
        return touched

    async def then_added(self: Any, *args: Any) -> tuple[int, set[str]]:
        reconciled = await reconcile(self, *args)
        await _write_around(handles, collections, added)
        return reconciled

    monkeypatch.setattr(migration.Migrator, "_prematch", then_deleted)
    monkeypatch.setattr(migration.Migrator, "_reconcile", then_added)

    async def migrate() -> tuple[str, list[str], int]:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        live = await collections.live()
        held = await live.index.papers([doomed.point_id, added.point_id])
        count = await live.index.ready()
        await collections.close()
        return live.view.collection, [p.id for p in held], count

    live, held, count = asyncio.run(migrate())
    assert live != "papers" and held == [added.id] and count == 20


def _answered_late(title: str, landed: asyncio.Event, answer: asyncio.Event
                   ) -> Callable[[IndexAccess, list[Paper], np.ndarray], Awaitable[int]]:
    """An IndexAccess.upsert whose first write of a paper titled ``title`` lands, sets
    ``landed`` and answers only once ``answer`` is set (a Qdrant server's late answer)."""
    upsert = IndexAccess.upsert

    async def answered_late(self: IndexAccess, batch: list[Paper], dense: np.ndarray) -> int:
        written = await upsert(self, batch, dense)
        if any(p.title == title for p in batch) and not landed.is_set():
            landed.set()
            await answer.wait()
        return written

    return answered_late


async def _titles_on_both_sides(collections: Collections, paper: Paper
                                ) -> tuple[list[str], list[str]]:
    """The titles the live collection and the other one hold ``paper`` under; closed after."""
    live, other = await collections.live(), collections.other
    assert other is not None
    titles = ([p.title for p in await live.index.papers([paper.point_id])],
              [p.title for p in await other.index.papers([paper.point_id])])
    await collections.close()
    return titles


def test_a_pending_paper_whose_write_is_in_progress_at_the_prematch_is_re_synced_under_the_pause(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two overlapping gateway writes of one paper: W lands in the source first and answers
    late; W0 lands after it, its mirror write deferred by the build (pending). The prematch
    re-synced the paper (W0's version), then W's mirror write landed W's older version in the
    new collection; the prematch had settled the pending entry all the same, so the swap made
    the older version live. The entry is kept now while a write of the paper is in progress,
    and the reconcile under the pause re-syncs it."""
    from papersearch.pipeline import migration

    monkeypatch.setattr(migration, "WRITER_SKEW_MS", 0)  # no late-write catch-up to hide it
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    w, w0 = _edition(papers[5], "W, answered late"), _edition(papers[5], "W0")
    optimize, resync = IndexAccess.optimize, migration.Migrator._resync
    landed, answer = asyncio.Event(), asyncio.Event()
    late: list[asyncio.Task[None]] = []
    async def built_with_writes(self: IndexAccess) -> None:
        await optimize(self)
        if not late:  # the new collection's build: W, then W0, whose mirror is deferred
            late.append(asyncio.ensure_future(_write(handles, w)))
            await landed.wait()
            await _write(handles, w0)

    async def resynced(self: Any, ids: Sequence[str], *args: Any) -> None:
        await resync(self, ids, *args)
        if papers[5].point_id in ids:
            answer.set()  # W's mirror write lands after the prematch's re-sync

    monkeypatch.setattr(IndexAccess, "upsert", _answered_late(w.title, landed, answer))
    monkeypatch.setattr(IndexAccess, "optimize", built_with_writes)
    monkeypatch.setattr(migration.Migrator, "_resync", resynced)

    async def migrate() -> tuple[list[str], list[str]]:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        await late[0]
        return await _titles_on_both_sides(collections, papers[5])

    assert asyncio.run(migrate()) == ([w0.title], [w0.title])


def test_overlapping_writes_of_a_paper_answered_out_of_order_are_re_synced(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two overlapping gateway writes of one paper (a Qdrant server may answer them out of
    order): W lands in the source first and answers late, W0 lands after it and is mirrored
    at once; W's mirror then landed W's older version in the new collection, both mirror
    writes succeeded, nothing was pending, and the swap served the older version. An id two
    writes of which overlap is pending for the other collection now, re-synced before the
    swap."""
    from papersearch.pipeline import migration

    monkeypatch.setattr(migration, "WRITER_SKEW_MS", 0)  # no late-write catch-up to hide it
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    w, w0 = _edition(papers[5], "W, answered late"), _edition(papers[5], "W0")
    prematch = migration.Migrator._prematch
    landed, answer = asyncio.Event(), asyncio.Event()
    async def after_two_writes(self: Any, *args: Any) -> int:
        late = asyncio.ensure_future(_write(handles, w))
        await landed.wait()
        await _write(handles, w0)  # lands after W in the source, mirrored at once
        answer.set()
        await late  # W's mirror write lands after W0's
        return await prematch(self, *args)

    monkeypatch.setattr(IndexAccess, "upsert", _answered_late(w.title, landed, answer))
    monkeypatch.setattr(migration.Migrator, "_prematch", after_two_writes)

    async def migrate() -> tuple[list[str], list[str]]:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        return await _titles_on_both_sides(collections, papers[5])

    assert asyncio.run(migrate()) == ([w0.title], [w0.title])


@pytest.mark.parametrize("step", ["finish", "rollback"])
def test_overlapping_writes_pinned_to_the_old_view_leave_the_live_collection_as_served(
        step: str, sample_settings: Settings, embedder_dir: Path, cls_embedder: Path,
        papers: list[Paper], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the swap, a delete and an upsert of one paper, both pinned to the old view,
    whose answers come back out of order: the old collection holds the paper, the live one
    (what searches served after both acknowledgements) does not. The overlap is re-synced
    from the live collection, so neither --finish nor --rollback brings the paper back."""
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    paper, upserted = papers[5], _edition(papers[5], "upserted")
    delete = IndexAccess.delete
    landed, answer = asyncio.Event(), asyncio.Event()

    async def answered_late(self: IndexAccess, paper_ids: Sequence[str]) -> int:
        deleted = await delete(self, paper_ids)
        if not landed.is_set():  # the delete's write to the old collection
            landed.set()
            await answer.wait()
        return deleted

    async def scenario() -> tuple[list[str], list[str]]:
        removing, writing = handles.pinned(), handles.pinned()
        await removing.bound()
        await writing.bound()  # both took the old view before the swap
        vectors = await writing.encode_documents([upserted.text])
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        monkeypatch.setattr(IndexAccess, "delete", answered_late)
        late = asyncio.ensure_future(removing.delete([paper.id]))
        await landed.wait()
        await writing.upsert([upserted], vectors)  # mirrored into the live one at once
        answer.set()
        await late  # the delete's mirror write lands last: the live collection lacks it
        served = await (await collections.live()).index.papers([paper.point_id])
        await getattr(handles.migrator, step)()
        after = await (await collections.live()).index.papers([paper.point_id])
        await collections.close()
        return [p.title for p in served], [p.title for p in after]

    assert asyncio.run(scenario()) == ([], [])


@pytest.mark.parametrize("first_poll", ["answers", "overloaded"])
def test_the_watch_feed_after_a_swap_publishes_new_papers_and_not_the_copy(
        first_poll: str, sample_settings: Settings, embedder_dir: Path, cls_embedder: Path,
        papers: list[Paper], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The feed learns the new collection's window afresh after a swap (the copy stamped every
    paper). A paper written just after the swap, within that first look, was never published;
    and if that look failed (overloaded), the next one published the whole copy to every
    watch of the new embedder."""
    from papersearch.errors import Overloaded
    from papersearch.gateway.watch import WatchFeed, WatchHub
    from papersearch.index.query import SearchFilter
    from papersearch.pipeline import migration

    # the late writes the swap copies again (stamped after it: sent) are those of the last
    # WRITER_SKEW_MS before the reconcile: the papers here were all indexed just now
    monkeypatch.setattr(migration, "WRITER_SKEW_MS", 0)
    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    hub = WatchHub(max_watches=4, queue=100)
    feed = WatchFeed(hub, handles, settings.serve)
    indexed_since = IndexAccess.indexed_since
    refusals = {"answers": 0, "overloaded": 1}[first_poll]

    async def overloaded(self: IndexAccess, *args: Any) -> Any:
        nonlocal refusals
        if self.opener.settings.index.collection != "papers" and refusals:
            refusals -= 1
            raise Overloaded("512 index operations running or waiting", "max_index_queue")
        return await indexed_since(self, *args)

    monkeypatch.setattr(IndexAccess, "indexed_since", overloaded)
    fresh = Paper(id="written-after-the-swap", title="A paper written just after the swap",
                  abstract="The first paper the new collection's watches should hear of.")

    async def scenario() -> list[str]:
        await feed.poll()
        await feed.poll()  # the old collection's window known
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        if first_poll == "overloaded":
            assert await feed.poll() == 0
        backend = handles.pinned()
        watch = hub.add(await backend.encode_query("anything"), -1.0, SearchFilter(),
                        await backend.embedder_sha())  # every paper matches
        assert watch is not None
        await _write(handles, fresh)
        for _ in range(3):
            await feed.poll()
        await collections.close()
        return [m.paper.id for m in watch.pending]

    assert asyncio.run(scenario()) == [fresh.id]


def test_a_rollbacks_copies_are_stamped_before_its_swap_and_not_published_as_new(
        sample_settings: Settings, embedder_dir: Path, cls_embedder: Path, papers: list[Paper],
        tmp_path: Path) -> None:
    """A rollback took its swap time before it re-synced the papers another writer updated or
    added after the swap into the collection that becomes live again: those copies were
    stamped after the pointer's ``swapped_at_ms``, and the watch feed, which takes what is
    stamped after a swap for new writes, published them to every watch of the old embedder.
    The swap time is taken inside the pause, after the copies are written, as start's is."""
    from papersearch.gateway.watch import WatchFeed, WatchHub
    from papersearch.index.query import SearchFilter

    settings, collections, handles = _in_place(sample_settings, embedder_dir, papers, tmp_path)
    hub = WatchHub(max_watches=4, queue=100)
    feed = WatchFeed(hub, handles, settings.serve)
    revised = _edition(papers[3], "revised after the swap")
    added = Paper(id="added-after-the-swap", title="A paper only the other writer added",
                  abstract="Written straight into the live collection after the swap.")

    async def scenario() -> tuple[dict[str, int], int | None, list[str]]:
        await handles.migrator.start(ModelRef.parse(NEW, settings.models.repository))
        await feed.poll()  # the new collection's window learnt
        for paper in (revised, added):
            await _write_around(handles, collections, paper)
        await feed.poll()
        await handles.migrator.rollback()
        back = await collections.live()
        assert back.view.collection == "papers"
        stamps = (await back.index.indexed_since(0, None)).window
        pointer = collections.pointer
        assert pointer is not None
        backend = handles.pinned()
        watch = hub.add(await backend.encode_query("anything"), -1.0, SearchFilter(),
                        await backend.embedder_sha())  # every paper matches
        assert watch is not None
        for _ in range(3):
            await feed.poll()
        await collections.close()
        copies = {pid: stamps[pid] for pid in (revised.point_id, added.point_id)}
        return copies, pointer.swapped_at_ms, [m.paper.id for m in watch.pending]

    copies, swapped_at, published = asyncio.run(scenario())
    assert published == []
    assert swapped_at is not None and max(copies.values()) <= swapped_at, (copies, swapped_at)


# -- through the service: Ray Serve, gRPC, the CLI ---------------------------------------------


def _cli(*args: str, settings_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "papersearch.cli", "index", "migrate", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=settings_env)


def test_migration_through_the_service(sample_settings: Settings, sample_index: Path,
                                       embedder_dir: Path, cls_embedder: Path,
                                       tmp_path: Path) -> None:
    import os
    import tempfile

    import ray

    from papersearch.client import SearchClient
    from papersearch.serving import launcher

    data_dir = tmp_path / "index"
    shutil.copytree(sample_index, data_dir)
    repository = tmp_path / "models"
    for model in (embedder_dir, cls_embedder):
        shutil.copytree(model, repository / model.parent.name / model.name)
    port = free_port()
    overrides = {
        "models": {"repository": str(repository),
                   "cache_dir": str(sample_settings.models.cache_dir)},
        "index": {"data_dir": str(data_dir)},
        "serve": {"grpc_port": port, "http_port": free_port(), "health_poll_s": 0.5},
    }
    settings = sample_settings.model_copy(update={"serve": sample_settings.serve.model_copy(
        update={"serve_config": ROOT / "deploy" / "serve" / "papersearch.yaml",
                "metrics_port": free_port(), "dashboard_port": free_port()})})
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
    fixed = {name: {"autoscaling_config": None, "num_replicas": 1}
             for name in ("QueryEncoder", "Reranker")}
    launcher.start(settings, num_cpus=4, temp_dir=temp_dir, overrides=overrides,
                   deployment_options=fixed)
    env = {**os.environ, "PAPERSEARCH_MODELS__REPOSITORY": str(repository),
           "PAPERSEARCH_INDEX__DATA_DIR": str(data_dir)}
    address = ray.get_runtime_context().gcs_address
    stop = threading.Event()
    answers: list[tuple[int, tuple[str, ...]]] = []
    failures: list[str] = []
    write_failures: list[str] = []
    written: list[int] = []  # the upserts acknowledged, by batch number
    kept: set[str] = set()
    try:
        with SearchClient(f"127.0.0.1:{port}", timeout_s=60) as client:
            deadline = time.monotonic() + 120
            while client.health() != "SERVING":
                assert time.monotonic() < deadline, "gateway never became SERVING"
                time.sleep(0.5)
            probes = [h.paper.title for h in client.search(SearchQuery(
                "retrieval augmented generation", mode="dense", rerank=False, top_k=PROBES)).hits]

            def ask(i: int) -> tuple[str, ...]:
                query = SearchQuery(probes[i], mode="dense", rerank=False)
                return tuple(h.paper.id for h in client.search(query).hits)

            def searching() -> None:
                n = 0
                while not stop.is_set():
                    try:
                        answers.append((n % PROBES, ask(n % PROBES)))
                    except grpc.RpcError as error:
                        failures.append(f"{error.code().name}: {error.details()}")
                    n += 1

            def writing() -> None:  # a failure is reported, not the end of the thread
                n = 0
                while not stop.is_set():
                    batch = [bread(n), bread(n + 1)]
                    try:
                        client.upsert(batch)
                        kept.update(p.id for p in batch)
                        written.append(n)
                        if n % 8 == 0:
                            client.delete([batch[0].id])
                            kept.discard(batch[0].id)
                    except grpc.RpcError as error:
                        write_failures.append(f"{error.code().name}: {error.details()}")
                    except Exception as error:  # noqa: BLE001 (asserted below)
                        write_failures.append(repr(error))
                        return
                    n += 2

            before = [ask(i) for i in range(PROBES)]
            threads = [threading.Thread(target=f) for f in (searching, searching, writing)]
            for thread in threads:
                thread.start()
            written_before = len(written)
            started = _cli("--embedder", NEW, "--ray", address, settings_env=env)
            written_during = len(written) - written_before
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            assert started.returncode == 0, started.stderr
            report = json.loads(started.stdout)
            after = [ask(i) for i in range(PROBES)]
            again = _cli("--embedder", NEW, "--ray", address, settings_env=env)
            assert again.returncode == 2 and "swapped but not finished" in again.stderr
            rolled = launcher.migrate(settings, "rollback", None, 600)
            assert [ask(i) for i in range(PROBES)] == before
            finished = _cli("--finish", "--ray", address, settings_env=env)
            assert finished.returncode == 0, finished.stderr
            missing = []
            for pid in sorted(kept):
                try:
                    client.get(pid)
                except grpc.RpcError as error:
                    missing.append(f"{pid}: {error.code().name}")
    finally:
        stop.set()
        launcher.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert failures == []
    assert write_failures == []
    assert written_during > 0  # papers were written while the migration ran
    assert sum(b != a for b, a in zip(before, after, strict=True)) >= PROBES // 2
    assert {answer in (before[p], after[p]) for p, answer in answers} == {True}
    assert {answer == after[p] for p, answer in answers} == {True, False}  # both seen
    assert report["live_count"] == report["previous_count"]
    assert rolled["live_collection"] == "papers"
    assert missing == []
