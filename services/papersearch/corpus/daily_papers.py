"""Reader for scraped Hugging Face "Daily Papers" pages: a title line, then its abstract line.

Pages come in two layouts, with or without blank lines between paragraphs, so the unit is one
non-blank line. Page chrome (the header, a date like "Aug 6") and listing metadata (upvote counts,
"Submitted by ...") are dropped. A title with no abstract after it, or an abstract with no title
before it, is reported as skipped, and so is a line too long to be an abstract, unread (with
the title before it). A paper listed more than once is yielded once, with the longest
abstract seen, at its first position; its other listings come out as :class:`Duplicate`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import BinaryIO

from papersearch.corpus.jsonl import bounded_lines
from papersearch.corpus.paper import (
    MAX_ABSTRACT_CHARS,
    Duplicate,
    Paper,
    ReadResult,
    Skipped,
    clean_text,
    normalise_title,
    within_limits,
)
from papersearch.paths import files_ending

ID_PREFIX = "dp-"
# The longest page line read: an abstract at the API's limit is at most 4 bytes a character in
# UTF-8 (80,000 bytes), and this is four times that, room for the whitespace and control
# characters clean_text drops. A longer line is a glitch (pages run together, a stray .txt),
# skipped unread, not held whole in memory first (README: Results, Figures behind the limits)
MAX_PAGE_LINE_BYTES = 16 * MAX_ABSTRACT_CHARS

CHROME = frozenset(
    {
        "new",
        "subscribe",
        "daily papers",
        "byak and the research community",
        "get trending papers in your email inbox!",
        "get trending papers in your email inbox once a day!",
    }
)
_MONTHS = (
    r"Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t|tember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?"
)
_MONTH = rf"(?P<month>{_MONTHS})"
_DATE = re.compile(_MONTH + r" (?P<day>\d{1,2})(?:, (?P<year>\d{4}))?")
# Listing metadata: upvote counts ("42", "1.2k", "42 upvotes"), author counts, "Submitted by
# user" (or "Submitted by" with the user on the next line: SUBMITTED_BY), "Published on Aug 6"
# or "on 6 Aug 2025".
_METADATA = re.compile(
    rf"\d+(?:\.\d+)?k?|·|upvotes?(?: \d+)?|\d+ upvotes?|(?:· )?\d+ authors?"
    rf"|submitted by(?: \S+)?"
    rf"|(?:published )?on (?:{_DATE.pattern}|\d{{1,2}} (?:{_MONTHS})(?: \d{{4}})?)",
    re.IGNORECASE,
)
SUBMITTED_BY = "submitted by"
# "Subscribe" glued to the first title, as in "SubscribeHierarchical multi-class ...",
# "SubscribevLLM: ..." or "Subscribes1: ..." (not "Subscribers ...", "Subscribed ...").
_GLUED_SUBSCRIBE = re.compile(r"^Subscribe(?!(?:rs?|d|s)\b)(?=\S)")
# A full stop after a lowercase word, then a capital: prose, not a title ("U.S. Census" is not,
# nor "RL vs. SFT" or "et al." and the like).
_SENTENCE_BREAK = re.compile(r"[a-z0-9)]{2}(?<!\bvs)(?<!\bal)(?<!\bcf)(?<!\betc)\.\s+[A-Z(]")
_MAX_TITLE_CHARS = 250
_TITLE_ALONE = "title without an abstract"
_ABSTRACT_ALONE = "abstract without a title"
_UNPAIRED = (_TITLE_ALONE, _ABSTRACT_ALONE)
# A page where at least this many listings, and this share of them, are a title or an
# abstract alone is not read (the sample's pages have none; a wrapped copy of one, over half)
_UNPAIRED_AT_LEAST = 5
_UNPAIRED_SHARE = 0.25
_MIN_SENTENCE_WORDS = 6


@dataclass(frozen=True, slots=True)
class _Unread:
    """A line not read as text: why it is skipped, and why the title before it is."""

    reason: str
    as_abstract: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One listing on one page, before deduplication."""

    source: str  # "file:line" of the title
    title: str
    abstract: str
    published: date | None  # the page's date, when it names a year

    @property
    def paper_id(self) -> str:
        return paper_id(self.title)


def paper_id(title: str) -> str:
    """Stable id from the normalised title ("dp-" and 16 hex digits)."""
    key = normalise_title(title) or title.casefold()
    return ID_PREFIX + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def read_daily_papers(path: Path) -> Iterator[ReadResult]:
    """Read a directory of ``*.txt`` pages (in name order) or a single page."""
    pages = files_ending(path, ".txt") if path.is_dir() else [path]
    # Every page is read before a paper comes out (a later page may hold a fuller abstract);
    # of each listing, only its place and paper id are kept, or its Skipped: the papers
    # themselves, one an id, are in best
    listings: list[tuple[str, str] | Skipped] = []
    best: dict[str, Paper] = {}
    for page in pages:
        for item in _laid_out(page, list(parse_page(page))):
            # Each listing is held to the API's limits first: a glitched copy (lines run
            # together into one giant abstract) is skipped where it stands and never chosen
            # over a good copy (it was, as the longest, and the paper was lost with its good
            # copies counted as duplicates).
            paper = _to_paper(item) if isinstance(item, Entry) else item
            if isinstance(paper, Skipped):
                listings.append(paper)
                continue
            listings.append((item.source, paper.id))
            kept = best.setdefault(paper.id, paper)
            if len(paper.abstract) > len(kept.abstract):  # the fullest abstract, the first date
                best[paper.id] = replace(paper, published=kept.published or paper.published)
            elif kept.published is None and paper.published is not None:
                best[paper.id] = replace(kept, published=paper.published)
    yielded: set[str] = set()
    for listing in listings:
        if isinstance(listing, Skipped):
            yield listing
        elif (listed := listing[1]) in yielded:
            yield Duplicate(*listing)
        else:
            yielded.add(listed)
            yield best[listed]


def _laid_out(page: Path, items: list[Entry | Skipped]) -> list[Entry | Skipped]:
    """A page's items, or one Skipped for the whole page where many of its lines do not pair
    as a title and then its abstract: a page saved another way (its lines wrapped, say)
    would otherwise give hundreds of papers made of fragments."""
    unpaired = sum(isinstance(item, Skipped) and item.reason in _UNPAIRED for item in items)
    if unpaired < _UNPAIRED_AT_LEAST or unpaired < _UNPAIRED_SHARE * len(items):
        return items
    return [Skipped(str(page), f"not laid out as a Daily Papers page: {unpaired} of its "
                               f"{len(items)} listings are a title or an abstract alone (its "
                               "lines wrapped?): none of its papers is read; save the page "
                               "again with one line per title and per abstract")]


def parse_page(path: Path) -> Iterator[Entry | Skipped]:
    """Pair each title line with the abstract line that follows it. A line that is not
    UTF-8 is skipped, named (decoded with replacement characters it would have given its
    paper another id than a UTF-8 copy of the same page), and so is one longer than
    MAX_PAGE_LINE_BYTES, unread; a title before either is skipped with it, not paired with
    the line after. The page is read a line at a time."""
    published: date | None = None
    pending: tuple[int, str] | None = None  # (line number, title) waiting for its abstract
    with path.open("rb") as handle:
        for lineno, line in _content_lines(_decoded(handle)):
            if isinstance(line, _Unread):
                yield Skipped(f"{path}:{lineno}", line.reason)
                if pending is not None:  # the title's abstract, unread: not the next line
                    yield Skipped(f"{path}:{pending[0]}", line.as_abstract)
                    pending = None
            elif (header := _DATE.fullmatch(line)) is not None:
                published = _page_date(header)
            elif _looks_like_title(line) and not (pending is not None
                                                  and _short_abstract(line)):
                if pending is not None:
                    yield Skipped(f"{path}:{pending[0]}", _TITLE_ALONE)
                pending = (lineno, line)
            elif pending is None:
                yield Skipped(f"{path}:{lineno}", _ABSTRACT_ALONE)
            else:
                yield Entry(f"{path}:{pending[0]}", pending[1], line, published)
                pending = None
    if pending is not None:
        yield Skipped(f"{path}:{pending[0]}", _TITLE_ALONE)


def _decoded(handle: BinaryIO) -> Iterator[str | _Unread]:
    """The page's lines as text (a byte order mark dropped), or why one is not read: longer
    than MAX_PAGE_LINE_BYTES (read past in pieces, never held whole) or not UTF-8."""
    limit = MAX_PAGE_LINE_BYTES
    too_long = _Unread(f"line longer than {limit} bytes, not read: an abstract within the "
                       "API's limit is far shorter (is the file a Daily Papers page?)",
                       f"its abstract is a line longer than {limit} bytes")
    not_utf8 = _Unread("not valid UTF-8 (save the page as UTF-8)",
                       "its abstract is not valid UTF-8")
    for number, raw in enumerate(bounded_lines(handle, limit)):
        if raw is None:
            yield too_long
            continue
        try:
            yield raw.decode("utf-8-sig" if number == 0 else "utf-8")  # a BOM dropped
        except UnicodeDecodeError:
            yield not_utf8


def _content_lines(lines: Iterable[str | _Unread]) -> Iterator[tuple[int, str | _Unread]]:
    """Numbered, cleaned lines that are neither blank, page chrome nor listing metadata
    (a line not read, _Unread, passes through)."""
    in_header = True
    submitter = False  # a bare "Submitted by" came: the next line may name the user
    for lineno, raw in enumerate(lines, start=1):
        if isinstance(raw, _Unread):
            submitter = False
            yield lineno, raw
            continue
        line = clean_text(raw)
        if in_header:
            line = _GLUED_SUBSCRIBE.sub("", line)
        if not line:
            continue
        if line.casefold() in CHROME or _METADATA.fullmatch(line):
            submitter = line.casefold() == SUBMITTED_BY
            continue
        named = submitter and " " not in line  # a user name is one word; a title is not
        submitter = False
        if named:
            continue
        in_header = False
        yield lineno, line


def _page_date(header: re.Match[str]) -> date | None:
    """The date a header like "Aug 6, 2025" names; None without a year."""
    if header["year"] is None:
        return None
    stamp = f"{header['month'][:3]} {header['day']} {header['year']}"
    try:
        return datetime.strptime(stamp, "%b %d %Y").date()
    except ValueError:
        return None


def _looks_like_title(line: str) -> bool:
    return len(line) <= _MAX_TITLE_CHARS and _SENTENCE_BREAK.search(line) is None


def _short_abstract(line: str) -> bool:
    """After a title: a line short enough for a title but a sentence ("We present vLLM, a
    serving engine for large language models."), which titles do not end as; nor as a cut
    sentence ("...", "…"). Not "?" or "!": titles end so ("Do LLMs Know What They Know?")."""
    return line.endswith((".", "\u2026")) and len(line.split()) >= _MIN_SENTENCE_WORDS


def _to_paper(entry: Entry) -> Paper | Skipped:
    """The entry's paper, or Skipped past a limit the API enforces (a glitched page whose
    lines ran together into one giant abstract)."""
    try:
        return within_limits(Paper(id=entry.paper_id, title=entry.title,
                                   abstract=entry.abstract, published=entry.published))
    except ValueError as error:
        return Skipped(entry.source, str(error))
