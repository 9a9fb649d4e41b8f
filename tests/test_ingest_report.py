"""What an ingest reports when it cannot finish, and how much of a bad corpus it keeps (fast:
no model, no index)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from papersearch.corpus.paper import Paper
from papersearch.corpus.readers import MAX_SKIPPED_KEPT, read_corpus
from papersearch.index.errors import StoreError
from papersearch.index.store import Store
from papersearch.ingest.pipeline import checked_write, ingest_paths


class FailingIngester:
    """Writes its first batch of three, then the store fails (a full disk, say)."""

    written = 0
    changed = 0

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
    # its own records only: a thread another test left (Ray Data's metrics poller) logs too
    assert [r.getMessage() for r in caplog.records
            if r.name == "papersearch.ingest.pipeline"] == [
        "ingest stopped: 3 papers written by this run; run again to resume"]


def test_a_corpus_of_bad_lines_keeps_the_first_and_counts_them_all(tmp_path: Path) -> None:
    corpus = tmp_path / "papers.jsonl"
    corpus.write_text("{broken\n" * (MAX_SKIPPED_KEPT + 50) + '{"id": "1", "title": "One"}\n')
    reader = read_corpus(corpus)
    assert [p.id for p in reader] == ["1"]
    assert reader.stats.skipped == MAX_SKIPPED_KEPT + 50
    kept: list[Any] = reader.skipped
    assert len(kept) == MAX_SKIPPED_KEPT and kept[0].source == f"{corpus}:1"


class Job:
    written = 0

    def check(self) -> None:
        pass


def test_ctrl_c_during_a_write_stops_after_it_is_counted() -> None:
    """SIGINT lands as the engine's write returns: the batch was stored but not counted, and
    "N papers written by this run" said fewer than the index held."""
    job = Job()

    def write() -> int:
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once: inside the write
        return 5

    with pytest.raises(KeyboardInterrupt):
        checked_write(job, write)
    assert job.written == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_during_a_write_that_then_fails_is_still_an_interrupt() -> None:
    def write() -> int:
        os.kill(os.getpid(), signal.SIGINT)
        raise OSError("write failed")

    with pytest.raises(KeyboardInterrupt) as stopped:
        checked_write(Job(), write)
    assert isinstance(stopped.value.__cause__, OSError)  # exit 130, the failure kept as cause
