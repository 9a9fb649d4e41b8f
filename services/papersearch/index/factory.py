"""Pick the Store backend the settings name."""

from __future__ import annotations

from papersearch.index.store import Store
from papersearch.settings import IndexSettings, Settings


def open_store(settings: Settings | IndexSettings) -> Store:
    """An unopened Store for ``settings.index``; call ``ensure_collection`` next."""
    index = settings.index if isinstance(settings, Settings) else settings
    if index.backend == "server":
        from papersearch.index.server import ServerStore  # grpc only where it is used

        return ServerStore(index)
    from papersearch.index.edge import EdgeStore

    return EdgeStore(index)
