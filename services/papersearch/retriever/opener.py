"""The serving side's hold on the collection: opened when first needed, never created by a read.

A missing collection (a wiped volume, a wrong ``index.collection``) must not be served as an
empty index: reads and readiness raise CollectionMissing until it exists, and the gateway reports
NOT_SERVING. Only writes (IndexService, through ``open(create=True)``) and ingestion create it.
Attempts are spaced by ``retry_s``, so a burst of reads against a missing or unreachable index
costs one attempt, not one each; in between they get the last attempt's error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from papersearch.index.errors import StoreError
from papersearch.index.factory import open_store
from papersearch.index.store import Store
from papersearch.settings import Settings

log = logging.getLogger(__name__)


class CollectionOpener:
    def __init__(
        self, settings: Settings, dim: int, embedder_sha: str, *, retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        make_store: Callable[[Settings], Store] = open_store,
    ) -> None:
        self.settings = settings
        self.make_store = make_store
        self.dim = dim
        self.embedder_sha = embedder_sha
        self.retry_s = retry_s
        self.clock = clock
        self._store: Store | None = None
        self._failure: StoreError | None = None
        self._failed_at = float("-inf")

    def open(self, *, create: bool = False) -> Store:
        """The open store; raises CollectionMissing, StoreUnavailable or EmbedderMismatch."""
        if self._store is not None:
            return self._store
        if (not create and self._failure is not None
                and self.clock() - self._failed_at < self.retry_s):
            raise self._failure
        store = self.make_store(self.settings)
        try:
            store.ensure_collection(self.dim, self.embedder_sha, create=create)
        except StoreError as error:
            store.close()
            if type(error) is not type(self._failure):
                log.warning("index not open: NOT_SERVING until it is (reads only open an "
                            "existing collection; `papersearch ingest` or IndexService "
                            "UpsertPapers create one)",
                            extra={"collection": store.describe(), "reason": str(error)})
            self._failure, self._failed_at = error, self.clock()
            raise
        if self._failure is not None:
            log.info("index open again", extra={"collection": store.describe()})
        self._store, self._failure = store, None
        return store

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
