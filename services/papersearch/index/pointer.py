"""Which physical collection a collection name means, once an embedder migration moved it.

Until the first migration, ``index.collection`` (``papers``) is the collection itself. A
migration (pipeline/migration.py) builds ``papers-<embedder sha, 12 hex>`` beside it and then
swaps the *pointer* ``papers.live`` to it in one atomic step; the pointer also names the
embedder that built the live collection and the collection it replaced, which is kept in step
until ``--finish`` drops it (so ``--rollback`` is a swap back that loses nothing):

- embedded: the file ``<data_dir>/papers.live.json``, replaced atomically (temp file, fsync,
  rename);
- Qdrant server: the alias ``papers.live`` (moved with one ``update_collection_aliases`` call,
  which Qdrant applies atomically), the rest of the record in the live collection's metadata.

Every reader follows the pointer when it opens the index (pipeline/factory.py, and the
gateway's pipeline/collections.py); a process holding a collection open keeps that collection
(the gateway switches its own view at the swap).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

from papersearch.durable import remove_tree, write_json
from papersearch.index.errors import StoreError, StoreUnavailable
from papersearch.settings import COLLECTION_NAME, IndexSettings

POINTER_SUFFIX = ".live"
METADATA_KEY = "papersearch_pointer"


@dataclass(frozen=True, slots=True)
class Pointer:
    """The live collection and its embedder (a ModelRef, ``name@version``); the collection it
    replaced and that one's embedder while both are kept in step (None after ``--finish``);
    when the pointer swapped to it (``indexed_at``'s clock: what other writers, which write
    to the live collection only, wrote since is re-synced by a rollback)."""

    live: str
    embedder: str
    previous: str | None = None
    previous_embedder: str | None = None
    swapped_at_ms: int | None = None

    def swapped(self, at_ms: int | None = None) -> Pointer:
        if self.previous is None or self.previous_embedder is None:
            raise ValueError("no previous collection to swap back to")
        return Pointer(self.previous, self.previous_embedder, self.live, self.embedder, at_ms)

    def finished(self) -> Pointer:
        return Pointer(self.live, self.embedder)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pointer:
        """The pointer ``to_json`` wrote; its collection names are checked like
        ``index.collection``, since an embedded one is a folder that ``--finish`` deletes (a
        pointer edited by hand to ``../x`` or ``""`` had it delete outside the index)."""
        try:
            pointer = cls(str(data["live"]), str(data["embedder"]), data.get("previous"),
                          data.get("previous_embedder"), data.get("swapped_at_ms"))
        except (KeyError, TypeError) as error:
            raise StoreError(f"unreadable collection pointer {data!r}: {error}") from error
        if not (pointer.swapped_at_ms is None or type(pointer.swapped_at_ms) is int):
            raise StoreError(f"collection pointer {data!r}: swapped_at_ms "
                             f"{pointer.swapped_at_ms!r} is no time in ms")
        for field, name in (("live", pointer.live), ("previous", pointer.previous)):
            if name is not None and not (isinstance(name, str) and valid_collection(name)):
                raise StoreError(f"collection pointer {data!r}: {field} {name!r} is no "
                                 "collection name (letters, digits, '_' and '-')")
        return pointer


def valid_collection(name: str) -> bool:
    """Whether ``name`` can name a collection (and, embedded, its folder in data_dir)."""
    return re.fullmatch(COLLECTION_NAME, name) is not None


def physical_name(collection: str, embedder_sha: str) -> str:
    """The collection a migration builds for ``collection`` with an embedder."""
    return f"{collection}-{embedder_sha[:12]}"


class Pointers(ABC):
    """The pointer of ``settings.collection`` on one backend, and dropping a collection."""

    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self.name = settings.collection + POINTER_SUFFIX

    @abstractmethod
    def read(self) -> Pointer | None:
        """The pointer, or None if no migration ever swapped this collection name."""

    @abstractmethod
    def write(self, pointer: Pointer) -> None:
        """Point the name at ``pointer.live``, atomically for every reader."""

    @abstractmethod
    def drop(self, collection: str) -> None:
        """Delete a physical collection and its data (a missing one is no error)."""

    def close(self) -> None:  # noqa: B027 (a default, not an abstract hook)
        """Release the backend's client, if any."""


class EdgePointers(Pointers):
    def __init__(self, settings: IndexSettings) -> None:
        super().__init__(settings)
        self.path = settings.data_dir / f"{self.name}.json"

    def read(self) -> Pointer | None:
        """The pointer; None if there is none. A data dir or file this process cannot read
        is StoreUnavailable, as the index itself says it (it was a raw PermissionError: an
        internal error to the gateway's callers)."""
        try:
            if not self.path.is_file():
                return None
            text = self.path.read_text()
        except OSError as error:
            raise StoreUnavailable(f"cannot read collection pointer {self.path}: "
                                   f"{error.strerror or error}") from error
        try:
            return Pointer.from_json(json.loads(text))
        except ValueError as error:
            raise StoreError(f"unreadable collection pointer {self.path}: {error}") from error

    def write(self, pointer: Pointer) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.path, pointer.to_json())

    def drop(self, collection: str) -> None:
        if not valid_collection(collection):  # never a path out of data_dir, nor data_dir
            raise StoreError(f"refusing to delete {collection!r}: no collection name")
        path = self.settings.data_dir / collection
        try:
            remove_tree(path)
        except OSError as error:  # a read-only or failing volume: said, not passed over
            raise StoreError(f"could not delete collection {path}: {error}") from error


class ServerPointers(Pointers):
    def __init__(self, settings: IndexSettings, client: Any = None) -> None:
        from papersearch.index.server import connect

        super().__init__(settings)
        self.client = client if client is not None else connect(settings)

    def read(self) -> Pointer | None:
        from papersearch.index.server import errors

        with errors("read pointer"):
            aliases = self.client.get_aliases().aliases
            target = next((a.collection_name for a in aliases if a.alias_name == self.name), None)
            if target is None:
                return None
            metadata = self.client.get_collection(target).config.metadata or {}
        if METADATA_KEY not in metadata:
            raise StoreError(f"alias {self.name} -> {target} has no {METADATA_KEY} metadata")
        return Pointer.from_json(dict(metadata[METADATA_KEY]))

    def write(self, pointer: Pointer) -> None:
        from qdrant_client import models

        from papersearch.index.server import errors

        with errors("write pointer"):
            moving = any(a.alias_name == self.name for a in self.client.get_aliases().aliases)
            metadata = dict(self.client.get_collection(pointer.live).config.metadata or {})
            metadata[METADATA_KEY] = pointer.to_json()
            self.client.update_collection(pointer.live, metadata=metadata)
            create = models.CreateAliasOperation(create_alias=models.CreateAlias(
                collection_name=pointer.live, alias_name=self.name))
            delete = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(
                alias_name=self.name))
            self.client.update_collection_aliases(
                change_aliases_operations=[delete, create] if moving else [create])

    def drop(self, collection: str) -> None:
        from papersearch.index.server import errors

        with errors("drop collection"):
            self.client.delete_collection(collection)

    def close(self) -> None:
        self.client.close()


def pointers_for(settings: IndexSettings) -> Pointers:
    return ServerPointers(settings) if settings.backend == "server" else EdgePointers(settings)
