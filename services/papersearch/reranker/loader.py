"""The configured reranker, loaded once it exists: a service may start before any reranker is
trained or exported, and pick one up later without a restart.

Until the model is there, ``get`` raises ModelNotFound (the search pipeline turns that into
first-stage results, ``reranked=false``) and looks in the model repository again at most every
``models.reload_poll_s``. The absence is logged once, with how to make a model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from papersearch.models.manifest import ModelNotFound
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
        """The reranker; loads it if it has appeared since the last look (blocking: ~1 s)."""
        if self.reranker is None:
            with self._lock:
                if self.reranker is None and self.clock() >= self._next_look:
                    self._load()
        if self.reranker is None:
            raise ModelNotFound(str(self._missing))
        return self.reranker

    def _load(self) -> None:
        try:
            self.reranker = Reranker.from_settings(self.models)
        except Exception as error:  # noqa: BLE001 (missing or unloadable: looked at again later)
            missing = error if isinstance(error, ModelNotFound) else ModelNotFound(
                f"the reranker model could not be loaded: {error}")
            if str(missing) != str(self._missing):  # said once, not at every look
                log.warning("no usable reranker model: searches return first-stage results "
                            "(reranked=false) until `papersearch models train-reranker` or "
                            "`models export --reranker SOURCE` makes one; looking again every "
                            f"{self.models.reload_poll_s:g} s", extra={"reason": str(missing)})
            self._missing = missing
            self._next_look = self.clock() + self.models.reload_poll_s
            return
        if self._missing is not None:
            log.info("reranker model found and loaded", extra={
                "model": self.reranker.manifest.name, "version": self.reranker.manifest.version})
        self._missing = None
