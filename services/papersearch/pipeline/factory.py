"""Build the in-process pipeline from settings (the Serve app builds its deployments alike)."""

from __future__ import annotations

import logging

from papersearch.encoder.runtime import Encoder, unlike_settings, warn_if_not_configured
from papersearch.index.errors import EmbedderMismatch
from papersearch.index.factory import open_store
from papersearch.index.pointer import Pointer, pointers_for
from papersearch.index.store import Store
from papersearch.models.manifest import ModelNotFound
from papersearch.pipeline.backend import LocalBackend
from papersearch.pipeline.collections import live_view, settings_for
from papersearch.pipeline.search import SearchPipeline
from papersearch.reranker.runtime import Reranker
from papersearch.settings import Settings

log = logging.getLogger(__name__)


def _pointer(settings: Settings) -> Pointer | None:
    pointers = pointers_for(settings.index)
    try:
        return pointers.read()
    finally:
        pointers.close()


def open_live(settings: Settings, *, create: bool = False) -> tuple[Encoder, Store]:
    """The collection ``index.collection`` means now and the encoder of the embedder that
    built it, from one read of the pointer: after an embedder migration the pointer's
    (index/pointer.py), else the collection itself and ``models.embedder_name``."""
    pointer = _pointer(settings)
    view = live_view(settings, pointer)
    encoder = Encoder(view.embedder.path(settings.models.repository),
                      Encoder.runtime_options(settings.models))
    if pointer is not None:  # the version the migration pinned, whatever the settings say
        return encoder, _checked(settings_for(settings, view.collection), encoder, create)
    warn_if_not_configured(encoder.manifest, settings.models)
    try:
        return encoder, _checked(settings_for(settings, view.collection), encoder, create)
    except EmbedderMismatch as error:
        raise EmbedderMismatch(f"{error}{_export_hint(encoder, settings)}") from error


def _export_hint(encoder: Encoder, settings: Settings) -> str:
    """Where the latest export is not what the settings configure, the index may be the
    configured embedder's: "switch the embedder back" alone was wrong advice when the settings
    were already back (a variant exported under the same name since)."""
    fields = unlike_settings(encoder.manifest, settings.models)
    if not fields:
        return ""
    return (f"; the latest export, {encoder.manifest.name}@{encoder.manifest.version}, was made "
            f"with other settings than the configured ones "
            f"({', '.join(f'models.{f}' for f in fields)}): where the configured ones built "
            "the index, `papersearch models export` makes their export the latest again")


class IndexMoved(ValueError):
    """An embedder migration swapped the live collection while a write job ran."""


class LiveCheck:
    """For a job that writes to ``store`` for a while (``papersearch ingest``): calling it
    raises IndexMoved once the pointer names another live collection, so that no write goes
    on into the collection a migration left behind (it would be lost at ``--finish``)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.index = settings.index
        self.collection = store.settings.collection
        self.pointers = pointers_for(settings.index)

    def __call__(self) -> None:
        live = live_collection(self.index.collection, self.pointers.read())
        if live != self.collection:
            raise IndexMoved(f"an embedder migration made {live} the live collection while "
                             f"this job wrote to {self.collection}: run it again (an ingest "
                             "then writes what the live collection lacks)")

    def close(self) -> None:
        self.pointers.close()


def open_index(settings: Settings, encoder: Encoder, *, create: bool = False) -> Store:
    """The collection ``index.collection`` means now (its pointer's after a migration),
    checked against the encoder that will query or fill it."""
    live = live_collection(settings.index.collection, _pointer(settings))
    return _checked(settings_for(settings, live), encoder, create)


def live_collection(collection: str, pointer: Pointer | None) -> str:
    """The physical collection ``collection`` (index.collection) means now: the pointer's
    after an embedder migration, else itself."""
    return collection if pointer is None else pointer.live


def _checked(settings: Settings, encoder: Encoder, create: bool) -> Store:
    store = open_store(settings)
    try:
        store.ensure_collection(encoder.dim, encoder.sha256, create=create)
    except BaseException:  # refused (another embedder or tokenizer): its lock not kept
        store.close()
        raise
    return store


def load_reranker(settings: Settings) -> Reranker | None:
    """The reranker if the rerank stage is on and its model loads; without one searches
    return first-stage results (reranked=false), as in serving (reranker/loader.py), which
    takes any load error so: a reranker that existed but did not load (reranker_name naming
    the embedder, a damaged export) failed the search here and not there."""
    if not settings.search.rerank_enabled:
        return None
    try:
        return Reranker.from_settings(settings.models)
    except ModelNotFound as error:
        log.warning("rerank stage on but no reranker model: first-stage results only",
                    extra={"reason": str(error)})
    except Exception as error:  # noqa: BLE001 (unloadable: as serving takes it)
        log.warning("rerank stage on but the reranker model did not load: first-stage "
                    "results only (reranked=false)", extra={"reason": str(error)})
    return None


def build_pipeline(settings: Settings) -> tuple[SearchPipeline, Store]:
    """The in-process pipeline and the store it holds open (close it when done)."""
    encoder, store = open_live(settings)
    backend = LocalBackend(encoder, store, load_reranker(settings))
    return SearchPipeline(backend, settings.search, settings.serve.rerank_timeout_s), store
