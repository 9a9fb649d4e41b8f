"""The configured reranker's latest version: a service may start before any reranker is
trained or exported, and picks one up later, or a newer one, without a restart.

Until the model is there, ``get`` raises ModelNotFound (the search pipeline turns that into
first-stage results, ``reranked=false``). The model repository is looked at again at most every
``models.reload_poll_s``: a newer version is loaded and replaces the one in use (every replica
within that interval, so that replicas do not keep different rerankers), a newer one that does
not load leaves the one in use and is tried again only every ``RETRY_FAILED_LOOKS`` looks; a
replica that starts meanwhile takes the newest version that loads. A missing or broken model
is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from papersearch.models.manifest import ModelNotFound, versions
from papersearch.reranker.runtime import Reranker
from papersearch.settings import ModelSettings

log = logging.getLogger(__name__)

RETRY_FAILED_LOOKS = 30  # a version that did not load is tried again this many looks later


class RerankerLoader:
    def __init__(
        self, models: ModelSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.models = models
        self.clock = clock
        self.reranker: Reranker | None = None
        self._missing: ModelNotFound | None = None
        self._next_look = float("-inf")
        self._failed: dict[int, float] = {}  # a version that did not load: when to try again
        self._lock = threading.Lock()  # one load at a time

    def get(self) -> Reranker:
        """The reranker; loads it if it, or a newer version, has appeared since the last look
        (blocking: ~1 s when it loads; a directory listing otherwise)."""
        if self.due():
            with self._lock:
                if self.due():
                    self._look()
        if self.reranker is None:
            raise ModelNotFound(str(self._missing))
        return self.reranker

    def due(self) -> bool:
        """Whether the next ``get`` looks in the model repository."""
        return self.clock() >= self._next_look

    def _look(self) -> None:
        self._next_look = self.clock() + self.models.reload_poll_s
        found = versions(self.models.repository, self.models.reranker_name)
        in_use = self.reranker.manifest.version if self.reranker is not None else 0
        # newest first, down to the one in use; a version that failed is tried again only
        # every RETRY_FAILED_LOOKS looks (a load is up to ~1 s on the request path)
        now = self.clock()
        tried: list[int | None] = [v for v in reversed(found)
                                   if v > in_use and self._failed.get(v, now) <= now]
        if not found and self.reranker is None:
            tried = [None]  # the latest: model_dir's error says how one is made
        for version in tried:
            try:
                loaded = Reranker.from_settings(self.models, version)
            except Exception as error:  # noqa: BLE001 (missing or unloadable)
                if version is not None:
                    self._failed[version] = now + RETRY_FAILED_LOOKS * self.models.reload_poll_s
                self._fail(version, error)
                if self.reranker is not None:
                    return  # the one in use stays, as on the replicas that hold it
                continue  # a replica starting now: the newest version that loads
            log.info("reranker model loaded", extra={
                "model": loaded.manifest.name, "version": loaded.manifest.version})
            self.reranker, self._missing = loaded, None
            return

    def _fail(self, version: int | None, error: Exception) -> None:
        missing = error if isinstance(error, ModelNotFound) else ModelNotFound(
            f"the reranker model could not be loaded: {error}")
        if str(missing) != str(self._missing):  # said once, not at every look
            if self.reranker is not None:
                log.warning("a newer reranker model did not load: the one in use stays",
                            extra={"version": self.reranker.manifest.version, "tried": version,
                                   "reason": str(missing)})
            else:
                # the reason says how one is made (model_dir) or why it did not load
                log.warning("no usable reranker model: searches return first-stage "
                            "results (reranked=false) until there is one; looking again "
                            f"every {self.models.reload_poll_s:g} s",
                            extra={"tried": version, "reason": str(missing)})
        self._missing = missing
