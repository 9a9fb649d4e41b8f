"""Zero-downtime embedder migration, run by the gateway that serves the index (its only writer).

``papersearch index migrate --embedder NEW`` asks the gateway (through its Serve handle) to:

1. create ``<collection>-<sha>`` for the new embedder beside the live collection and, from that
   moment, *mirror* every write: an upsert or delete is applied to the collection of the view it
   was pinned to and then, encoded by the other embedder, to the other collection;
2. copy the live collection into the new one (papers re-encoded by the QueryEncoder deployment
   with the new embedder, in ``serve.upsert_batch_size`` batches). A paper written through the
   gateway since the start (a *dirty* id) is never copied: its mirror write carries it. The copy
   checks the dirty set and writes under the mirror lock, which mirror writes take too, so a
   stale copy can only land before the mirror write of the same paper, never after it;
3. reconcile: papers whose mirror write failed, papers written since the start by another
   writer (an ingest job: their ``indexed_at`` stamps), and any id only one side holds, with
   writes going on (each re-copy under the lock); then, writes paused, the same for what was
   written since, and compare the two counts (the ids in full again only if they differ);
4. swap: write the pointer (index/pointer.py), then switch the gateway's live view. Searches
   that started before the swap finish on the old collection with the old embedder;
5. keep the old collection in step (mirroring goes on) until ``--finish`` drops it; until then
   ``--rollback`` swaps back, losing nothing.

A mirror write that fails (the other embedder's encoder unavailable) leaves its papers in the
*pending* set: the client got its acknowledgement from the primary write, and the pending ids
are copied again before a swap. A later write of the same paper that reaches both collections
settles it (it is newer on both sides than the one that failed). Several gateway replicas
would each need to mirror: the command refuses to run unless the Gateway deployment has
exactly one replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from papersearch.corpus.paper import Paper, point_id
from papersearch.index.pointer import Pointer, Pointers, physical_name
from papersearch.index.store import now_ms
from papersearch.models.manifest import ModelRef, read_manifest
from papersearch.pipeline.collections import Bound, Collections, EncodeDocuments, View
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)

# Another writer's clock may run this far behind the gateway's: its writes stamped up to this
# long before the start are copied again at the reconcile (NTP keeps clocks far closer).
WRITER_SKEW_MS = 5_000
# Times the two collections' ids are matched before a swap while their counts still differ:
# another writer may add or delete a paper between a match's scans and the count.
MATCH_TRIES = 3
# A swapped migration's stamps since the swap, point id -> indexed_at: the live collection's,
# the other one's.
_Stamps = tuple[dict[str, int], dict[str, int]]


class MigrationRefused(ValueError):
    """The migration asked for cannot run now (the message says why)."""


class MigrationFailed(RuntimeError):
    """A migration step found the two collections disagreeing; nothing was swapped."""


class Mirror:
    """Two collections kept in step: every write lands in both, each with its own embedder."""

    def __init__(self, pair: tuple[Bound, Bound], encode: EncodeDocuments,
                 collections: Collections, *, copying: bool) -> None:
        self.pair = pair
        self.encode = encode
        self.collections = collections
        self.copying = copying  # until the swap: dirty ids are tracked for the copy
        self.dirty: set[str] = set()  # point ids written through the gateway since the start
        # point id -> when the gateway's latest write of it to its own collection had landed
        # (now_ms() as it returned), since the start and again since the swap: a later stamp
        # there is another writer's (an ingest's), whatever its mirror write's stamp says
        self.landed: dict[str, int] = {}
        # point id -> the collection a write of it failed to reach (which then lacks it) and
        # when, in ``_ticks``: a later write of it that began after that reaches both settles it
        self.pending: dict[str, tuple[str, int]] = {}
        self._ticks = itertools.count()  # orders writes' starts and their failures (one loop)
        self.lock = asyncio.Lock()  # the mirror side's writes: copies and mirror writes
        # a collection whose mirror writes are not made but left pending (for the reconcile)
        self.deferred: str | None = None
        self._writes = 0  # writes in progress (primary and mirror)
        self._in_flight: Counter[str] = Counter()  # their point ids
        # ids two writes of which overlapped: their mirror writes may land in another order
        # than their primary writes did (answers returned out of order)
        self._contended: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()  # cleared while a swap holds writes back
        self._open.set()

    def other(self, bound: Bound) -> Bound | None:
        first, second = self.pair
        if bound.view == first.view:
            return second
        return first if bound.view == second.view else None

    async def upsert(self, bound: Bound, papers: Sequence[Paper], dense: np.ndarray) -> int:
        ids = [p.point_id for p in papers]
        async with self._writing(ids):
            began = next(self._ticks)
            self._touch(ids)
            other = self.other(bound)
            written = await self._primary(ids, bound, other, bound.index.upsert(papers, dense))
            self._landed(ids)
            if other is not None and await self._mirrored(
                    ids, other, lambda: self._upsert(other, papers)):
                self._settled(ids, began, bound, other)
            return written

    async def delete(self, bound: Bound, paper_ids: Sequence[str]) -> int:
        ids = [point_id(pid) for pid in paper_ids]
        async with self._writing(ids):
            began = next(self._ticks)
            self._touch(ids)
            other = self.other(bound)
            deleted = await self._primary(ids, bound, other, bound.index.delete(paper_ids))
            self._landed(ids)
            if other is not None and await self._mirrored(
                    ids, other, lambda: other.index.delete(paper_ids)):
                self._settled(ids, began, bound, other)
            return deleted

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Both collections still: new writes wait, those in progress finish (primary and
        mirror), then the block runs holding the mirror lock. Searches go on."""
        self._open.clear()
        try:
            await self._idle.wait()
            async with self.lock:
                yield
        finally:
            self._open.set()

    def missed_by(self, collection: str) -> list[str]:
        """The pending ids ``collection`` lacks the last write of."""
        return sorted(pid for pid, (where, _) in self.pending.items() if where == collection)

    def writing(self, pid: str) -> bool:
        """Whether a write of this paper is in progress (its mirror write may still land)."""
        return self._in_flight[pid] > 0

    @contextlib.asynccontextmanager
    async def _writing(self, ids: list[str]) -> AsyncIterator[None]:
        while not self._open.is_set():  # another pause may begin before this writer runs
            await self._open.wait()
        self._writes += 1
        self._contended.update(pid for pid in ids if self._in_flight[pid])
        self._in_flight.update(ids)
        self._idle.clear()
        try:
            yield
        finally:
            self._writes -= 1
            self._in_flight -= Counter(ids)
            self._contended.difference_update(pid for pid in ids if not self._in_flight[pid])
            if not self._writes:
                self._idle.set()

    def _touch(self, ids: list[str]) -> None:
        if self.copying:
            self.dirty.update(ids)

    def _landed(self, ids: list[str]) -> None:
        landed = now_ms()
        self.landed.update({pid: max(landed, self.landed.get(pid, 0)) for pid in ids})

    def pend(self, ids: Sequence[str], collection: str) -> None:
        """``collection`` lacks the last write of these ids: re-synced before the next swap."""
        failed = next(self._ticks)
        self.pending.update(dict.fromkeys(ids, (collection, failed)))

    def _settled(self, ids: list[str], began: int, bound: Bound, other: Bound) -> None:
        """A write of ``ids`` that began at tick ``began`` reached both collections: their
        pending entries made before it are settled (``_caught_up``), except for the ids
        another write of which overlapped it. Two such writes' mirror writes follow their
        answers, which may come back in another order than the writes landed (a Qdrant
        server): the two collections may then hold different versions, so those ids become
        pending for the one that is not live (``_follower``), made what the live one holds
        (what searches served) at the next reconcile, rollback or finish."""
        contended = [pid for pid in ids if pid in self._contended]
        if contended:
            self.pend(contended, self._follower(bound, other).view.collection)
        self._caught_up([pid for pid in ids if pid not in self._contended], began)

    def _caught_up(self, ids: Sequence[str], began: int) -> None:
        """A write of ``ids`` that began at tick ``began`` reached both collections: the
        pending entries made before it began are settled (the write that failed was over by
        then, so this one landed after it on both sides); kept, a re-sync would copy one
        side's older state over what another writer wrote since. An entry made meanwhile (a
        concurrent write of the paper failed) stays."""
        for pid in ids:
            entry = self.pending.get(pid)
            if entry is not None and entry[1] < began:
                del self.pending[pid]

    async def _upsert(self, other: Bound, papers: Sequence[Paper]) -> int:
        vectors = await self.encode(other.view.embedder, [p.text for p in papers])
        return await other.index.upsert(papers, vectors)

    async def _primary(self, ids: list[str], bound: Bound, other: Bound | None,
                       write: Awaitable[int]) -> int:
        """The write to the caller's collection. If it fails it may still have been applied (a
        chunk of it, or all of it with the answer lost): the ids become pending for ``other``,
        so the next reconcile or re-sync makes them there what they are here. Unless ``other``
        is the live collection (a write pinned to the old view through the swap): the live
        one holds the last acknowledged writes, so the caller's collection is made what it
        is there (the other way round copied a stale or half-written paper over the live
        collection's acknowledged one)."""
        try:
            return await write
        except BaseException:
            if other is not None:
                self.pend(ids, self._follower(bound, other).view.collection)
            raise

    def _follower(self, bound: Bound, other: Bound) -> Bound:
        """Of a write's two collections, the one made what the other holds when they may
        differ: ``other``, unless it is the live collection (a write pinned to the old view
        through the swap), which holds the acknowledged writes searches served."""
        live = self.collections.current
        return bound if live is not None and live.view == other.view else other

    async def _mirrored(self, ids: list[str], other: Bound,
                        write: Callable[[], Awaitable[int]]) -> bool:
        """Run the mirror write under the lock; whether it was made. On failure (or
        cancellation: the primary write is done) the ids become pending for ``other``. The
        failure propagates (the call is not acknowledged; its client sends it again) when
        ``other`` is the live collection: a write pinned to the old view that waited through
        the swap. Otherwise only a cancellation does: the ids are re-synced before the next
        swap."""
        live = self.collections.current
        if other.view.collection == self.deferred and (live is None or live.view != other.view):
            self.pend(ids, other.view.collection)
            return False
        done = False
        try:
            async with self.lock:
                await write()
            done = True
        except Exception as error:
            log.warning("mirror write failed", extra={
                "collection": other.view.collection, "papers": len(ids),
                "reason": repr(error)[:300]})
            if live is not None and live.view == other.view:
                raise
        finally:
            if not done:
                self.pend(ids, other.view.collection)
                metrics().mirror_failed(len(ids))
        return done


@dataclass(frozen=True, slots=True)
class Report:
    """What a migration step did, for the CLI's JSON."""

    action: str
    live_collection: str
    live_embedder: str
    previous_collection: str | None
    previous_embedder: str | None
    live_count: int
    previous_count: int | None
    copied: int = 0
    skipped_dirty: int = 0
    reconciled: int = 0
    seconds: float = 0.0
    warning: str | None = None  # a failure after the step took effect (e.g. a drop)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Unsettled:
    """A step whose pointer write failed and could not be read back (Migrator._commit): what
    it does if the pointer turns out written (``switch``, then ``complete``: the rest of the
    step, its warning) and if not (``abandon``)."""

    pointer: Pointer
    switch: Callable[[], None]
    complete: Callable[[], Awaitable[str | None]] | None
    abandon: Callable[[], Awaitable[None]] | None


class Migrator:
    """``start``, ``rollback`` and ``finish`` on one gateway's collections (one at a time)."""

    def __init__(self, collections: Collections, encode: EncodeDocuments, batch: int) -> None:
        self.collections = collections
        self.encode = encode
        self.batch = batch
        self.mirror: Mirror | None = None
        self._running = asyncio.Lock()
        self._unsettled: _Unsettled | None = None  # a step whose commit had no known outcome

    async def resume(self) -> None:
        """After a restart in the middle of a swapped migration, mirror writes again."""
        live = await self.collections.live()
        other = self.collections.other
        if other is not None and self.mirror is None:
            self.mirror = Mirror((live, other), self.encode, self.collections, copying=False)
            log.warning("migration resumed after a restart: mirror writes that failed before "
                        "it are not known; --rollback and --finish reconcile ids, not updates",
                        extra={"live": live.view.collection, "other": other.view.collection})

    async def start(self, embedder: ModelRef) -> Report:
        async with self._exclusive("start"):
            await self._settle()
            started, since = time.monotonic(), now_ms()
            await self.collections.look_for_previous()
            source = await self.collections.live()
            if self.collections.other is not None or self.collections.previous_missing:
                rollback = "" if self.collections.previous_missing else " (or --rollback)"
                raise MigrationRefused(
                    f"a migration to {source.view.embedder} is swapped but not finished: run "
                    f"`papersearch index migrate --finish`{rollback} first")
            settings = self.collections.settings
            manifest = read_manifest(embedder.path(settings.models.repository))
            view = View(physical_name(settings.index.collection, manifest.sha256), embedder,
                        manifest.sha256, manifest.dim or 0)
            if view.sha256 == source.view.sha256:
                raise MigrationRefused(f"{source.view.collection} is already built by "
                                       f"{source.view.embedder} (the same model as {embedder})")
            pointers = await self.collections.pointers()
            await asyncio.to_thread(pointers.drop, view.collection)  # a run that was cut short
            target = await self.collections.bind(view)
            mirror = self.mirror = Mirror((source, target), self.encode, self.collections,
                                          copying=True)
            try:
                await target.index.create()
                log.info("migration started: writes mirrored",
                         extra={"source": source.view.collection, "target": view.collection,
                                "embedder": str(embedder)})
                copied, skipped = await self._copy(mirror, source, target)
                # built as an ingest leaves it; the build takes the target's one thread, so its
                # mirror writes wait for the reconcile rather than for the build
                mirror.deferred = view.collection
                try:
                    await target.index.optimize()
                finally:
                    mirror.deferred = None
                matching = now_ms()
                reconciled = await self._prematch(mirror, source, target, since)
                async with mirror.paused():
                    reconciling = now_ms()
                    touched, known = await self._reconcile(mirror, source, target, matching)
                    counts, rematched = await self._counted(source, target, matching, known)
                    reconciled += touched + rematched
                    await target.index.flush()  # on disk before the pointer names it
                    pointer = Pointer(view.collection, str(embedder), source.view.collection,
                                      str(source.view.embedder), now_ms())

                    def swapped() -> None:
                        self.collections.switch(target, source, pointer)
                        mirror.copying, mirror.dirty, mirror.landed = False, set(), {}

                    async def late_writes() -> str | None:
                        return await self._late_writes(source, target, reconciling)

                    async def abandoned() -> None:
                        await self._abandon(pointers, source, target, mirror)

                    committed = await self._commit(pointer, swapped, complete=late_writes,
                                                   abandon=abandoned)
                    late = await late_writes()
                    warning = "; ".join(w for w in (committed, late) if w) or None
            except BaseException:
                await self._abandon(pointers, source, target, mirror)
                raise
            log.info("migration swapped", extra={"live": view.collection, "copied": copied})
            return Report("start", view.collection, str(embedder), source.view.collection,
                          str(source.view.embedder), counts[1], counts[0], copied, skipped,
                          reconciled, round(time.monotonic() - started, 3), warning=warning)

    async def _counted(self, source: Bound, target: Bound, since: int, known: set[str]
                       ) -> tuple[tuple[int, int], int]:
        """Under the pause, after the reconcile: the two counts, once they agree and no paper
        but those ``known`` (the reconcile's, or the last match's, ids) was stamped in
        ``source`` since ``since`` (less WRITER_SKEW_MS); and how many papers matching again
        touched. Another writer (an ingest) may still write under the pause: a paper it
        deleted after the prematch's scans leaves no stamp, only a count one lower, which a
        paper it added after the stamps were read can make up; so either sends both
        collections' ids to be compared again, in full, up to MATCH_TRIES times in all (an
        update is caught up after the swap, by ``_late_writes``). Collections still unsettled
        then fail the start."""
        touched = 0
        for tries in range(1, MATCH_TRIES + 1):
            counts = await source.index.ready(), await target.index.ready()
            stamped = (await source.index.indexed_since(since - WRITER_SKEW_MS, None)).window
            if counts[0] == counts[1] and stamped.keys() <= known:
                return counts, touched
            if tries < MATCH_TRIES:
                since = now_ms()
                matched, known = await self._match(source, target, ())
                touched += matched
        raise MigrationFailed(
            f"the collections differ after the copy: {source.view.collection} {counts[0]} "
            f"papers, {target.view.collection} {counts[1]}, matched {MATCH_TRIES} times while "
            "another writer wrote (an ingest still running? pause it for the migration)")

    async def _late_writes(self, source: Bound, target: Bound, since: int) -> str | None:
        """After the swap, still paused: what another writer (an ingest job) wrote to
        ``source`` from the reconcile's start on, copied into ``target``. The reconcile read
        the stamps once, before its scans, and such a writer's own check (ingest's LiveCheck)
        read the pointer before the swap: an update written in between reached only the
        collection left behind. A writer that lands in ``source`` after this read checks the
        pointer after its write, sees the swap and stops. A failure here leaves the swap
        standing (the pointer is written) and is reported."""
        try:
            stamped = await source.index.indexed_since(since - WRITER_SKEW_MS, None)
            await self._resync(sorted(stamped.window), source, target)
        except Exception as error:  # noqa: BLE001 (the swap stands; the operator is told)
            log.error("migration swapped, late writes not copied", extra={
                "live": target.view.collection, "reason": repr(error)[:300]})
            return (f"writes another writer made during the swap may not have reached "
                    f"{target.view.collection} ({error}): run the ingest again with --update")
        if stamped.window:
            log.info("migration copied writes made during the swap",
                     extra={"papers": len(stamped.window)})
        return None

    async def _abandon(self, pointers: Pointers, source: Bound, target: Bound,
                       mirror: Mirror) -> None:
        """A start that failed or was cancelled: unless its pointer write got through (the
        gateway switched: the swap stands) or may have (unsettled: the next step decides,
        writes mirrored both ways meanwhile), drop the partial copy; the live collection was
        never touched."""
        live = self.collections.current
        if (live is not None and live.view == target.view) or self._unsettled is not None:
            return
        self.mirror = None
        # each step on its own: a close that fails must not keep the partial copy on disk;
        # the error being raised says more, these are logged beside it
        collection = target.view.collection
        try:
            await target.index.close()
        except Exception as error:  # noqa: BLE001
            log.warning("migration cleanup: closing the partial collection failed",
                        extra={"collection": collection, "reason": repr(error)[:300]})
        try:
            await asyncio.to_thread(pointers.drop, collection)
        except Exception as error:  # noqa: BLE001
            log.error("migration cleanup: the partial collection could not be dropped",
                      extra={"collection": collection, "reason": repr(error)[:300]})

    async def rollback(self) -> Report:
        async with self._exclusive("rollback"):
            await self._settle()
            pointer, live, other = await self._swapped("rollback")
            mirror = self._current()
            async with mirror.paused():
                # the current live collection is the truth: writes pinned to the other one
                # whose mirror failed first, then the other made equal to it, deletes included,
                # and the papers other writers updated in it since the swap
                stamps = await self._since_swap(pointer, live, other)
                if stamps is None:
                    log.warning("rollback: the swap's time is not recorded; papers other "
                                "writers updated since it are not re-synced (ids are)")
                await self._resync(_behind(mirror.missed_by(live.view.collection), stamps),
                                   other, live)
                await self._match(live, other, mirror.missed_by(other.view.collection)
                                  + _updated(stamps, mirror.landed))
                mirror.pending.clear()
                await other.index.flush()  # on disk before the pointer names it again
                # the swap's time, as start's: after the copies above, which the watch feed
                # would take, stamped later, for papers written since the swap
                back = pointer.swapped(now_ms())
                warning = await self._commit(
                    back, lambda: self.collections.switch(other, live, back))
            log.info("migration rolled back", extra={"live": back.live})
            return Report("rollback", back.live, back.embedder, back.previous,
                          back.previous_embedder, await other.index.ready(),
                          await live.index.ready(), warning=warning)

    async def finish(self) -> Report:
        """Stop mirroring and drop the previous collection. A call still pinned to it gets
        UNAVAILABLE and is sent again by its client."""
        async with self._exclusive("finish"):
            await self._settle()
            await self.collections.look_for_previous()
            if self.collections.previous_missing and self.collections.other is None:
                return await self._finish_without_previous()
            pointer, live, other = await self._swapped("finish")
            done = pointer.finished()
            mirror = self._current()

            def finished() -> None:
                self.collections.switch(live, None, done)
                self.mirror = None

            async def drop_previous() -> str | None:
                return await self._drop_previous(other)

            async with mirror.paused():
                # writes pinned to the other collection whose mirror into the live one failed
                missed = mirror.missed_by(live.view.collection)
                if missed:
                    missed = _behind(missed, await self._since_swap(pointer, live, other))
                await self._resync(missed, other, live)
                await live.index.flush()  # on disk before the other copy is deleted
                committed = await self._commit(done, finished, complete=drop_previous)
            dropped = await drop_previous()
            log.info("migration finished", extra={"live": done.live,
                                                  "dropped": other.view.collection})
            return Report("finish", done.live, done.embedder, None, None,
                          await live.index.ready(), None,
                          warning="; ".join(w for w in (committed, dropped) if w) or None)

    async def _finish_without_previous(self) -> Report:
        """``--finish`` while the previous embedder's export is gone: the previous collection
        was never opened nor kept in step, so there is nothing to re-sync; it is deleted by
        name once the pointer no longer names it."""
        pointer, live = self.collections.pointer, await self.collections.live()
        assert pointer is not None and pointer.previous is not None
        done, previous = pointer.finished(), pointer.previous

        async def drop_previous() -> str | None:
            return await self._drop(previous)

        await live.index.flush()
        committed = await self._commit(
            done, lambda: self.collections.switch(live, None, done), complete=drop_previous)
        dropped = await drop_previous()
        log.info("migration finished", extra={"live": done.live, "dropped": previous})
        return Report("finish", done.live, done.embedder, None, None, await live.index.ready(),
                      None, warning="; ".join(w for w in (committed, dropped) if w) or None)

    async def _drop_previous(self, other: Bound) -> str | None:
        """After a finish: the collection left behind closed and deleted; a warning where it
        could not be (the finish stands)."""
        try:
            await other.index.close()
        except Exception as error:  # noqa: BLE001 (finished; only the drop is left)
            return self._not_dropped(other.view.collection, error)
        return await self._drop(other.view.collection)

    async def _drop(self, collection: str) -> str | None:
        try:
            await asyncio.to_thread((await self.collections.pointers()).drop, collection)
        except Exception as error:  # noqa: BLE001 (finished; only the drop is left)
            return self._not_dropped(collection, error)
        return None

    @staticmethod
    def _not_dropped(collection: str, error: Exception) -> str:
        log.warning("migration finished, old collection not dropped",
                    extra={"collection": collection, "reason": str(error)})
        return f"finished, but {collection} could not be deleted ({error}): delete it by hand"

    async def _commit(self, pointer: Pointer, switch: Callable[[], None], *,
                      complete: Callable[[], Awaitable[str | None]] | None = None,
                      abandon: Callable[[], Awaitable[None]] | None = None) -> str | None:
        """The step's commit point: write ``pointer``, then ``switch`` the gateway to it.

        Finished even if the step is cancelled meanwhile, once or more (the cleanup after a
        cancel must see the outcome: one that read the old pointer dropped the collection the
        finished write then named), ``complete`` too after the switch; the cancel is raised
        after. A write that failed may still
        have been applied (a rename whose directory fsync failed, a server whose answer was
        lost), so the pointer is read back: written, the switch is made and a warning
        returned; not written, the error goes on (nothing changed); unreadable, the step stays
        unsettled, writes still mirrored both ways, and the next step follows whatever the
        pointer then says (``_settle``: ``switch`` and ``complete``, else ``abandon``)."""
        pointers = await self.collections.pointers()
        write = asyncio.ensure_future(asyncio.to_thread(pointers.write, pointer))
        cancelled = await _outlasting_cancels(write)
        warning = None
        error = write.exception()
        if error is not None:
            read = asyncio.ensure_future(asyncio.to_thread(pointers.read))
            cancelled = await _outlasting_cancels(read) or cancelled
            unreadable = read.exception()
            if unreadable is not None:  # cannot tell: settled by the next step
                self._unsettled = _Unsettled(pointer, switch, complete, abandon)
                raise MigrationFailed(
                    f"writing the collection pointer failed ({error}) and it cannot be read "
                    f"back ({unreadable}): whether the step took effect is unknown; writes "
                    "go to both collections meanwhile; the next migrate command (any step) "
                    "finds out, follows the pointer and stops there") from error
            if read.result() != pointer:
                raise error
            warning = (f"writing the collection pointer reported {error!r}, but it reads "
                       "back as written: the step took effect")
            log.warning("migration pointer written despite an error", extra={
                "live": pointer.live, "reason": repr(error)[:300]})
        switch()
        if cancelled:
            if complete is not None:  # what follows the commit (the drop after a finish, a
                # start's late writes): the step's caller, cancelled, would not run it, and
                # the pointer no longer names what it was for
                following = asyncio.ensure_future(complete())
                await _outlasting_cancels(following)
                if following.exception() is not None:
                    log.warning("migration: the step after a cancelled commit failed", extra={
                        "live": pointer.live, "reason": repr(following.exception())[:300]})
            raise asyncio.CancelledError
        return warning

    async def _settle(self) -> None:
        """An earlier step whose pointer write had an unknown outcome: follow the pointer now
        (and finish or undo that step) and refuse this one, saying what the earlier one came
        to (StoreError while the pointer still cannot be read). A step asked for again then
        starts from a known state."""
        unsettled = self._unsettled
        if unsettled is None:
            return
        current = await asyncio.to_thread((await self.collections.pointers()).read)
        self._unsettled = None
        if current == unsettled.pointer:
            async with self._paused():  # as the step itself ran them: its re-syncs read one
                # collection and write the other, a write landing in between would be undone
                unsettled.switch()
                warning = None if unsettled.complete is None else await unsettled.complete()
            log.warning("migration: an earlier step's pointer write had gone through",
                        extra={"live": current.live, "warning": warning})
            raise MigrationRefused(
                f"the previous step had taken effect after all (live: {current.live}"
                + (f"; {warning}" if warning else "") + "): nothing else done")
        if unsettled.abandon is not None:
            async with self._paused():
                await unsettled.abandon()
        log.warning("migration: an earlier step's pointer write had not gone through",
                    extra={"live": None if current is None else current.live})
        raise MigrationRefused("the previous step had not taken effect: nothing changed; "
                               "run the step again")

    async def _copy(self, mirror: Mirror, source: Bound, target: Bound) -> tuple[int, int]:
        """Every paper of ``source`` not written since the start, re-encoded into ``target``."""
        copied = skipped = 0
        for chunk in _chunks(sorted(await source.index.point_ids()), self.batch):
            fresh = [pid for pid in chunk if pid not in mirror.dirty]
            papers = await source.index.papers(fresh)
            vectors = await self.encode(target.view.embedder, [p.text for p in papers])
            async with mirror.lock:
                keep = [i for i, p in enumerate(papers) if p.point_id not in mirror.dirty]
                if keep:
                    await target.index.upsert([papers[i] for i in keep], vectors[keep])
            copied += len(keep)
            skipped += len(chunk) - len(keep)
        return copied, skipped

    async def _prematch(self, mirror: Mirror, source: Bound, target: Bound, since: int) -> int:
        """Writes going on: make ``target`` hold ``source``'s ids, re-copying the pending ones
        and those another writer wrote since ``since`` (less WRITER_SKEW_MS); how many it
        touched. The bulk of the reconcile, so that what the pause does grows with the writes
        made since, not with the index. Each chunk is re-synced under the mirror lock (a
        mirror write waits for one chunk, not for the id scans): it reads ``source`` as it is
        then, so an id a write changed after the scans is at worst copied again. A chunk that
        fails (its encoder unavailable) is left pending for the reconcile under the pause,
        which tries it again. A pending entry read here is settled by its chunk unless a write
        of the paper was in progress then (its mirror write, landing after the re-copy, could
        carry an older version than the source's: the reconcile under the pause re-syncs it)
        or failed again since."""
        missed = {pid: mirror.pending[pid] for pid in mirror.missed_by(target.view.collection)}
        stamped = (await source.index.indexed_since(since - WRITER_SKEW_MS, None)).window
        external = await self._written_by_others(stamped, mirror, target)
        ours, theirs = set(await source.index.point_ids()), set(await target.index.point_ids())
        again = sorted(set(missed) | set(external) | (ours ^ theirs))
        for chunk in _chunks(again, self.batch):
            try:
                async with mirror.lock:
                    settled = [pid for pid in chunk if pid in missed and not mirror.writing(pid)]
                    await self._resync(chunk, source, target)
            except Exception as error:  # noqa: BLE001 (tried again under the pause)
                log.warning("migration: a re-sync before the pause failed, tried again under it",
                            extra={"papers": len(chunk), "reason": repr(error)[:300]})
                mirror.pend(chunk, target.view.collection)
                continue
            for pid in settled:
                if mirror.pending.get(pid) == missed[pid]:
                    del mirror.pending[pid]
        return len(again)

    async def _reconcile(self, mirror: Mirror, source: Bound, target: Bound,
                         since: int) -> tuple[int, set[str]]:
        """Under the pause, after ``_prematch`` began at ``since``: re-copy the pending ids and
        those another writer wrote since then (less WRITER_SKEW_MS); how many, and the ids
        stamped since. No id scan: the prematch left ``target`` holding every paper of
        ``source`` not written since; what another writer changed since without a stamp (a
        delete) ``_counted`` finds."""
        stamped = (await source.index.indexed_since(since - WRITER_SKEW_MS, None)).window
        again = sorted(set(mirror.missed_by(target.view.collection))
                       | set(await self._written_by_others(stamped, mirror, target)))
        await self._resync(again, source, target)
        mirror.pending.clear()
        return len(again), set(stamped)

    @staticmethod
    async def _written_by_others(stamped: dict[str, int], mirror: Mirror, target: Bound
                                 ) -> list[str]:
        """Of the papers written to the source since the start (``stamped``: point id ->
        indexed_at), those another writer wrote: every one the gateway did not write, and each
        it did that was stamped in the source after the gateway's write there had landed
        (``mirror.landed``: an ingest's update made while the mirror write encoded or waited
        for the lock, which the mirror write's later stamp hid) or that ``target`` holds an
        older write of (its mirror write lands after its write to the source, so it is newer
        there unless another writer updated the paper in the source since)."""
        ours = {pid: stamp for pid, stamp in stamped.items() if pid in mirror.dirty}
        theirs: dict[str, int] = {}
        if ours:
            theirs = (await target.index.indexed_since(min(ours.values()), None)).window
        return sorted((set(stamped) - set(ours)) | set(_updated((ours, theirs), mirror.landed)))

    @staticmethod
    async def _since_swap(pointer: Pointer, live: Bound, other: Bound) -> _Stamps | None:
        """``live``'s and ``other``'s ``indexed_at`` stamps since the pointer swapped to
        ``live`` (less WRITER_SKEW_MS); None for a pointer written before that time was
        recorded."""
        if pointer.swapped_at_ms is None:
            return None
        since = pointer.swapped_at_ms - WRITER_SKEW_MS
        return ((await live.index.indexed_since(since, None)).window,
                (await other.index.indexed_since(since, None)).window)

    async def _match(self, source: Bound, target: Bound, again: Sequence[str]
                     ) -> tuple[int, set[str]]:
        """Make ``target`` hold exactly ``source``'s ids, copying ``again`` and the ids only
        ``source`` holds, deleting those only ``target`` holds; how many it touched, and the
        ids ``source`` held."""
        ours = set(await source.index.point_ids())
        theirs = set(await target.index.point_ids())
        copy = sorted((set(again) | (ours - theirs)) & ours)
        await self._resync(copy, source, target)
        extra = await target.index.papers(sorted(theirs - ours))
        if extra:
            await target.index.delete([p.id for p in extra])
        return len(copy) + len(extra), ours

    async def _resync(self, point_ids: Sequence[str], source: Bound, target: Bound) -> None:
        """Make these papers in ``target`` what they are in ``source`` now: copied, or deleted
        where ``source`` no longer holds them (the caller holds the mirror lock)."""
        for chunk in _chunks(point_ids, self.batch):
            papers = await source.index.papers(chunk)
            if papers:
                await target.index.upsert(papers, await self.encode(target.view.embedder,
                                                                    [p.text for p in papers]))
            held = {p.point_id for p in papers}
            gone = await target.index.papers([pid for pid in chunk if pid not in held])
            if gone:
                await target.index.delete([p.id for p in gone])

    async def _swapped(self, action: str) -> tuple[Pointer, Bound, Bound]:
        await self.collections.look_for_previous()  # exported again since: found here
        await self.resume()
        pointer, live, other = (self.collections.pointer, await self.collections.live(),
                                self.collections.other)
        if pointer is not None and other is None and self.collections.previous_missing:
            raise MigrationRefused(f"--{action}: {self.collections.previous_missing}; the "
                                   "other collection is not kept in step without it. Export "
                                   "that model again to roll back, or --finish to delete the "
                                   "previous collection")
        if pointer is None or other is None:
            raise MigrationRefused(f"--{action}: no migration is waiting to be finished or "
                                   "rolled back")
        return pointer, live, other

    def _paused(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The mirror's writes held back (``Mirror.paused``), if a migration mirrors them."""
        return contextlib.nullcontext() if self.mirror is None else self.mirror.paused()

    def _current(self) -> Mirror:
        assert self.mirror is not None  # _swapped resumed it
        return self.mirror

    def _exclusive(self, action: str) -> asyncio.Lock:
        if self._running.locked():
            raise MigrationRefused(f"{action}: another migration step is running")
        return self._running


async def _outlasting_cancels(future: asyncio.Future[Any]) -> bool:
    """Wait until ``future`` is done, however often this task is cancelled meanwhile (work in
    a thread cannot be stopped, and what it did must be known); whether it was."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def _updated(stamps: _Stamps | None, landed: dict[str, int]) -> list[str]:
    """Of the papers ``stamps`` holds written to the collection the gateway writes first (the
    live one since the swap, the source before it), those another writer wrote last (an
    ingest follows the pointer and writes to that collection only): those the other
    collection holds an older write of (the gateway's own writes are mirrored after, so newer
    there), and those stamped after the gateway's own write of them there had landed
    (``landed``: an update made while that write's mirror encoded, whose later stamp hid it)."""
    if stamps is None:
        return []
    ours, theirs = stamps
    return sorted(pid for pid, stamp in ours.items()
                  if theirs.get(pid, -1) < stamp or stamp > landed.get(pid, stamp))


def _behind(pending: Sequence[str], stamps: _Stamps | None) -> list[str]:
    """Of the ``pending`` ids the live collection lacks the last write of (a write pinned to
    the other one whose mirror failed), those to copy from the other collection: not one both
    hold and the live one holds a later write of, another writer's (an ingest writes the live
    collection only), which the copy would undo. A paper the other one lacks (a delete) is
    still deleted."""
    if stamps is None:
        return list(pending)
    ours, theirs = stamps
    return [pid for pid in pending if not (pid in theirs and theirs[pid] < ours.get(pid, -1))]


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
