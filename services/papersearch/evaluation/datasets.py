"""Evaluation datasets: BEIR folders with human judgments, and a known-item set built from a
paper corpus (query = a paper's title, target = that paper, index built from abstracts only)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from papersearch.corpus.beir import CORPUS_FILE
from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import CorpusFormat, CorpusReader, detect_format, read_corpus
from papersearch.evaluation.beir import QRELS_DIR, QUERIES_FILE, load_qrels, read_queries
from papersearch.settings import SearchSettings

log = logging.getLogger(__name__)

SKIPPED_SHOWN = 5  # skipped records eval and tune list; all are counted


@dataclass(frozen=True, slots=True)
class EvalDataset:
    name: str
    papers: Callable[[], Iterable[Paper]]
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]
    # its corpus's reader: what the last read of it (papers(), or the known-item set's
    # making) read, skipped and dropped; a skipped paper vanished from the metrics unsaid
    corpus: CorpusReader
    # a query's length as written, where cleaning shortened it (check_servable)
    written_chars: Mapping[str, int] = field(default_factory=dict)


def load_dataset(path: Path) -> EvalDataset:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) or, for any other corpus,
    its known-item set."""
    beir = detect_format(path) == CorpusFormat.BEIR
    if beir and path.is_file() and (path.name == CORPUS_FILE
                                    or (path.parent / QUERIES_FILE).is_file()):
        # a judged set's corpus.jsonl: its titles were taken as known items
        raise ValueError(f"{path} is a BEIR set's file: give its folder "
                         f"({path.parent}), which holds {QUERIES_FILE} and {QRELS_DIR}/")
    if beir and (path / QUERIES_FILE).is_file():
        read = read_queries(path)
        queries = {query_id: text for query_id, (text, _) in read.items()}
        corpus = read_corpus(path)  # read one pass at a time: each pass recounts
        return EvalDataset(
            name=path.resolve().name,
            papers=lambda: corpus,
            queries=queries,
            qrels=_of_known_queries(load_qrels(path), queries, path),
            corpus=corpus,
            written_chars={query_id: written for query_id, (text, written) in read.items()
                           if written != len(text)},
        )
    if (path / QRELS_DIR).is_dir():  # judged, but its queries are not where BEIR puts them
        raise FileNotFoundError(f"{path} has {QRELS_DIR}/ but no {QUERIES_FILE}: a judged "
                                "set needs its queries")
    return known_item(path)


def check_servable(dataset: EvalDataset, limits: SearchSettings) -> None:
    """ValueError naming the queries the service refuses (longer than
    search.max_query_chars as written, before the cleaning, or once cleaned: NFC lengthens
    some): they were measured here, and a user sending them gets INVALID_ARGUMENT."""
    written = ((q, max(dataset.written_chars.get(q, 0), len(text)))
               for q, text in dataset.queries.items())
    over = [(q, chars) for q, chars in written if chars > limits.max_query_chars]
    if over:
        named = ", ".join(f"{q!r} ({chars} characters)" for q, chars in over[:5])
        raise ValueError(
            f"{dataset.name}: {len(over)} of its queries are longer than "
            f"search.max_query_chars={limits.max_query_chars}, which the service refuses: "
            f"{named}{', ...' if len(over) > 5 else ''}; raise the limit "
            "(PAPERSEARCH_SEARCH__MAX_QUERY_CHARS) to measure them as served")


def judged_queries(dataset: EvalDataset) -> int:
    """How many of the dataset's queries are scored: those with a relevant judgment (the
    others are run, for the cost figures, but no metric can score them)."""
    return sum(1 for q in dataset.queries if any(s > 0 for s in dataset.qrels.get(q, {}).values()))


def _of_known_queries(qrels: dict[str, dict[str, int]], queries: Mapping[str, str], path: Path
                      ) -> dict[str, dict[str, int]]:
    """The judgments of queries in queries.jsonl. Judgments of other ids would score 0 each
    (their queries never run); none known at all is an id mismatch between the two files."""
    if not queries:
        raise ValueError(f"{path}: {QUERIES_FILE} holds no queries")
    unknown = sorted(q for q in qrels if q not in queries)
    if unknown and len(unknown) == len(qrels):
        raise ValueError(f"{path}: none of the {len(qrels)} query ids judged in {QRELS_DIR}/ is "
                         f"in {QUERIES_FILE} (e.g. {unknown[0]!r} against "
                         f"{next(iter(queries))!r}): the two files must use the same ids")
    if unknown:
        log.warning("judgments of unknown queries left out", extra={
            "dataset": str(path), "queries": len(unknown), "first": unknown[:5]})
    known = {q: judgments for q, judgments in qrels.items() if q in queries}
    if not any(score > 0 for judgments in known.values() for score in judgments.values()):
        # every metric would be 0 (a header-only file, scores all 0): nothing could gain
        raise ValueError(f"{path}: no query has a relevant judgment (score > 0) in "
                         f"{QRELS_DIR}/, so no ranking can be scored")
    return known


def check_judged_documents(dataset: EvalDataset, paper_ids: set[str]) -> None:
    """Documents judged relevant that the corpus lacks (ids written otherwise in the two
    files, or records the reader skipped) score as misses in every metric: none there at all
    is an error (every figure would be 0), some a warning with their count. A corpus that
    yielded no paper is said as such, not blamed on the ids."""
    if not paper_ids:
        raise ValueError(f"{dataset.name}: its corpus yielded no papers "
                         f"({_skips(dataset.corpus) or 'it holds no records'})")
    judged = {doc for judgments in dataset.qrels.values()
              for doc, score in judgments.items() if score > 0}
    missing = sorted(judged - paper_ids)
    if missing and len(missing) == len(judged):
        skips = _skips(dataset.corpus)
        raise ValueError(f"{dataset.name}: none of the {len(judged)} documents judged relevant "
                         f"is in its corpus (e.g. {missing[0]!r} against {min(paper_ids)!r}): "
                         f"the qrels and {CORPUS_FILE} must use the same ids"
                         + (f" ({skips})" if skips else ""))
    if missing:
        log.warning("documents judged relevant are not in the corpus: they score as misses",
                    extra={"dataset": dataset.name, "documents": len(missing),
                           "of": len(judged), "first": missing[:5]})


def corpus_counts(dataset: EvalDataset) -> dict[str, int]:
    """What its corpus's last read gave: papers read, records skipped, repeats dropped and of
    those, conflicts (a copy under an id read before that differs from it: readers.ReadStats)."""
    return asdict(dataset.corpus.stats)


def skipped_records(dataset: EvalDataset, shown: int = SKIPPED_SHOWN) -> list[str]:
    """The records its corpus's last read skipped, and the differing repeats of an id it passed
    over ("file:line: reason"): the first ``shown``, then how many more."""
    stats = dataset.corpus.stats
    lines = [f"{s.source}: {s.reason}" for s in dataset.corpus.skipped[:shown]]
    more = stats.skipped + stats.conflicts - len(lines)
    return lines + ([f"... and {more:,} more"] if more > 0 else [])


def _skips(corpus: CorpusReader) -> str:
    """How many records a read skipped, and the first with its reason; "" where none."""
    if not corpus.skipped:
        return ""
    first, stats = corpus.skipped[0], corpus.stats
    return (f"{stats.skipped + stats.conflicts:,} records skipped; the first: {first.source}: "
            f"{first.reason}")


def known_item(path: Path) -> EvalDataset:
    corpus = read_corpus(path)
    papers = [p for p in corpus if p.title.strip() and p.abstract.strip()]
    if not papers:  # was "an empty corpus has no mean length", after the models loaded
        skips = _skips(corpus)
        raise ValueError(f"{path}: no paper with both a title and an abstract, so no "
                         "known-item query (title -> its abstract) to run"
                         + (f" ({skips})" if skips else ""))
    return EvalDataset(
        name=f"{path.resolve().name}-known-item",
        papers=lambda: [replace(p, title="") for p in papers],
        queries={p.id: p.title for p in papers},
        qrels={p.id: {p.id: 1} for p in papers},
        corpus=corpus,
    )
