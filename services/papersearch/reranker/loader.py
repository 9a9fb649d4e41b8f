"""The configured reranker's latest version: a service may start before any reranker is
trained or exported, and picks one up later, or a newer one, without a restart.

Until the model is there, ``get`` raises ModelNotFound (the search pipeline turns that into
first-stage results, ``reranked=false``). The model repository is looked at again at most every
``models.reload_poll_s``: a newer version is loaded and replaces the one in use (every replica
within that interval, so that replicas do not keep different rerankers), a newer one that does
not load leaves the one in use and is tried again only every ``RETRY_FAILED_LOOKS`` looks; a
replica that starts meanwhile takes the newest version that loads. The one in use removed (a
rollback: an operator deleted a bad newest version) or its files changed gives way the same
way to the newest version that loads, older ones included, or to none: a replica that starts
then could not load it either. A missing or broken model is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from papersearch.models.manifest import MANIFEST, ModelNotFound, versions
from papersearch.reranker.runtime import Reranker
from papersearch.settings import ModelSettings

log = logging.getLogger(__name__)

# A version that did not load is tried again this many looks later: each try is a load on
# the request path (README: Results, Figures behind the limits).
RETRY_FAILED_LOOKS = 30
Stamp = tuple[tuple[str, int, int] | None, ...]  # a version's files as stat sees them


class RerankerLoader:
    def __init__(
        self, models: ModelSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.models = models
        self.clock = clock
        self.reranker: Reranker | None = None
        self._stamp: Stamp = ()  # the files of the one in use, as loaded
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
        held = self._held(found)
        if self.reranker is not None and held is None:
            log.warning("the reranker version in use was removed or its files changed: "
                        "moving to the newest version that loads",
                        extra={"version": self.reranker.manifest.version})
        # newest first, down to the one in use while it stands, past it when it does not (a
        # replica starting now would not load it); a version that failed is tried again only
        # every RETRY_FAILED_LOOKS looks (a load is slow, and on the request path)
        now = self.clock()
        tried: list[int | None] = [v for v in reversed(found)
                                   if (held is None or v > held)
                                   and self._failed.get(v, now) <= now]
        if not found and self.reranker is None:
            tried = [None]  # the latest: model_dir's error says how one is made
        for version in tried:
            try:
                loaded = Reranker.from_settings(self.models, version)
            except Exception as error:  # noqa: BLE001 (missing or unloadable)
                if version is not None:
                    self._failed[version] = now + RETRY_FAILED_LOOKS * self.models.reload_poll_s
                self._fail(version, error, held)
                if held is not None:
                    return  # the one in use stays, as on the replicas that hold it
                continue  # a replica starting now: the newest version that loads
            log.info("reranker model loaded", extra={
                "model": loaded.manifest.name, "version": loaded.manifest.version})
            self.reranker, self._stamp, self._missing = loaded, _stamp(loaded), None
            return
        if self.reranker is not None and held is None:  # none loads: first-stage results
            self._missing = self._missing or ModelNotFound(
                f"reranker version {self.reranker.manifest.version} was removed or changed "
                "and no other version loads")
            self.reranker = None

    def _held(self, found: list[int]) -> int | None:
        """The version in use while it stands: still listed and its files as loaded (stat
        only: a digest of the graphs at every look would cost more than a load)."""
        if self.reranker is None:
            return None
        version = self.reranker.manifest.version
        return version if version in found and _stamp(self.reranker) == self._stamp else None

    def _fail(self, version: int | None, error: Exception, held: int | None) -> None:
        missing = error if isinstance(error, ModelNotFound) else ModelNotFound(
            f"the reranker model could not be loaded: {error}")
        if str(missing) != str(self._missing):  # said once, not at every look
            if held is not None:
                log.warning("a newer reranker model did not load: the one in use stays",
                            extra={"version": held, "tried": version,
                                   "reason": str(missing)})
            else:
                # the reason says how one is made (model_dir) or why it did not load
                log.warning("no usable reranker model: searches return first-stage "
                            "results (reranked=false) until there is one; looking again "
                            f"every {self.models.reload_poll_s:g} s",
                            extra={"tried": version, "reason": str(missing)})
        self._missing = missing


def _stamp(reranker: Reranker) -> Stamp:
    """Name, size and modification time of the version's manifest and listed files."""
    stamps: list[tuple[str, int, int] | None] = []
    for name in (MANIFEST, *sorted(reranker.manifest.files)):
        path = reranker.version_dir / name
        try:
            stat = path.stat()
        except OSError:
            stamps.append(None)  # removed: changed too
            continue
        stamps.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)
