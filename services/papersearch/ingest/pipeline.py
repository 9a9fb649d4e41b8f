"""Read corpora, embed papers in batches, upsert them into the index: resumable and idempotent.

Point ids are UUIDv5 of the paper id, so a repeated run overwrites rather than duplicates. A run
killed half-way resumes: papers already stored as the corpus has them are skipped, those stored
otherwise written again (``update`` re-embeds them all), and each batch is written only after
it is fully encoded, so no paper is half-written.
Ctrl-C stops between engine calls: the batches written stay, a rerun does the rest.
With ``prune``, a run that read its corpora whole then deletes the stored papers none of them
holds (removed from a corpus, or a Daily Papers paper retitled: a new title is a new id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from tqdm import tqdm

from papersearch import interrupts
from papersearch.corpus.paper import Paper, point_id
from papersearch.corpus.readers import MAX_SKIPPED_KEPT, FirstCopy, Skipped, read_corpus
from papersearch.encoder.runtime import Encoder
from papersearch.index.store import Store
from papersearch.interrupts import Interrupted
from papersearch.retriever.retriever import Retriever

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PRUNED_NAMED = 100  # pruned papers the summary names; all are counted
_PRUNE_BATCH = 256  # papers per delete call


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
    pruned: int | None = None  # with prune: stored papers no corpus of the run holds, deleted
    pruned_ids: list[str] = field(default_factory=list)  # the first MAX_PRUNED_NAMED of them
    # corpora of the run that gave no paper, nor a repeat of one read before: "path: why"
    # (one among several had its papers pruned without a word: a file emptied by a failed copy)
    unread_corpora: list[str] = field(default_factory=list)

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
        return write_encoded(self, self.retriever, papers, dense)

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


def write_encoded(job: Checked, retriever: Retriever, papers: Sequence[Paper],
                  dense: np.ndarray) -> int:
    """Write encoded papers one engine write (``index.upsert_batch_size`` papers) at a time,
    each through ``checked_write``: when one fails, the writes before it are counted (a batch
    larger than one write, written whole, was counted only when all of it was)."""
    size = retriever.store.settings.upsert_batch_size
    return sum(checked_write(job, partial(retriever.upsert, papers[start:start + size],
                                          dense[start:start + size]))
               for start in range(0, len(papers), size))


def unstored(store: Store, papers: Sequence[Paper]) -> tuple[list[Paper], int]:
    """The papers the index does not hold as they are here, in their order, and how many of
    those it holds otherwise: absent (what a resumed run still has to write) or stored with
    another title, abstract, authors, date, categories or url (the corpus changed since; a
    rerun kept the old text and vectors before, unless --update rewrote every paper)."""
    stored = {paper.id: paper for paper in store.get([p.id for p in papers])}
    fresh = [p for p in papers if stored.get(p.id) != p]
    return fresh, sum(p.id in stored for p in fresh)


class PruneRefused(Exception):
    """``prune`` deleted nothing: the run cannot tell which stored papers its corpora lack.
    Its papers were ingested; ``summary`` says what it did."""

    def __init__(self, reason: str, summary: IngestSummary) -> None:
        super().__init__(reason)
        self.summary = summary


class Ingests(Protocol):
    """What ingest_paths drives: this module's Ingester, or ingest/distributed.RayIngester."""

    written: int
    changed: int

    def check(self) -> None: ...

    def ingest(self, papers: Iterable[Paper], *, update: bool = False, progress: bool = True
               ) -> tuple[int, int]: ...


def ingest_paths(
    paths: Sequence[Path], store: Store, ingester: Ingests, *, update: bool = False,
    progress: bool = True, prune: bool = False,
) -> IngestSummary:
    """Ingest each corpus path (any supported format) and summarise the run; with ``prune``,
    then delete the stored papers none of the paths holds (PruneRefused where that cannot be
    told).

    Ctrl-C raises ``Interrupted``, saying how many papers this run wrote (they stay).
    """
    summary = IngestSummary()
    try:
        read = _ingest_each(paths, ingester, summary, update=update, progress=progress)
        if prune:
            _prune(store, ingester, summary, read)
        summary.collection_size = store.count()
    except KeyboardInterrupt:
        pruned = "" if summary.pruned is None else f" and {summary.pruned:,} pruned"
        raise Interrupted(f"ingest: {ingester.written:,} papers written{pruned} by this run; "
                          f"{_again(update)}") from None
    except PruneRefused:
        summary.collection_size = store.count()
        raise
    except Exception:  # a failed write, an unreachable server: the error line says what
        log.warning(f"ingest stopped: {ingester.written:,} papers written by this run; "
                    f"{_again(update)}", extra={"written": ingester.written})
        raise
    return summary


def _again(update: bool) -> str:
    return ("run again to resume" if not update else "--update writes every paper: run again "
            "without it to add what is missing, or with it to update them all again")


def _ingest_each(
    paths: Sequence[Path], ingester: Ingests, summary: IngestSummary, *, update: bool,
    progress: bool,
) -> Mapping[str, FirstCopy]:
    """The paper ids read, with their first copies."""
    earlier: dict[str, FirstCopy] = {}  # a paper in two of the corpora is one paper: its first
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
        if stats.read == stats.duplicates == 0:
            why = f"{stats.skipped:,} records skipped" if stats.skipped else "the corpus is empty"
            summary.unread_corpora.append(f"{path}: {why}")
            log.warning("no paper read from a corpus", extra={"path": str(path), "why": why})
        log.info("ingested", extra={"path": str(path), "upserted": written, "present": present,
                                    "skipped": stats.skipped, "duplicates": stats.duplicates,
                                    "conflicts": stats.conflicts})
    return earlier


def _prune(store: Store, ingester: Ingests, summary: IngestSummary,
           read: Mapping[str, FirstCopy]) -> None:
    """Delete the stored papers whose ids are not in ``read``, in batches, with the ingester's
    check before each and after the last (as its writes: an embedder migration's swap stops
    it). Refused when the run read nothing (it would empty the index), a corpus gave no paper
    (an emptied file: its papers would go) or a record was skipped (a record it could not read
    may be a paper the index holds)."""
    if summary.read == 0:
        raise PruneRefused("--prune: not pruned: no paper was read, so every stored paper "
                           "would go", summary)
    if summary.unread_corpora:
        raise PruneRefused(
            f"--prune: not pruned: no paper was read from {summary.unread_corpora[0]}, so "
            "the papers the index holds from it would go; mend or leave out that corpus and "
            "run again", summary)
    if summary.skipped:
        raise PruneRefused(
            f"--prune: not pruned: {summary.skipped:,} records were skipped (skipped_records), "
            "and a record that could not be read may be a paper the index holds; mend or "
            "remove them and run again", summary)
    kept = {point_id(paper_id) for paper_id in read}
    stale = [pid for pid in store.execute(store.point_ids_program()) if pid not in kept]
    summary.pruned = 0
    for batch in _batches(stale, _PRUNE_BATCH):
        papers = store.execute(store.papers_program(batch))
        ingester.check()
        with interrupts.held():  # Ctrl-C meanwhile: after the count
            store.delete([p.id for p in papers])
            summary.pruned += len(papers)
            room = MAX_PRUNED_NAMED - len(summary.pruned_ids)
            summary.pruned_ids.extend(p.id for p in papers[:max(0, room)])
    ingester.check()  # a swap during the last delete: the run says so, as after a write
    log.info("pruned", extra={"pruned": summary.pruned, "paper_ids": summary.pruned_ids})


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
