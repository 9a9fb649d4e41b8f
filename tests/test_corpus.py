"""Corpus readers: Daily Papers pages, JSON Lines, BEIR, and the detecting facade."""

from __future__ import annotations

import io
import json
import logging
import textwrap
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from papersearch.corpus.beir import read_beir
from papersearch.corpus.daily_papers import CHROME, paper_id, read_daily_papers
from papersearch.corpus.jsonl import MAX_LINE_BYTES, bounded_lines, read_jsonl
from papersearch.corpus.paper import Duplicate, Paper, ReadResult, Skipped
from papersearch.corpus.readers import CorpusFormat, ReadStats, detect_format, read_corpus
from papersearch.ingest.pipeline import ingest_paths

SHARED = Path(__file__).parents[1] / ".." / "shared"

HEADER = """new

Get trending papers in your email inbox!

Subscribe

Daily Papers

byAK and the research community

Aug 6

"""
ABSTRACT_A = "We propose Alpha. It beats every baseline on five benchmarks by a wide margin."
ABSTRACT_B = "Beta is a dataset of things. We describe how it was collected and cleaned."


def unlocated(located: Iterable[tuple[str, ReadResult]]) -> list[ReadResult]:
    """A reader's results without the "file:line" each comes after."""
    return [result for _, result in located]


def papers(results: list[ReadResult]) -> list[Paper]:
    return [r for r in results if isinstance(r, Paper)]


def skipped(results: list[ReadResult]) -> list[Skipped]:
    return [r for r in results if isinstance(r, Skipped)]


def page(*entries: tuple[str, str]) -> str:
    """A page in the blank-line layout: header, then title and abstract paragraphs."""
    return HEADER + "\n\n".join(f"{title}\n\n{abstract}" for title, abstract in entries)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# Daily Papers


def test_daily_page_drops_chrome_and_pairs_titles(tmp_path: Path) -> None:
    write(tmp_path, "000.txt", page(("Alpha: A Model", ABSTRACT_A), ("Beta Set", ABSTRACT_B)))
    found = papers(list(read_daily_papers(tmp_path)))
    assert [(p.title, p.abstract) for p in found] == [
        ("Alpha: A Model", ABSTRACT_A),
        ("Beta Set", ABSTRACT_B),
    ]
    assert found[0].id == paper_id("Alpha: A Model") and found[0].id.startswith("dp-")
    assert found[0].published is None  # "Aug 6" names no year


def test_daily_page_without_blank_lines_and_glued_subscribe(tmp_path: Path) -> None:
    text = (
        "Get trending papers in your email inbox once a day!\n"
        "Get trending papers in your email inbox!\n"
        f"SubscribeAlpha: A Model\n{ABSTRACT_A}\nBeta Set\n{ABSTRACT_B}\n"
    )
    write(tmp_path, "000.txt", text)
    assert [p.title for p in papers(list(read_daily_papers(tmp_path)))] == [
        "Alpha: A Model",
        "Beta Set",
    ]


def test_a_folders_pages_are_found_whatever_the_case_of_their_suffix(tmp_path: Path) -> None:
    """A folder's "b.TXT" was passed over without a word (a folder was globbed for "*.txt"),
    though the same file given by name was read; a folder named like a page is no page."""
    write(tmp_path / "pages", "a.txt", page(("Alpha: A Model", ABSTRACT_A)))
    write(tmp_path / "pages", "b.TXT", page(("Beta Set", ABSTRACT_B)))
    (tmp_path / "pages" / "old.txt").mkdir()
    assert [p.title for p in papers(list(read_daily_papers(tmp_path / "pages")))] == [
        "Alpha: A Model", "Beta Set"]
    write(tmp_path / "upper", "A.TXT", page(("Alpha: A Model", ABSTRACT_A)))
    assert detect_format(tmp_path / "upper") is CorpusFormat.DAILY_PAPERS
    write(tmp_path / "upper", "more.JSONL", json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match=r"JSON Lines files \(more\.JSONL\)"):
        detect_format(tmp_path / "upper")


def test_a_folder_of_pages_with_subfolders_of_pages_is_refused(tmp_path: Path) -> None:
    """A subfolder's pages (pages/2025/*.txt) went unread without a word, and an ingest with
    --prune deleted their papers. Each folder is a corpus path of its own; a hidden subfolder
    (a notebook's checkpoints) is no corpus."""
    write(tmp_path / "pages", "000.txt", page(("Alpha: A Model", ABSTRACT_A)))
    write(tmp_path / "pages" / ".ipynb_checkpoints", "000-checkpoint.txt", HEADER)
    (tmp_path / "pages" / "notes").mkdir()
    assert detect_format(tmp_path / "pages") is CorpusFormat.DAILY_PAPERS
    write(tmp_path / "pages" / "2025", "001.txt", page(("Beta Set", ABSTRACT_B)))
    with pytest.raises(ValueError, match=r"pages holds Daily Papers pages and subfolders of "
                                         r"pages \(2025\): a folder's own pages are read"):
        detect_format(tmp_path / "pages")
    assert detect_format(tmp_path / "pages" / "2025") is CorpusFormat.DAILY_PAPERS


def test_daily_duplicates_across_and_within_pages_yield_once(tmp_path: Path) -> None:
    truncated = ABSTRACT_A[:30] + "..."
    write(tmp_path, "000.txt", page(("Alpha: A Model", truncated), ("Beta Set", ABSTRACT_B)))
    second = write(
        tmp_path,
        "001.txt",
        page(("ALPHA - a model", ABSTRACT_A), ("Beta Set", ABSTRACT_B), ("Beta set", ABSTRACT_B)),
    )
    results = list(read_daily_papers(tmp_path))
    found = papers(results)
    assert [p.title for p in found] == ["ALPHA - a model", "Beta Set"]
    assert found[0].abstract == ABSTRACT_A  # the fuller copy wins, at the first position
    duplicates = [r for r in results if isinstance(r, Duplicate)]
    assert [d.source for d in duplicates] == [f"{second}:{line}" for line in (13, 17, 21)]
    assert {d.paper_id for d in duplicates} == {p.id for p in found}


def test_daily_glitches_are_reported_with_file_and_line(tmp_path: Path) -> None:
    text = HEADER + (
        "Lost Abstract Paper\n\n"  # line 13: the next line is another title
        "Alpha: A Model\n\n\u200bUpvote\n\n42\n\nSubmitted by akhaliq\n\n"
        f"{ABSTRACT_A}\n\n"
        f"{ABSTRACT_B}\n\n"  # line 25: an abstract with no title
        "Poincar\u00e9 \u00a0ResNet\n\nWe work in hyperbolic space. Results are good.\n\n"
        "Load more"  # line 31: trailing chrome we do not know, as a title with no abstract
    )
    page_path = write(tmp_path, "000.txt", text)
    results = list(read_daily_papers(tmp_path))
    assert [p.title for p in papers(results)] == ["Alpha: A Model", "Poincaré ResNet"]
    assert skipped(results) == [
        Skipped(f"{page_path}:13", "title without an abstract"),
        Skipped(f"{page_path}:25", "abstract without a title"),
        Skipped(f"{page_path}:31", "title without an abstract"),
    ]


def test_daily_page_date_with_year_sets_published(tmp_path: Path) -> None:
    write(tmp_path, "000.txt", page(("Alpha", ABSTRACT_A)).replace("Aug 6", "Aug 6, 2025"))
    assert papers(list(read_daily_papers(tmp_path)))[0].published == date(2025, 8, 6)


def test_daily_titles_that_look_like_dates_or_prose_stay_titles(tmp_path: Path) -> None:
    write(tmp_path, "000.txt", f"Llama 2\n\n{ABSTRACT_A}\n\nOn U.S. Census Data\n\n{ABSTRACT_B}")
    assert [p.title for p in papers(list(read_daily_papers(tmp_path)))] == [
        "Llama 2",
        "On U.S. Census Data",
    ]


def test_daily_titles_with_abbreviations_or_a_lowercase_start(tmp_path: Path) -> None:
    """ "vs." or "et al." in a title is not prose; "Subscribe" glued to a title that starts in
    lowercase ("vLLM") is chrome, not part of it."""
    write(tmp_path, "000.txt", "Get trending papers in your email inbox!\n"
          f"SubscribevLLM: Paged Attention\n{ABSTRACT_A}\n"
          f"RL vs. SFT: Which One Generalizes?\n{ABSTRACT_B}\n"
          f"Subscribers Matter\n{ABSTRACT_A.replace('Alpha', 'Gamma')}\n")
    results = list(read_daily_papers(tmp_path))
    assert [p.title for p in papers(results)] == [
        "vLLM: Paged Attention", "RL vs. SFT: Which One Generalizes?", "Subscribers Matter"]
    assert not skipped(results)


@pytest.mark.parametrize(("line", "title"), [
    ("Subscribepix2pix-zero: Zero-shot Editing", "pix2pix-zero: Zero-shot Editing"),
    ("Subscribes1: Simple Test-time Scaling", "s1: Simple Test-time Scaling"),
    ("Subscribek-means for Streams", "k-means for Streams"),
    ("Subscribed Users Matter", "Subscribed Users Matter"),
    ("Subscriber Churn Models", "Subscriber Churn Models"),
])
def test_daily_subscribe_glued_to_a_lowercase_title(tmp_path: Path, line: str, title: str,
                                                    ) -> None:
    """ "Subscribe" glued to a first title in lowercase with no capital after it stayed in the
    title: a wrong title, and an id other than the same paper's on another page."""
    write(tmp_path, "000.txt", f"Get trending papers in your email inbox!\n{line}\n"
          f"{ABSTRACT_A}\n")
    assert [p.title for p in papers(list(read_daily_papers(tmp_path)))] == [title]


def test_daily_a_short_one_sentence_abstract_is_an_abstract(tmp_path: Path) -> None:
    """A line short enough for a title that ends a sentence, after a title, is its abstract;
    a title after a title is still one (the first had none)."""
    short = "We present vLLM, a serving engine for large language models."
    cut = "We study how serving engines batch requests from many users at \u2026"
    question = "Do Large Language Models Know What They Do Not Know?"
    write(tmp_path, "000.txt", page(("vLLM: Paged Attention", short), ("Orphan Title", ""),
                                    ("Beta Set", ABSTRACT_B), ("Batching", cut),
                                    (question, ABSTRACT_B)).replace("\n\n\n\n", "\n\n"))
    results = list(read_daily_papers(tmp_path))
    assert [(p.title, p.abstract) for p in papers(results)] == [
        ("vLLM: Paged Attention", short), ("Beta Set", ABSTRACT_B), ("Batching", cut),
        (question, ABSTRACT_B)]
    assert [s.reason for s in skipped(results)] == ["title without an abstract"]


def test_ids_ignore_case_accents_and_punctuation_but_not_letters() -> None:
    """Titles that differ in case, accents or punctuation are one paper; a Greek or CJK letter
    (no ASCII form) makes another. Ids of titles with an ASCII form are those of before."""
    assert paper_id("Café: Über Models") == paper_id("cafe - uber MODELS")
    assert paper_id("Don\u2019t Stop") == paper_id("Dont stop")
    assert paper_id("\u03b1-Flow: Generative Models") != paper_id("\u03b2-Flow: Generative Models")
    assert paper_id("GPT-4 \u6280\u672f\u62a5\u544a") != paper_id("GPT-4 \u8bc4\u6d4b\u57fa\u51c6")
    assert paper_id("Alpha: A Model") == "dp-b14a31910a4288b2"


def test_a_page_with_its_lines_wrapped_is_refused_whole(tmp_path: Path) -> None:
    """A sample page saved with its lines wrapped at 100 columns (`fold -s -w 100`) gave 410
    "papers" made of fragments of abstracts, e.g. the title "responsible for conversion of RAW
    sensor image data to RGB images with", and the run went on as a success."""
    page = sorted((SHARED / "corpus" / "daily-papers").glob("*.txt"))[-1]
    wrapped = "\n".join(textwrap.fill(line, 100, break_long_words=False) if line else line
                        for line in page.read_text(encoding="utf-8").split("\n"))
    write(tmp_path, "000.txt", wrapped)
    write(tmp_path, "001.txt", f"Aug 6, 2025\nAlpha: A Model\n{ABSTRACT_A}\n")
    results = list(read_daily_papers(tmp_path))
    assert [p.title for p in papers(results)] == ["Alpha: A Model"]  # the other page is read
    refused, = skipped(results)
    assert refused.source == str(tmp_path / "000.txt")
    assert refused.reason.startswith("not laid out as a Daily Papers page: ")
    assert "(its lines wrapped?)" in refused.reason


def test_real_daily_papers_corpus() -> None:
    corpus = read_corpus(SHARED / "corpus" / "daily-papers")
    found = list(corpus)
    assert corpus.format is CorpusFormat.DAILY_PAPERS
    assert 550 <= len(found) <= 620  # 591 unique papers in 663 listings when written
    assert corpus.stats.skipped == 0 and corpus.stats.duplicates > 0
    assert len({p.id for p in found}) == len(found)
    chrome_titles = [p.title for p in found if p.title.casefold() in CHROME]
    assert not chrome_titles
    assert not [p.title for p in found if p.title.startswith("Subscribe")]
    assert all(p.abstract for p in found)


# JSON Lines

GOOD = {
    "id": "2401.00001",
    "title": "  Alpha:\tA Model ",
    "abstract": ABSTRACT_A,
    "authors": "Ada Lovelace, Alan Turing",
    "published": "2024-01-02",
    "categories": ["cs.CL", "cs.IR"],
    "url": "https://arxiv.org/abs/2401.00001",
    "venue": "ACL",
}


def test_jsonl_maps_every_field(tmp_path: Path) -> None:
    path = write(tmp_path, "papers.jsonl", json.dumps(GOOD) + "\n")
    (paper,) = unlocated(read_jsonl(path))
    assert paper == Paper(
        id="2401.00001",
        title="Alpha: A Model",
        abstract=ABSTRACT_A,
        authors=("Ada Lovelace", "Alan Turing"),
        published=date(2024, 1, 2),
        categories=("cs.CL", "cs.IR"),
        url="https://arxiv.org/abs/2401.00001",
    )


def test_jsonl_dates_of_a_year_or_a_month_are_its_first_day(tmp_path: Path) -> None:
    """"2024" and "2024-03" (ISO 8601's reduced precision, common in exports) cost the whole
    paper: skipped as "not an ISO date"; so did a year written as a number."""
    lines = [json.dumps({**GOOD, "id": f"p{i}", "published": value})
             for i, value in enumerate(("2024", "2024-03", "2024-03-05", 2024))]
    found = [p.published for _, p in read_jsonl(write(tmp_path, "papers.jsonl",
                                                   "\n".join(lines) + "\n"))]
    assert found == [date(2024, 1, 1), date(2024, 3, 1), date(2024, 3, 5), date(2024, 1, 1)]


BLANK_DATES = ("", "   ", "\t", " \n", None)


def test_jsonl_a_blank_published_is_no_date(tmp_path: Path) -> None:
    """A whitespace-only ``published`` (an export's padded empty column) was parsed, "not an
    ISO date", and the whole paper skipped; the API reads a blank date as none."""
    lines = [json.dumps({**GOOD, "id": f"p{i}", "published": value})
             for i, value in enumerate(BLANK_DATES)]
    results = unlocated(read_jsonl(write(tmp_path, "papers.jsonl", "\n".join(lines) + "\n")))
    assert not skipped(results)
    assert [(p.id, p.published) for p in papers(results)] == [
        (f"p{i}", None) for i in range(len(BLANK_DATES))]


def test_beir_a_blank_published_is_no_date(tmp_path: Path) -> None:
    """As a JSON Lines paper's: a BEIR record whose metadata's date is blank is read, undated."""
    records = [{"_id": str(i), "title": "T", "text": "", "metadata": {"published": value}}
               for i, value in enumerate(BLANK_DATES)]
    write(tmp_path, "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    results = unlocated(read_beir(tmp_path))
    assert not skipped(results)
    assert [(p.id, p.published) for p in papers(results)] == [
        (str(i), None) for i in range(len(BLANK_DATES))]


def test_jsonl_takes_the_apis_paper_id(tmp_path: Path) -> None:
    """A line written as the API writes a paper (``paper_id``, as UpsertPapers' NDJSON takes
    it) was skipped: "missing or empty 'id'"."""
    line = {k: v for k, v in GOOD.items() if k != "id"} | {"paper_id": GOOD["id"]}
    found, = unlocated(read_jsonl(write(tmp_path, "papers.jsonl", json.dumps(line) + "\n")))
    assert [found] == unlocated(read_jsonl(write(tmp_path, "id.jsonl", json.dumps(GOOD) + "\n")))
    both = {**GOOD, "paper_id": f" {GOOD['id']} "}  # the same id twice, as written: read
    assert unlocated(read_jsonl(write(tmp_path, "both.jsonl", json.dumps(both) + "\n"))) == [found]


def test_jsonl_a_null_or_blank_id_beside_a_paper_id_is_absent(tmp_path: Path) -> None:
    """A dataframe export writes both columns, ``id`` empty: the line was skipped as "missing
    or empty 'id'" though its ``paper_id`` was good."""
    lines = [{"id": empty, "paper_id": f"2401.{n}", "title": "T"}
             for n, empty in enumerate((None, "", " \t"))]
    lines.append({"id": "2401.9", "paper_id": "2402.9", "title": "T"})  # which one: refused
    path = write(tmp_path, "export.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    results: list[ReadResult] = unlocated(read_jsonl(path))
    assert [r.id for r in papers(results)] == ["2401.0", "2401.1", "2401.2"]
    assert [s.reason for s in skipped(results)] == [
        "'id' and 'paper_id' name two papers: give one"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**GOOD, "id": ""}), "missing or empty 'id'"),
        (json.dumps({**GOOD, "paper_id": "x"}), "'id' and 'paper_id' name two papers"),
        (json.dumps({"paper_id": " ", "title": "T"}), "missing or empty 'id' and 'paper_id'"),
        (json.dumps({"id": None, "paper_id": None, "title": "T"}), "missing or empty 'id' and"),
        (json.dumps({**GOOD, "title": "", "abstract": " "}), "neither title nor abstract"),
        (json.dumps({**GOOD, "published": "02/01/2024"}), "not an ISO date"),
        (json.dumps({**GOOD, "published": "2024-13"}), "not an ISO date"),
        (json.dumps({**GOOD, "published": 20240305}), "ISO date string or a year, got int"),
        (json.dumps({**GOOD, "published": True}), "ISO date string or a year, got bool"),
        (json.dumps({**GOOD, "authors": [1, 2]}), "'authors' must be"),
    ],
)
def test_jsonl_malformed_line_is_skipped_with_file_and_line(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = write(tmp_path, "papers.jsonl", f"{json.dumps(GOOD)}\n\n{line}\n")
    results = unlocated(read_jsonl(path))
    assert [type(r) for r in results] == [Paper, Skipped]
    assert results[1].source == f"{path}:3"
    assert reason in results[1].reason


def test_jsonl_bad_utf8_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "papers.jsonl"
    path.write_bytes(b'{"id": "1", "title": "\xff"}\n' + json.dumps(GOOD).encode() + b"\n")
    results = unlocated(read_jsonl(path))
    assert isinstance(results[0], Skipped) and results[0].source == f"{path}:1"
    assert isinstance(results[1], Paper)


def test_jsonl_line_past_the_limit_is_skipped_unread(tmp_path: Path) -> None:
    """A line longer than MAX_LINE_BYTES is skipped by number and read past in pieces (not
    held whole), and the lines after it are read; one exactly at the limit is read."""
    at_limit = json.dumps({**GOOD, "id": "at-limit"})
    at_limit = at_limit[:-1] + " " * (MAX_LINE_BYTES - len(at_limit)) + "}"
    path = write(tmp_path, "papers.jsonl", "\n".join(
        [json.dumps({**GOOD, "extra": "x" * (3 * MAX_LINE_BYTES)}), at_limit, json.dumps(GOOD)]))
    results = unlocated(read_jsonl(path))
    assert [type(r) for r in results] == [Skipped, Paper, Paper]
    assert results[0] == Skipped(f"{path}:1", f"line longer than {MAX_LINE_BYTES} bytes")
    assert [r.id for r in results[1:] if isinstance(r, Paper)] == ["at-limit", GOOD["id"]]


@pytest.mark.parametrize("limit", [1, 4, 5, 6, 64])
def test_bounded_lines_splits_as_readline_does_below_the_limit(limit: int) -> None:
    data = b"abc\nabcd\n\nabcdef\nabcde"
    expected = [line if len(line.rstrip(b"\n")) <= limit else None
                for line in io.BytesIO(data).readlines()]
    assert list(bounded_lines(io.BytesIO(data), limit)) == expected


def test_jsonl_ids_are_the_ids_the_api_takes(tmp_path: Path) -> None:
    """Ids normalised and checked as UpsertPapers checks them: an NFD "café" and an NFC one
    were two papers, the NFD one never reachable through GetPaper or DeletePapers (which
    normalise); ids the gateway refuses (300 bytes, a zero-width space) were stored. A date
    with a stray blank parses; a line nested 200,000 deep is skipped, not a traceback."""
    from papersearch.api.convert import paper_id_from_proto

    nfd, nfc = "cafe\u0301", "caf\u00e9"
    lines = [{"id": nfd, "title": "One"}, {"id": nfc, "title": "Two"},
             {"id": "x" * 300, "title": "Long id"}, {"id": "a\u200bb", "title": "Hidden"},
             {"id": "dated", "title": "Dated", "published": " 2024-01-05\n"}]
    path = write(tmp_path, "papers.jsonl", "".join(json.dumps(r) + "\n" for r in lines)
                 + "[" * 200_000 + "\n")
    reader = read_corpus(path)
    found = list(reader)
    assert [p.id for p in found] == [nfc, "dated"] and reader.duplicates == 1
    assert found[0].id == paper_id_from_proto(nfd) and found[0].title == "One"
    assert found[1].published == date(2024, 1, 5)
    reasons = [s.reason for s in reader.skipped]
    assert reasons[0].startswith(f"id {nfc!r} already read at {path}:1 with another title")
    assert "'id' is 300 bytes in UTF-8; the limit is 256" in reasons[1]
    assert "'id' contains the control character U+200B" in reasons[2]
    assert reasons[3] == "invalid JSON: nested too deeply"


def test_a_paper_in_two_corpora_of_one_run_is_a_duplicate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Each corpus had its own ids: the repeat was 'already present' (or, with --update, the
    later copy replaced the first), where within one corpus the first copy is kept. Another
    paper under an id read before (two BEIR sets both number theirs from 1) was dropped with
    no more than a DEBUG line: it is counted as a conflict and said in a warning."""
    first = write(tmp_path, "a.jsonl", json.dumps({"id": "A", "title": "First"}) + "\n"
                  + json.dumps({"id": "C", "title": "Same"}) + "\n"
                  + json.dumps({"id": "C", "title": "Same"}) + "\n")
    second = write(tmp_path, "b.jsonl", json.dumps({"id": "A", "title": "Second"}) + "\n"
                   + json.dumps({"id": "B", "title": "Other"}) + "\n"
                   + json.dumps({"id": "C", "title": "Same"}) + "\n")
    reader = read_corpus(first)
    assert [p.title for p in reader] == ["First", "Same"]
    assert reader.stats == ReadStats(2, 0, 1, 0) and "conflict" not in caplog.text
    then = read_corpus(second, earlier=reader.ids)
    assert [p.id for p in then] == ["B"] and then.stats == ReadStats(1, 0, 2, 1)
    # its own records only: a thread another test left (Ray Data's metrics poller) logs too
    warning, = [r for r in caplog.records
                if r.name == "papersearch.corpus.readers" and r.levelname == "WARNING"]
    assert "differing from its first copy: dropped" in warning.getMessage()
    assert warning.paper_ids == ["A"] and warning.conflicts == 1  # type: ignore[attr-defined]
    assert then.skipped == [Skipped(f"{second}:1", f"id 'A' already read at {first}:1 with "
                                    "another title or abstract: this one is skipped, the "
                                    "first kept")]


def test_a_repeat_with_other_metadata_is_a_conflict(tmp_path: Path) -> None:
    """A correction of a paper's date, authors, categories or url under the same id, in the
    same file or a later one of the run, was counted a plain duplicate and dropped without a
    word (only a title or abstract told copies apart); a repeat the same in every field is
    none."""
    first = {"id": "x1", "title": "T", "abstract": "A", "published": "2023-05-01",
             "authors": ["A. One"], "categories": ["cs.LG"]}
    corrections = [{**first, "published": "2023-06-01"}, {**first, "authors": ["A. One", "B"]},
                   {**first, "categories": ["cs.CL"]}, {**first, "url": "https://x.org/1"},
                   first]
    path = write(tmp_path, "f.jsonl", "".join(json.dumps(r) + "\n"
                                              for r in [first, *corrections]))
    reader = read_corpus(path)
    assert [p.published for p in reader] == [date(2023, 5, 1)]
    assert reader.stats == ReadStats(1, 0, 5, 4)
    assert [s.source for s in reader.skipped] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert reader.skipped[0].reason == (
        f"id 'x1' already read at {path}:1 with the same title and abstract but another date, "
        "authors, categories or url: this one is skipped, the first kept")
    later = write(tmp_path, "g.jsonl", json.dumps(corrections[0]) + "\n")
    then = read_corpus(later, earlier=reader.ids)
    assert list(then) == [] and then.stats == ReadStats(0, 0, 1, 1)
    assert then.skipped[0].reason.startswith(f"id 'x1' already read at {path}:1 with the same")


def test_a_paper_listed_in_two_page_folders_on_other_days_is_no_conflict(
    tmp_path: Path,
) -> None:
    """Each page folder given as a corpus (as the nested-folder refusal advises): every paper
    listed on both days was a conflict, "another date", with a warning to give a correction in
    its place, and the listings filled ``skipped_records``; in one folder the same two pages
    give none (a JSON Lines correction of a date is still one: the test above)."""
    listing = page(("Alpha", ABSTRACT_A))
    first = write(tmp_path / "jan", "a.txt", listing.replace("Aug 6", "Aug 6, 2025"))
    second = write(tmp_path / "feb", "b.txt", listing.replace("Aug 6", "Aug 7, 2025"))
    reader = read_corpus(first.parent)
    assert [p.published for p in reader] == [date(2025, 8, 6)]
    then = read_corpus(second.parent, earlier=reader.ids)
    assert list(then) == [] and then.stats == ReadStats(0, 0, 1, 0) and then.skipped == []
    together = read_corpus(write(tmp_path / "both", "a.txt", first.read_text()).parent)
    write(tmp_path / "both", "b.txt", second.read_text())
    assert [p.published for p in together] == [date(2025, 8, 6)]
    assert together.stats == ReadStats(1, 0, 1, 0)


def test_a_conflict_is_listed_with_both_places(tmp_path: Path) -> None:
    """A file that appends corrections: the corrected copy was dropped (counted, its id in a
    warning) with no line named, and so was passed over on every ingest without a trace of
    where. It is listed in the ingest's ``skipped_records`` with both places, the first kept."""
    path = write(tmp_path, "f.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "title": "First"}, {"id": "b", "title": "Other"},
        {"id": "a", "title": "Corrected"}]))

    class Ingester:
        written = changed = 0

        def ingest(self, papers: Iterable[Paper], *, update: bool = False,
                   progress: bool = True) -> tuple[int, int]:
            self.written += sum(1 for _ in papers)
            return self.written, 0

    store = cast(Any, SimpleNamespace(count=lambda: 2))  # all ingest_paths asks of it
    summary = ingest_paths([path], store, Ingester(), progress=False)
    assert (summary.read, summary.skipped, summary.duplicates, summary.conflicts) == (2, 0, 1, 1)
    assert summary.to_dict()["skipped_records"] == [
        f"{path}:3: id 'a' already read at {path}:1 with another title or abstract: this one is "
        "skipped, the first kept"]


# BEIR


def test_beir_reads_ids_verbatim_and_metadata(tmp_path: Path) -> None:
    """The metadata's authors, published and categories were kept aside where the index never
    stored them: filters found no BEIR paper, though the README said they would."""
    metadata = {"authors": "Perlis, A. J.", "published": "1958-12", "categories": ["cs.PL"],
                "cacm_id": "CA581203"}
    records = [
        {"_id": "7", "title": "", "text": "correlation between maternal glucose levels ."},
        {"_id": "8", "title": "A Title Only", "text": "", "metadata": metadata},
        {"_id": "9", "title": "", "text": ""},
        {"_id": "10", "title": "T", "text": "", "metadata": {"published": "December, 1958"}},
        {"_id": "11", "title": "Two", "text": "",
         "metadata": {"authors": ["Sugai, I.", "Perlis, A. J."]}},
    ]
    path = write(tmp_path, "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    results = unlocated(read_beir(tmp_path))
    assert [p.id for p in papers(results)] == ["7", "8", "11"]
    paper = papers(results)[1]
    # a string is one name: BEIR sets write "Surname, Initials" (split at the comma, the
    # filter "Sugai, I." matched nothing and "I." matched strangers)
    assert (paper.authors, paper.published, paper.categories) == (
        ("Perlis, A. J.",), date(1958, 12, 1), ("cs.PL",))
    assert papers(results)[2].authors == ("Sugai, I.", "Perlis, A. J.")
    assert [(s.source, s.reason[:30]) for s in skipped(results)] == [
        (f"{path}:3", "paper '9' has neither title no"),
        (f"{path}:4", "'published' is not an ISO date")]


def test_a_beir_record_without_text_is_skipped(tmp_path: Path) -> None:
    """A corpus.jsonl with its abstracts under "abstract" (a JSON Lines paper's key) was read
    as titles alone: eval and ingest exited 0, and search found papers by their titles only."""
    records = [{"_id": "1", "title": "T", "abstract": "An abstract."},
               {"_id": "2", "title": "U"},
               {"_id": "3", "title": "V", "text": None}]  # null: no abstract, as before
    path = write(tmp_path, "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    results = unlocated(read_beir(tmp_path))
    assert [(p.id, p.abstract) for p in papers(results)] == [("3", "")]
    assert [(s.source, s.reason) for s in skipped(results)] == [
        (f"{path}:1", "no 'text': BEIR puts the abstract under 'text', not 'abstract' (a JSON "
                      "Lines paper's key): rename it"),
        (f"{path}:2", """no 'text': BEIR puts the abstract under 'text' ("" where a paper """
                      "has none)")]


@pytest.mark.parametrize(("dataset", "count"), [("cacm", 3204), ("med", 1033)])
def test_real_beir_corpora(dataset: str, count: int) -> None:
    corpus = read_corpus(SHARED / "eval" / dataset)
    assert sum(1 for _ in corpus) == count
    assert corpus.stats == ReadStats(read=count, skipped=0, duplicates=0)


# Facade


def test_detect_format(tmp_path: Path) -> None:
    write(tmp_path / "pages", "000.txt", HEADER)
    write(tmp_path / "beir", "corpus.jsonl", json.dumps({"_id": "1", "title": "T"}) + "\n")
    write(tmp_path, "beir.jsonl", "oops\n" + json.dumps({"_id": "1", "title": "T"}) + "\n")
    write(tmp_path, "papers.jsonl", json.dumps(GOOD) + "\n")
    write(tmp_path / "empty", "notes.md", "")
    assert detect_format(tmp_path / "pages") is CorpusFormat.DAILY_PAPERS
    assert detect_format(tmp_path / "beir") is CorpusFormat.BEIR
    assert detect_format(tmp_path / "beir.jsonl") is CorpusFormat.BEIR
    assert detect_format(tmp_path / "beir" / "corpus.jsonl") is CorpusFormat.BEIR
    assert detect_format(tmp_path / "papers.jsonl") is CorpusFormat.JSONL
    # a BEIR set's queries: ingested as title-less papers without a word
    write(tmp_path / "beir", "queries.jsonl", json.dumps({"_id": "q1", "text": "a query"}) + "\n")
    with pytest.raises(ValueError, match=r"queries\.jsonl holds queries of the BEIR set beside "
                                         r"it \(_id and text, no title\), not papers"):
        detect_format(tmp_path / "beir" / "queries.jsonl")
    # a corpus.jsonl without titles (BEIR's title is optional) is its papers all the same
    write(tmp_path / "untitled", "corpus.jsonl", json.dumps({"_id": "1", "text": "x"}) + "\n")
    assert detect_format(tmp_path / "untitled" / "corpus.jsonl") is CorpusFormat.BEIR
    # another part of the corpus beside it reads as before
    write(tmp_path / "beir", "corpus-2025.jsonl", json.dumps({"_id": "2", "title": "U"}) + "\n")
    assert detect_format(tmp_path / "beir" / "corpus-2025.jsonl") is CorpusFormat.BEIR
    # a database export: its own _id beside the paper's id (was read as BEIR: id and
    # abstract lost)
    write(tmp_path, "export.jsonl", json.dumps({"_id": "m1", **GOOD}) + "\n")
    assert detect_format(tmp_path / "export.jsonl") is CorpusFormat.JSONL
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format(tmp_path / "empty")
    # pages and JSON Lines in one folder: the pages' reader passed over the .jsonl papers
    write(tmp_path / "pages", "extra.jsonl", json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match=r"pages \(\.txt\) and JSON Lines files \(extra\.jsonl\)"):
        detect_format(tmp_path / "pages")
    # and the other way round: a BEIR folder read its corpus.jsonl, the pages beside it unread
    write(tmp_path / "beir", "000.txt", HEADER)
    with pytest.raises(ValueError, match=r"a BEIR corpus\.jsonl and Daily Papers pages "
                                         r"\(000\.txt\)"):
        detect_format(tmp_path / "beir")
    with pytest.raises(FileNotFoundError, match="no such corpus file or folder: .*missing$"):
        detect_format(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"missing \(/.+/missing: paths are relative to "
                                                "the current directory"):
        detect_format(Path("missing"))


def test_an_api_export_with_a_database_id_reads_as_json_lines(tmp_path: Path) -> None:
    """Papers as the API writes them (``paper_id``, ``abstract``), exported with a database's
    own ``_id``: read as BEIR, under the database's ids, every abstract, author, date,
    category and url lost, nothing skipped or said."""
    api = {k: v for k, v in GOOD.items() if k != "id"}
    lines = [{"_id": "65a1f0c2e4b0a1b2c3d4e5f6", "paper_id": "2401.00001", **api},
             {"_id": "65a1f0c2e4b0a1b2c3d4e5f7", "paper_id": "2401.00002", **api}]
    path = write(tmp_path, "api.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    assert detect_format(path) is CorpusFormat.JSONL
    reader = read_corpus(path)
    found = list(reader)
    assert [p.id for p in found] == ["2401.00001", "2401.00002"] and reader.stats.skipped == 0
    assert found[:1] == unlocated(read_jsonl(write(tmp_path, "id.jsonl",
                                                   json.dumps(GOOD) + "\n")))
    # an abstract but no id of ours: skipped line by line, not read as BEIR without abstracts
    write(tmp_path, "no-id.jsonl", json.dumps({"_id": "m1", **api}) + "\n")
    assert detect_format(tmp_path / "no-id.jsonl") is CorpusFormat.JSONL


def test_read_corpus_counts_duplicates_and_logs_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [json.dumps(GOOD), json.dumps({**GOOD, "title": "Alpha v2"}), "{bad", json.dumps({})]
    path = write(tmp_path, "papers.jsonl", "\n".join(lines) + "\n")
    corpus = read_corpus(path)
    with caplog.at_level(logging.WARNING, logger="papersearch.corpus.readers"):
        found = list(corpus)
    assert [p.title for p in found] == ["Alpha: A Model"]
    assert corpus.stats == ReadStats(read=1, skipped=2, duplicates=1, conflicts=1)
    assert [s.source for s in corpus.skipped] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    skips = [r for r in caplog.records if "source" in r.__dict__]
    assert [r.__dict__["source"] for r in skips] == [f"{path}:3", f"{path}:4"]
    assert list(corpus) == found and corpus.stats.duplicates == 1  # a second pass recounts


def test_a_record_past_the_apis_limits_is_skipped(tmp_path: Path) -> None:
    """ingest stored a 5,000-character title, 150 authors, a 3,000-character url: papers the
    API refuses (UpsertPapers), so a paper ingested and one sent could never be the same."""
    records = [{"id": "t", "title": "x" * 1001},
               {"id": "a", "title": "A", "abstract": "y" * 20_001},
               {"id": "n", "title": "N", "authors": [f"Author {i}" for i in range(101)]},
               {"id": "l", "title": "L", "authors": ["z" * 257]},
               {"id": "u", "title": "U", "url": "https://e.org/" + "u" * 2048},
               {"id": "ok", "title": "x" * 1000, "authors": ["z" * 256]}]
    path = write(tmp_path, "papers.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    reader = read_corpus(path)
    assert [p.id for p in reader] == ["ok"]
    assert [s.reason for s in reader.skipped] == [
        "title is 1001 characters; the limit is 1000",
        "abstract is 20001 characters; the limit is 20000",
        "101 authors; the limit is 100",
        "one of the authors is 257 characters; the limit is 256",
        "url is 2062 characters; the limit is 2048"]


def test_lone_surrogates_are_dropped_not_passed_to_the_index(tmp_path: Path) -> None:
    """JSON can spell a lone surrogate ("\\ud800"): the reader passed it on, then BM25 and the
    tokenizer failed to encode it and the whole ingest stopped (its batch's good papers lost).
    It has no UTF-8 form: dropped from text as control characters are, refused in an id."""
    records = [{"id": "s", "title": "T \ud800 x", "authors": ["\udc80", "Ada"]},
               {"id": "bad\udfffid", "title": "Id"}, {"id": "ok", "title": "Fine"}]
    path = write(tmp_path, "papers.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    reader = read_corpus(path)
    found = list(reader)
    assert [(p.id, p.title, p.authors) for p in found] == [("s", "T x", ("Ada",)),
                                                            ("ok", "Fine", ())]
    assert "U+DFFF" in reader.skipped[0].reason
    assert all(p.text.encode() for p in found)


def test_an_integer_id_is_checked_as_a_string_id_is(tmp_path: Path) -> None:
    path = write(tmp_path, "papers.jsonl", "".join(json.dumps(r) + "\n" for r in (
        {"id": int("1" * 300), "title": "Long"}, {"id": 42, "title": "Int"},
        {"id": 1.5, "title": "Float"})))
    reader = read_corpus(path)
    assert [p.id for p in reader] == ["42"]
    assert [s.reason for s in reader.skipped] == [
        "'id' is 300 bytes in UTF-8; the limit is 256",
        "'id' must be a string or an integer, got float"]


def test_a_jsonl_line_of_nul_bytes_is_named_as_not_utf8_json(tmp_path: Path) -> None:
    """Given bytes, json guessed UTF-32 from leading NULs and said so."""
    path = tmp_path / "papers.jsonl"
    path.write_bytes(b"\x00\x00\x00{}\n" + json.dumps(GOOD).encode() + b"\n")
    results = unlocated(read_jsonl(path))
    assert isinstance(results[0], Skipped) and results[0].reason.startswith("invalid JSON")
    assert isinstance(results[1], Paper)
    bom = b"\xef\xbb\xbf"  # files joined with cat keep each one's byte order mark
    path.write_bytes(bom + json.dumps(GOOD).encode() + b"\n" + bom
                     + json.dumps({**GOOD, "id": "2"}).encode() + b"\n")
    assert [type(r) for _, r in read_jsonl(path)] == [Paper, Paper]


def test_daily_lines_that_are_not_utf8_are_skipped_by_name(tmp_path: Path) -> None:
    """A page saved as cp1252 was decoded with replacement characters: "Poincaré" became
    "Poincar\ufffd", another id than the UTF-8 page's copy, the paper stored twice."""
    text = page(("Poincar\u00e9 ResNet", ABSTRACT_A), ("Beta Set", ABSTRACT_B))
    write(tmp_path, "000.txt", text)
    legacy = tmp_path / "001.txt"
    legacy.write_bytes(text.encode("cp1252"))
    late = tmp_path / "002.txt"  # a readable title, its abstract not: neither is paired
    late.write_bytes(page(("Gamma Net", "Caf\u00e9 au lait results."),
                          ("A Much Longer Next Line", ABSTRACT_B)).encode("cp1252"))
    reader = read_corpus(tmp_path)
    assert [p.title for p in reader] == ["Poincar\u00e9 ResNet", "Beta Set",
                                         "A Much Longer Next Line"]
    assert reader.duplicates == 1  # Beta Set, ASCII on both pages
    assert [(s.source, s.reason) for s in reader.skipped] == [
        (f"{legacy}:13", "not valid UTF-8 (save the page as UTF-8)"),
        (f"{legacy}:15", "abstract without a title"),
        (f"{late}:15", "not valid UTF-8 (save the page as UTF-8)"),
        (f"{late}:13", "its abstract is not valid UTF-8")]


def test_daily_entries_past_the_apis_limits_are_skipped(tmp_path: Path) -> None:
    """A glitched page whose lines ran together: one 25,000-character abstract was stored,
    a paper UpsertPapers would refuse."""
    path = write(tmp_path, "000.txt", page(("Merged Lines", "Words here. " * 2100),
                                           ("Beta Set", ABSTRACT_B)))
    results = list(read_daily_papers(tmp_path))
    assert [p.title for p in papers(results)] == ["Beta Set"]
    assert skipped(results) == [Skipped(f"{path}:13",
                                        "abstract is 25199 characters; the limit is 20000")]


def test_daily_a_glitched_copy_is_not_chosen_over_a_good_one(tmp_path: Path) -> None:
    """The longest copy was kept and only then held to the limits: a glitched copy (lines run
    together) past them lost the paper, its good copy counted as a duplicate of nothing."""
    write(tmp_path, "000.txt", page(("Alpha: A Model", ABSTRACT_A)))
    glitched = write(tmp_path, "001.txt", page(("Alpha: A Model", "Words here. " * 2100)))
    results = list(read_daily_papers(tmp_path))
    assert [(p.title, p.abstract) for p in papers(results)] == [("Alpha: A Model", ABSTRACT_A)]
    assert skipped(results) == [Skipped(f"{glitched}:13",
                                        "abstract is 25199 characters; the limit is 20000")]
    assert not [r for r in results if isinstance(r, Duplicate)]


def test_daily_lines_past_the_bound_are_skipped_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page was read whole and every line cleaned, however long: a 96 MB line took 13.6 s
    and 1.3 GB before within_limits refused it. A line past the bound is skipped by line
    number, never held whole, and the title before it with it (not paired with the line
    after)."""
    from papersearch.corpus import daily_papers

    monkeypatch.setattr(daily_papers, "MAX_PAGE_LINE_BYTES", 1000)
    cleaned: list[int] = []
    real = daily_papers.clean_text
    monkeypatch.setattr(daily_papers, "clean_text",
                        lambda text: cleaned.append(len(text)) or real(text))
    long = "Words here. " * 400  # 4,800 bytes; an abstract within the API's limits too
    path = write(tmp_path, "000.txt", page(("Merged Lines", f"{long}\n\n{ABSTRACT_A}"),
                                           ("Beta Set", f"{ABSTRACT_B}\n\n{long}")))
    results = list(read_daily_papers(tmp_path))
    assert [p.title for p in papers(results)] == ["Beta Set"]
    too_long = ("line longer than 1000 bytes, not read: an abstract within the API's limit "
                "is far shorter (is the file a Daily Papers page?)")
    assert skipped(results) == [
        Skipped(f"{path}:15", too_long),
        Skipped(f"{path}:13", "its abstract is a line longer than 1000 bytes"),
        Skipped(f"{path}:17", "abstract without a title"),
        Skipped(f"{path}:23", too_long)]
    assert cleaned and max(cleaned) < 1000


def test_daily_the_line_bound_is_inclusive(tmp_path: Path) -> None:
    """A line of MAX_PAGE_LINE_BYTES is read (and held to the API's limits), a byte more not."""
    from papersearch.corpus.daily_papers import MAX_PAGE_LINE_BYTES

    at_bound = ("x " * MAX_PAGE_LINE_BYTES)[:MAX_PAGE_LINE_BYTES]
    path = write(tmp_path, "000.txt", page(("Alpha", at_bound), ("Beta", at_bound + "y")))
    assert skipped(list(read_daily_papers(tmp_path))) == [
        Skipped(f"{path}:13", f"abstract is {MAX_PAGE_LINE_BYTES - 1} characters; the "
                              "limit is 20000"),  # its last space dropped
        Skipped(f"{path}:19", f"line longer than {MAX_PAGE_LINE_BYTES} bytes, not read: an "
                              "abstract within the API's limit is far shorter (is the file a "
                              "Daily Papers page?)"),
        Skipped(f"{path}:17", f"its abstract is a line longer than {MAX_PAGE_LINE_BYTES} bytes")]


@pytest.mark.parametrize("metadata", ["Submitted by\n\nakhaliq", "42 upvotes", "1.2k",
                                      "Published on 6 Aug 2025", "on 6 Aug"])
def test_daily_metadata_lines_are_not_titles(tmp_path: Path, metadata: str) -> None:
    """These listing lines read as titles: the real title was skipped "without an abstract",
    and two papers submitted by one user were merged under the user's name."""
    text = page(("Alpha: A Model", ABSTRACT_A), ("Beta Set", ABSTRACT_B))
    for title in ("Alpha: A Model", "Beta Set"):
        text = text.replace(f"{title}\n", f"{title}\n\n{metadata}\n")
    results = list(read_daily_papers(write(tmp_path, "000.txt", text)))
    assert [p.title for p in papers(results)] == ["Alpha: A Model", "Beta Set"]
    assert skipped(results) == []


def test_daily_a_bare_submitted_by_drops_a_user_name_not_a_title(tmp_path: Path) -> None:
    """The line after a bare "Submitted by" is the user's name only when it is one word: a
    card without the name line lost the next paper's title."""
    text = page(("Alpha: A Model", ABSTRACT_A), ("Beta Set", ABSTRACT_B))
    text = text.replace("Alpha: A Model\n", "Alpha: A Model\n\nSubmitted by\n")
    results = list(read_daily_papers(write(tmp_path, "000.txt", text)))
    assert [p.title for p in papers(results)] == ["Alpha: A Model", "Beta Set"]


def test_daily_duplicates_keep_the_first_date_found(tmp_path: Path) -> None:
    """The fullest abstract's copy was taken whole: its undated page lost the other's date."""
    write(tmp_path, "000.txt", page(("Alpha", ABSTRACT_A[:40] + "...")).replace(
        "Aug 6", "Aug 6, 2025"))
    write(tmp_path, "001.txt", page(("Alpha", ABSTRACT_A)))
    [paper] = papers(list(read_daily_papers(tmp_path)))
    assert paper.abstract == ABSTRACT_A and paper.published == date(2025, 8, 6)


def test_an_id_past_its_limit_is_refused_before_its_characters_are_scanned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scan for control characters is a Python loop (0.5 s for a 4 MiB id on the
    gateway's event loop): the size, checked in C, comes first."""
    from papersearch.corpus import paper

    scanned: list[int] = []
    real = paper.without_controls
    monkeypatch.setattr(paper, "without_controls",
                        lambda text, name: scanned.append(len(text)) or real(text, name))
    with pytest.raises(ValueError, match="is 4000000 characters"):
        paper.checked_id("x" * 4_000_000)
    with pytest.raises(ValueError, match="control character U\\+D800"):
        paper.checked_id("a\ud800b")  # sized as a surrogate would be, then refused
    assert scanned == [3]
