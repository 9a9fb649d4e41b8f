"""One entry point for every corpus format: detect it, read papers once each, tally problems.

    corpus = read_corpus(Path("../shared/corpus/daily-papers"))
    for paper in corpus:
        ...
    corpus.stats     # ReadStats(read=..., skipped=..., duplicates=...)
    corpus.skipped   # [Skipped(source="file:line", reason=...), ...]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from papersearch.corpus.beir import CORPUS_FILE, read_beir
from papersearch.corpus.daily_papers import read_daily_papers
from papersearch.corpus.jsonl import bounded_lines, read_jsonl
from papersearch.corpus.paper import Duplicate, Paper, ReadResult, Skipped
from papersearch.paths import files_ending, shown

__all__ = [
    "CorpusFormat",
    "CorpusReader",
    "Duplicate",
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


_READERS: dict[CorpusFormat, Callable[[Path], Iterator[ReadResult]]] = {
    CorpusFormat.DAILY_PAPERS: read_daily_papers,
    CorpusFormat.BEIR: read_beir,
    CorpusFormat.JSONL: read_jsonl,
}


@dataclass(frozen=True, slots=True)
class ReadStats:
    """Outcome of one pass: papers yielded, records skipped, repeated papers dropped."""

    read: int = 0
    skipped: int = 0
    duplicates: int = 0


MAX_SKIPPED_KEPT = 100  # records kept for the summary; every one is logged and counted


class CorpusReader:
    """Iterating yields each paper once; ``stats`` is complete once it ends, and ``skipped``
    holds the first MAX_SKIPPED_KEPT skipped records (a file of bad lines is not held whole).

    Each iteration starts afresh, so a second pass re-reads the files and recounts.
    """

    def __init__(self, path: Path, corpus_format: CorpusFormat,
                 earlier: AbstractSet[str] = frozenset()) -> None:
        self.path = path
        self.format = corpus_format
        self.earlier = earlier  # ids read before, from other corpora of the same run
        self.skipped: list[Skipped] = []
        self.skips = 0
        self.duplicates = 0
        self._seen: set[str] = set()

    @property
    def ids(self) -> AbstractSet[str]:
        """The ids this reader yielded (complete once it ends)."""
        return self._seen

    @property
    def stats(self) -> ReadStats:
        return ReadStats(len(self._seen), self.skips, self.duplicates)

    def __iter__(self) -> Iterator[Paper]:
        self.skipped, self.skips, self.duplicates, self._seen = [], 0, 0, set()
        for result in _READERS[self.format](self.path):
            if isinstance(result, Skipped):
                self._skip(result)
            elif isinstance(result, Duplicate) or result.id in self._seen \
                    or result.id in self.earlier:
                self._duplicate(result)
            else:
                self._seen.add(result.id)
                yield result
        logger.info(
            "corpus read",
            extra={"path": str(self.path), "corpus_format": str(self.format)}
            | {f"papers_{key}": value for key, value in asdict(self.stats).items()},
        )

    def _skip(self, skipped: Skipped) -> None:
        self.skips += 1
        if len(self.skipped) < MAX_SKIPPED_KEPT:
            self.skipped.append(skipped)
        logger.warning(
            "skipped corpus record", extra={"source": skipped.source, "reason": skipped.reason}
        )

    def _duplicate(self, result: Paper | Duplicate) -> None:
        self.duplicates += 1
        paper_id = result.paper_id if isinstance(result, Duplicate) else result.id
        logger.debug("duplicate paper", extra={"paper_id": paper_id, "path": str(self.path)})


def read_corpus(path: Path, corpus_format: CorpusFormat | None = None,
                earlier: AbstractSet[str] = frozenset()) -> CorpusReader:
    """Open a corpus for reading; its format is detected from the path unless given. A paper
    whose id is in ``earlier`` (read from another corpus before) is a duplicate: the first
    copy is kept, across corpora as within one."""
    return CorpusReader(path, corpus_format or detect_format(path), earlier)


def detect_format(path: Path) -> CorpusFormat:
    """Which reader suits the path.

    A directory holding ``corpus.jsonl`` is BEIR, one of ``.txt`` pages Daily Papers; a ``.jsonl``
    file is BEIR when its records have ``_id`` and no ``id``, JSON Lines papers otherwise. A
    folder of pages that also holds ``.jsonl`` files is refused, either way round: it is read
    in one format, and the other files' papers would be passed over without a word.
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
        return CorpusFormat.DAILY_PAPERS
    if path.suffix.lower() == ".txt":
        return CorpusFormat.DAILY_PAPERS
    if path.suffix.lower() == ".jsonl":
        first = _first_object(path)  # a database export may carry its own _id beside ours
        return CorpusFormat.BEIR if "_id" in first and "id" not in first else CorpusFormat.JSONL
    raise ValueError(f"cannot tell the corpus format of {path}: expected a .jsonl file (JSON "
                     "Lines papers, or BEIR), a .txt Daily Papers page, a folder of such pages, "
                     "or a BEIR folder holding corpus.jsonl (give .jsonl files in a folder one "
                     "by one)")


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
