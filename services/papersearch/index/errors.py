"""Errors the index layer raises, whatever the backend."""

from __future__ import annotations

import errno

# The OS errors that say a resource is spent (no space, no quota, a file too large, no
# descriptors): StorageExhausted where the index meets them.
SPENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMFILE, errno.ENFILE})


class StoreError(RuntimeError):
    """The index could not do what was asked."""


class StoreUnavailable(StoreError):
    """The engine cannot be reached (server down, shard locked by another process)."""


class StorageExhausted(StoreUnavailable):
    """The index's volume is full (or its quota, or the process's file descriptors, spent):
    writes are refused until there is room again."""


class CollectionMissing(StoreError):
    """The collection does not exist and was not to be created."""


class EmbedderMismatch(StoreError):
    """The collection was built by a different embedder than the one in use."""


class WeightingMismatch(StoreError):
    """Papers would be written with another BM25 weighting than the collection records."""


class PaperNotFound(StoreError, KeyError):
    """No stored paper has this id."""

    def __init__(self, paper_id: str) -> None:
        super().__init__(f"paper {paper_id!r} is not in the index")
        self.paper_id = paper_id

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidExamples(ValueError):
    """Example papers that give a recommendation nothing to search for (a client's mistake)."""
