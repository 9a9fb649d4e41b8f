"""The configured reranker's latest version: a service may start before any reranker is
trained or exported, and picks one up later, or a newer one, without a restart.

Until the model is there, ``get`` raises ModelNotFound (the search pipeline turns that into
first-stage results, ``reranked=false``). The model repository is looked at again at most every
``models.reload_poll_s``: a newer version is loaded and replaces the one in use (every replica
within that interval, so that replicas do not keep different rerankers), a newer one that does
not load leaves the one in use. A missing or broken model is logged once.
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


class RerankerLoader:
    def __init__(
        self, models: ModelSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.models = models
        self.clock = clock
        self.reranker: Reranker | None = None
        self._missing: ModelNotFound | None = None
        self._next_look = float("-inf")
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
        if self.reranker is None or (found and found[-1] > self.reranker.manifest.version):
            self._load()

    def _load(self) -> None:
        try:
            loaded = Reranker.from_settings(self.models)
        except Exception as error:  # noqa: BLE001 (missing or unloadable: looked at again later)
            missing = error if isinstance(error, ModelNotFound) else ModelNotFound(
                f"the reranker model could not be loaded: {error}")
            if str(missing) != str(self._missing):  # said once, not at every look
                if self.reranker is not None:
                    log.warning("a newer reranker model did not load: the one in use stays",
                                extra={"version": self.reranker.manifest.version,
                                       "reason": str(missing)})
                else:
                    # the reason says how one is made (model_dir) or why it did not load
                    log.warning("no usable reranker model: searches return first-stage "
                                "results (reranked=false) until there is one; looking again "
                                f"every {self.models.reload_poll_s:g} s",
                                extra={"reason": str(missing)})
            self._missing = missing
            return
        log.info("reranker model loaded", extra={
            "model": loaded.manifest.name, "version": loaded.manifest.version})
        self.reranker, self._missing = loaded, None
