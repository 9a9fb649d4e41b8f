"""What an ingest reports when it cannot finish, and how much of a bad corpus it keeps (fast:
no model, no index)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import MAX_SKIPPED_KEPT, read_corpus
from papersearch.index.errors import StoreError
from papersearch.index.store import Store
from papersearch.ingest.pipeline import ingest_paths


class FailingIngester:
    """Writes its first batch of three, then the store fails (a full disk, say)."""

    written = 0

    def ingest(self, papers: Iterable[Paper], *, update: bool = False,
               progress: bool = True) -> tuple[int, int]:
        for _ in papers:
            if self.written == 3:
                raise StoreError("disk full")
            self.written += 1
        return self.written, 0


def test_a_failed_ingest_says_what_it_wrote(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    corpus = tmp_path / "papers.jsonl"
    corpus.write_text("".join(f'{{"id": "{n}", "title": "Paper {n}"}}\n' for n in range(5)))
    with caplog.at_level(logging.WARNING, logger="papersearch.ingest.pipeline"), \
            pytest.raises(StoreError, match="disk full"):
        ingest_paths([corpus], cast(Store, None), FailingIngester(), progress=False)
    assert [r.getMessage() for r in caplog.records] == [
        "ingest stopped: 3 papers written by this run; run again to resume"]


def test_a_corpus_of_bad_lines_keeps_the_first_and_counts_them_all(tmp_path: Path) -> None:
    corpus = tmp_path / "papers.jsonl"
    corpus.write_text("{broken\n" * (MAX_SKIPPED_KEPT + 50) + '{"id": "1", "title": "One"}\n')
    reader = read_corpus(corpus)
    assert [p.id for p in reader] == ["1"]
    assert reader.stats.skipped == MAX_SKIPPED_KEPT + 50
    kept: list[Any] = reader.skipped
    assert len(kept) == MAX_SKIPPED_KEPT and kept[0].source == f"{corpus}:1"
