"""The gateway's collections: the live one, which searches and writes use, and, while an
embedder migration keeps two in step (pipeline/migration.py), the other one.

A search or a write takes the live view once, at its start (``HandleBackend.pinned``), and
uses that view's embedder and collection for every step: a swap in between never gives a query
vector of one embedder to a collection of another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from papersearch.errors import NotReady
from papersearch.index.errors import StoreError
from papersearch.index.pointer import Pointer, Pointers, pointers_for
from papersearch.models.manifest import ModelNotFound, ModelRef, read_manifest
from papersearch.pipeline.index_access import IndexAccess
from papersearch.retriever.opener import CollectionOpener
from papersearch.settings import Settings
from papersearch.tasks import forget

log = logging.getLogger(__name__)

# Documents encoded by one embedder: (embedder, texts) -> vectors.
EncodeDocuments = Callable[[ModelRef, Sequence[str]], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class View:
    """A physical collection and the embedder whose vectors it holds (with its identity)."""

    collection: str
    embedder: ModelRef
    sha256: str
    dim: int

    @classmethod
    def of(cls, collection: str, embedder: ModelRef, settings: Settings) -> View:
        manifest = read_manifest(embedder.path(settings.models.repository))
        return cls(collection, embedder, manifest.sha256, manifest.dim or 0)


def live_view(settings: Settings, pointer: Pointer | None) -> View:
    """The collection ``index.collection`` means now and its embedder: the pointer's after a
    migration, else the collection itself with ``models.embedder_name`` (latest version)."""
    repository = settings.models.repository
    if pointer is None:
        return View.of(settings.index.collection,
                       ModelRef.parse(settings.models.embedder_name, repository), settings)
    return _pinned(pointer.live, pointer.embedder, settings)


def previous_view(settings: Settings, pointer: Pointer) -> View | None:
    if pointer.previous is None or pointer.previous_embedder is None:
        return None
    return _pinned(pointer.previous, pointer.previous_embedder, settings)


def _pinned(collection: str, embedder: str, settings: Settings) -> View:
    """The view of a collection the migration pointer names with the exact version that built
    it. That version missing or damaged, the error says so: its own advice, "export the model
    again", made a new version, which the pointer does not name, and the index stayed down."""
    try:
        return View.of(collection, ModelRef.parse(embedder, settings.models.repository),
                       settings)
    except ModelNotFound as error:
        raise type(error)(
            f"{error} (collection {collection} was built by {embedder}, which the migration "
            "pointer names: restore that version's folder in the model repository from a "
            "copy; a new export is a new version)") from error


def settings_for(settings: Settings, collection: str) -> Settings:
    """``settings`` with ``index.collection`` set to one physical collection."""
    return settings.model_copy(update={"index": settings.index.model_copy(
        update={"collection": collection})})


@dataclass(frozen=True, slots=True)
class Bound:
    """A view with the gateway's access to its collection."""

    view: View
    index: IndexAccess


def open_access(settings: Settings, view: View) -> IndexAccess:
    """Blocking (it tries to open the collection once): call it off the event loop."""
    return IndexAccess(CollectionOpener(settings_for(settings, view.collection), view.dim,
                                        view.sha256))


class Collections:
    """The live view (resolved from the pointer when first needed, again after a failure such
    as an unreachable server) and the migration state, owned by the gateway's event loop."""

    def __init__(
        self, settings: Settings,
        make_access: Callable[[Settings, View], IndexAccess] = open_access,
        make_pointers: Callable[[Settings], Pointers] = lambda s: pointers_for(s.index),
        *, retry_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.make_access = make_access
        self.make_pointers = make_pointers
        self.pointer: Pointer | None = None
        self.other: Bound | None = None  # the migration's other collection, if one runs
        self._live: Bound | None = None
        self._pointers: Pointers | None = None
        # opens their caller left (cancelled: its deadline, the health poll's), for the next
        self._opening: dict[View, asyncio.Future[IndexAccess]] = {}
        self._closed = False
        self._resolving = asyncio.Lock()
        self.retry_s, self.clock = retry_s, clock
        self._failure: StoreError | None = None  # the last failed resolution, and when
        self._failed_at = float("-inf")
        # a swapped migration whose previous embedder is not in the model repository: why
        # (the live collection is served, writes are not mirrored, --rollback is refused)
        self.previous_missing: str | None = None

    async def live(self) -> Bound:
        if self._live is None:
            async with self._resolving:
                if self._live is None:
                    await self._resolve()
        assert self._live is not None
        return self._live

    @property
    def current(self) -> Bound | None:
        """The live view now (None until first resolved)."""
        return self._live

    def switch(self, live: Bound, other: Bound | None, pointer: Pointer | None) -> None:
        """Make ``live`` the view new searches and writes take (one step on the loop)."""
        self._live, self.other, self.pointer = live, other, pointer
        if pointer is None or pointer.previous is None:
            self.previous_missing = None

    async def bind(self, view: View) -> Bound:
        """``view``'s collection opened (in a thread). A caller cancelled meanwhile leaves the
        open going, and the next bind of the view takes it over: an open longer than the
        health poll's timeout began again at every poll, and readiness never came."""
        while True:
            if self._closed:  # what it would open, nothing would close
                raise NotReady("the gateway's collections are closed (it is stopping)")
            opening = self._opening.get(view)
            if opening is None:
                opening = self._opening[view] = asyncio.ensure_future(
                    asyncio.to_thread(self.make_access, self.settings, view))
            try:
                access = await asyncio.shield(opening)
            except asyncio.CancelledError:  # the open goes on: a failure no bind may read
                forget(opening)
                raise
            except Exception:  # failed (not cancelled): the next bind opens it again
                if self._opening.get(view) is opening:
                    del self._opening[view]
                raise
            if self._opening.get(view) is opening:  # taken over here, not by another bind
                del self._opening[view]
                return Bound(view, access)

    def _park(self, bound: Bound) -> None:
        """An open collection whose resolution was cancelled, kept for the next bind (none
        is kept for its view: one resolution runs at a time, and its bind took it over)."""
        parked: asyncio.Future[IndexAccess] = asyncio.get_running_loop().create_future()
        parked.set_result(bound.index)
        self._opening[bound.view] = parked

    async def pointers(self) -> Pointers:
        if self._pointers is None:
            self._pointers = await asyncio.to_thread(self.make_pointers, self.settings)
        return self._pointers

    async def close(self) -> None:
        for bound in (self._live, self.other):
            if bound is not None:
                await bound.index.close()
        self._closed = True
        openings, self._opening = list(self._opening.values()), {}
        for opening in openings:  # left by cancelled callers: closed once open
            with contextlib.suppress(Exception):
                await (await asyncio.shield(opening)).close()
        if self._pointers is not None:
            await asyncio.to_thread(self._pointers.close)

    async def _resolve(self) -> None:
        """Read the pointer (StoreError if the store cannot say: calls within ``retry_s`` get
        the same error, the first one after tries again, as the opener does); a migration
        swapped but not finished resumes mirroring writes."""
        if self._failure is not None and self.clock() - self._failed_at < self.retry_s:
            raise self._failure
        pointers = await self.pointers()
        try:
            pointer = await asyncio.to_thread(pointers.read)
        except StoreError as error:
            self._failure, self._failed_at = error, self.clock()
            raise
        self._failure = None
        live = await self.bind(live_view(self.settings, pointer))
        try:  # the next call opens it again: this one must not stay open beside it
            previous = None if pointer is None else self._previous(pointer)
            other = None if previous is None else await self.bind(previous)
        except asyncio.CancelledError:  # the next call takes it over (the open may be slow)
            self._park(live)
            raise
        except BaseException:
            await live.index.close()
            raise
        self.switch(live, other, pointer)

    async def look_for_previous(self) -> None:
        """The live view resolved, and a previous embedder found missing looked for again
        (exported since): bound, the migration's other collection is back (and mirrored again
        once it resumes). The migration's steps call it, one at a time; requests do not."""
        live, pointer = await self.live(), self.pointer
        if self.previous_missing is None or pointer is None:
            return
        previous = self._previous(pointer)
        if previous is not None:
            self.switch(live, await self.bind(previous), pointer)

    def _previous(self, pointer: Pointer) -> View | None:
        """The migration's other view; None, said once, if its embedder's export is gone (an
        image holding only the new model): the live collection is still served."""
        try:
            view = previous_view(self.settings, pointer)
        except ModelNotFound as error:
            missing = (f"the previous embedder {pointer.previous_embedder} of "
                       f"{pointer.previous} is not exported here ({error})")
            if missing != self.previous_missing:
                log.error("migration swapped, its previous embedder missing: the live "
                          "collection is served, writes are not mirrored into the previous "
                          "one; --rollback needs the model back, --finish deletes the "
                          "previous collection", extra={"previous": pointer.previous,
                                                        "embedder": pointer.previous_embedder})
            self.previous_missing = missing
            return None
        self.previous_missing = None
        return view
