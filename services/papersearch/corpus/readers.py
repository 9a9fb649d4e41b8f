"""One entry point for every corpus format: detect it, read papers once each, tally problems.

    corpus = read_corpus(Path("../shared/corpus/daily-papers"))
    for paper in corpus:
        ...
    corpus.stats     # ReadStats(read=..., skipped=..., duplicates=..., conflicts=...)
    corpus.skipped   # [Skipped(source="file:line", reason=...), ...]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path

from papersearch.corpus.beir import CORPUS_FILE, read_beir
from papersearch.corpus.daily_papers import read_daily_papers
from papersearch.corpus.jsonl import ID_KEYS, bounded_lines, read_jsonl
from papersearch.corpus.paper import Duplicate, Paper, ReadResult, Skipped, quoted
from papersearch.paths import files_ending, shown

__all__ = [
    "CorpusFormat",
    "CorpusReader",
    "Duplicate",
    "FirstCopy",
    "ReadStats",
    "Skipped",
    "detect_format",
    "read_corpus",
]

logger = logging.getLogger(__name__)


class CorpusFormat(StrEnum):
    """The formats :func:`read_corpus` reads."""

    DAILY_PAPERS = "daily-papers"
    BEIR = "beir"
    JSONL = "jsonl"


Located = tuple[str, ReadResult]  # a reader's result after its "file:line"


def _located_daily_papers(path: Path) -> Iterator[Located]:
    """The Daily Papers reader's results, each paper placed at ``path``: that reader yields an
    id once (a repeat comes out as a Duplicate, with its own place), so its papers conflict
    only with another corpus's, and which page a paper's copy came from is not known here."""
    for result in read_daily_papers(path):
        yield (str(path) if isinstance(result, Paper) else result.source), result


_READERS: dict[CorpusFormat, Callable[[Path], Iterator[Located]]] = {
    CorpusFormat.DAILY_PAPERS: _located_daily_papers,
    CorpusFormat.BEIR: read_beir,
    CorpusFormat.JSONL: read_jsonl,
}


@dataclass(frozen=True, slots=True)
class ReadStats:
    """Outcome of one pass: papers yielded, records skipped, repeated papers dropped, and of
    those, the conflicts: a copy under an id read before that differs from it in a stored field
    (title, abstract, date, authors, categories or url; a Daily Papers listing's date aside)."""

    read: int = 0
    skipped: int = 0
    duplicates: int = 0
    conflicts: int = 0


MAX_SKIPPED_KEPT = 100  # records kept for the summary; every one is logged and counted
CONFLICTS_NAMED = 5  # ids a conflict warning names; all are counted


@dataclass(frozen=True, slots=True)
class FirstCopy:
    """An id's first copy in a run: where it was read ("file:line", or a Daily Papers corpus's
    path) and what tells another copy apart (``hash`` is salted: within one process only).

    A Daily Papers date is the day a page listed the paper, not a fact about it: a paper listed
    in two folders of one ingest is the same paper, whatever the dates (in one folder the
    reader merges the listings, keeping the first date)."""

    source: str
    text: int  # title and abstract
    metadata: int  # authors, categories and url
    published: date | None
    listed: bool  # read from Daily Papers pages: ``published`` is a listing's day

    @classmethod
    def of(cls, paper: Paper, source: str, listed: bool) -> FirstCopy:
        return cls(source, hash((paper.title, paper.abstract)),
                   hash((paper.authors, paper.categories, paper.url)), paper.published, listed)

    def differs(self, paper: Paper, listed: bool) -> str | None:
        """How ``paper`` (``listed``: from Daily Papers pages) differs from this copy, said for
        a conflict; None: the same paper."""
        other = FirstCopy.of(paper, self.source, listed)
        if other.text != self.text:
            return "another title or abstract"
        if other.metadata != self.metadata or (
                other.published != self.published and not (listed or self.listed)):
            return "the same title and abstract but another date, authors, categories or url"
        return None


class CorpusReader:
    """Iterating yields each paper once; ``stats`` is complete once it ends, and ``skipped``
    holds the first MAX_SKIPPED_KEPT skipped records (a file of bad lines is not held whole)
    and conflicts: a copy under an id read before that differs from it, passed over (counted
    in ``duplicates`` and ``conflicts``, not ``skipped``), said with where its id was read
    first and how it differs.

    Each iteration starts afresh, so a second pass re-reads the files and recounts.
    """

    def __init__(self, path: Path, corpus_format: CorpusFormat,
                 earlier: Mapping[str, FirstCopy] | None = None) -> None:
        self.path = path
        self.format = corpus_format
        # ids read before, from other corpora of the same run
        self.earlier: Mapping[str, FirstCopy] = earlier or {}
        self.skipped: list[Skipped] = []
        self.skips = 0
        self.duplicates = 0
        self.conflicted: list[str] = []  # the first CONFLICTS_NAMED conflicts' ids
        self.conflicts = 0
        self._seen: dict[str, FirstCopy] = {}

    @property
    def ids(self) -> Mapping[str, FirstCopy]:
        """The ids this reader yielded, with their copies (complete once it ends)."""
        return self._seen

    @property
    def stats(self) -> ReadStats:
        return ReadStats(len(self._seen), self.skips, self.duplicates, self.conflicts)

    def __iter__(self) -> Iterator[Paper]:
        self.skipped, self.skips, self.duplicates = [], 0, 0
        self._seen = {}
        self.conflicted, self.conflicts = [], 0
        listed = self.format is CorpusFormat.DAILY_PAPERS
        for source, result in _READERS[self.format](self.path):
            if isinstance(result, Skipped):
                self._skip(result)
            elif isinstance(result, Duplicate):
                self._duplicate(result.paper_id, source)
            elif (first := self._seen.get(result.id, self.earlier.get(result.id))) is not None:
                self._duplicate(result.id, source)
                if (difference := first.differs(result, listed)) is not None:
                    self._conflict(result.id, source, first.source, difference)
            else:
                self._seen[result.id] = FirstCopy.of(result, source, listed)
                yield result
        if self.conflicts:
            logger.warning(
                "papers under an id read before, differing from its first copy: dropped, each "
                "listed among the skipped records with where its id was read first (the "
                "first copy under an id is kept; ids are one namespace across the corpora of "
                "one ingest: give other papers ids of their own, and a correction in place of "
                "the copy it corrects)",
                extra={"path": str(self.path), "conflicts": self.conflicts,
                       "paper_ids": self.conflicted})
        logger.info(
            "corpus read",
            extra={"path": str(self.path), "corpus_format": str(self.format)}
            | {f"papers_{key}": value for key, value in asdict(self.stats).items()},
        )

    def _skip(self, skipped: Skipped) -> None:
        self.skips += 1
        self._keep(skipped)
        logger.warning(
            "skipped corpus record", extra={"source": skipped.source, "reason": skipped.reason}
        )

    def _keep(self, skipped: Skipped) -> None:
        if len(self.skipped) < MAX_SKIPPED_KEPT:
            self.skipped.append(skipped)

    def _duplicate(self, paper_id: str, source: str) -> None:
        self.duplicates += 1
        logger.debug("duplicate paper", extra={"paper_id": paper_id, "source": source})

    def _conflict(self, paper_id: str, source: str, first: str, difference: str) -> None:
        """Count the conflict and list it with both places: a file that appends corrections
        had them passed over with no line named (the first copy is kept, as in the README)."""
        self.conflicts += 1
        if len(self.conflicted) < CONFLICTS_NAMED:
            self.conflicted.append(paper_id)
        self._keep(Skipped(source, f"id {quoted(paper_id)} already read at {first} with "
                                   f"{difference}: this one is skipped, the first kept"))


def read_corpus(path: Path, corpus_format: CorpusFormat | None = None,
                earlier: Mapping[str, FirstCopy] | None = None) -> CorpusReader:
    """Open a corpus for reading; its format is detected from the path unless given. A paper
    whose id is in ``earlier`` (read from another corpus before) is a duplicate: the first
    copy is kept, across corpora as within one."""
    return CorpusReader(path, corpus_format or detect_format(path), earlier)


def detect_format(path: Path) -> CorpusFormat:
    """Which reader suits the path.

    A directory holding ``corpus.jsonl`` is BEIR, one of ``.txt`` pages Daily Papers; a ``.jsonl``
    file is BEIR when its first record is BEIR's (:func:`_is_beir`), JSON Lines papers otherwise. A
    folder of pages that also holds ``.jsonl`` files is refused, either way round: it is read
    in one format, and the other files' papers would be passed over without a word; so is one
    with subfolders of pages (not hidden ones: a notebook's checkpoints), which are not read.
    """
    if not path.exists():
        where = shown(path, ": paths are relative to the current directory")
        raise FileNotFoundError(f"no such corpus file or folder: {where}")
    if path.is_dir() and (path / CORPUS_FILE).is_file():
        pages = [p.name for p in files_ending(path, ".txt")]
        if pages:  # the BEIR reader reads corpus.jsonl only: the pages would go unread
            raise ValueError(f"{path} holds a BEIR {CORPUS_FILE} and Daily Papers pages "
                             f"({_few(pages)}): a folder is read in one format; give the pages "
                             "a folder of their own")
        return CorpusFormat.BEIR
    if path.is_dir() and files_ending(path, ".txt"):
        others = [p.name for p in files_ending(path, ".jsonl")]
        if others:
            raise ValueError(f"{path} holds Daily Papers pages (.txt) and JSON Lines files "
                             f"({_few(others)}): a folder is read in one format; give the "
                             ".jsonl files as corpus paths of their own")
        nested = [sub.name for sub in sorted(path.iterdir()) if sub.is_dir()
                  and not sub.name.startswith(".") and _holds_pages(sub)]
        if nested:  # their pages would go unread (and pruned, with --prune)
            raise ValueError(f"{path} holds Daily Papers pages and subfolders of pages "
                             f"({_few(nested)}): a folder's own pages are read, not its "
                             "subfolders'; give each folder as a corpus path of its own")
        return CorpusFormat.DAILY_PAPERS
    if path.suffix.lower() == ".txt":
        return CorpusFormat.DAILY_PAPERS
    if path.suffix.lower() == ".jsonl":
        first = _first_object(path)
        if not _is_beir(first):
            return CorpusFormat.JSONL
        if (path.name != CORPUS_FILE and "title" not in first
                and (path.parent / CORPUS_FILE).is_file()):
            # a BEIR set's queries.jsonl (a tab-completion away; a BEIR paper always has a
            # title, a query never): its queries were indexed as title-less papers
            raise ValueError(f"{path} holds queries of the BEIR set beside it (_id and text, "
                             "no title), not papers: give the set's folder, or its "
                             f"{CORPUS_FILE}")
        return CorpusFormat.BEIR
    raise ValueError(f"cannot tell the corpus format of {path}: expected a .jsonl file (JSON "
                     "Lines papers, or BEIR), a .txt Daily Papers page, a folder of such pages, "
                     "or a BEIR folder holding corpus.jsonl (give .jsonl files in a folder one "
                     "by one)")


def _is_beir(record: Mapping[str, object]) -> bool:
    """Whether a record is BEIR's: ``_id`` its only id, and no ``abstract`` (BEIR's is
    ``text``). A database export may carry its own ``_id`` beside a paper's ``id`` or
    ``paper_id`` (the API's): read as BEIR, its ids were the database's and every abstract
    was lost without a word; one with ``_id`` and an abstract but no id of ours is refused
    line by line ("missing or empty 'id'") rather than read without its abstracts."""
    return "_id" in record and not record.keys() & {*ID_KEYS, "abstract"}


def _holds_pages(folder: Path) -> bool:
    """Whether ``folder`` holds ``.txt`` files; False where it cannot be listed."""
    try:
        return bool(files_ending(folder, ".txt"))
    except OSError:
        return False


def _few(names: list[str]) -> str:
    """The first three of ``names``, and "..." where there are more."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _first_object(path: Path) -> dict[str, object]:
    """The first line of a JSON Lines file that parses as an object; {} when there is none."""
    with path.open("rb") as handle:
        for line in bounded_lines(handle):
            if line is None:
                continue
            try:  # decoded as the readers decode a line (corpus/jsonl.py)
                record = json.loads(line.decode("utf-8-sig"))
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict):
                return record
    return {}
