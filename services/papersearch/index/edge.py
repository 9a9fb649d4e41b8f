"""Embedded backend: Qdrant's engine in-process (qdrant-edge), one on-disk shard per collection.

Layout: ``<data_dir>/<collection>/`` is the EdgeShard directory; ``papersearch.json`` inside it
records the embedder identity. A sidecar file, because a shard has no metadata of its own; inside
the shard directory, so copying the directory copies the identity with the vectors. It is
written atomically (temp file, fsync, rename) after the shard and its payload indexes exist, so
a crash mid-creation leaves an empty shard without identity, which the next open adopts.

Durability (qdrant-edge 0.9.0, seen with strace; the SIGKILL test is in tests/test_index.py):
the shard's write-ahead log is on (qdrant-edge's default, fixed when the shard is created).
``update`` appends the operation to the WAL, a file mapped into memory (``MAP_SHARED``), and
applies it to the segments before it returns, with no write, fsync or msync call. Hence:
- the process dying (SIGKILL, OOM kill, a crash, ``os._exit``) loses no acknowledged write:
  the mapped pages are the kernel's page cache, and the next load replays the WAL (without the
  WAL the same kill loses every write since the last flush: segments alone do not survive);
- an OS crash or power loss can lose the writes acknowledged since the last ``flush()``: they
  reach the disk when the kernel writes dirty pages back (Linux: ``vm.dirty_expire_centisecs``,
  30 s by default) or at ``flush()``, which msyncs the WAL and the segments (``MS_SYNC``) and
  fsyncs their files. We flush in ``close()`` and after ``optimize()``, not per write (a
  flush took ~20 ms, a 64-paper upsert ~4 ms).
Atomicity: the engine applies a batch point by point, so inputs are validated before it sees
them; a mid-batch I/O failure can leave a prefix written (retries are idempotent).
Optimizers do not run in the background here: call ``optimize()`` after bulk ingestion to
build the HNSW graph (until then search is exact brute force, correct but slower).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import qdrant_edge as qe

from papersearch import interrupts
from papersearch.durable import clear_removals, remove_tree, write_json
from papersearch.index.errors import (
    SPENT_ERRNOS,
    CollectionMissing,
    EmbedderMismatch,
    StorageExhausted,
    StoreError,
    StoreUnavailable,
)
from papersearch.index.plan import (
    Batch,
    Count,
    Fetch,
    Keyed,
    Nearest,
    Plan,
    PointData,
    Program,
    Recommend,
    Record,
    Remove,
    Scan,
    ScanPage,
    Scored,
    Step,
    Write,
)
from papersearch.index.schema import (
    DENSE,
    PAYLOAD_INDEXES,
    SPARSE,
    CollectionSpec,
    EmbedderIdentity,
)
from papersearch.index.sparse import SparseVector
from papersearch.index.store import Store
from papersearch.paths import (
    FolderRefused,
    denied,
    free_bytes,
    make_folders,
    memory_backed,
    shown,
)
from papersearch.settings import IndexSettings

logger = logging.getLogger(__name__)

MANIFEST = "papersearch.json"
ACCESS_CHECK_S = 0.5  # how long a passed access check of the index directory holds
_SHARD_CONFIG = "edge_config.json"  # written by EdgeShard.create
_SEGMENTS = "segments"  # the shard's data, beside it
_TEMP_SEGMENTS = "temp_segments"  # an optimize's segments in the making
_LOCK_FILE = ".papersearch.lock"  # EdgeStore._hold_lock
# eval and tune hold a judged set's own index (under eval_dir) as they run: a second run of
# one set was told of serve and ingest alone
_ELSEWHERE = ("index is open in another process, one process at a time (a running "
              "`papersearch serve` or ingest, or its index build, python -m "
              "papersearch.index.build, or, for a judged set's index, another eval or tune "
              "run of the set? let it finish or stop it; a service takes searches with "
              "--target and papers through UpsertPapers)")
_RESTORE = ("restore the index's folder from a copy, or run papersearch ingest into a fresh "
            "index.data_dir (papers written through UpsertPapers only are in the copy alone)")
# What a new index takes on a memory-backed volume as it is made, whatever the dim (README:
# Results, Figures behind the limits): its WAL's first segment and the first segment's files
CREATE_IN_MEMORY_MIB = 48
# From this many bytes of dense vectors (points x dim x 4) an optimize runs in a child process
# (index/build.py); below it the engine's optimize has no HNSW to build (its indexing
# threshold is 10,000 KB of vectors: ~6,500 of 384 floats, ~3,300 of 768) and returns in
# milliseconds, less than a child's start
BUILD_APART_BYTES = 6_000_000
_INDEX_TYPES = {
    "datetime": qe.PayloadSchemaType.Datetime,
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
}


class EdgeStore(Store):
    """A collection stored as a qdrant-edge shard under ``settings.data_dir``."""

    backend = "embedded"

    def __init__(self, settings: IndexSettings) -> None:
        super().__init__(settings)
        self.path = settings.data_dir / settings.collection
        self._shard: qe.EdgeShard | None = None
        self._access_checked = -math.inf  # monotonic time of the last check that passed
        # the folders the last _open made (its mkdirs), outermost first: self.path last
        self._made_directory: tuple[Path, ...] = ()
        self._lock: int | None = None  # the descriptor holding _LOCK_FILE's flock
        self._optimized = False  # optimized by this store, nothing written or deleted since

    def describe(self) -> str:
        return str(self.path)

    def probe_program(self) -> Program[int]:
        if not (self.path / _SHARD_CONFIG).is_file():
            self._check_access()
            raise self._gone()
        return (yield from super().probe_program())

    def optimize(self) -> None:
        """The shard's indexes built (HNSW) and persisted: in this process for a small index
        or one this store optimized and has not written since (nothing to build), else in a
        child process (index/build.py: the engine holds the GIL through the build, seconds
        per 10,000 papers). Whether an index opened as it is still has vectors to build is
        not told by the engine's counts (a paper rewritten counts twice until a build)."""
        if self._optimized or self._count() * self.identity.dim * 4 < BUILD_APART_BYTES:
            with _engine("optimize"):
                changed = self._live().optimize()
                self._live().flush()
        else:
            changed = self._optimize_apart()
        self._optimized = True
        logger.info("index optimized", extra={"collection": str(self.path), "changed": changed})

    def _optimize_apart(self) -> bool:
        """optimize() in a child process: the shard closed here (its WAL lock let go; this
        store's own lock kept, so no other papersearch process takes it meanwhile), built
        there, loaded again here whatever happened (a Ctrl-C or SIGTERM kills the child: the
        build's leftovers go at the load)."""
        dim = self.identity.dim
        self._close_shard()
        try:
            status, out, err = self._run_apart("build", dim)
        finally:
            with interrupts.held():
                self._shard = self._load(dim)
        if status != 0:
            said = err.strip().splitlines()[-1:] or [f"exit status {status}"]
            failed = (StorageExhausted if said[0].startswith(f"{StorageExhausted.__name__}:")
                      else StoreError)
            raise failed(f"index {self.path}: its build (a child process) failed: {said[0]}")
        return out.strip() == "changed"

    def _run_apart(self, job: str, dim: int) -> tuple[int, str, str]:
        """``python -m papersearch.index.build`` doing ``job`` on the shard, which is not
        open here meanwhile; its exit status, stdout and stderr. A Ctrl-C or SIGTERM here
        kills it."""
        command = [sys.executable, "-m", "papersearch.index.build", job, str(self.path),
                   str(dim), "disk" if self._on_disk() else "ram", str(os.getpid())]
        try:
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        except OSError as exc:  # no descriptors, no memory for the child
            failed: type[StoreError] = (
                StorageExhausted if exc.errno in (errno.EMFILE, errno.ENFILE)
                else StoreUnavailable)
            raise failed(f"index {self.path}: its {job} could not start a child process: "
                         f"{exc}") from exc
        with child:
            try:
                out, err = child.communicate()
            except BaseException:
                child.kill()
                child.wait()
                raise
        return child.returncode, out, err

    def flush(self) -> None:
        with _engine("flush"):
            self._live().flush()

    # -- engine primitives -------------------------------------------------------------------

    def _open(self, identity: EmbedderIdentity, create: bool) -> EmbedderIdentity:
        self._check_access()
        clear_removals(self.path.parent)  # an index deleted (durable.remove_tree) mid-way
        manifest = self.path / MANIFEST
        stored = read_manifest(manifest)
        if stored is not None:
            identity.require(stored, f"index {self.path}")
        made: tuple[Path, ...] = ()  # the folders this open made (not another process's)
        # this open's making only: a store reopened after a close kept the first open's flags,
        # and an undo of a cut-short reopen emptied the populated index
        self.created, self._made_directory = False, ()
        if (self.path / _SHARD_CONFIG).is_file():
            self._hold_lock()
            try:
                shard = self._load(identity.dim)
            except BaseException:
                self._release_lock()
                raise
        elif (self.path / _SEGMENTS).exists():  # the engine would refuse with "path already
            # contains segment data", which says neither why nor what to do; a search said
            # "no index" where an ingest said this
            raise StoreError(
                f"index {shown(self.path)} holds a shard's segments but not its "
                f"{_SHARD_CONFIG}: its deletion was cut short (a process killed while it "
                "removed the index), or it is a damaged copy. Delete the folder, then run "
                f"papersearch ingest again, or {_RESTORE}")
        elif not create:
            raise CollectionMissing(f"no index at {shown(self.path)}: papersearch ingest "
                                    "creates it")
        else:
            fresh = not self.path.exists() or not any(self.path.iterdir())
            self._check_space(creating=True)
            made = self._make_directory()
            # a failed create is left as it is: it may be another process's making at once
            # (the one the engine turns away, "File exists" or "open in another process"); a
            # Ctrl-C as it returns waits for the shard, which is this open's own: undone
            made_shard: qe.EdgeShard | None = None
            try:
                self._hold_lock()
                with interrupts.held(), _engine("create"):
                    made_shard = qe.EdgeShard.create(str(self.path),
                                                     _config(self.settings, identity.dim))
            except BaseException as error:
                self._release_lock()
                if made_shard is not None and isinstance(error, KeyboardInterrupt):
                    made_shard.close()
                    self._unmake(made, fresh)
                raise
            shard = made_shard
            self.created = fresh
            logger.info("index created", extra={"collection": str(self.path), "dim": identity.dim})
        self._shard, self._optimized = shard, False
        try:
            self._ensure_payload_indexes()
            if stored is None:
                if self._count():
                    raise EmbedderMismatch(f"index {self.path} has points but no {MANIFEST} "
                                           f"(which embedder built them): {_RESTORE}")
                write_manifest(manifest, identity)
        except BaseException:
            with suppress(Exception):  # its flush fails too on a full disk: the first error
                # is the one to say, and the empty index must not stay behind
                self._close()
            self._unmake(made, self.created)
            raise
        self._made_directory = made
        return identity if stored is None else stored

    def _make_directory(self) -> tuple[Path, ...]:
        """Make the index directory and the data_dir above it; the folders this call made,
        outermost first (none where another process made the index directory)."""
        try:
            made = make_folders(self.path.parent, "index.data_dir")
            try:
                self.path.mkdir()
            except PermissionError as error:  # data_dir there, not this process's to write in
                raise denied(error, "index.data_dir") from None
        except FileExistsError:
            return ()
        except FolderRefused as error:
            raise StoreError(f"index directory {self.path} cannot be made: {error}") from None
        return (*made, self.path)

    def _unmake(self, made: tuple[Path, ...], fresh: bool) -> None:
        """Undo a making cut short after the shard was made (Ctrl-C, a full disk), which left
        an empty index ("0 hits" where `search` says there is none): the directory this open
        made and the folders it made above it (an ingest that read nothing left the data_dir
        it had made, empty), or what it wrote in one that was empty (``fresh``). Only this
        open's shard: two ingests making one index at once, the one the engine turned away
        had removed the other's."""
        if not fresh:
            return
        with interrupts.held():
            if made:
                with suppress(OSError):
                    remove_tree(self.path)
                for folder in reversed(made[:-1]):
                    with suppress(OSError):  # not empty: another index made there meanwhile
                        folder.rmdir()
            else:  # a folder given empty (a volume's mount point): its contents only
                for child in self.path.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        self.created = False

    def remove_if_made(self) -> None:
        self._unmake(self._made_directory, self.created)

    def _do(self, step: Step) -> Any:
        match step:
            case Batch(plans, keyed):
                return self._run(plans, keyed)
            case Fetch(point_ids, payload, dense, sparse):
                return self._retrieve(point_ids, payload=payload, dense=dense, sparse=sparse)
            case Scan(key, since, limit, offset):
                return self._scan(key, since, limit, offset)
            case Write(points):
                return self._write(points)
            case Remove(point_ids):
                return self._delete(point_ids)
            case Count():
                return self._count()

    def point_id_of(self, key: Hashable) -> str:
        """Keyed lists carry ``uuid.UUID.int`` (hashed in C; the UUID objects' own hash is
        Python code, ~800 calls per hybrid search): every point id here is a UUID."""
        return str(uuid.UUID(int=cast(int, key)))

    def _write(self, points: Sequence[PointData]) -> None:
        batch = [qe.Point(p.point_id, _vectors(p), p.payload) for p in points]
        self._check_space()
        self._optimized = False
        with _engine("upsert"):
            self._live().update(qe.UpdateOperation.upsert_points(batch))

    def _retrieve(self, point_ids: Sequence[str], *, payload: bool, dense: bool,
                  sparse: bool = False) -> list[Record]:
        names = [name for name, wanted in ((DENSE, dense), (SPARSE, sparse)) if wanted]
        with _engine("retrieve"):
            records = self._live().retrieve(list(point_ids), payload, names or False)
        return [
            Record(str(r.id), r.payload, _dense(r.vector) if dense else None,
                   _stored_sparse(r.vector) if sparse else None)
            for r in records
        ]

    def _scan(self, key: str, since: int | None, limit: int, offset: str | None) -> ScanPage:
        scan = None if since is None else qe.Filter(
            must=[qe.FieldCondition(key, range=qe.RangeFloat(gte=since))])
        request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=[key],
                                   with_vector=False, filter=scan)
        with _engine("scroll"):
            records, next_offset = self._live().scroll(request)
        return ScanPage([Record(str(r.id), r.payload, None) for r in records],
                        None if next_offset is None else str(next_offset))

    def _delete(self, point_ids: Sequence[str]) -> None:
        self._check_space()
        self._optimized = False
        with _engine("delete"):
            self._live().update(qe.UpdateOperation.delete_points(list(point_ids)))

    def _count(self) -> int:
        with _engine("count"):
            return self._live().count(qe.CountRequest(exact=True))

    def _run(self, plans: Sequence[Plan], keyed: bool) -> list[list[Scored]] | list[list[Keyed]]:
        with _engine("query"):
            results = self._live().query_batch(qe.QueryBatchRequest([_request(p) for p in plans]))
        if keyed:
            keyed_lists: list[list[Keyed]] = [[(cast(uuid.UUID, p.id).int, p.score) for p in points]
                                              for points in results]
            return keyed_lists
        return [[Scored(str(p.id), p.score, p.payload) for p in points] for points in results]

    def _close(self) -> None:
        try:
            self._close_shard()
        finally:
            self._release_lock()

    def _close_shard(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            with _engine("close"):
                try:
                    shard.flush()
                finally:  # its files and lock are let go even if the flush failed
                    shard.close()
            logger.info("index closed", extra={"collection": str(self.path)})

    def _hold_lock(self) -> None:
        """Take the index's own lock (an flock on _LOCK_FILE in its directory) for as long
        as this store has it open. The engine's WAL lock is let go while a child process
        builds the index (optimize): with it alone, another process (`papersearch search`,
        a second ingest) took the shard in that gap, and the build and this store's reload
        failed."""
        if self._lock is not None:
            return
        try:
            descriptor = os.open(self.path / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                 0o644)
        except OSError as error:
            raise StoreUnavailable(f"index {self.path}: its lock file cannot be made: "
                                   f"{error.strerror or error}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:  # held elsewhere; or no locks here (NFS without lockd)
            os.close(descriptor)
            if isinstance(error, BlockingIOError):
                raise StoreUnavailable(f"qdrant-edge open: {_ELSEWHERE}") from None
            raise StoreUnavailable(f"index {self.path}: its lock file cannot be locked: "
                                   f"{error.strerror or error}") from None
        self._lock = descriptor

    def _release_lock(self) -> None:
        descriptor, self._lock = self._lock, None
        if descriptor is not None:
            os.close(descriptor)

    # -- helpers -----------------------------------------------------------------------------

    def _live(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreError(f"index {self.path} is closed")
        self._check_access()
        return self._shard

    def _check_access(self) -> None:
        """StoreUnavailable if the index directory (or the data directory above it) exists but
        this process may not use it: a volume gone read-only or unreadable, permissions changed
        under a running server. The open shard could still answer from memory, but what it
        wrote would not persist; so nothing is served until access is back. A check that
        passed holds for ACCESS_CHECK_S (four system calls per engine call were a tenth of the
        gateway's CPU under load); a failing one is repeated on every call. Root passes
        permission checks whatever the mode bits say. An open index whose directory (or shard
        config) was deleted is CollectionMissing: the shard would take writes into files that
        are gone."""
        now = time.monotonic()
        if now - self._access_checked < ACCESS_CHECK_S:
            return
        for directory in (self.settings.data_dir, self.path):
            try:
                directory.stat()
            except FileNotFoundError:
                if self._shard is not None:
                    raise self._gone() from None
                return  # not opened yet: _open creates it or says CollectionMissing
            except OSError as exc:
                raise StoreUnavailable(f"index directory {directory} is not reachable: {exc}"
                                       ) from exc
            if not directory.is_dir():  # was "not readable and writable", misleading
                raise StoreUnavailable(f"index directory {directory} is a file, not a folder "
                                       "(index.data_dir)")
            if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
                raise StoreUnavailable(
                    f"index directory {directory} is not readable and writable by this process")
        if self._shard is not None and not (self.path / _SHARD_CONFIG).is_file():
            raise self._gone()
        self._access_checked = now

    def _check_space(self, creating: bool = False) -> None:
        """StorageExhausted while the index's volume has less free space than
        index.min_free_mib: the engine writes points through memory-mapped files, and a write
        that finds no free block kills the process (SIGBUS) rather than failing. One statvfs
        call, before each write, delete and create. A new index on a memory-backed volume
        takes CREATE_IN_MEMORY_MIB at once (its WAL and first segment filled): a margin set
        below it ended that create in SIGBUS."""
        margin = self.settings.min_free_mib
        if not margin:
            return
        folder = next((f for f in (self.path, *self.path.parents) if f.is_dir()), Path("."))
        try:
            free = free_bytes(folder)
            need = (max(margin, CREATE_IN_MEMORY_MIB) if creating and memory_backed(folder)
                    else margin)
        except OSError as exc:
            raise StoreUnavailable(f"index directory {folder} is not reachable: {exc}") from exc
        if free < need << 20:
            below = (f"index.min_free_mib ({margin})" if need == margin else
                     f"the {need} MiB a new index takes at once on a memory-backed volume")
            raise StorageExhausted(
                f"index volume of {folder} has {free / (1 << 20):.1f} MiB free, less than "
                f"{below}: writes are refused until space is freed")

    def _fill_apart(self, dim: int) -> None:
        """On a memory-backed volume, the shard loaded once in a child process before it is
        loaded here. A load reads the shard's mapped files in, and tmpfs gives each page so
        touched memory, holes included (~50 MiB at the sample's first open, ~90 MiB for a
        copy made sparse): a page it has no room for kills the process (SIGBUS), a serving
        gateway included. The pages the child filled stay (they are the files'), so the
        load here finds them; a child killed by SIGBUS is StorageExhausted. Whatever else
        the child met, the load here meets and says. On disk, reading a hole takes no room:
        no child. index.min_free_mib 0 turns this off with the other checks of space."""
        if not self.settings.min_free_mib or not memory_backed(self.path):
            return
        status, _, _ = self._run_apart("load", dim)
        if status == -signal.SIGBUS:
            raise StorageExhausted(
                f"index volume of {self.path} is memory-backed (tmpfs) and ran out of room "
                "while the index was loaded (its files' holes take memory as they are read): "
                "free space on it, or make it larger, then open the index again")

    def _on_disk(self) -> bool:
        """Whether the shard keeps its dense vectors on disk, as it was created (its
        edge_config.json; the setting where that does not say). A load takes the layout it is
        given: given the setting, a search without it moved an index made on disk into RAM,
        though the setting applies to indexes created from then on."""
        try:
            config = json.loads((self.path / _SHARD_CONFIG).read_text())
            said = config["vectors"][DENSE]["on_disk"]
        except (OSError, ValueError, KeyError, TypeError):
            return self.settings.on_disk_vectors
        return said if isinstance(said, bool) else self.settings.on_disk_vectors

    def _gone(self) -> CollectionMissing:
        return CollectionMissing(f"index {self.path} is gone (deleted since it was opened)")

    def _load(self, dim: int) -> qe.EdgeShard:
        _check_segments(self.path)
        self._fill_apart(dim)
        try:
            with _engine("load"):
                shard = qe.EdgeShard.load(str(self.path), _layout(dim, self._on_disk()))
        except StoreError as exc:
            if "incompatible" in str(exc):
                raise EmbedderMismatch(
                    f"index {self.path} does not hold dim {dim} vectors: {exc}") from exc
            if type(exc) is StoreError:  # not a spent resource, not another process's lock
                raise StoreError(f"index {self.path} could not be read (damaged or incomplete "
                                 f"files?): {exc}. {_RESTORE[0].upper()}{_RESTORE[1:]}"
                                 ) from exc
            raise
        # loaded, the shard is this process's alone (its WAL lock): what a build cut short
        # (a process killed in optimize) left among its temporary segments is no one's
        for leftover in (self.path / _TEMP_SEGMENTS).glob("*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return shard

    def _ensure_payload_indexes(self) -> None:
        with _engine("payload index"):
            present = set(self._live().info().payload_schema)
            for name, kind in PAYLOAD_INDEXES.items():
                if name not in present:
                    self._live().update(
                        qe.UpdateOperation.create_field_index(name, _INDEX_TYPES[kind])
                    )


def read_manifest(path: Path) -> EmbedderIdentity | None:
    if not path.is_file():
        return None
    try:
        return EmbedderIdentity.from_json(json.loads(path.read_text()))
    except OSError as exc:  # permissions, a failing disk: the index cannot be opened now
        raise StoreUnavailable(f"cannot read index manifest {path}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"unreadable index manifest {path}: {exc}") from exc


def write_manifest(path: Path, identity: EmbedderIdentity) -> None:
    try:
        write_json(path, identity.to_json())
    except OSError as exc:  # a full disk, say: the next open writes it again
        raise StoreUnavailable(f"cannot write index manifest {path}: {exc}") from exc


# How the engine's errors say that a resource is spent (no space, no quota, a file too large,
# no descriptors), and the OS error each means.
_EXHAUSTED = {**{f"(os error {code})": code for code in SPENT_ERRNOS},
              "TooManyOpenFiles": errno.EMFILE}
# The engine's refusal to build without room: its words (how much it needs) are kept.
_NO_ROOM_TO_BUILD = "Not enough space available"


@contextmanager
def _engine(operation: str) -> Iterator[None]:
    """qdrant-edge raises bare Exceptions: name them StoreError / StoreUnavailable."""
    try:
        yield
    except StoreError:
        raise
    except PermissionError as exc:
        raise StoreUnavailable(f"qdrant-edge {operation}: {exc}") from exc
    except Exception as exc:
        if _NO_ROOM_TO_BUILD in str(exc):
            said = str(exc)[str(exc).index(_NO_ROOM_TO_BUILD):].splitlines()[0]
            raise StorageExhausted(f"qdrant-edge {operation}: {said}") from exc
        exhausted = next((code for said, code in _EXHAUSTED.items() if said in str(exc)), None)
        if exhausted is not None:  # the engine's words name a temporary file: left out
            raise StorageExhausted(f"qdrant-edge {operation}: {os.strerror(exhausted)} (index "
                                   "volume or file descriptors)") from exc
        if "WouldBlock" in str(exc) or (operation == "create" and "File exists" in str(exc)):
            raise StoreUnavailable(f"qdrant-edge {operation}: {_ELSEWHERE}") from exc
        raise StoreError(f"qdrant-edge {operation} failed: {exc}") from exc


def _check_segments(path: Path) -> None:
    """StoreError for a segment of the shard at ``path`` that holds papers (an id tracker's
    mappings) but no version.info. The engine takes a segment without one for a build cut
    short and deletes it as it loads: a lost file or an incomplete copy of the index was then
    most of its papers gone for good, the search after it answering from the rest (its own
    cut-short builds write version.info before the segment is moved into place, and the
    segment it makes for new papers holds none until written)."""
    segments = path / _SEGMENTS
    if not segments.is_dir():
        raise StoreError(f"index {path} has no {_SEGMENTS} folder (damaged, or an incomplete "
                         f"copy): {_RESTORE}")
    for segment in segments.iterdir():
        if segment.suffix == ".deleted":  # the engine's own removal of a replaced segment,
            continue  # cut short (version.info goes first): it finishes it at the load
        if segment.is_dir() and not (segment / "version.info").exists() and any(
                (segment / name).is_file() and (segment / name).stat().st_size
                for name in ("id_tracker.mappings", "mutable_id_tracker.mappings")):
            raise StoreError(
                f"index {path}: its segment {segment.name} holds papers but no version.info "
                f"(damaged, or an incomplete copy), and the engine would delete it: {_RESTORE}")


def _config(settings: IndexSettings, dim: int) -> qe.EdgeConfig:
    spec = CollectionSpec.of(settings, dim)
    quantization = (
        qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        if spec.quantization == "int8"
        else None
    )
    return qe.EdgeConfig(
        vectors=_dense_params(dim, spec.on_disk_vectors),
        sparse_vectors=_sparse_params(),
        on_disk_payload=spec.on_disk_payload,
        hnsw_config=qe.HnswIndexConfig(
            m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct, full_scan_threshold=10_000
        ),
        quantization_config=quantization,
    )


def _dense_params(dim: int, on_disk: bool) -> dict[str, qe.EdgeVectorParams]:
    return {DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, on_disk=on_disk)}


def _sparse_params() -> dict[str, qe.EdgeSparseVectorParams]:
    return {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}


def _vectors(point: PointData) -> dict[str, qe.NamedVector]:
    vectors: dict[str, qe.NamedVector] = {DENSE: point.dense}
    if len(point.sparse):
        vectors[SPARSE] = _sparse(point.sparse)
    return vectors


def _dense(vectors: qe.Vector | None) -> list[float] | None:
    """A retrieved record's dense vector: retrieve() asked for it by name, so the record's
    vectors are a {name: vector} dict (or None) and DENSE's is a plain list of floats."""
    if not isinstance(vectors, dict):
        return None
    return cast("list[float] | None", vectors.get(DENSE))


def _stored_sparse(vectors: qe.Vector | None) -> SparseVector | None:
    """A retrieved record's BM25 vector (absent for a paper with no BM25 term)."""
    stored = vectors.get(SPARSE) if isinstance(vectors, dict) else None
    return SparseVector.of(stored) if isinstance(stored, qe.SparseVector) else None


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(vector.indices), list(vector.values))


def _nearest(nearest: Nearest) -> qe.Query:
    v = nearest.vector
    return qe.Query.Nearest(_sparse(v) if isinstance(v, SparseVector) else list(v), nearest.using)


def _filter(plan: Plan) -> qe.Filter | None:
    f = plan.filter
    must: list[qe.ConditionType] = []
    bounds = f.published_range()
    if bounds is not None:
        gte, lt = bounds
        must.append(qe.FieldCondition("published", range=qe.RangeDateTime(gte=gte, lt=lt)))
    for key, values in (("categories", f.categories), ("authors", f.authors)):
        if values:
            must.append(qe.FieldCondition(key, match=qe.MatchAny(list(values))))
    if plan.only_ids is not None:
        must.append(qe.HasIdCondition(set(plan.only_ids)))
    must_not: list[qe.ConditionType] | None = (
        [qe.HasIdCondition(set(plan.exclude_ids))] if plan.exclude_ids else None
    )
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not)


def _params(plan: Plan) -> qe.SearchParams:
    # rescored always: an int8 collection's scores are then the originals' cosines (what
    # min_relevance cuts and SimilarPapers reports), not the int8 copy's
    quantization = (qe.QuantizationSearchParams(ignore=True) if plan.exact
                    else qe.QuantizationSearchParams(rescore=True, oversampling=plan.oversampling))
    return qe.SearchParams(hnsw_ef=plan.hnsw_ef, exact=plan.exact, quantization=quantization)


def _request(plan: Plan) -> qe.QueryRequest:
    flt, params = _filter(plan), _params(plan)
    query = plan.query
    if isinstance(query, Recommend):
        examples = qe.RecommendQuery([list(v) for v in query.positives],
                                     [list(v) for v in query.negatives])
        recommend = (qe.Query.RecommendBestScore if query.strategy == "best_score"
                     else qe.Query.RecommendSumScores)
        return qe.QueryRequest(limit=query.limit, query=recommend(examples, query.using),
                               filter=flt, params=params, with_payload=plan.with_payload)
    if isinstance(query, Nearest):
        return qe.QueryRequest(
            limit=query.limit,
            query=_nearest(query),
            filter=flt,
            params=params,
            with_payload=plan.with_payload,
        )
    # Fusion.Rrf and Fusion.Dbsf subclass Fusion at run time; qdrant-edge's stub only nests them.
    fusion = cast(
        qe.Fusion, qe.Fusion.Rrf(k=query.rrf_k) if query.method == "rrf" else qe.Fusion.Dbsf()
    )
    return qe.QueryRequest(
        limit=query.limit,
        prefetches=[
            qe.Prefetch(limit=p.limit, query=_nearest(p), filter=flt, params=params)
            for p in query.prefetch
        ],
        query=fusion,
        filter=flt,
        with_payload=plan.with_payload,
    )


def _layout(dim: int, on_disk: bool) -> qe.EdgeConfig:
    """A load's config: giving only the vector layout makes the engine check it against the
    segments (the dense dim is ground truth, whatever the manifest says) and keep all other
    settings."""
    return qe.EdgeConfig(vectors=_dense_params(dim, on_disk), sparse_vectors=_sparse_params())


def work_apart_here(job: str, path: Path, dim: int, on_disk: bool) -> str:
    """index/build.py's work, in the child: load the shard at ``path`` (for "load", only
    that), for "build" optimize and flush, close; what the child prints: "loaded", or
    whether the build changed the shard."""
    if job not in ("build", "load"):
        raise ValueError(f"no such job {job!r}: build or load")
    with _engine("load"):
        shard = qe.EdgeShard.load(str(path), _layout(dim, on_disk))
    try:
        if job == "load":
            return "loaded"
        with _engine("optimize"):
            changed = bool(shard.optimize())
            shard.flush()
    finally:
        shard.close()
    return "changed" if changed else "unchanged"
