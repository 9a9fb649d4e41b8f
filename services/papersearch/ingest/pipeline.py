"""Read corpora, embed papers in batches, upsert them into the index: resumable and idempotent.

Point ids are UUIDv5 of the paper id, so a repeated run overwrites rather than duplicates. A run
killed half-way resumes: papers already stored as the corpus has them are skipped, those stored
otherwise written again (``update`` re-embeds them all), and each batch is written only after
it is fully encoded, so no paper is half-written.
Ctrl-C stops between engine calls: the batches written stay, a rerun does the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from papersearch import interrupts
from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import MAX_SKIPPED_KEPT, Skipped, read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.index.store import Store
from papersearch.interrupts import Interrupted
from papersearch.retriever.retriever import Retriever

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestSummary:
    read: int = 0
    skipped: int = 0
    duplicates: int = 0
    conflicts: int = 0  # of the duplicates, other papers under an id read before: dropped
    already_present: int = 0
    upserted: int = 0
    # of the upserted, papers stored before with other content; None with --update, which
    # writes every paper without comparing (0 read as "none changed")
    changed: int | None = 0
    collection_size: int = 0
    skipped_records: list[Skipped] = field(default_factory=list)  # the first MAX_SKIPPED_KEPT

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["skipped_records"] = [f"{s.source}: {s.reason}" for s in self.skipped_records]
        return data


class Ingester:
    """Encodes and upserts papers into an open store, one batch at a time."""

    def __init__(self, store: Store, encoder: Encoder, batch_size: int = 64,
                 check: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.encoder = encoder
        self.retriever = Retriever(store)
        self.batch_size = batch_size
        self.check = check  # before and after each write: raises to stop (LiveCheck)
        self.written = 0  # papers written by this Ingester, all calls together
        self.changed = 0  # of them, papers stored before with other content
        store.ensure_collection(encoder.dim, encoder.sha256)

    def upsert(self, papers: Sequence[Paper]) -> int:
        """Embed and write ``papers`` (dense + BM25); the batch is encoded before any write."""
        if not papers:
            return 0
        dense = self.encoder.encode_documents([p.text for p in papers])
        return checked_write(self, partial(self.retriever.upsert, papers, dense))

    def ingest(
        self, papers: Iterable[Paper], *, update: bool = False, progress: bool = True
    ) -> tuple[int, int]:
        """Write every paper not yet stored (all of them with ``update``); (written, present)."""
        written = present = 0
        with tqdm(desc="ingest", unit="paper", disable=None if progress else True) as bar:
            for batch in _batches(papers, self.batch_size):
                fresh, changed = (batch, 0) if update else unstored(self.store, batch)
                present += len(batch) - len(fresh)
                self.changed += changed
                written += self.upsert(fresh)
                bar.set_postfix(written=written, present=present, refresh=False)
                bar.update(len(batch))  # read and done: written or already there
        self.store.optimize()
        return written, present


class Checked(Protocol):
    """A write job: its check (LiveCheck: raises once the index moved) and its count."""

    written: int

    def check(self) -> None: ...


def checked_write(job: Checked, write: Callable[[], int]) -> int:
    """``write`` between two calls of the job's ``check``: a batch written while the index
    moved (an embedder migration's swap) stops the job too, and the rerun writes it again.
    Counted in ``job.written`` before the second check, so a stop there still counts it, and
    Ctrl-C during the write is held until it is counted."""
    job.check()
    with interrupts.held():  # Ctrl-C meanwhile: after the count
        written = write()
        job.written += written
    job.check()
    return written


def unstored(store: Store, papers: Sequence[Paper]) -> tuple[list[Paper], int]:
    """The papers the index does not hold as they are here, in their order, and how many of
    those it holds otherwise: absent (what a resumed run still has to write) or stored with
    another title, abstract, authors, date, categories or url (the corpus changed since; a
    rerun kept the old text and vectors before, unless --update rewrote every paper)."""
    stored = {paper.id: paper for paper in store.get([p.id for p in papers])}
    fresh = [p for p in papers if stored.get(p.id) != p]
    return fresh, sum(p.id in stored for p in fresh)


class Ingests(Protocol):
    """What ingest_paths drives: this module's Ingester, or ingest/distributed.RayIngester."""

    written: int
    changed: int

    def ingest(self, papers: Iterable[Paper], *, update: bool = False, progress: bool = True
               ) -> tuple[int, int]: ...


def ingest_paths(
    paths: Sequence[Path], store: Store, ingester: Ingests, *, update: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Ingest each corpus path (any supported format) and summarise the run.

    Ctrl-C raises ``Interrupted``, saying how many papers this run wrote (they stay).
    """
    summary = IngestSummary()
    try:
        _ingest_each(paths, ingester, summary, update=update, progress=progress)
    except KeyboardInterrupt:
        raise Interrupted(f"ingest: {ingester.written:,} papers written by this run; "
                          f"{_again(update)}") from None
    except Exception:  # a failed write, an unreachable server: the error line says what
        log.warning(f"ingest stopped: {ingester.written:,} papers written by this run; "
                    f"{_again(update)}", extra={"written": ingester.written})
        raise
    summary.collection_size = store.count()
    return summary


def _again(update: bool) -> str:
    return ("run again to resume" if not update else "--update writes every paper: run again "
            "without it to add what is missing, or with it to update them all again")


def _ingest_each(
    paths: Sequence[Path], ingester: Ingests, summary: IngestSummary, *, update: bool,
    progress: bool,
) -> None:
    earlier: dict[str, int] = {}  # a paper in two of the corpora is one paper: its first copy
    for path in paths:
        reader = read_corpus(path, earlier=earlier)
        written, present = ingester.ingest(reader, update=update, progress=progress)
        earlier |= reader.ids
        stats = reader.stats
        summary.read += stats.read
        summary.skipped += stats.skipped
        summary.duplicates += stats.duplicates
        summary.conflicts += stats.conflicts
        room = MAX_SKIPPED_KEPT - len(summary.skipped_records)  # the first of the run's
        summary.skipped_records.extend(reader.skipped[:max(0, room)])
        summary.upserted += written
        summary.already_present += present
        summary.changed = None if update else ingester.changed
        log.info("ingested", extra={"path": str(path), "upserted": written, "present": present,
                                    "skipped": stats.skipped, "duplicates": stats.duplicates,
                                    "conflicts": stats.conflicts})


def _batches(papers: Iterable[Paper], size: int) -> Iterator[list[Paper]]:
    iterator = iter(papers)
    while batch := list(islice(iterator, size)):
        yield batch
