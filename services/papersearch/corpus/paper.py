"""The paper record corpus readers yield and the index stores, plus skip and duplicate notes."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

# Fixed namespace: point ids are uuid5(namespace, paper id), so re-ingesting is idempotent.
PAPER_NAMESPACE = uuid.UUID("6f1c3b5e-8a4f-5d2e-9b7a-3c0d1e2f4a5b")


@dataclass(frozen=True, slots=True)
class Paper:
    """A research paper: only id, title and abstract are required."""

    id: str
    title: str
    abstract: str
    authors: tuple[str, ...] = ()
    published: date | None = None
    categories: tuple[str, ...] = ()
    url: str | None = None

    def __post_init__(self) -> None:
        if not self.id or not self.id.strip():
            raise ValueError("paper id must be a non-empty string")
        if not self.title.strip() and not self.abstract.strip():
            raise ValueError(f"paper {self.id!r} has neither title nor abstract")

    @property
    def point_id(self) -> str:
        return point_id(self.id)

    @property
    def text(self) -> str:
        """The text the document encoder and BM25 see: title and abstract."""
        if self.title and self.abstract:
            return f"{self.title}. {self.abstract}"
        return self.title or self.abstract


QUOTE_CHARS = 64  # the most of a client's value an error message repeats
MAX_PAPER_ID_BYTES = 256  # UTF-8, after NFC normalisation
# NUL, control characters, bidi overrides, ZW*; lone surrogates (JSON's "\ud800": no UTF-8
# form, so the tokenizer and the index failed on them)
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
# A paper's limits, the proto's (UpsertPapers refuses past them, ingest skips the record)
MAX_TITLE_CHARS = 1_000
MAX_ABSTRACT_CHARS = 20_000
MAX_NAMES = 100  # authors or categories, of a paper or of a search filter
# Unicode's Stream-Safe Text Format (UAX #15): at most this many non-starters (combining
# marks) in a row, U+034F COMBINING GRAPHEME JOINER put between longer runs. Normalisation
# sorts a run by insertion: its cost grows with the square of the run's length, and a long
# run held the gateway's event loop for seconds before its limit refused it (README: Results,
# Figures behind the limits).
MAX_NON_STARTERS = 30
GRAPHEME_JOINER = "\u034f"
MAX_NAME_CHARS = 256  # one author or category
MAX_URL_CHARS = 2_048


def quoted(value: str, limit: int = QUOTE_CHARS) -> str:
    """A client's value for an error message: escaped like repr, cut to ``limit`` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def checked_id(value: str, field_name: str = "paper id") -> str:
    """A paper id as every way in stores it: stripped and NFC-normalised (two encodings of one
    id are one paper); blank, over MAX_PAPER_ID_BYTES in UTF-8 or holding a control or format
    character (Cc/Cf) raises ValueError. The gateway's UpsertPapers and DeletePapers and the
    corpus readers of `papersearch ingest` share it."""
    stripped = value.strip()
    # the size first (len() costs no scan): NFC leaves at least a third of the characters
    # (three Hangul jamo make one syllable), each at least one byte
    if len(stripped) > 3 * MAX_PAPER_ID_BYTES:
        raise ValueError(f"{field_name} is {len(stripped)} characters; the limit is "
                         f"{MAX_PAPER_ID_BYTES} bytes in UTF-8")
    # split before NFC (its cost) and after (NFC makes two marks of a few): an id stored is
    # its own checked id
    text = stream_safe(unicodedata.normalize("NFC", stream_safe(stripped)))
    if not text:
        raise ValueError(f"{field_name} must not be empty")
    # a lone surrogate, which has no UTF-8 form, is sized as one would be and refused by the
    # scan that follows
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PAPER_ID_BYTES:
        raise ValueError(f"{field_name} is {size} bytes in UTF-8; the limit is "
                         f"{MAX_PAPER_ID_BYTES}")
    return without_controls(text, field_name)


def without_controls(text: str, field_name: str) -> str:
    """``text`` if it holds no control or format character (Cc/Cf: NUL, ESC, tabs, zero-width
    and bidi override characters), else ValueError naming the first one."""
    if text.isprintable():  # C speed: no Cc, Cf or Cs character (nor any other unprintable)
        return text
    bad = next((c for c in text if unicodedata.category(c) in CONTROL_CATEGORIES), None)
    if bad is not None:
        raise ValueError(f"{field_name} contains the control character U+{ord(bad):04X}: "
                         f"{quoted(text)}")
    return text


def within_limits(paper: Paper) -> Paper:
    """``paper`` if its fields are within the limits UpsertPapers enforces, else ValueError
    naming the first one past its limit: ingest stored what the API refuses."""
    for name, text, limit in (("title", paper.title, MAX_TITLE_CHARS),
                              ("abstract", paper.abstract, MAX_ABSTRACT_CHARS),
                              ("url", paper.url or "", MAX_URL_CHARS)):
        if len(text) > limit:
            raise ValueError(f"{name} is {len(text)} characters; the limit is {limit}")
    for name, names in (("authors", paper.authors), ("categories", paper.categories)):
        if len(names) > MAX_NAMES:
            raise ValueError(f"{len(names)} {name}; the limit is {MAX_NAMES}")
        longest = max(names, key=len, default="")
        if len(longest) > MAX_NAME_CHARS:
            raise ValueError(f"one of the {name} is {len(longest)} characters; the limit is "
                             f"{MAX_NAME_CHARS}")
    return paper


@lru_cache(maxsize=1 << 16)
def point_id(paper_id: str) -> str:
    """The paper's Qdrant point id (a UUID); cached: a search asks for its hits' ids again
    (uuid5 hashes with SHA-1)."""
    return str(uuid.uuid5(PAPER_NAMESPACE, paper_id))


def normalise_title(title: str) -> str:
    """Case-, accent- and punctuation-insensitive form of a title, used for ids and dedup.
    Accents and symbols outside ASCII are dropped, letters and digits without an ASCII form
    (Greek, CJK) kept: "α-Flow" and "β-Flow" are two papers."""
    decomposed = unicodedata.normalize("NFKD", title)
    text = "".join(c for c in decomposed if c.isascii() or c.isalnum())
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def clean_text(text: str) -> str:
    """Drop control and zero-width characters, then NFC-normalise and collapse whitespace (in
    that order: a soft hyphen or zero-width space between a letter and its combining accent,
    "e\u00ad\u0301", blocked the composition and left a stored text no NFC query matches).
    Runs of combining marks past MAX_NON_STARTERS are split (stream_safe) before, and again
    after (NFC makes two marks of a few, U+0344): a clean text is its own clean text."""
    kept = text if text.isprintable() else "".join(
        c for c in text if c.isspace() or unicodedata.category(c) not in CONTROL_CATEGORIES)
    return " ".join(stream_safe(unicodedata.normalize("NFC", stream_safe(kept))).split())


def stream_safe(text: str) -> str:
    """``text`` with a GRAPHEME_JOINER after every MAX_NON_STARTERS combining marks in a row
    (UAX #15's Stream-Safe Text Format): normalising it, now or later (NFKC for BM25 and the
    models, NFKD for titles), then costs time in proportion to its length. Text a person
    writes has no such run; nothing changes in it."""
    if text.isascii():  # no combining mark: the pattern's class costs time per character
        return text
    return _non_starter_runs().sub(_joined, text)


def _joined(run: re.Match[str]) -> str:
    marks = run.group()
    if len(marks) <= MAX_NON_STARTERS:
        return marks
    return GRAPHEME_JOINER.join(marks[i:i + MAX_NON_STARTERS]
                                for i in range(0, len(marks), MAX_NON_STARTERS))


@lru_cache(maxsize=1)
def _non_starter_runs() -> re.Pattern[str]:
    """Runs of non-starters (``_joined`` splits those past MAX_NON_STARTERS): characters of
    non-zero canonical combining class, and those that normalise to such characters only
    (U+0F73 is two marks in NFC, U+FF9E one in NFKC: missed, 80,000 of them held the loop
    27 s). Built on first use (~30 ms) from planes 0, 1 and 14: planes 2-3 are ideographs,
    15-16 private use, 4-13 unassigned, none a combining mark."""
    ranges: list[list[int]] = []  # [first, last] code points
    for plane in (range(0x20000), range(0xE0000, 0xE1000)):
        for code in plane:
            if not _non_starter(chr(code)):
                continue
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    marks = "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in ranges)
    # every run whole, once (possessive): "[...]{31,}" tried again at each mark of a run
    # of 30, a cost per character that adds up over a request of many such ids (README:
    # Results, Figures behind the limits)
    return re.compile(f"[{marks}]++")


def _non_starter(char: str) -> bool:
    return unicodedata.combining(char) != 0 or (
        unicodedata.decomposition(char) != ""
        and all(unicodedata.combining(c) for c in unicodedata.normalize("NFKD", char)))


def model_text(text: str) -> str:
    """What BM25 and the models see of a clean text: its NFKC form. Stored and shown texts
    keep their NFC form; their compatibility characters (ligatures such as "\ufb03" from PDF
    text, full-width letters from CJK input methods) are folded here for matching, where they
    had made BM25 terms no typed query holds and the models' tokenizers read them as [UNK]."""
    return unicodedata.normalize("NFKC", text)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An input record a reader could not turn into a paper."""

    source: str  # "file:line"
    reason: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A further occurrence of a paper already yielded in this read."""

    source: str  # "file:line"
    paper_id: str


ReadResult = Paper | Skipped | Duplicate
