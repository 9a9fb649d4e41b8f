"""The index layer against the real engines: qdrant-edge on disk and qdrant-client local mode."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from papersearch.corpus.paper import Paper, point_id
from papersearch.encoder.runtime import Encoder
from papersearch.index.edge import MANIFEST, EdgeStore
from papersearch.index.errors import (
    CollectionMissing,
    EmbedderMismatch,
    InvalidExamples,
    PaperNotFound,
    StorageExhausted,
    StoreError,
    StoreUnavailable,
    WeightingMismatch,
)
from papersearch.index.factory import open_store
from papersearch.index.plan import PointData, Program, Write
from papersearch.index.query import (
    MAX_COUNT,
    MIN_NORM,
    Examples,
    Hit,
    SearchFilter,
    SearchRequest,
    StageRank,
)
from papersearch.index.schema import DENSE as DENSE_NAME
from papersearch.index.schema import SCHEMA_VERSION, Bm25Weighting, EmbedderIdentity
from papersearch.index.server import METADATA_KEY, ServerStore
from papersearch.index.sparse import Bm25Encoder
from papersearch.index.store import Store
from papersearch.pipeline.factory import open_index
from papersearch.retriever.retriever import Retriever, word_parts
from papersearch.settings import IndexSettings, Settings
from tests.module_stand_in import ModuleStandIn
from tests.ports import free_port

pytestmark = [  # qdrant-client local mode: no payload indexes, always exact search
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]

DIM = 16
SHA = "a" * 64
RARE = "zymurgy"
RARE_AT = 7
WORDS = (
    "graph neural network protein folding quantum lattice language model vision robot policy "
    "market auction compiler kernel sensor battery galaxy climate genome"
).split()
CATEGORIES = ("cs.CL", "cs.CV", "cs.LG", "q-bio.BM")
AUTHORS = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov")

Factory = Callable[..., Store]


def make_papers(n: int = 30, seed: int = 3) -> list[Paper]:
    rng = np.random.default_rng(seed)
    papers = []
    for i in range(n):
        # Distinct lengths: BM25 scores of different papers never tie.
        abstract = " ".join(str(w) for w in rng.choice(WORDS, 6 + i))
        if i == RARE_AT:
            abstract += f" {RARE}"
        papers.append(
            Paper(
                id=f"2401.{i:05d}",
                title=" ".join(str(w) for w in rng.choice(WORDS, 3)),
                abstract=abstract,
                authors=tuple(str(a) for a in rng.choice(AUTHORS, 1 + i % 3, replace=False)),
                published=None if i % 10 == 9 else date(2023, 1, 1) + timedelta(days=20 * i),
                categories=tuple(str(c) for c in rng.choice(CATEGORIES, 1 + i % 2, replace=False)),
                url=f"https://arxiv.org/abs/2401.{i:05d}",
            )
        )
    return papers


def unit_vectors(n: int, seed: int = 5) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


PAPERS = make_papers()
DENSE = unit_vectors(len(PAPERS))
BM25 = Bm25Encoder()
SPARSE = BM25.documents(p.text for p in PAPERS)


@pytest.fixture(params=["edge", "local"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Builds stores of one backend over the same storage; closes them all at the end.

    Local mode locks its directory per client, so there a new store closes the previous one.
    """
    stores: list[Store] = []

    def build(**overrides: object) -> Store:
        settings = IndexSettings(data_dir=tmp_path / "index", **overrides)  # type: ignore[arg-type]
        store: Store
        if request.param == "edge":
            store = EdgeStore(settings)
        else:
            for previous in stores:
                previous.close()
            store = ServerStore(settings, client=QdrantClient(path=str(tmp_path / "local")))
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


@pytest.fixture
def store(factory: Factory) -> Store:
    s = factory()
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS, DENSE, SPARSE)
    return s


@pytest.fixture(scope="module", params=["edge", "local"])
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One filled store per backend, shared by the tests that only read."""
    settings = IndexSettings(data_dir=tmp_path_factory.mktemp("index"))
    s: Store
    if request.param == "edge":
        s = EdgeStore(settings)
    else:
        s = ServerStore(settings, client=QdrantClient(":memory:"))
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS, DENSE, SPARSE)
    yield s
    s.close()


def ids(hits: list[Hit]) -> list[str]:
    return [h.paper.id for h in hits]


def test_a_large_index_is_built_in_a_child_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine holds the GIL through an optimize: a 32,000-paper build (15-26 s) froze the
    gateway's event loop for its length (a migration's), and `papersearch ingest` took Ctrl-C
    only at its end. From BUILD_APART_BYTES up it runs in a child process (here every size):
    the index answers as before; a failed build is said, the index still open; Ctrl-C
    ends it at once, the shard loaded again and what the build left removed."""
    from papersearch.index import edge

    monkeypatch.setattr(edge, "BUILD_APART_BYTES", 0)
    s = EdgeStore(IndexSettings(data_dir=tmp_path))
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS, DENSE, SPARSE)
    before = exact_scores(s, request("hybrid"))
    real = subprocess.Popen
    children: list[subprocess.Popen[str]] = []

    def running(instead: list[str] | None) -> None:
        def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
            children.append(real(instead or command, **kwargs))
            return children[-1]

        monkeypatch.setattr(edge.subprocess, "Popen", spawn)

    try:
        running(None)
        s.optimize()
        assert children[-1].args[1:3] == ["-m", "papersearch.index.build"]
        assert exact_scores(s, request("hybrid")) == before and s.count() == len(PAPERS)
        s.optimize()  # built by this store, nothing written since: in this process
        assert len(children) == 1

        def write_again() -> None:  # a paper written again as it was: the store has a write
            s.upsert(PAPERS[:1], DENSE[:1], SPARSE[:1])

        write_again()
        running([sys.executable, "-c", "import sys; sys.exit('the engine said no')"])
        with pytest.raises(StoreError, match=r"its build \(a child process\) failed: the "
                                             r"engine said no"):
            s.optimize()
        assert s.count() == len(PAPERS)
        no_room = ("StorageExhausted: qdrant-edge optimize: Not enough space available for "
                   "optimization, needed: 121.64 MiB, available: 68.36 MiB")
        running([sys.executable, "-c", f"import sys; sys.exit({no_room!r})"])
        with pytest.raises(StorageExhausted, match="needed: 121.64 MiB"):
            s.optimize()  # was a plain StoreError: the build without room is a spent resource

        def no_descriptors(command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(edge.subprocess, "Popen", no_descriptors)
        with pytest.raises(StorageExhausted, match="its build could not start a child "
                                                   "process: .*Too many open files"):
            s.optimize()  # was the bare OSError (a traceback at the end of an ingest)
        assert s.count() == len(PAPERS)
        running([sys.executable, "-c", "import time; time.sleep(300)"])
        write_again()
        leftover = s.path / "temp_segments" / "segment_builder_cut"
        leftover.mkdir(parents=True)
        # while the child builds, the engine's lock is the child's, but the index stays this
        # store's: another open (`papersearch search`, a second ingest) is refused, as before
        refused: list[Exception] = []

        def open_another() -> None:
            try:
                EdgeStore(IndexSettings(data_dir=tmp_path)).ensure_collection(DIM, SHA)
            except StoreError as error:
                refused.append(error)

        opener = threading.Timer(0.5, open_another)
        opener.start()
        timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            s.optimize()
        opener.join()
        assert time.monotonic() - started < 60 and children[-1].poll() is not None
        assert len(refused) == 1 and "open in another process" in str(refused[0])
        assert not leftover.exists()
        assert exact_scores(s, request("hybrid")) == before
    finally:
        s.close()
    # a file system that takes no locks (NFS without its lock daemon): said, nothing held
    def no_locks(*args: Any) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(edge.fcntl, "flock", no_locks)
    other = EdgeStore(IndexSettings(data_dir=tmp_path))
    with pytest.raises(StoreError, match="its lock file cannot be locked: No locks available"):
        other.ensure_collection(DIM, SHA)
    assert other._lock is None
    # the child ends with its parent: one whose parent is already gone does not start
    monkeypatch.setattr(subprocess, "Popen", real)
    done = subprocess.run([sys.executable, "-m", "papersearch.index.build", "build",
                           str(s.path), str(DIM), "ram", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "its parent process 1 is gone" in done.stderr


def exact_scores(store: Store, req: SearchRequest) -> dict[str, float]:
    return {h.paper.id: h.score for h in store.query(req)}


def request(mode: str, i: int = 0, text: str = RARE, **kw: object) -> SearchRequest:
    dense = DENSE[i] if mode != "sparse" else None
    sparse = BM25.query(text) if mode != "dense" else None
    return SearchRequest(mode=mode, dense=dense, sparse=sparse, **kw)  # type: ignore[arg-type]


# -- writes and reads ---------------------------------------------------------------------------


def test_upsert_is_idempotent(store: Store) -> None:
    assert store.count() == len(PAPERS)
    store.upsert(PAPERS, DENSE, SPARSE)
    assert store.count() == len(PAPERS)


def test_existing_ids_get_delete(factory: Factory) -> None:
    s = factory()
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS[:10], DENSE[:10], SPARSE[:10])
    wanted = [p.point_id for p in PAPERS[5:15]]
    assert s.existing_ids(wanted) == {p.point_id for p in PAPERS[5:10]}

    got = s.get([PAPERS[3].id, "no-such-paper", PAPERS[1].id])
    assert got == [PAPERS[3], PAPERS[1]]
    assert got[0].published == PAPERS[3].published and got[0].authors == PAPERS[3].authors

    s.delete([PAPERS[3].id, "no-such-paper"])
    assert s.count() == 9
    assert s.get([PAPERS[3].id]) == []
    assert PAPERS[3].point_id not in s.existing_ids([PAPERS[3].point_id])


def test_retriever_delete_counts_stored_papers_without_reading_payloads(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = factory()
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS[:10], DENSE[:10], SPARSE[:10])

    def no_payloads(*args: object, **kwargs: object) -> None:
        raise AssertionError("delete read payloads")

    monkeypatch.setattr(s, "get", no_payloads)
    asked = [PAPERS[2].id, "no-such-paper", PAPERS[2].id, PAPERS[4].id, PAPERS[20].id]
    assert Retriever(s).delete(asked) == 2  # each stored paper once
    assert s.count() == 8
    assert Retriever(s).delete(asked) == 0


def test_upsert_rejects_bad_input_without_writing(factory: Factory) -> None:
    s = factory()
    s.ensure_collection(DIM, SHA)
    with pytest.raises(ValueError, match="n x 16"):
        s.upsert(PAPERS[:2], np.ones((2, DIM + 1), np.float32), SPARSE[:2])
    with pytest.raises(ValueError, match="sparse"):
        s.upsert(PAPERS[:2], DENSE[:2], SPARSE[:1])
    with pytest.raises(ValueError, match="duplicate"):
        s.upsert([PAPERS[0], PAPERS[0]], DENSE[:2], SPARSE[:2])
    with pytest.raises(ValueError, match="norm of at least"):  # stored as is by Qdrant
        s.upsert(PAPERS[:2], np.vstack([DENSE[0], DENSE[1] * 1e-5]), SPARSE[:2])
    assert s.count() == 0


def test_paper_without_bm25_terms_is_stored(factory: Factory) -> None:
    s = factory()
    s.ensure_collection(DIM, SHA)
    paper = Paper(id="stop", title="The", abstract="of a an the")
    sparse = BM25.documents([paper.text])
    assert len(sparse[0]) == 0
    s.upsert([paper], DENSE[:1], sparse)
    assert s.get(["stop"]) == [paper]


def test_indexed_since_finds_every_write_and_fetches_only_new_ones(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What saved searches read (gateway/watch.py): writes stamped with indexed_at (each
    batch's own clock reading), scanned in pages, new ones fetched with their vectors."""
    import papersearch.index.store as store_module

    clock = iter(range(1_000, 10**6, 1_000))  # each upsert batch: one tick later
    monkeypatch.setattr(store_module, "now_ms", lambda: next(clock))
    monkeypatch.setattr(store_module, "_SCAN_PAGE", 4)  # several pages
    s = factory(upsert_batch_size=5)
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS[:10], DENSE[:10], SPARSE[:10])  # stamped 1000 and 2000
    first = s.indexed_since(0, None)  # the window only
    assert len(first.window) == 10 and first.papers == [] and first.dense.shape == (0, DIM)
    assert sorted(set(first.window.values())) == [1_000, 2_000]
    assert s.indexed_since(1_500, None).window == {
        p.point_id: 2_000 for p in PAPERS[5:10]}
    s.upsert(PAPERS[10:13], DENSE[10:13], SPARSE[10:13])  # 3000
    s.upsert(PAPERS[2:3], DENSE[2:3], SPARSE[2:3])  # written again: 4000
    found = s.indexed_since(0, first.window)
    assert found.papers == [*PAPERS[10:13], PAPERS[2]]  # oldest write first, full papers
    np.testing.assert_allclose(found.dense, np.vstack([DENSE[10:13], DENSE[2:3]]), atol=1e-6)
    assert len(found.window) == 13
    assert s.indexed_since(0, found.window).papers == []  # nothing new since
    assert s.indexed_since(3_500, {}).papers == [PAPERS[2]]  # an older write left the window
    s.delete([PAPERS[11].id])
    assert PAPERS[11].point_id not in s.indexed_since(0, None).window


def test_feedback_reads_the_stored_bm25_vectors(loaded: Store) -> None:
    """Store.feedback_program returns each top paper's BM25 vector as stored, so feedback does
    not tokenise the papers again."""
    records = loaded.execute(loaded.feedback_program(request("hybrid", RARE_AT, limit=5)))
    by_id = {p.point_id: (p, terms) for p, terms in zip(PAPERS, SPARSE, strict=True)}
    assert len(records) == 5
    for record in records:
        paper, terms = by_id[record.point_id]
        assert record.sparse is not None and record.dense is not None
        stored = dict(zip(record.sparse.indices, record.sparse.values, strict=True))
        assert stored == pytest.approx(dict(zip(terms.indices, terms.values, strict=True)))


# -- search modes -------------------------------------------------------------------------------


def test_dense_nearest_neighbour_is_itself(loaded: Store) -> None:
    for i in (0, 12, 29):
        hits = loaded.query(request("dense", i, exact=True, limit=3))
        assert hits[0].paper == PAPERS[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].dense_score == hits[0].score and hits[0].sparse_score is None
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_sparse_finds_the_rare_word(loaded: Store) -> None:
    hits = loaded.query(request("sparse", text=f"{RARE} graph"))
    assert hits[0].paper.id == PAPERS[RARE_AT].id
    assert hits[0].sparse_score == hits[0].score > 0 and hits[0].dense_score is None
    assert loaded.query(request("sparse", text="the of and")) == []


def test_hybrid_fuses_with_configured_rrf_k(loaded: Store) -> None:
    i = 0  # query: paper 0's vector plus the rare word (only in paper RARE_AT)
    dense_rank = ids(loaded.query(request("dense", i, limit=30, exact=True)))
    hits = loaded.query(request("hybrid", i, fusion="rrf", rrf_k=60, exact=True, limit=5))
    rare = PAPERS[RARE_AT].id
    assert hits[0].paper.id == rare
    # Qdrant's RRF: sum of 1/(k + rank), ranks from 0.
    assert hits[0].score == pytest.approx(1 / 60 + 1 / (60 + dense_rank.index(rare)), rel=1e-5)
    assert hits[1].paper.id == PAPERS[i].id and hits[1].score == pytest.approx(1 / 60, rel=1e-5)
    assert hits[1].sparse_score is None and hits[1].dense_score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].sparse_score is not None and hits[0].sparse_score > 0
    dense_only = exact_scores(loaded, request("dense", i, exact=True))
    for h in hits:
        assert h.dense_score is not None
        if h.paper.id in dense_only:
            assert h.dense_score == pytest.approx(dense_only[h.paper.id], abs=1e-5)


def test_hybrid_default_k_comes_from_settings(factory: Factory) -> None:
    s = factory(rrf_k=2, fusion="rrf")
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS, DENSE, SPARSE)
    hits = s.query(request("hybrid", 0, exact=True))
    assert hits[1].paper.id == PAPERS[0].id and hits[1].score == pytest.approx(1 / 2, rel=1e-5)


def test_hybrid_dbsf(loaded: Store) -> None:
    hits = loaded.query(request("hybrid", 0, fusion="dbsf", exact=True))
    assert {PAPERS[0].id, PAPERS[RARE_AT].id} <= set(ids(hits[:3]))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("weight", [0.0, 0.6, 1.0])
def test_hybrid_convex_is_the_weighted_sum_of_max_normalised_lists(
    loaded: Store, weight: float
) -> None:
    """The Store's convex fusion, rebuilt by hand from the dense and sparse searches alone: a
    paper missing from one full list counts that list's lowest normalised score."""
    depth, limit = 8, 6
    dense = loaded.query(request("dense", 0, limit=depth, exact=True))
    sparse = loaded.query(request("sparse", 0, text="graph protein zymurgy", limit=depth,
                                  exact=True))
    hits = loaded.query(request("hybrid", 0, text="graph protein zymurgy", fusion="convex",
                                dense_weight=weight, prefetch_limit=depth, limit=limit,
                                exact=True))
    d_top, s_top = dense[0].score, sparse[0].score
    d = {h.paper.id: h.score / d_top for h in dense}
    s = {h.paper.id: h.score / s_top for h in sparse}
    assert len(d) == len(s) == depth  # both windows full: the missing get the lowest score
    expected = {i: weight * d.get(i, min(d.values())) + (1 - weight) * s.get(i, min(s.values()))
                for i in {*d, *s}}
    assert [h.score for h in hits] == pytest.approx(sorted(expected.values(), reverse=True)[:limit])
    assert all(h.score == pytest.approx(expected[h.paper.id]) for h in hits)
    # Every hit's stage scores are the whole query's, in its window or out of it.
    every_dense = exact_scores(loaded, request("dense", 0, limit=len(PAPERS), exact=True))
    every_sparse = exact_scores(loaded, request("sparse", 0, text="graph protein zymurgy",
                                                limit=len(PAPERS), exact=True))
    assert any(h.paper.id not in d for h in hits) or any(h.paper.id not in s for h in hits)
    assert all(h.dense_score == pytest.approx(every_dense[h.paper.id]) for h in hits)
    assert [h.sparse_score for h in hits] == pytest.approx(  # None: no query term in it
        [every_sparse.get(h.paper.id) for h in hits])
    assert all(h.paper == PAPERS[int(h.paper.id[-5:])] for h in hits)  # payloads fetched


def test_hybrid_convex_hit_outside_a_short_list_has_no_score_there(loaded: Store) -> None:
    """A BM25 list shorter than its window holds every paper with a query term: the fused
    hits absent from it get no BM25 score, and the others keep their exact scores."""
    hits = loaded.query(request("hybrid", 0, text=RARE, fusion="convex", limit=5, exact=True))
    assert PAPERS[RARE_AT].id in {h.paper.id for h in hits}
    every_dense = exact_scores(loaded, request("dense", 0, limit=len(PAPERS), exact=True))
    for h in hits:
        assert (h.sparse_score is not None) == (h.paper.id == PAPERS[RARE_AT].id)
        assert h.dense_score == pytest.approx(every_dense[h.paper.id])


@pytest.mark.slow
def test_int8_collection_scores_are_the_original_vectors_cosines(tmp_path: Path) -> None:
    """Searches of an int8 collection rescore with the original vectors, so every dense score
    they report is the exact cosine: dense mode's, similar papers' (average_vector) and
    the hybrid's stage scores. Dense mode and similar papers reported the int8 copy's
    (off by ~0.003), and min_relevance cut on those. The engine quantizes only segments
    past its indexing threshold: 20,000 points."""
    n, dim = 20_000, 384
    vectors = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    papers = [Paper(id=f"p{i}", title=WORDS[i % len(WORDS)],
                    abstract=" ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 5)))
              for i in range(n)]
    s = EdgeStore(IndexSettings(data_dir=tmp_path, quantization="int8"))
    try:
        s.ensure_collection(dim, SHA)
        s.upsert(papers, vectors, BM25.papers(papers))
        s.optimize()
        answers = {
            "hybrid": s.query(SearchRequest(mode="hybrid", dense=vectors[3],
                                            sparse=BM25.query("graph protein"), fusion="convex")),
            "dense": s.query(SearchRequest(mode="dense", dense=vectors[3])),
            "similar": s.similar(Examples(("p3",), strategy="average_vector")),
        }
    finally:
        s.close()
    cosines = vectors @ vectors[3]
    for name, hits in answers.items():
        assert len(hits) == 10, name
        assert [h.dense_score for h in hits] == pytest.approx(
            [float(cosines[int(h.paper.id[1:])]) for h in hits], abs=1e-5), name


ALL_WORDS = " ".join(WORDS)
FILTERS = {
    "dates": (
        SearchFilter(published_from=date(2023, 3, 2), published_to=date(2023, 7, 20)),
        lambda p: p.published is not None and date(2023, 3, 2) <= p.published <= date(2023, 7, 20),
    ),
    "categories": (
        SearchFilter(categories=("cs.CV", "q-bio.BM")),
        lambda p: bool({"cs.CV", "q-bio.BM"} & set(p.categories)),
    ),
    "authors": (SearchFilter(authors=("Grace Hopper",)), lambda p: "Grace Hopper" in p.authors),
    "combined": (
        SearchFilter(
            published_to=date(2023, 12, 31), categories=CATEGORIES[2:], authors=AUTHORS[:3:2]
        ),
        lambda p: p.published is not None
        and p.published <= date(2023, 12, 31)
        and bool(set(CATEGORIES[2:]) & set(p.categories))
        and bool(set(AUTHORS[:3:2]) & set(p.authors)),
    ),
}


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_in_every_mode(loaded: Store, mode: str, name: str) -> None:
    flt, keep = FILTERS[name]
    expected = {p.id for p in PAPERS if keep(p)}
    assert 0 < len(expected) < len(PAPERS)
    hits = loaded.query(request(mode, 3, text=ALL_WORDS, filter=flt, limit=len(PAPERS)))
    assert set(ids(hits)) == expected  # every paper has a dense vector and a vocabulary word


def test_date_range_is_inclusive(loaded: Store) -> None:
    day = PAPERS[4].published
    assert day is not None
    hits = loaded.query(request("dense", 0, filter=SearchFilter(day, day), limit=30))
    assert ids(hits) == [PAPERS[4].id]


@pytest.mark.parametrize(("start", "end"), [
    (date.min, date.max), (None, date.max), (date.min, None), (date.max, date.max),
    (date.min, date.min),
], ids=["whole-calendar", "to-9999-12-31", "from-0001-01-01", "last-day", "first-day"])
def test_dates_at_the_ends_of_the_calendar(loaded: Store, start: date | None,
                                           end: date | None) -> None:
    flt = SearchFilter(start, end)
    hits = loaded.query(request("dense", 0, filter=flt, limit=len(PAPERS)))
    expected = {p.id for p in PAPERS if p.published is not None
                and (start or date.min) <= p.published <= (end or date.max)}
    assert set(ids(hits)) == expected


def test_similar_excludes_itself(loaded: Store) -> None:
    hits = loaded.similar(Examples((PAPERS[2].id,)), limit=5)
    assert len(hits) == 5 and PAPERS[2].id not in ids(hits)
    nearest = loaded.query(request("dense", 2, exact=True, limit=6))
    assert ids(hits) == ids(nearest)[1:]
    assert [h.dense_score for h in hits] == pytest.approx([h.score for h in nearest[1:]],
                                                          abs=1e-5)  # cosines
    only_cv = loaded.similar(Examples((PAPERS[2].id,)), limit=30,
                             filter=SearchFilter(categories=("cs.CV",)))
    assert only_cv and all("cs.CV" in h.paper.categories for h in only_cv)
    with pytest.raises(PaperNotFound, match="nope"):
        loaded.similar(Examples((PAPERS[1].id, "nope")))


@pytest.mark.parametrize("limit", [0, -1, MAX_COUNT + 1, 2**64])
def test_a_limit_no_search_can_mean_is_refused_in_our_words(loaded: Store, limit: int) -> None:
    """The engines refused these each in its own words, or not at all: the embedded one
    answered limit 0 with no hits and failed -1 and 2**64 as a StoreError ("can't convert
    negative int to unsigned", "int too big"); local mode said "limit value 0 is invalid"."""
    with pytest.raises(ValueError, match=f"limit must be between 1 and {MAX_COUNT}, got"):
        loaded.similar(Examples((PAPERS[2].id,)), limit=limit)
    with pytest.raises(ValueError, match=f"limit must be between 1 and {MAX_COUNT}, got"):
        request("dense", 2, limit=limit)
    with pytest.raises(ValueError, match=f"hnsw_ef must be between 1 and {MAX_COUNT}, got"):
        request("dense", 2, hnsw_ef=limit)


def test_the_largest_limit_is_every_paper(loaded: Store) -> None:
    assert len(loaded.similar(Examples((PAPERS[2].id,)), limit=MAX_COUNT)) == len(PAPERS) - 1
    assert len(loaded.query(request("hybrid", 2, limit=MAX_COUNT,
                                    prefetch_limit=MAX_COUNT))) == len(PAPERS)


@pytest.mark.parametrize("strategy", ["average_vector", "best_score", "sum_scores"])
def test_recommendations_follow_each_strategy(loaded: Store, strategy: str) -> None:
    """More like two papers, unlike a third: each strategy's ranking, as computed here from the
    stored vectors, and none of the examples among the hits."""
    positive, negative = (PAPERS[2].id, PAPERS[5].id), (PAPERS[8].id,)
    examples = Examples(positive, negative, strategy)  # type: ignore[arg-type]
    hits = loaded.similar(examples, limit=len(PAPERS))
    given = {positive[0], positive[1], negative[0]}
    assert not given & set(ids(hits)) and len(hits) == len(PAPERS) - 3
    pos, neg = DENSE[[2, 5]], DENSE[[8]]
    rest = [i for i in range(len(PAPERS)) if PAPERS[i].id not in given]
    if strategy == "average_vector":
        target = 2 * pos.mean(axis=0) - neg.mean(axis=0)
        scores = DENSE[rest] @ (target / np.linalg.norm(target))
    elif strategy == "sum_scores":
        scores = (DENSE[rest] @ pos.T).sum(axis=1) - (DENSE[rest] @ neg.T).sum(axis=1)
    else:  # best_score: the best positive cosine, unless a negative is closer
        best_pos, best_neg = (DENSE[rest] @ pos.T).max(axis=1), (DENSE[rest] @ neg.T).max(axis=1)
        scores = np.where(best_pos >= best_neg, best_pos, -(best_neg ** 2))
    expected = [PAPERS[rest[i]].id for i in np.argsort(-scores, kind="stable")]
    assert ids(hits)[:10] == expected[:10]
    assert (hits[0].dense_score is not None) == (strategy == "average_vector")
    filtered = loaded.similar(examples, limit=5, filter=SearchFilter(categories=("cs.CV",)))
    assert filtered and all("cs.CV" in h.paper.categories for h in filtered)


def test_examples_that_cancel_out_are_the_clients_mistake(factory: Factory) -> None:
    """Two positives with opposite vectors leave average_vector nothing to search for: a
    client's mistake (INVALID_ARGUMENT, the message kept), not an internal error."""
    from papersearch.gateway.errors import to_status

    store = factory()
    store.ensure_collection(DIM, SHA)
    store.upsert(PAPERS[:3], np.vstack([DENSE[0], -DENSE[0], DENSE[2]]), SPARSE[:3])
    with pytest.raises(InvalidExamples, match="cancel the positive ones out") as error:
        store.similar(Examples((PAPERS[0].id, PAPERS[1].id), (), "average_vector"))
    assert to_status(error.value) == (grpc.StatusCode.INVALID_ARGUMENT, str(error.value))
    with pytest.raises(ValueError, match=r"paper 'xxx.+\.\.\. \(200 characters\) is both"):
        Examples(("x" * 200,), ("x" * 200,))


def test_recommend_strategy_auto_follows_the_negatives(loaded: Store) -> None:
    """index.recommend_strategy auto (the default): average_vector for positives alone,
    best_score once there is a negative (README, Results: Recommendations)."""
    assert loaded.settings.recommend_strategy == "auto"
    positive, negative = (PAPERS[2].id, PAPERS[5].id), (PAPERS[8].id,)
    for negatives, strategy in (((), "average_vector"), (negative, "best_score")):
        auto = loaded.similar(Examples(positive, negatives), limit=10)
        chosen = loaded.similar(Examples(positive, negatives, strategy), limit=10)  # type: ignore[arg-type]
        assert [(h.paper.id, h.score, h.dense_score) for h in auto] == [
            (h.paper.id, h.score, h.dense_score) for h in chosen]


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_explain_gives_each_stage_the_fusion_and_the_matched_terms(
        loaded: Store, fusion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaded.settings, "fusion", fusion)  # the store's configured fusion
    store, settings, retriever = loaded, loaded.settings, Retriever(loaded)
    text = f"{RARE} graph protein"  # one pass: with feedback the stages are the expanded query's
    plain = retriever.search(text, DENSE[RARE_AT], mode="hybrid", limit=8, feedback=False)
    explained = retriever.search(text, DENSE[RARE_AT], mode="hybrid", limit=8, explain=True,
                                 feedback=False)
    assert [h.paper.id for h in explained] == [h.paper.id for h in plain]
    assert all(h.explanation is None for h in plain)  # nothing unless asked
    dense_ids = ids(store.query(request("dense", RARE_AT, limit=100)))
    sparse_ids = ids(store.query(SearchRequest(mode="sparse", sparse=BM25.query(text),
                                               limit=100)))
    for rank, hit in enumerate(explained, start=1):
        why = hit.explanation
        assert why is not None and why.fused is not None and why.dense and why.sparse
        assert why.fused.rank == rank and why.fused.score == hit.score
        assert why.dense.score == hit.dense_score and why.sparse.score == hit.sparse_score
        assert why.dense.rank == dense_ids.index(hit.paper.id) + 1
        assert why.sparse.rank == (sparse_ids.index(hit.paper.id) + 1
                                   if hit.paper.id in sparse_ids else None)
        # the matched terms are the query's words, and their parts add up to the BM25 score
        assert {t for t, _ in why.terms} <= {RARE, "graph", "protein"}
        assert sum(s for _, s in why.terms) == pytest.approx(hit.sparse_score or 0.0, rel=1e-4)
        assert [s for _, s in why.terms] == sorted((s for _, s in why.terms), reverse=True)
        inputs = why.fusion_inputs
        if fusion == "convex":  # the formula's inputs give the fused score back
            w = inputs["dense_weight"]
            assert w * inputs["dense_normalised"] + (1 - w) * inputs["bm25_normalised"] \
                == pytest.approx(hit.score, abs=1e-6)
            assert why.fusion.startswith("convex: 0.6 x max(dense, 0)")
        else:
            assert why.fusion.startswith("rrf:") and inputs["rrf_k"] == settings.rrf_k
    assert explained[0].paper.id == PAPERS[RARE_AT].id
    assert explained[0].explanation and explained[0].explanation.terms[0][0] == RARE
    dense_only = retriever.search(text, DENSE[RARE_AT], mode="dense", limit=3, explain=True)
    why = dense_only[0].explanation
    assert why is not None and why.fused is None and why.sparse is None and not why.terms
    assert why.dense == StageRank(1, dense_only[0].score)


def test_each_term_of_a_word_is_labelled_with_its_own_part(loaded: Store) -> None:
    """Every term of "GPT-4" had been labelled "GPT-4": a paper holding only "4" was said to
    match GPT-4, twice, and one holding "title" to match "title:Layer"."""
    retriever = Retriever(loaded)
    labels = retriever.term_labels("GPT-4 title:Layer snake_case, models")
    by_label = {label: index for index, label in labels.items()}
    assert set(by_label) == {"GPT", "4", "title", "Layer", "snake", "case", "models"}
    for part, index in by_label.items():
        assert retriever.bm25.query(part).indices == (index,)
    # vowels and tones that Thai writes as combining marks stay in their word ("\\w" cut
    # it at them, and a term of the multilingual tokenizer was labelled with a fragment)
    assert word_parts("\u0e01\u0e32\u0e23\u0e40\u0e23\u0e35\u0e22\u0e19\u0e23\u0e39\u0e49") == [
        "\u0e01\u0e32\u0e23\u0e40\u0e23\u0e35\u0e22\u0e19\u0e23\u0e39\u0e49"]
    assert word_parts("nai\u0308ve-bayes") == ["nai\u0308ve", "bayes"]


def test_a_long_query_itemises_a_bounded_number_of_terms(
        loaded: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every BM25 term of a query was one engine query more (a 2,048-character query: ~500,
    16x a search's index time). Past the bound the terms the hits hold most are itemised and
    each hit's part from the others comes last, whole: the parts still add up."""
    import papersearch.index.store as store_module

    monkeypatch.setattr(store_module, "MAX_EXPLAINED_TERMS", 4)
    text = " ".join([*WORDS, RARE, "chocolate", "cake"])  # 23 terms, two held by no paper
    hits = Retriever(loaded).search(text, DENSE[RARE_AT], mode="hybrid", limit=8,
                                    explain=True, feedback=False)
    itemised: set[str] = set()
    for hit in hits:
        why = hit.explanation
        assert why is not None and hit.sparse_score is not None
        named = [(t, score) for t, score in why.terms if not t.startswith("(")]
        itemised |= {t for t, _ in named}
        held = set(f"{hit.paper.title} {hit.paper.abstract}".split()) & set(text.split())
        others = len(held - {t for t, _ in named})
        assert why.terms[len(named):] == ((
            (f"({others} other terms)", pytest.approx(hit.sparse_score - sum(
                score for _, score in named), abs=1e-5)),) if others else ())
        assert sum(score for _, score in why.terms) == pytest.approx(hit.sparse_score, rel=1e-4)
    assert len(itemised) <= 4 and not itemised & {"chocolate", "cake"}


def record_creation(store: Store) -> list[dict[str, Any]]:
    """The create_collection requests a server store sends from now on (local mode keeps no
    layout to read back); an embedded store's layout is its edge_config.json instead."""
    created: list[dict[str, Any]] = []
    if isinstance(store, ServerStore):
        create = store.client.create_collection

        def recorded(*args: Any, **kwargs: Any) -> bool:
            created.append(kwargs)
            return create(*args, **kwargs)

        store.client.create_collection = recorded  # type: ignore[method-assign]
    return created


def dense_layout(store: Store, created: list[dict[str, Any]]) -> dict[str, Any]:
    """What the engine was told of the dense vectors: int8 type, on-disk vectors and payload."""
    if isinstance(store, EdgeStore):
        config = json.loads((store.path / "edge_config.json").read_text())
        scalar = (config.get("quantization_config") or {}).get("scalar") or {}
        return {"int8": scalar.get("type") == "int8", "on_disk": config["vectors"]["dense"][
            "on_disk"], "on_disk_payload": config["on_disk_payload"]}
    (request_,) = created
    vectors = request_["vectors_config"][DENSE_NAME]
    quantization = vectors.quantization_config
    return {"int8": quantization is not None and quantization.scalar.type == "int8",
            "on_disk": vectors.on_disk, "on_disk_payload": request_["on_disk_payload"]}


def test_int8_quantization(factory: Factory) -> None:
    """The setting reaches the engine (with 30 points no quantized segment is built, so the
    answer alone could not tell), and searches answer."""
    s = factory(quantization="int8")
    created = record_creation(s)
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS, DENSE, SPARSE)
    assert dense_layout(s, created)["int8"]
    assert ids(s.query(request("dense", 11, limit=1))) == [PAPERS[11].id]
    plain = factory(collection="plain")
    created = record_creation(plain)
    plain.ensure_collection(DIM, SHA)
    assert not dense_layout(plain, created)["int8"]


def test_the_scale_layout_is_built_and_searched(factory: Factory, tmp_path: Path) -> None:
    """int8 with oversampled rescoring, vectors and payloads on disk: the layout reaches the
    engine, and a reopened store answers as before."""
    layout = {"quantization": "int8", "quantization_oversampling": 3.0,
              "on_disk_vectors": True, "on_disk_payload": True}
    s = factory(**layout)
    created = record_creation(s)
    s.ensure_collection(DIM, SHA)
    s.upsert(PAPERS, DENSE, SPARSE)
    assert dense_layout(s, created) == {"int8": True, "on_disk": True, "on_disk_payload": True}
    s.close()
    again = factory(**layout)
    again.ensure_collection(DIM, SHA, create=False)
    for i in (0, 11, 29):
        assert ids(again.query(request("dense", i, limit=1))) == [PAPERS[i].id]
    assert again.get([PAPERS[5].id]) == [PAPERS[5]]


# -- collection identity and lifecycle ----------------------------------------------------------


def test_embedder_mismatch(factory: Factory) -> None:
    first = factory()
    first.ensure_collection(DIM, SHA)
    first.upsert(PAPERS[:3], DENSE[:3], SPARSE[:3])
    first.ensure_collection(DIM, SHA)  # same identity again: fine
    with pytest.raises(EmbedderMismatch, match="bbbbbbbbbbbb") as mismatch:
        first.ensure_collection(DIM, "b" * 64)
    assert "`papersearch index migrate --embedder NAME`" in str(mismatch.value)  # the remedies
    first.close()
    with pytest.raises(EmbedderMismatch, match="dim 16"):
        factory().ensure_collection(DIM + 1, SHA)
    with pytest.raises(EmbedderMismatch):
        factory().ensure_collection(DIM, "b" * 64, create=False)
    reopened = factory()
    reopened.ensure_collection(DIM, SHA, create=False)
    assert reopened.count() == 3


def test_missing_collection(factory: Factory) -> None:
    with pytest.raises(CollectionMissing):
        factory().ensure_collection(DIM, SHA, create=False)


def test_edge_reopen_keeps_data(tmp_path: Path) -> None:
    settings = IndexSettings(data_dir=tmp_path)
    with EdgeStore(settings) as s:
        s.ensure_collection(DIM, SHA)
        s.upsert(PAPERS, DENSE, SPARSE)
        s.optimize()
    assert (tmp_path / "papers" / MANIFEST).is_file()
    with EdgeStore(settings) as s:
        s.ensure_collection(DIM, SHA, create=False)
        assert s.count() == len(PAPERS)
        assert ids(s.query(request("hybrid", 5, limit=2)))[:2] == [PAPERS[RARE_AT].id, PAPERS[5].id]


def test_only_a_collection_made_where_nothing_was_is_the_stores_own(
    tmp_path: Path, factory: Factory,
) -> None:
    """`ingest` removes a collection it made for a corpus that held no paper: a directory
    that held files before (or a server's collection, which another writer may share the
    moment it exists) is never taken for the store's own."""
    with EdgeStore(IndexSettings(data_dir=tmp_path / "new")) as made:
        made.ensure_collection(DIM, SHA)
        assert made.created
    with EdgeStore(IndexSettings(data_dir=tmp_path / "new")) as again:
        again.ensure_collection(DIM, SHA)
        assert not again.created
    (tmp_path / "kept" / "papers").mkdir(parents=True)
    (tmp_path / "kept" / "papers" / "notes.txt").write_text("someone's")
    with EdgeStore(IndexSettings(data_dir=tmp_path / "kept")) as found:
        found.ensure_collection(DIM, SHA)
        assert not found.created
    server = factory()
    server.ensure_collection(DIM, SHA)
    assert not server.created or isinstance(server, EdgeStore)


def test_an_embedded_manifest_that_cannot_be_written_is_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk when a new collection's manifest is written escaped as a bare OSError
    (an internal error at the gateway, no retry spacing at the opener); it is StoreUnavailable,
    and the next open, with room again, writes the manifest and goes on."""
    import errno

    import papersearch.index.edge as edge

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    settings = IndexSettings(data_dir=tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(edge, "write_json", full)
        with pytest.raises(StoreUnavailable, match="cannot write index manifest.*No space"):
            EdgeStore(settings).ensure_collection(DIM, SHA)
    with EdgeStore(settings) as s:
        s.ensure_collection(DIM, SHA)
        s.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2])
    assert (tmp_path / "papers" / MANIFEST).is_file()



def test_embedded_writes_are_refused_below_the_free_space_margin(tmp_path: Path) -> None:
    """On a full disk the engine's write into a memory-mapped file killed the process
    (SIGBUS, exit 135: an ingest, the gateway mid-UpsertPapers). Below index.min_free_mib of
    free space, a new index, a write and a delete are refused (StorageExhausted, UNAVAILABLE
    at the gateway), nothing is written, and reads go on; 0 turns the check off."""
    import os

    stats = os.statvfs(tmp_path)
    free_mib = stats.f_bavail * stats.f_frsize >> 20
    if free_mib + 64 > 1 << 20:
        pytest.skip("this volume has more free space than index.min_free_mib can ask for")
    roomy = IndexSettings(data_dir=tmp_path)
    with EdgeStore(roomy) as s:
        s.ensure_collection(DIM, SHA, create=True)
        s.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2])
    full = IndexSettings(data_dir=tmp_path, min_free_mib=free_mib + 64)
    with EdgeStore(full) as s:
        s.ensure_collection(DIM, SHA)
        with pytest.raises(StorageExhausted, match=r"MiB free, less than index.min_free_mib"):
            s.upsert(PAPERS[2:4], DENSE[2:4], SPARSE[2:4])
        with pytest.raises(StorageExhausted):
            s.delete([PAPERS[0].id])
        assert s.count() == 2 and [p.id for p in s.get([PAPERS[0].id])] == [PAPERS[0].id]
    with pytest.raises(StorageExhausted):
        EdgeStore(IndexSettings(data_dir=tmp_path / "new", min_free_mib=free_mib + 64)
                  ).ensure_collection(DIM, SHA, create=True)
    assert not (tmp_path / "new").exists()
    with EdgeStore(IndexSettings(data_dir=tmp_path, min_free_mib=0)) as s:
        s.ensure_collection(DIM, SHA)
        s.upsert(PAPERS[2:4], DENSE[2:4], SPARSE[2:4])
        assert s.count() == 4


def test_a_memory_backed_volume_is_told_by_the_deepest_mount_above_the_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tmpfs is told by the mount table: the deepest mount point above the folder (a name's
    space written as \\040), the later of two mounts at one point (the one in use), and an
    overlay by its upper layer's mount (an overlay's files were read as on disk)."""
    from papersearch import paths

    table = tmp_path / "mountinfo"
    monkeypatch.setattr(paths, "MOUNT_TABLE", table)
    table.write_text(
        "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:26 / /srv/ram\\040disk rw shared:5 - tmpfs tmpfs rw,size=102400k\n"
        "31 22 0:27 / /srv/ramdisk rw - tmpfs tmpfs rw\n"
        "32 31 8:2 / /srv/ramdisk rw - ext4 /dev/sdb1 rw\n"
        "40 22 0:41 / /srv/layered rw - overlay overlay rw,lowerdir=/srv/lower,"
        "upperdir=/srv/ram\\040disk/upper,workdir=/srv/ram\\040disk/work\n"
        "41 22 0:42 / /srv/on-disk rw - overlay overlay rw,lowerdir=/a,upperdir=/var/u,"
        "workdir=/var/w\n")
    assert paths.memory_backed(Path("/srv/ram disk/papers"))
    assert paths.memory_backed(Path("/srv/ram disk"))
    assert not paths.memory_backed(Path("/srv/ram diskette"))  # a prefix, not a parent
    assert not paths.memory_backed(Path("/srv/ramdisk/papers"))  # ext4 mounted over it
    assert not paths.memory_backed(Path("/var/lib"))
    assert paths.memory_backed(Path("/srv/layered/papers"))  # its upper layer on tmpfs
    assert not paths.memory_backed(Path("/srv/on-disk/papers"))
    # a container's root: its upper layer is the host's path, not mounted here
    table.write_text("1 0 0:43 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/host/diff\n")
    assert not paths.memory_backed(Path("/data/papers"))
    monkeypatch.setattr(paths, "MOUNT_TABLE", tmp_path / "none")
    assert not paths.memory_backed(Path("/srv/ram disk"))


def test_a_load_on_a_memory_backed_volume_meets_a_full_volume_in_a_child_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On tmpfs a load fills the holes of the shard's mapped files, and a page the volume has
    no room for killed the process that touched it (SIGBUS, a serving gateway included). The
    shard is loaded in a child first: killed by SIGBUS there, the open is StorageExhausted;
    any other failure there is left to the load here; on disk, or with index.min_free_mib 0,
    no child."""
    from papersearch.index import edge

    with EdgeStore(IndexSettings(data_dir=tmp_path)) as s:
        s.ensure_collection(DIM, SHA, create=True)
        s.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2])
    real = subprocess.Popen
    children: list[list[str]] = []

    def running(instead: str | None) -> None:
        def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
            children.append(command)
            return real([sys.executable, "-c", instead] if instead else command, **kwargs)

        monkeypatch.setattr(edge.subprocess, "Popen", spawn)

    def reopened(**settings: Any) -> int:
        with EdgeStore(IndexSettings(data_dir=tmp_path, **settings)) as again:
            again.ensure_collection(DIM, SHA)
            return again.count()

    running(None)
    assert reopened() == 2 and children == []  # tmp_path is on disk
    monkeypatch.setattr(edge, "memory_backed", lambda folder: True)
    assert reopened() == 2
    assert children[-1][1:4] == ["-m", "papersearch.index.build", "load"]
    running("import os, signal; os.kill(os.getpid(), signal.SIGBUS)")
    with pytest.raises(StorageExhausted, match=r"memory-backed \(tmpfs\) and ran out of room"):
        reopened()
    assert reopened(min_free_mib=0) == 2 and len(children) == 2
    running("import sys; sys.exit('the engine said no')")
    assert reopened() == 2


def test_a_full_tmpfs_volume_refuses_the_open_and_the_process_goes_on(tmp_path: Path) -> None:
    """The real thing: an index on a 160 MiB tmpfs, the volume then filled to 20 MiB free.
    Reopening the index killed the process (SIGBUS: ~50 MiB of holes read in). It is
    StorageExhausted now, the index whole once the room is back. So is a new index there
    with less room than it takes at once (42 MiB), whatever index.min_free_mib allows.
    Needs mount(2) (root)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(volume)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    settings = IndexSettings(data_dir=volume, min_free_mib=8)  # the writes' margin, not the load's
    try:
        with EdgeStore(settings) as s:
            s.ensure_collection(DIM, SHA, create=True)
            s.upsert(PAPERS, DENSE, SPARSE)
        filler = volume / "filler"
        stats = os.statvfs(volume)
        with filler.open("wb") as out:
            os.posix_fallocate(out.fileno(), 0, stats.f_bavail * stats.f_frsize - (20 << 20))
        with pytest.raises(StorageExhausted, match="memory-backed"), \
                EdgeStore(settings) as s:
            s.ensure_collection(DIM, SHA)
        filler.unlink()
        with EdgeStore(settings) as s:
            s.ensure_collection(DIM, SHA)  # the pages the child filled: the open takes none
        stats = os.statvfs(volume)
        with filler.open("wb") as out:
            os.posix_fallocate(out.fileno(), 0, stats.f_bavail * stats.f_frsize - (30 << 20))
        with pytest.raises(StorageExhausted, match="less than the 48 MiB a new index takes"):
            EdgeStore(IndexSettings(data_dir=volume / "new", min_free_mib=8)
                      ).ensure_collection(DIM, SHA, create=True)
        assert not (volume / "new").exists()
        filler.unlink()
        with EdgeStore(settings) as s:
            s.ensure_collection(DIM, SHA)
            assert s.count() == len(PAPERS)
            assert exact_scores(s, request("hybrid"))
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


@pytest.mark.parametrize(("said", "code"), [
    ('Service internal error: Failed to save structure on disk: No space left on device (os '
     'error 28) at path "/srv/secret/papers/.atomicwriteAbC123"', "No space left on device"),
    ("Service internal error: TooManyOpenFiles", "Too many open files"),
])
def test_the_engines_spent_resources_are_storage_exhausted(said: str, code: str) -> None:
    """A full disk or spent descriptors in the engine were a plain StoreError (the gateway's
    INTERNAL, a traceback per call, its random temporary file name in each message, so no
    two were one incident): StorageExhausted, in words without the engine's paths."""
    from papersearch.index.edge import _engine

    with pytest.raises(StorageExhausted) as raised, _engine("upsert"):
        raise Exception(said)  # noqa: TRY002 (the engine raises bare Exceptions)
    assert str(raised.value) == f"qdrant-edge upsert: {code} (index volume or file descriptors)"
    no_room = "Not enough space available for optimization, needed: 121.64 MiB, available: 68"
    with pytest.raises(StorageExhausted) as raised, _engine("optimize"):
        raise Exception(f"Service internal error: {no_room}")  # noqa: TRY002
    assert str(raised.value) == f"qdrant-edge optimize: {no_room}"  # how much to free


def test_a_create_cut_short_whose_close_fails_too_says_the_first_error_and_leaves_no_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new index whose making failed after the shard was made (a full disk) was closed,
    and that close's flush failed too: its error replaced the first one and the empty index
    stayed, read later as 0 papers instead of "no index"."""
    import papersearch.index.edge as edge

    def fails(self: EdgeStore) -> None:
        raise StoreError("qdrant-edge payload index failed: No space left on device")

    def close_fails(self: EdgeStore) -> None:
        self._shard = None
        raise StoreError("qdrant-edge close failed: No space left on device")

    monkeypatch.setattr(edge.EdgeStore, "_ensure_payload_indexes", fails)
    monkeypatch.setattr(edge.EdgeStore, "_close_shard", close_fails)
    with pytest.raises(StoreError, match="payload index failed"):
        EdgeStore(IndexSettings(data_dir=tmp_path / "data")).ensure_collection(DIM, SHA,
                                                                              create=True)
    assert not (tmp_path / "data").exists()


def test_where_an_index_is_not_is_said_plainly(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An index.data_dir that is a file was "not readable and writable"; a relative one was
    named as written, so a command run from another folder pointed at the wrong place."""
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(StoreUnavailable, match="afile is a file, not a folder"):
        EdgeStore(IndexSettings(data_dir=afile)).ensure_collection(DIM, SHA)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CollectionMissing, match=rf"no index at rel/papers \({tmp_path}/rel/"
                                                "papers\\): papersearch ingest creates it"):
        EdgeStore(IndexSettings(data_dir=Path("rel"))).ensure_collection(DIM, SHA, create=False)
    # a folder this process may not write in: the setting is named (it was the bare "[Errno
    # 13] Permission denied: ..."); monkeypatched, since root (the CI) passes every check
    def refused(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # and a data_dir that is a link to nothing (a volume not mounted) is said as such: it was
    # "open in another process" (the engine's failure to create there)
    (tmp_path / "dangling").symlink_to(tmp_path / "unmounted")
    with pytest.raises(StoreError, match=r"dangling is there but not a folder \(index.data_dir; "
                                         r"a link to a volume not mounted\?\)"):
        EdgeStore(IndexSettings(data_dir=tmp_path / "dangling")).ensure_collection(DIM, SHA)
    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(StoreError, match=r"index directory .*ro/papers cannot be made: "
                                         r"permission denied for .*ro.* \(index.data_dir"):
        EdgeStore(IndexSettings(data_dir=tmp_path / "ro")).ensure_collection(DIM, SHA)

KILLED_WRITER = """
import sys
from pathlib import Path
from papersearch.corpus.paper import Paper, point_id
from papersearch.index.edge import EdgeStore
from papersearch.settings import IndexSettings
from tests.test_index import BM25, DIM, SHA, unit_vectors

data_dir, size = Path(sys.argv[1]), int(sys.argv[2])
store = EdgeStore(IndexSettings(data_dir=data_dir))  # never closed, never flushed
store.ensure_collection(DIM, SHA)
for batch in range(1_000_000):  # until killed
    papers = [Paper(id=f"k{batch}-{i}", title=f"paper {i} of batch {batch}",
                    abstract="tidal turbines in a narrow strait") for i in range(size)]
    store.upsert(papers, unit_vectors(size, seed=batch), BM25.documents(p.text for p in papers))
    print(" ".join(p.id for p in papers), flush=True)  # acknowledged: upsert returned
"""


@pytest.mark.slow
def test_edge_sigkill_mid_run_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """The flush policy in edge.py: an upsert that returned is in the write-ahead log, which
    a process killed with SIGKILL (no close, no flush) replays on the next load."""
    size, wanted = 50, 20  # papers per upsert; acknowledgements seen before the kill
    root = Path(__file__).resolve().parents[1]
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path), str(size)],
        cwd=root, stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < wanted:
            line = writer.stdout.readline()
            assert line, f"the writer ended early (exit {writer.wait(10)})"
            lines.append(line)
    finally:
        writer.kill()  # SIGKILL, while it writes the next batches
        rest = writer.stdout.read()
        writer.wait(30)
    assert writer.returncode == -signal.SIGKILL  # killed mid-run, not finished
    lines += rest.splitlines(keepends=True)
    acknowledged = [i for line in lines if line.endswith("\n") for i in line.split()]
    assert len(acknowledged) >= wanted * size
    with EdgeStore(IndexSettings(data_dir=tmp_path)) as s:
        s.ensure_collection(DIM, SHA, create=False)
        wanted_ids = {point_id(i) for i in acknowledged}
        assert s.existing_ids(wanted_ids) == wanted_ids
        # and nothing else but, at most, the batch that was being written when killed
        assert len(acknowledged) <= s.count() <= len(acknowledged) + size


def test_edge_open_elsewhere_is_unavailable(tmp_path: Path) -> None:
    """The likely holders are named; a second eval of one set, refused by the first's hold on
    the set's index, was told of serve and ingest alone."""
    with EdgeStore(IndexSettings(data_dir=tmp_path)) as s:
        s.ensure_collection(DIM, SHA)
        with pytest.raises(StoreUnavailable, match=r"another process, .+`papersearch serve` or "
                                                   r"ingest, .+ another eval or tune run"):
            EdgeStore(IndexSettings(data_dir=tmp_path)).ensure_collection(DIM, SHA)


def test_unreachable_server_is_unavailable() -> None:
    port = free_port()  # nobody listens on it
    settings = IndexSettings(
        backend="server", url=f"http://127.0.0.1:{port}", grpc_port=port, timeout_s=2
    )
    store = open_store(settings)
    assert isinstance(store, ServerStore)
    with pytest.raises(StoreUnavailable):
        store.ensure_collection(DIM, SHA)
    store.close()


class FlakyClient:
    """A local-mode client whose ``methods`` fail like an unreachable server, ``failures`` times
    in all, each failure after ``delay_s``; every call is counted, with the timeout it got."""

    def __init__(self, methods: set[str], failures: int, delay_s: float = 0.0) -> None:
        self.client = QdrantClient(":memory:")
        self.methods, self.failures, self.delay_s = methods, failures, delay_s
        self.calls: list[str] = []
        self.timeouts: list[int | None] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in self.methods:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            self.timeouts.append(kwargs.get("timeout"))
            if self.failures > 0:
                self.failures -= 1
                time.sleep(self.delay_s)
                raise ResponseHandlingException(ConnectionRefusedError("connection refused"))
            return method(*args, **kwargs)

        return call


def flaky_store(timeout_s: int = 10) -> tuple[ServerStore, FlakyClient]:
    flaky = FlakyClient(set(), 0)
    store = ServerStore(IndexSettings(timeout_s=timeout_s), client=flaky)  # type: ignore[arg-type]
    store.ensure_collection(DIM, SHA)
    store.upsert(PAPERS[:5], DENSE[:5], SPARSE[:5])
    return store, flaky


@pytest.mark.parametrize("method", ["count", "query_batch_points", "retrieve", "upsert", "delete"])
def test_server_requests_are_retried_once(method: str) -> None:
    store, flaky = flaky_store()
    calls = {
        "count": store.count,
        "query_batch_points": lambda: store.query(request("dense", limit=3)),
        "retrieve": lambda: store.get([PAPERS[0].id]),
        "upsert": lambda: store.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2]),
        "delete": lambda: store.delete([PAPERS[4].id]),
    }
    flaky.methods, flaky.failures = {method}, 1
    calls[method]()  # the retry answers
    assert flaky.calls == [method, method]
    flaky.calls, flaky.failures = [], 2
    with pytest.raises(StoreUnavailable, match="connection refused"):
        calls[method]()  # once, not twice
    assert flaky.calls == [method, method]
    store.close()


@pytest.mark.parametrize("delay_s", [0.0, 2.5])
def test_server_retry_stays_within_the_timeout(delay_s: float) -> None:
    """The retry gets what is left of the one ``timeout_s`` (3 s here) after the first try and
    the pause, in whole seconds: 2 after a first try that failed at once; after one that took
    2.5 s less than a second is left, so there is no retry at all. (A deadline counted afresh
    for the retry, or from after the first try, would give it 2 or 3 s: 5 s and more in all.)"""
    store, flaky = flaky_store(timeout_s=3)
    flaky.methods, flaky.failures, flaky.delay_s = {"count"}, 1, delay_s
    if delay_s == 0.0:
        assert store.count() == 5  # the retry answers
        assert flaky.calls == ["count", "count"]
        assert flaky.timeouts[1] == 2  # int(3 - 0.1 pause - the first try's few ms)
    else:
        with pytest.raises(StoreUnavailable, match="connection refused"):
            store.count()
        assert flaky.calls == ["count"]
    store.close()


class NotFound(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a Qdrant server answers over gRPC for a collection that is not there."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "Not found: Collection `papers` doesn't exist!"

    def initial_metadata(self) -> None: ...
    def trailing_metadata(self) -> None: ...
    def is_active(self) -> bool: return False
    def time_remaining(self) -> None: ...
    def cancel(self) -> bool: return False
    def add_callback(self, callback: Any) -> bool: return False


@pytest.mark.parametrize("answer", ["grpc", "rest"])
def test_a_server_collection_deleted_while_open_is_missing(answer: str) -> None:
    """As with the embedded engine: readiness says the collection is gone (the gateway answers
    FAILED_PRECONDITION), not an INTERNAL error with a traceback."""
    store, flaky = flaky_store()
    gone: Exception = NotFound() if answer == "grpc" else UnexpectedResponse(
        404, "Not Found", b'{"status": {"error": "Collection `papers` doesn\'t exist!"}}',
        httpx.Headers())

    def count(*_: Any, **__: Any) -> int:
        raise gone

    flaky.client.count = count  # type: ignore[method-assign]
    with pytest.raises(CollectionMissing, match="exist"):
        store.probe()
    store.close()


def test_unreadable_server_collection_identity_is_a_store_error() -> None:
    """Damaged metadata is reported as the index's (the opener then closes its client), not a
    bare KeyError."""
    client = QdrantClient(":memory:")
    client.create_collection(
        "papers", vectors_config={DENSE_NAME: models.VectorParams(
            size=DIM, distance=models.Distance.COSINE)},
        metadata={"papersearch": {"schema": 1, "dim": DIM}})
    store = ServerStore(IndexSettings(), client=client)
    with pytest.raises(StoreError, match="unreadable embedder identity"):
        store.ensure_collection(DIM, SHA)
    store.close()


def test_ctrl_c_as_the_shard_is_made_leaves_no_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C landing as the engine's create returned left a shard without identity, which
    the next open took for an empty index ("0 hits")."""
    import papersearch.index.edge as edge

    real = edge.qe.EdgeShard

    class Interrupted:
        load = real.load

        @staticmethod
        def create(*args: Any) -> Any:
            shard = real.create(*args)
            os.kill(os.getpid(), signal.SIGINT)  # as it returns
            return shard

    monkeypatch.setattr(edge.qe, "EdgeShard", Interrupted)
    store = EdgeStore(IndexSettings(data_dir=tmp_path / "index"))
    with pytest.raises(KeyboardInterrupt):
        store.ensure_collection(DIM, SHA)
    assert not store.path.exists()
    monkeypatch.undo()
    with pytest.raises(CollectionMissing):
        EdgeStore(IndexSettings(data_dir=tmp_path / "index")).ensure_collection(
            DIM, SHA, create=False)


def _make_at_once(data_dir: str, barrier: Any, attempted: Any, results: Any) -> None:
    """One of two processes making one embedded index at the same moment. Each passes
    ``attempted`` once its own making is over (the one turned away has undone what it would),
    so the one that opened the index holds it open until the other has given up, however
    slowly that runs; the wait's timeout is a hang guard."""
    store = EdgeStore(IndexSettings(data_dir=Path(data_dir)))
    barrier.wait()
    try:
        store.ensure_collection(DIM, SHA)
    except StoreError as error:
        results.put((type(error).__name__, str(error)))
        attempted.wait(60)
        return
    results.put(("opened", ""))
    attempted.wait(60)  # held open while the other gives up
    store.close()


@pytest.mark.slow
def test_two_processes_making_one_index_at_once_leave_one_index(tmp_path: Path) -> None:
    """The one the engine turned away removed the other's directory as a making of its own
    cut short: both failed, and no index was left."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for trial in range(3):
        data_dir = tmp_path / str(trial)
        barrier, attempted, results = context.Barrier(2), context.Barrier(2), context.Queue()
        workers = [context.Process(target=_make_at_once,
                                   args=(str(data_dir), barrier, attempted, results))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        outcomes = sorted(results.get(timeout=10) for _ in workers)
        assert [kind for kind, _ in outcomes] == ["StoreUnavailable", "opened"], outcomes
        assert "open in another process" in outcomes[0][1]
        with EdgeStore(IndexSettings(data_dir=data_dir)) as store:
            store.ensure_collection(DIM, SHA, create=False)
            assert store.count() == 0


def test_an_index_whose_making_was_cut_short_is_not_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as the first ingest made the index left a shard without identity, which `search`
    read as an empty index ("0 hits", not "no index at")."""
    import papersearch.index.edge as edge

    def cut(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(edge, "write_manifest", cut)
    store = EdgeStore(IndexSettings(data_dir=tmp_path / "index"))
    with pytest.raises(KeyboardInterrupt):
        store.ensure_collection(DIM, SHA)
    assert not store.path.exists() and not store.created
    monkeypatch.undo()
    with pytest.raises(CollectionMissing):
        EdgeStore(IndexSettings(data_dir=tmp_path / "index")).ensure_collection(
            DIM, SHA, create=False)


def test_an_index_deleted_mid_way_is_never_left_half_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An index ingest made for nothing was deleted in place (rmtree, in listing order): a
    kill after its shard config had gone and before its segments left a folder `search` read
    as no index and ingest could not make ("path already contains segment data"), stuck until
    deleted by hand. It is renamed aside before it is deleted; what a death leaves aside goes
    at the next open. A folder left half deleted anyway (by an older version) is said plainly."""
    import shutil

    from papersearch import durable
    from papersearch.index.pointer import EdgePointers

    settings = IndexSettings(data_dir=tmp_path / "index")
    store = EdgeStore(settings)
    store.ensure_collection(DIM, SHA)
    store.close()

    def killed(path: Path, ignore_errors: bool = False) -> None:
        for child in sorted(Path(path).iterdir()):  # some of it deleted, then the death
            if child.is_dir() and child.name != "segments":
                shutil.rmtree(child)
            elif child.is_file():
                child.unlink()
        raise SystemExit("killed")

    monkeypatch.setattr(durable, "shutil", ModuleStandIn(shutil, rmtree=killed))
    with pytest.raises(SystemExit):
        EdgePointers(settings).drop(store.path.name)
    monkeypatch.undo()
    assert not store.path.exists()
    [aside] = [p for p in settings.data_dir.iterdir() if p.name.endswith(".removing")]
    assert (aside / "segments").is_dir()
    with pytest.raises(CollectionMissing):  # no index, as before
        EdgeStore(settings).ensure_collection(DIM, SHA, create=False)
    assert not aside.exists()  # cleared by that open
    again = EdgeStore(settings)
    again.ensure_collection(DIM, SHA)  # ingest makes it anew
    again.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2])
    assert again.count() == 2
    again.close()

    (store.path / "edge_config.json").unlink()  # as an in-place deletion left it
    (store.path / "papersearch.json").unlink()
    with pytest.raises(StoreError, match="its deletion was cut short .* Delete the folder"):
        EdgeStore(settings).ensure_collection(DIM, SHA)
    with pytest.raises(StoreError, match="its deletion was cut short .* Delete the folder"):
        EdgeStore(settings).ensure_collection(DIM, SHA, create=False)  # was "no index at"


def test_a_damaged_index_is_refused_with_its_papers_kept_and_the_way_back_said(
        tmp_path: Path) -> None:
    """A segment that lost its version.info (a lost file, an incomplete copy) was deleted by
    the engine as it loaded: the search after it answered from the papers left in the WAL,
    exit 0, and most of the index was gone for good. Such a segment, a missing segments
    folder and files the engine cannot read are refused, nothing deleted, with the way back."""
    import shutil

    settings = IndexSettings(data_dir=tmp_path / "index")
    with EdgeStore(settings) as s:
        s.ensure_collection(DIM, SHA)
        s.upsert(PAPERS, DENSE, SPARSE)
    path = settings.data_dir / settings.collection
    copy = tmp_path / "copy"
    shutil.copytree(settings.data_dir, copy)
    [written] = [p for p in (path / "segments").iterdir()
                 if (p / "mutable_id_tracker.mappings").is_file()]
    (written / "version.info").unlink()
    way_back = "restore the index's folder from a copy, or run papersearch ingest into a fresh"
    with pytest.raises(StoreError, match=f"segment {written.name} holds papers but no "
                                         f"version.info .*: {way_back}"):
        EdgeStore(settings).ensure_collection(DIM, SHA, create=False)
    assert (written / "mutable_id_tracker.mappings").is_file()  # still there to restore
    # a replaced segment whose removal by the engine was cut short (a build child killed
    # after an optimize): renamed *.deleted, version.info gone first; the load finishes it
    shutil.copytree(copy, tmp_path / "replaced")
    kept = tmp_path / "replaced" / settings.collection / "segments"
    [segment] = [p for p in kept.iterdir() if p.name == written.name]
    shutil.copytree(segment, kept / f"{segment.name}AbCdEf.deleted",
                    ignore=shutil.ignore_patterns("version.info"))
    with EdgeStore(IndexSettings(data_dir=tmp_path / "replaced")) as s:
        s.ensure_collection(DIM, SHA, create=False)
        assert s.count() == len(PAPERS)
    assert not (kept / f"{segment.name}AbCdEf.deleted").exists()
    shutil.rmtree(path / "segments")
    with pytest.raises(StoreError, match="has no segments folder"):
        EdgeStore(settings).ensure_collection(DIM, SHA)
    shutil.rmtree(settings.data_dir)
    shutil.copytree(copy, settings.data_dir)
    (path / "wal" / "open-1").write_bytes(b"")
    with pytest.raises(StoreError, match=r"could not be read \(damaged or incomplete files\?\)"
                                         rf": .*\. {way_back[0].upper()}{way_back[1:]}"):
        EdgeStore(settings).ensure_collection(DIM, SHA)
    shutil.rmtree(settings.data_dir)
    shutil.copytree(copy, settings.data_dir)  # the way back
    with EdgeStore(settings) as s:
        s.ensure_collection(DIM, SHA, create=False)
        assert s.count() == len(PAPERS)


@pytest.mark.parametrize("made_on_disk", [True, False])
def test_an_index_keeps_the_vector_layout_it_was_made_with(tmp_path: Path,
                                                          made_on_disk: bool) -> None:
    """index.on_disk_vectors applies to indexes made from then on, as it says: a load was
    given the setting, so a search without it moved an index made on disk into RAM (its
    edge_config.json rewritten), and the build child was told the setting too."""
    with EdgeStore(IndexSettings(data_dir=tmp_path, on_disk_vectors=made_on_disk)) as s:
        s.ensure_collection(DIM, SHA)
        s.upsert(PAPERS, DENSE, SPARSE)
    config = tmp_path / "papers" / "edge_config.json"
    with EdgeStore(IndexSettings(data_dir=tmp_path, on_disk_vectors=not made_on_disk)) as s:
        s.ensure_collection(DIM, SHA, create=False)
        assert ids(s.query(request("dense", 11, limit=1))) == [PAPERS[11].id]
    assert json.loads(config.read_text())["vectors"]["dense"]["on_disk"] is made_on_disk


def test_ctrl_c_after_the_index_is_made_leaves_no_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in ensure_collection's count for its "index open" line, after the engine had
    made the index, left it empty on disk: `search` then said "0 hits", not "no index at".
    An index that was there before stays."""

    def cut(self: Store) -> int:
        raise KeyboardInterrupt

    kept = EdgeStore(IndexSettings(data_dir=tmp_path / "kept"))
    kept.ensure_collection(DIM, SHA)
    kept.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2])
    kept.close()
    monkeypatch.setattr(EdgeStore, "count", cut)
    store = EdgeStore(IndexSettings(data_dir=tmp_path / "index"))
    with pytest.raises(KeyboardInterrupt):
        store.ensure_collection(DIM, SHA)
    assert not store.path.exists() and not store.created
    with pytest.raises(KeyboardInterrupt):
        EdgeStore(IndexSettings(data_dir=tmp_path / "kept")).ensure_collection(DIM, SHA)
    with pytest.raises(KeyboardInterrupt):  # reopened by the store that made it: still kept
        kept.ensure_collection(DIM, SHA)
    assert not kept.created
    monkeypatch.undo()
    with pytest.raises(CollectionMissing):
        EdgeStore(IndexSettings(data_dir=tmp_path / "index")).ensure_collection(
            DIM, SHA, create=False)
    with EdgeStore(IndexSettings(data_dir=tmp_path / "kept")) as again:
        again.ensure_collection(DIM, SHA, create=False)
        assert again.count() == 2


def test_a_point_without_its_paper_id_is_a_damaged_index(store: Store) -> None:
    """A shard once reopened with every payload empty: each read of a paper then failed with
    a bare KeyError 'paper_id', deep in whatever read it (an ingest's unstored)."""
    paper = PAPERS[0]

    def blank() -> Program[None]:
        yield Write((PointData(paper.point_id, DENSE[0].tolist(), SPARSE[0], {}),))

    store.execute(blank())
    with pytest.raises(StoreError, match="has no paper_id: the index is damaged"):
        store.get([paper.id])


def test_writes_with_another_bm25_weighting_are_refused(factory: Factory) -> None:
    """index.bm25_avg_len changed (its default went 256 -> 200) and an ingest weighed the new
    papers one way and kept the old ones another, unseen. The collection records its
    weighting; searches still run, writes with another are refused, the recorded one works."""
    first = factory(bm25_avg_len=100.0)
    first.ensure_collection(DIM, SHA)
    first.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2])
    first.close()
    other = factory(bm25_avg_len=150.0)
    other.ensure_collection(DIM, SHA)
    assert other.count() == 2 and Retriever(other).search("graph", None, mode="sparse")
    with pytest.raises(WeightingMismatch, match=r"bm25_avg_len=100, index.bm25_title_weight=1 "
                                         r"and index.bm25_tokenizer=word, and this process has "
                                         r"150, 1 and word"):
        other.upsert(PAPERS[2:3], DENSE[2:3], SPARSE[2:3])
    assert other.count() == 2
    other.close()
    same = factory(bm25_avg_len=100.0)
    same.ensure_collection(DIM, SHA)
    assert same.upsert(PAPERS[2:3], DENSE[2:3], SPARSE[2:3]) == 1


def test_a_collection_is_searched_with_the_bm25_words_it_was_built_with(
        factory: Factory) -> None:
    """index.bm25_tokenizer makes the words of papers and of queries: a collection built with
    one and opened with another is refused, searches too (an accented or unspaced query word
    would match none of the papers', unseen); the record keeps a word collection's as it was."""
    folded = factory(bm25_tokenizer="folded")
    folded.ensure_collection(DIM, SHA)
    bm25 = Bm25Encoder(tokenizer="folded")
    paper = Paper(id="accents", title="Naïve Bayes for Schrödinger surrogates", abstract="")
    folded.upsert([paper], DENSE[:1], bm25.papers([paper]))
    folded.close()
    plain = factory()
    with pytest.raises(WeightingMismatch, match=r"made with index.bm25_tokenizer=folded, and "
                                                r"this process has word: its queries' words"):
        plain.ensure_collection(DIM, SHA)
    plain.close()
    again = factory(bm25_tokenizer="folded")
    again.ensure_collection(DIM, SHA)
    hits = Retriever(again).search("naive schrodinger", None, mode="sparse")
    assert [hit.paper.id for hit in hits] == ["accents"]
    again.close()
    # a word collection's record as before the tokenizer was recorded (schema 1, which earlier
    # releases read alike); another tokenizer's is schema 2, which they refuse
    word = EmbedderIdentity(SHA, DIM, Bm25Weighting(200.0, 1)).to_json()
    assert word["schema"] == 1 and word["bm25"] == {"avg_len": 200.0, "title_weight": 1}
    assert EmbedderIdentity(SHA, DIM, Bm25Weighting(200.0, 1, "folded")).to_json()[
        "schema"] == SCHEMA_VERSION == 2
    # a collection recording no weighting (written before 2026-12-06) has word's words
    assert EmbedderIdentity.from_json({"embedder_sha256": SHA, "dim": DIM}).bm25 is None
    with pytest.raises(WeightingMismatch, match="made with index.bm25_tokenizer=word"):
        Bm25Weighting(200.0, 1, "folded").require_words(None, "index x")
    Bm25Weighting(200.0, 1).require_words(None, "index x")


def test_an_index_refused_for_its_tokenizer_is_not_loaded_nor_left_locked(
        tmp_path: Path) -> None:
    """The tokenizer was checked after the whole index had been loaded and locked, and
    open_index left it locked when refused: the setting set right, the next open in the
    process read "open in another process"."""
    settings = Settings(index=IndexSettings(data_dir=tmp_path / "index"))
    encoder = cast(Encoder, SimpleNamespace(dim=DIM, sha256=SHA))  # all an open reads of it
    open_index(settings, encoder, create=True).close()
    folded = settings.model_copy(update={"index": settings.index.model_copy(
        update={"bm25_tokenizer": "folded"})})
    with pytest.raises(WeightingMismatch):
        open_index(folded, encoder)
    open_index(settings, encoder).close()


def test_an_index_a_newer_version_wrote_is_refused(factory: Factory) -> None:
    """The identity's schema was written and never read: a layout a later release wrote
    (schema 2) opened as if it were this one's."""
    store = factory()
    store.ensure_collection(DIM, SHA)
    store.close()
    newer = {**EmbedderIdentity(SHA, DIM).to_json(), "schema": SCHEMA_VERSION + 1}
    again = factory()
    if isinstance(again, EdgeStore):
        (again.path / MANIFEST).write_text(json.dumps(newer))
    else:
        assert isinstance(again, ServerStore)
        again.client.update_collection("papers", metadata={METADATA_KEY: newer})
    with pytest.raises(StoreError, match=rf"written by a newer papersearch \(index schema "
                                         rf"{SCHEMA_VERSION + 1}; this one reads up to "
                                         rf"{SCHEMA_VERSION}\): upgrade"):
        again.ensure_collection(DIM, SHA)
    again.close()


def test_open_store_default_is_embedded(tmp_path: Path) -> None:
    store = open_store(Settings(index=IndexSettings(data_dir=tmp_path)))
    assert isinstance(store, EdgeStore) and store.path == tmp_path / "papers"


def test_server_store_names_its_collection_without_the_url_credentials() -> None:
    """describe() goes into log lines and error messages: user and password stay out."""
    settings = IndexSettings(backend="server", url="https://reader:s3cret@qdrant.example:6333",
                             collection="papers")
    store = ServerStore(settings, client=QdrantClient(":memory:"))
    assert store.describe() == "https://qdrant.example:6333/papers"
    store.close()


def test_settings_need_url_for_server() -> None:
    with pytest.raises(ValueError, match="index.url"):
        IndexSettings(backend="server")


def test_a_server_timeout_grpc_cannot_keep_is_refused() -> None:
    """index.timeout_s=1e10 passed: every call to the server then failed at once with
    DEADLINE_EXCEEDED (gRPC read the deadline as past), as if Qdrant were down."""
    with pytest.raises(ValueError, match="less than or equal to 31536000"):
        IndexSettings(backend="server", url="http://qdrant:6333", timeout_s=10_000_000_000)


# -- the two engines agree ------------------------------------------------------------------------


def groups(hits: list[Hit]) -> list[tuple[float, frozenset[str]]]:
    """Ranked groups of equal-score ids: engines may order ties differently."""
    out: list[tuple[float, set[str]]] = []
    for h in hits:
        if out and math.isclose(out[-1][0], h.score, rel_tol=1e-5):
            out[-1][1].add(h.paper.id)
        else:
            out.append((h.score, {h.paper.id}))
    return [(score, frozenset(members)) for score, members in out]


CONGRUENCE = [
    ("dense", {}),
    ("sparse", {}),
    ("hybrid", {"fusion": "rrf"}),
    ("hybrid", {"fusion": "dbsf"}),
    ("hybrid", {"fusion": "convex"}),
    ("hybrid", {"fusion": "convex", "dense_weight": 0.3, "prefetch_limit": 5}),
    ("hybrid", {"fusion": "rrf", "filter": SearchFilter(categories=("cs.CL", "cs.LG"))}),
]


@pytest.mark.parametrize(("mode", "extra"), CONGRUENCE)
def test_edge_and_qdrant_client_agree(tmp_path: Path, mode: str, extra: dict) -> None:
    settings = IndexSettings(data_dir=tmp_path, prefetch_limit=8)
    edge = EdgeStore(settings)
    local = ServerStore(settings, client=QdrantClient(":memory:"))
    try:
        for s in (edge, local):
            s.ensure_collection(DIM, SHA)
            s.upsert(PAPERS, DENSE, SPARSE)
        for i, text in [(0, RARE), (4, "graph protein kernel"), (17, "climate galaxy market")]:
            # Every candidate is returned, so no tie group is cut by the limit.
            req = request(mode, i, text=text, exact=True, limit=len(PAPERS), **extra)
            a, b = edge.query(req), local.query(req)
            ga, gb = groups(a), groups(b)
            assert [m for _, m in ga] == [m for _, m in gb]
            assert [s for s, _ in ga] == pytest.approx([s for s, _ in gb], rel=1e-4)
            stages_b = {h.paper.id: (h.dense_score, h.sparse_score) for h in b}
            for h in a:
                ours = (h.dense_score, h.sparse_score)
                for mine, theirs in zip(ours, stages_b[h.paper.id], strict=True):
                    assert (mine is None) == (theirs is None)
                    assert mine is None or mine == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    finally:
        edge.close()
        local.close()


def test_edge_access_check_holds_briefly_and_repeats_while_failing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A passed check of the index directory holds ACCESS_CHECK_S; a failed one is repeated
    on every call until access is back (os.access stands in for a chmod: root ignores modes)."""
    from papersearch.index import edge

    store = edge.EdgeStore(IndexSettings(data_dir=tmp_path, collection="c"))
    store.path.mkdir()
    allowed = {"ok": True}
    calls: list[str] = []

    def access(path: object, mode: int) -> bool:
        calls.append(str(path))
        return allowed["ok"]

    clock = {"now": 1000.0}
    monkeypatch.setattr(edge, "os", ModuleStandIn(os, access=access))
    monkeypatch.setattr(edge, "time", ModuleStandIn(time, monotonic=lambda: clock["now"]))
    store._check_access()
    assert len(calls) == 2  # the data directory and the index directory
    allowed["ok"] = False
    store._check_access()  # within ACCESS_CHECK_S: not looked at again
    assert len(calls) == 2
    clock["now"] += edge.ACCESS_CHECK_S
    for _ in range(2):
        with pytest.raises(StoreUnavailable, match="not readable and writable"):
            store._check_access()
    assert len(calls) == 4
    allowed["ok"] = True
    store._check_access()
    assert len(calls) == 6


@pytest.mark.parametrize("wiped", ["directory", "shard config"])
def test_edge_writes_to_a_collection_deleted_while_open_are_refused(
        tmp_path: Path, wiped: str) -> None:
    """The open shard would take them into files that are gone: acknowledged, then lost."""
    import shutil

    from papersearch.index import edge

    store = EdgeStore(IndexSettings(data_dir=tmp_path, collection="c"))
    store.ensure_collection(DIM, SHA)
    try:
        store.upsert(PAPERS[:1], DENSE[:1], SPARSE[:1])
        if wiped == "directory":
            shutil.rmtree(store.path)
        else:
            (store.path / "edge_config.json").unlink()
        time.sleep(edge.ACCESS_CHECK_S)  # past the last passed access check
        with pytest.raises(CollectionMissing, match="gone"):
            store.upsert(PAPERS[1:2], DENSE[1:2], SPARSE[1:2])
    finally:
        with contextlib.suppress(StoreError):  # a flush into a deleted directory may fail
            store.close()


def test_edge_close_releases_the_shard_when_its_flush_fails(tmp_path: Path) -> None:
    """A failed flush (a disk error) is raised, and the shard is still closed: its lock held,
    nothing else (a restarted gateway, an ingest) could open the index again."""
    settings = IndexSettings(data_dir=tmp_path, collection="c")
    store = EdgeStore(settings)
    store.ensure_collection(DIM, SHA)
    shard = store._shard
    assert shard is not None

    class FailingFlush:
        def flush(self) -> None:
            raise OSError("EIO: disk error")

        def close(self) -> None:
            shard.close()

    store._shard = FailingFlush()  # type: ignore[assignment]
    with pytest.raises(StoreError, match="EIO"):
        store.close()
    with pytest.raises(StoreError, match="not open"):  # not a store that looks open
        store.count()
    with EdgeStore(settings) as again:
        again.ensure_collection(DIM, SHA)
        assert again.count() == 0


@pytest.mark.parametrize("dense", [[], [0.1, float("nan")], [float("inf"), 0.2], [1e39, 0.0]])
def test_search_request_refuses_empty_or_non_finite_vectors(dense: list[float]) -> None:
    """1e39 overflows float32, the precision the engine searches in."""
    with pytest.raises(ValueError, match="non-empty and finite"):
        SearchRequest(mode="dense", dense=dense)


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-5, 0.99 * MIN_NORM])
def test_a_dense_query_without_a_direction_is_refused(scale: float) -> None:
    """A zero vector scored 0.0 against every paper, the hits in each engine's own order; one
    shorter than MIN_NORM Qdrant does not normalize: cosines ~1e-5 on the embedded engine and
    up to 1.0 in local mode."""
    with pytest.raises(ValueError, match="dense query vector must have a norm of at least"):
        SearchRequest(mode="dense", dense=DENSE[3] * scale)


def test_the_shortest_dense_query_scores_cosines_on_every_engine(loaded: Store) -> None:
    """Just past MIN_NORM both engines normalize the query: the paper's own vector scores 1."""
    hits = loaded.query(request("dense", 3, exact=True, limit=1))
    short = loaded.query(SearchRequest(mode="dense", dense=DENSE[3] * 1.01 * MIN_NORM,
                                       exact=True, limit=1))
    assert [(h.paper.id, h.score) for h in short] == [
        (h.paper.id, pytest.approx(h.score, abs=1e-5)) for h in hits]
    assert short[0].score == pytest.approx(1.0, abs=1e-5)


def test_search_request_holds_its_vector_as_float32_values() -> None:
    request = SearchRequest(mode="dense", dense=np.array([[0.1, 0.2]], dtype=np.float64))
    assert request.dense == (float(np.float32(0.1)), float(np.float32(0.2)))
    assert all(type(x) is float for x in request.dense_vector())


def test_server_writes_carry_the_configured_write_ordering() -> None:
    """Upserts and deletes went with Qdrant's default, weak ordering: two writes of one paper
    at once could land in either order on each replica, which then differed for good."""
    sent: dict[str, Any] = {}

    class Recording(QdrantClient):  # the local engine, each write's options kept
        def upsert(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
            sent["upsert"] = kwargs.get("ordering")
            return super().upsert(collection_name, *args, **kwargs)

        def delete(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
            sent["delete"] = kwargs.get("ordering")
            return super().delete(collection_name, *args, **kwargs)

    assert IndexSettings().write_ordering == "medium"
    for ordering in ("medium", "strong"):
        store = ServerStore(IndexSettings(write_ordering=ordering), client=Recording(":memory:"))
        store.ensure_collection(DIM, SHA)
        store.upsert(PAPERS[:2], DENSE[:2], SPARSE[:2])
        store.delete([PAPERS[0].id])
        assert sent == {"upsert": models.WriteOrdering(ordering),
                        "delete": models.WriteOrdering(ordering)}
        store.close()


def test_equal_scores_rank_by_point_id_however_the_index_was_written(
        factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Papers of one text tie in BM25. The engine ranks ties in its storage order, which
    follows how the index was written, and its rrf and dbsf fusions by chance (the same search
    gave other orders call after call): ties now go by point id, so an index written in other
    batches or another order answers the same, and a search the same every time."""
    twins = [Paper(id=f"twin-{n}", title="lattice galaxy", abstract="kernel sensor battery")
             for n in range(24)]  # past twice the limit: the run is followed deeper
    papers = twins + PAPERS[:6]
    dense = unit_vectors(len(papers), seed=11)
    sparse = BM25.documents(p.text for p in papers)
    answers = []
    for name, order, batch in (("forward", range(len(papers)), len(papers)),
                               ("reversed", range(len(papers) - 1, -1, -1), 1)):
        store = factory(collection=name, prefetch_limit=10)  # the run of ties past it
        store.ensure_collection(DIM, SHA)
        rows = list(order)
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            store.upsert([papers[i] for i in part], dense[part], [sparse[i] for i in part])
        found = {}
        for mode, fusion in (("sparse", None), ("hybrid", "convex"), ("hybrid", "rrf"),
                             ("hybrid", "dbsf")):
            request = SearchRequest(mode=mode, dense=tuple(DENSE[-1]),  # type: ignore[arg-type]
                                    sparse=BM25.query("lattice galaxy kernel"), limit=5,
                                    exact=True, fusion=fusion)  # type: ignore[arg-type]
            calls = {tuple(h.paper.id for h in store.query(request)) for _ in range(5)}
            assert len(calls) == 1, (name, mode, fusion, calls)  # the same call after call
            (found[mode, fusion],) = calls
        answers.append(found)
    by_id = tuple(p.id for p in sorted(twins, key=lambda p: p.point_id))
    assert answers[0]["sparse", None] == answers[1]["sparse", None] == by_id[:5]
    # the convex fusion's lists are cut at prefetch_limit (10) with their ties by point id
    # too: which 10 of the 24 twins its BM25 list held followed the storage order
    assert answers[0]["hybrid", "convex"] == answers[1]["hybrid", "convex"]
    convex = Retriever(store).search("lattice galaxy kernel", DENSE[-1], mode="hybrid",
                                     limit=5, explain=True, feedback=False)
    assert tuple(h.paper.id for h in convex) == answers[1]["hybrid", "convex"]
    # explained from the same lists: a twin in the answer has the BM25 rank it has among
    # the 10 lowest point ids, or none (it came in by its dense score alone)
    ranks = {h.paper.id: h.explanation.sparse.rank for h in convex
             if h.paper.id in by_id and h.explanation and h.explanation.sparse}
    assert ranks and ranks == {i: by_id.index(i) + 1 if i in by_id[:10] else None
                               for i in ranks}
    # an explanation gives a tied hit the stage rank it has in the answer
    explained = Retriever(store).search("lattice galaxy kernel", None, mode="sparse", limit=5,
                                        explain=True)
    assert [h.paper.id for h in explained] == list(by_id[:5])
    assert [h.explanation and h.explanation.sparse and h.explanation.sparse.rank
            for h in explained] == [1, 2, 3, 4, 5]
    # rrf fused the engine's order of its lists' ties: the ranks shown are those it used
    k = store.settings.rrf_k
    monkeypatch.setattr(store.settings, "fusion", "rrf")
    for hit in Retriever(store).search("lattice galaxy kernel", DENSE[-1], mode="hybrid",
                                       limit=5, explain=True, feedback=False):
        why = hit.explanation
        assert why is not None and why.dense is not None and why.sparse is not None
        ranks = [r for r in (why.dense.rank, why.sparse.rank) if r is not None]
        assert sum(1 / (k + r - 1) for r in ranks) == pytest.approx(hit.score, rel=1e-5)


def test_similar_papers_of_equal_score_rank_by_point_id(factory: Factory) -> None:
    """Copies of one paper's vector tie as its neighbours: SimilarPapers ranks them by point
    id too, written in whichever order."""
    twins = [Paper(id=f"twin-{n}", title="lattice galaxy", abstract="kernel") for n in range(8)]
    papers = [PAPERS[0], *twins]
    dense = np.vstack([DENSE[:1], np.tile(DENSE[1:2], (len(twins), 1))])
    sparse = BM25.documents(p.text for p in papers)
    by_id = tuple(p.id for p in sorted(twins, key=lambda p: p.point_id))
    for name, rows in (("forward", list(range(len(papers)))),
                       ("reversed", list(range(len(papers) - 1, -1, -1)))):
        store = factory(collection=name)
        if not isinstance(store, EdgeStore):
            pytest.skip("qdrant-client's local mode scores copies of a vector ulps apart")
        store.ensure_collection(DIM, SHA)
        for row in rows:
            store.upsert([papers[row]], dense[[row]], [sparse[row]])
        for strategy in ("average_vector", "best_score"):
            examples = Examples((twins[0].id,), strategy=strategy)  # type: ignore[arg-type]
            found = tuple(h.paper.id for h in store.similar(examples, limit=4))
            assert found == tuple(i for i in by_id if i != twins[0].id)[:4], strategy

