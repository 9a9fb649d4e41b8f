"""The gRPC API layer without a model: stub generation, and proto <-> pipeline conversions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from concurrent import futures
from datetime import date
from pathlib import Path

import grpc
import pytest

from papersearch.api import convert
from papersearch.api import generate as gen
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.corpus.paper import (
    GRAPHEME_JOINER,
    MAX_NON_STARTERS,
    Paper,
    clean_text,
    quoted,
    stream_safe,
)
from papersearch.index.query import Examples, Explanation, SearchFilter, StageRank
from papersearch.pipeline.query import (
    InvalidQuery,
    SearchHit,
    SearchQuery,
    SearchResult,
    StageScores,
)
from papersearch.settings import SearchSettings

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
LIMITS = SearchSettings()

PAPER = Paper(
    id="2401.00001",
    title="Efficient attention for long sequences",
    abstract="We study linear-time attention.",
    authors=("Ada Lovelace", "Alan Turing"),
    published=date(2024, 1, 2),
    categories=("cs.CL", "cs.LG"),
    url="https://arxiv.org/abs/2401.00001",
)


# --- generation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stubs")
    gen.generate(PROTO_ROOT, root)
    return root


def _run_python(code: str, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_generator_writes_importable_package(generated: Path, tmp_path: Path) -> None:
    v1 = generated / "papersearch" / "api" / "v1"
    names = {p.name for p in v1.iterdir()}
    assert {
        "__init__.py",
        "papersearch_pb2.py",
        "papersearch_pb2_grpc.py",
        "papersearch_pb2.pyi",
        "papersearch.proto",
    } <= names
    grpc_text = (v1 / "papersearch_pb2_grpc.py").read_text()
    assert "from papersearch.api.v1 import papersearch_pb2" in grpc_text
    assert "from papersearch.v1 import" not in grpc_text
    out = tmp_path / "descriptor.bin"
    code = (
        "from papersearch.api.v1 import papersearch_pb2 as pb, papersearch_pb2_grpc as g\n"
        f"assert pb.__file__.startswith({str(generated)!r}), pb.__file__\n"
        "assert pb.DESCRIPTOR.name == 'papersearch/v1/papersearch.proto'\n"
        "assert pb.DESCRIPTOR.package == 'papersearch.v1'\n"
        "assert g.SearchServiceStub and g.add_IndexServiceServicer_to_server\n"
        f"open({str(out)!r}, 'wb').write(pb.DESCRIPTOR.serialized_pb)\n"
    )
    proc = _run_python(code, generated)
    assert proc.returncode == 0, proc.stderr
    # The stubs this process imports (generated at install time) match the .proto on disk.
    assert pb.DESCRIPTOR.serialized_pb == out.read_bytes(), (
        "services/papersearch/api/v1 stubs are stale: run `make proto`"
    )
    # and the proto copy the OpenAPI text is read from: comments are not in the descriptors
    from papersearch.api import openapi

    assert openapi.PROTO.read_bytes() == (
        PROTO_ROOT / "papersearch" / "v1" / "papersearch.proto").read_bytes(), (
        "services/papersearch/api/v1/papersearch.proto is stale: run `make proto`")


def test_generator_is_idempotent(generated: Path) -> None:
    files = sorted((generated / "papersearch" / "api" / "v1").iterdir())
    before = {p: p.stat().st_mtime_ns for p in files}
    gen.generate(PROTO_ROOT, generated)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_generator_rejects_misplaced_proto(tmp_path: Path) -> None:
    (tmp_path / "proto" / "other").mkdir(parents=True)
    (tmp_path / "proto" / "other" / "x.proto").write_text('syntax = "proto3";\npackage other;\n')
    with pytest.raises(gen.GenerationError, match="papersearch/<version>"):
        gen.generate(tmp_path / "proto", tmp_path / "out")
    with pytest.raises(gen.GenerationError, match="no .proto files"):
        gen.generate(tmp_path / "out", tmp_path / "out")


def test_generator_reports_protoc_errors(tmp_path: Path) -> None:
    bad = tmp_path / "proto" / "papersearch" / "v9"
    bad.mkdir(parents=True)
    (bad / "broken.proto").write_text('syntax = "proto3";\nmessage {\n')
    with pytest.raises(gen.GenerationError, match="protoc failed"):
        gen.generate(tmp_path / "proto", tmp_path / "out")


def test_generator_cli(tmp_path: Path) -> None:
    assert gen.main(["--proto-root", str(PROTO_ROOT), "--package-root", str(tmp_path)]) == 0
    assert (tmp_path / "papersearch" / "api" / "v1" / "papersearch_pb2.py").is_file()


# --- search requests -----------------------------------------------------------------------


def test_search_defaults() -> None:
    query = convert.search_query_from_proto(pb.SearchRequest(query="attention"), LIMITS)
    assert query.text == "attention"
    assert query.top_k == 10
    assert query.mode == "hybrid"
    assert query.rerank is True
    assert query.filter == SearchFilter()


def test_feedback_unset_true_false() -> None:
    """Unset: the server's index.prf_enabled (None); set either way: kept, both directions."""
    assert convert.search_query_from_proto(pb.SearchRequest(query="q"), LIMITS).feedback is None
    assert not convert.search_query_to_proto(SearchQuery("q")).HasField("feedback")
    for wanted in (True, False):
        query = convert.search_query_from_proto(pb.SearchRequest(query="q", feedback=wanted),
                                                LIMITS)
        assert query.feedback is wanted
        assert convert.search_query_to_proto(query).feedback is wanted


def test_default_top_k_follows_settings() -> None:
    limits = SearchSettings(default_top_k=5, max_top_k=20)
    assert convert.search_query_from_proto(pb.SearchRequest(query="q"), limits).top_k == 5
    assert (
        convert.search_query_from_proto(pb.SearchRequest(query="q", top_k=20), limits).top_k == 20
    )
    with pytest.raises(InvalidQuery, match=r"between 1 and 20 \(0 means the default, 5\), got 21"):
        convert.search_query_from_proto(pb.SearchRequest(query="q", top_k=21), limits)


@pytest.mark.parametrize("rerank", [True, False])
def test_explicit_rerank(rerank: bool) -> None:
    request = pb.SearchRequest(query="q", rerank=rerank)
    assert request.HasField("rerank")
    assert convert.search_query_from_proto(request, LIMITS).rerank is rerank


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (pb.MODE_UNSPECIFIED, "hybrid"),
        (pb.MODE_HYBRID, "hybrid"),
        (pb.MODE_DENSE, "dense"),
        (pb.MODE_SPARSE, "sparse"),
    ],
)
def test_modes(mode: int, expected: str) -> None:
    request = pb.SearchRequest(query="q", mode=mode)
    assert convert.search_query_from_proto(request, LIMITS).mode == expected


def test_full_request_and_round_trip() -> None:
    request = pb.SearchRequest(
        query="  sparse retrieval ",
        top_k=100,
        mode=pb.MODE_SPARSE,
        rerank=False,
        filter=pb.Filter(
            published_from="2023-01-01",
            published_to=" 2023-12-31 ",
            categories=["cs.IR", " ", "cs.CL "],
            authors=["Ada Lovelace", ""],
        ),
    )
    wire = pb.SearchRequest.FromString(request.SerializeToString())
    query = convert.search_query_from_proto(wire, LIMITS)
    assert query.top_k == 100 and query.mode == "sparse" and query.rerank is False
    assert query.filter == SearchFilter(
        published_from=date(2023, 1, 1),
        published_to=date(2023, 12, 31),
        categories=("cs.IR", "cs.CL"),
        authors=("Ada Lovelace",),
    )
    again = convert.search_query_from_proto(convert.search_query_to_proto(query), LIMITS)
    assert again == query


def _search(**fields: object) -> pb.SearchRequest:
    return pb.SearchRequest(**{"query": "q", **fields})


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.SearchRequest(), "query must not be empty"),
        (_search(query=" \n\t"), "query must not be empty"),
        (_search(query="\u200b\x00 \u2060\ufeff"), "query must not be empty: it holds only"),
        (_search(query="x" * 2049), "query is 2049 characters; the limit is 2048"),
        # within the limit as sent, three times it once NFC decomposes each (U+FB2C)
        (_search(query="\ufb2c" * 2048),
         r"query is 6144 characters once normalised \(NFC\); the limit is 2048"),
        (_search(top_k=-1), r"top_k must be between 1 and 100 \(0 means the default, 10\), got -1"),
        (_search(top_k=101), r"top_k must be between 1 and 100 .*got 101"),
        (
            _search(mode=7),
            "unknown mode 7; use one of MODE_UNSPECIFIED, MODE_HYBRID, MODE_DENSE, MODE_SPARSE",
        ),
        (
            _search(filter=pb.Filter(published_from="2024/01/01")),
            "filter.published_from must be a date as YYYY-MM-DD, got '2024/01/01'",
        ),
        (
            _search(filter=pb.Filter(published_from="20240101")),
            "filter.published_from must be a date as YYYY-MM-DD, got '20240101'",
        ),
        (
            _search(filter=pb.Filter(published_to="2024-01-01T00:00:00")),
            "filter.published_to must be a date as YYYY-MM-DD",
        ),
        (
            _search(filter=pb.Filter(published_to="2023-02-29")),
            "filter.published_to is not a valid date: '2023-02-29'",
        ),
        (
            _search(filter=pb.Filter(published_from="2024-03-01", published_to="2024-02-01")),
            r"filter.published_from \(2024-03-01\) is after filter.published_to \(2024-02-01\)",
        ),
    ],
)
def test_invalid_search_requests(request_: pb.SearchRequest, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        convert.search_query_from_proto(request_, LIMITS)


def test_invalid_query_is_a_value_error() -> None:
    assert issubclass(InvalidQuery, ValueError)


def test_open_ended_date_ranges() -> None:
    only_from = convert.filter_from_proto(pb.Filter(published_from="2024-01-01"))
    assert only_from.published_from == date(2024, 1, 1) and only_from.published_to is None
    same_day = convert.filter_from_proto(
        pb.Filter(published_from="2024-01-01", published_to="2024-01-01")
    )
    assert same_day.published_range() == ("2024-01-01", "2024-01-02")
    assert convert.filter_to_proto(same_day) == pb.Filter(
        published_from="2024-01-01", published_to="2024-01-01"
    )


def test_explanation_round_trips() -> None:
    why = Explanation(StageRank(3, 0.61), StageRank(None, None), StageRank(1, 0.95),
                      "convex: ...", {"dense_weight": 0.6, "bm25_rank": 2.0},
                      (("attention", 3.5), ("long", 1.25)), StageRank(2, 3.9))
    assert convert.explanation_from_proto(convert.explanation_to_proto(why)) == why
    query = convert.search_query_from_proto(pb.SearchRequest(query="q", explain=True), LIMITS)
    assert query.explain and convert.search_query_to_proto(query).explain
    assert not convert.search_query_from_proto(pb.SearchRequest(query="q"), LIMITS).explain


def test_recommendation_requests() -> None:
    request = pb.SimilarPapersRequest(
        paper_id="a", positive_ids=["b", "a", " b "], negative_ids=["c"],
        strategy=pb.RECOMMEND_STRATEGY_BEST_SCORE, top_k=3)
    query = convert.similar_query_from_proto(request, LIMITS)
    assert query.examples == Examples(("a", "b"), ("c",), "best_score") and query.top_k == 3
    assert convert.similar_query_from_proto(convert.similar_query_to_proto(query),
                                            LIMITS) == query  # the client's side round-trips
    only_positive_ids = convert.similar_query_from_proto(
        pb.SimilarPapersRequest(positive_ids=["x", "y"]), LIMITS)
    assert only_positive_ids.examples == Examples(("x", "y"))  # strategy: the index's
    assert convert.similar_query_to_proto(only_positive_ids).strategy == 0
    repeated = pb.SimilarPapersRequest(paper_id="a", positive_ids=["a"] * 20)  # limit 16
    assert convert.similar_query_from_proto(repeated, LIMITS).examples == Examples(("a",))
    # 16 papers, one of them also written with a space: 16, not 17 (it was refused)
    spelled = pb.SimilarPapersRequest(positive_ids=[f"x{i}" for i in range(16)] + [" x0"])
    assert len(convert.similar_query_from_proto(spelled, LIMITS).examples.positive) == 16
    for bad, match in [
        (pb.SimilarPapersRequest(paper_id="a", negative_ids=["a"]), "both a positive and"),
        (pb.SimilarPapersRequest(paper_id="a", strategy=9), "unknown strategy 9"),
        (pb.SimilarPapersRequest(paper_id="a", positive_ids=[" "]), r"positive_ids\[0\]"),
        (pb.SimilarPapersRequest(paper_id="a", negative_ids=["x", " ", "y", " "]),
         r"negative_ids\[1\]"),  # a repeated bad id: named by its first position
        (pb.SimilarPapersRequest(paper_id="a", negative_ids=[f"n{i}" for i in range(16)]),
         "17 example papers .* limit is 16"),
        (pb.SimilarPapersRequest(paper_id="a", negative_ids=[f"n{i}" for i in range(99)]),
         "100 example papers .* limit is 16"),  # past 4 x the limit: before normalising
    ]:
        with pytest.raises(InvalidQuery, match=match):
            convert.similar_query_from_proto(bad, LIMITS)


def test_a_repeated_example_id_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request may repeat an id a million times within its byte limit (the limit counts
    distinct ids): each distinct one is checked once, not each copy on the event loop."""
    checked: list[str] = []

    def counting(value: str, field_name: str) -> str:
        checked.append(value)
        return value.strip()

    monkeypatch.setattr(convert, "checked_id", counting)
    request = pb.SimilarPapersRequest(paper_id="a", positive_ids=["b"] * 4_999,
                                      negative_ids=["c"] * 5_000)  # MAX_EXAMPLE_IDS in all
    assert convert.similar_query_from_proto(request, LIMITS).examples == \
        Examples(("a", "b"), ("c",))
    assert sorted(checked) == ["a", "b", "c"]


def test_examples_given_one_str_are_refused_not_split_into_characters() -> None:
    """Examples("p1") (the client's similar(Examples(...))) was the papers 'p' and '1':
    NOT_FOUND for 'p', or recommendations seeded by other papers where such ids exist."""
    for given in ({"positive": "p1"}, {"positive": ("p1",), "negative": "p2"}):
        with pytest.raises(TypeError, match=r"paper ids \(a tuple\), not one str: \('p"):
            Examples(**given)  # type: ignore[arg-type]
    assert Examples(["p1", "p1"], ["p2"]).positive == ("p1",)  # any sequence of ids


def test_a_filter_given_one_str_or_a_datetime_is_refused_not_misread() -> None:
    """SearchFilter(categories="cs.LG") was five one-letter categories (no hits, no error);
    a datetime (a date to the type checker) moved the inclusive range by its hours in
    process and was refused by the gateway in a format the user never wrote; a str date
    failed inside the client with an AttributeError."""
    from datetime import datetime

    for given, said in (({"categories": "cs.LG"}, r"categories: names \(a tuple\), not one "
                                                  r"str: \('cs.LG',\)"),
                        ({"authors": ("Ada", None)}, "authors: names are str, got None"),
                        ({"published_from": datetime(2024, 5, 5, 12)},
                         r"published_from: a datetime.date \(a day\), got datetime"),
                        ({"published_to": "2024-05-05"}, "published_to: .* got str")):
        with pytest.raises(TypeError, match=said):
            SearchFilter(**given)  # type: ignore[arg-type]
    assert SearchFilter(categories=["cs.LG"]).categories == ("cs.LG",)  # any sequence
    assert SearchFilter(date(2024, 5, 5), date(2024, 5, 5)).published_range() == (
        "2024-05-05", "2024-05-06")


def test_a_flood_of_ids_is_refused_by_its_count() -> None:
    """600,000 distinct example ids (4 MiB) took 0.2 s on the event loop to tell apart before
    being refused; DeletePapers and filters copied theirs first. Now the lengths decide."""
    flood = [f"x{i}" for i in range(convert.MAX_EXAMPLE_IDS)]
    with pytest.raises(InvalidQuery, match=r"10001 example ids .* at most 10000 per request"):
        convert.similar_query_from_proto(pb.SimilarPapersRequest(paper_id="a", negative_ids=flood),
                                         LIMITS)
    with pytest.raises(InvalidQuery, match="at most 10000 paper_ids per request, got 10001"):
        convert.paper_ids_from_proto([*flood, "y"])


def test_similar_papers_request() -> None:
    similar = convert.similar_query_from_proto(
        pb.SimilarPapersRequest(paper_id=" 2401.00001 ", filter=pb.Filter(categories=["cs.CL"])),
        LIMITS,
    )
    assert similar == convert.SimilarQuery(Examples(("2401.00001",)), 10,
                                           SearchFilter(categories=("cs.CL",)))
    with pytest.raises(InvalidQuery, match="paper_id must not be empty"):
        convert.similar_query_from_proto(pb.SimilarPapersRequest(negative_ids=["b"]), LIMITS)
    with pytest.raises(InvalidQuery, match="top_k must be between 1 and 100"):
        convert.similar_query_from_proto(pb.SimilarPapersRequest(paper_id="a", top_k=500), LIMITS)
    with pytest.raises(InvalidQuery, match="filter.published_to must be a date"):
        convert.similar_query_from_proto(
            pb.SimilarPapersRequest(paper_id="a", filter=pb.Filter(published_to="yesterday")),
            LIMITS,
        )


def test_delete_ids() -> None:
    assert convert.paper_ids_from_proto(["b", " a ", "b"]) == ("b", "a")
    with pytest.raises(InvalidQuery, match="paper_ids must not be empty"):
        convert.paper_ids_from_proto([])
    with pytest.raises(InvalidQuery, match=r"paper_ids\[1\] must not be empty"):
        convert.paper_ids_from_proto(["a", "  "])
    with pytest.raises(InvalidQuery, match="at most 10000 paper_ids per request, got 10001"):
        convert.paper_ids_from_proto(["x"] * 10_001)


# --- papers and responses ------------------------------------------------------------------


def test_paper_round_trip() -> None:
    message = convert.paper_to_proto(PAPER)
    assert message.paper_id == "2401.00001" and message.published == "2024-01-02"
    wire = pb.Paper.FromString(message.SerializeToString())
    assert convert.paper_from_proto(wire) == PAPER


def test_minimal_paper_round_trip() -> None:
    paper = Paper(id="p1", title="", abstract="Only an abstract.")
    message = convert.paper_to_proto(paper)
    assert message.published == "" and message.url == "" and not message.title
    back = convert.paper_from_proto(message)
    assert back == paper and back.published is None and back.url is None


@pytest.mark.parametrize("paper", [PAPER, Paper(id="p1", title="", abstract="Only an abstract.")])
def test_stored_paper_from_proto_takes_a_response_as_sent(paper: Paper) -> None:
    wire = pb.Paper.FromString(convert.paper_to_proto(paper).SerializeToString())
    assert convert.stored_paper_from_proto(wire) == paper


def test_stored_paper_from_proto_does_not_clean_again() -> None:
    # no second cleaning on the client: what the service stored comes back unchanged
    raw = pb.Paper(paper_id="p2", title="Caf\u0065\u0301  x", abstract="a")
    assert convert.stored_paper_from_proto(raw).title == "Caf\u0065\u0301  x"


def test_paper_from_proto_cleans_like_the_readers() -> None:
    paper = convert.paper_from_proto(
        pb.Paper(
            paper_id="  p2 ",
            title="  A\u200b  title\n",
            abstract="",
            authors=[" Ada ", ""],
            categories=["", "cs.CL"],
            published=" 2020-02-29 ",
            url="  ",
        )
    )
    assert paper == Paper(
        id="p2",
        title="A title",
        abstract="",
        authors=("Ada",),
        categories=("cs.CL",),
        published=date(2020, 2, 29),
    )
    assert paper.url is None


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (pb.Paper(title="t"), "paper_id must not be empty"),
        (pb.Paper(paper_id="   ", title="t"), "paper_id must not be empty"),
        (pb.Paper(paper_id="p"), "paper 'p' has neither title nor abstract"),
        (
            pb.Paper(paper_id="p", title=" ", abstract="\n"),
            "paper 'p' has neither title nor abstract",
        ),
        (
            pb.Paper(paper_id="p", title="t", published="2024-13-01"),
            r"paper 'p': published is not a valid date: '2024-13-01'",
        ),
        (
            pb.Paper(paper_id="p", title="t", published="Jan 2024"),
            "paper 'p': published must be a date as YYYY-MM-DD, got 'Jan 2024'",
        ),
    ],
)
def test_invalid_papers(message: pb.Paper, error: str) -> None:
    with pytest.raises(InvalidQuery, match=error):
        convert.paper_from_proto(message)


# --- limits: at and just past every boundary -----------------------------------------------


def _paper(**fields: object) -> pb.Paper:
    return pb.Paper(**{"paper_id": "p", "title": "t", **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "error"), [
    ({"paper_id": "x" * 257}, "paper_id is 257 bytes in UTF-8; the limit is 256"),
    ({"paper_id": "\u00e9" * 129}, "paper_id is 258 bytes in UTF-8; the limit is 256"),
    # refused by its length before NFC: its run of marks made that cost seconds
    ({"paper_id": "a" + "\u0301" * 40_000},
     "paper_id is 40001 characters; the limit is 256 bytes in UTF-8"),
    ({"title": "x" * 1001}, "title is 1001 characters; the limit is 1000"),
    ({"abstract": "x" * 20_001}, "abstract is 20001 characters; the limit is 20000"),
    ({"authors": ["a"] * 101}, "authors has 101 entries; the limit is 100"),
    ({"categories": ["c"] * 101}, "categories has 101 entries; the limit is 100"),
    ({"authors": ["a", "x" * 257]}, r"authors\[1\] is 257 characters; the limit is 256"),
    ({"categories": ["x" * 257]}, r"categories\[0\] is 257 characters; the limit is 256"),
    ({"url": "h" * 2049}, "url is 2049 characters; the limit is 2048"),
], ids=["id-257", "id-258-bytes-129-chars", "id-40001-chars-unnormalised", "title-1001",
        "abstract-20001", "authors-101", "categories-101", "author-257", "category-257",
        "url-2049"])
def test_paper_fields_just_past_their_limits(fields: dict[str, object], error: str) -> None:
    with pytest.raises(InvalidQuery, match=error):
        convert.paper_from_proto(_paper(**fields))


def test_paper_fields_at_their_limits() -> None:
    paper = convert.paper_from_proto(_paper(
        paper_id="\u00e9" * 128, title="x" * 1000, abstract="y" * 20_000,
        authors=[f"author {i}" for i in range(99)] + ["a" * 256],
        categories=[f"cat.{i}" for i in range(99)] + ["c" * 256], url="h" * 2048,
    ))
    assert len(paper.id.encode()) == 256 and len(paper.title) == 1000
    assert len(paper.abstract) == 20_000 and paper.url == "h" * 2048
    assert len(paper.authors) == len(paper.categories) == 100


CONTROLS = pytest.mark.parametrize(
    "char", ["\x00", "\x1b", "\u202e", "\u200b", "\t", "\x7f"],
    ids=["nul", "esc", "rtl-override", "zero-width-space", "tab", "del"])


@CONTROLS
def test_control_characters_in_a_paper_id_are_rejected(char: str) -> None:
    with pytest.raises(InvalidQuery, match=rf"paper_id contains the control character "
                                           rf"U\+{ord(char):04X}") as info:
        convert.paper_from_proto(_paper(paper_id=f"a{char}b"))
    assert char not in str(info.value)  # escaped, as repr does


@CONTROLS
@pytest.mark.parametrize("field", ["authors", "categories", "url"])
def test_names_and_urls_are_cleaned_as_ingest_cleans_them(field: str, char: str) -> None:
    """A name holding a control or format character is cleaned as `papersearch ingest`
    stores it (clean_text: dropped, a tab a space), in a paper and in a filter: the whole
    paper was refused here, and a filter for a name copied with a bidi mark could not match."""
    value = f"a{char}b"
    expected = clean_text(value)
    assert expected in ("ab", "a b")
    paper = convert.paper_from_proto(
        _paper(**{field: [value] if field in ("authors", "categories") else value}))
    assert getattr(paper, field) == (expected if field == "url" else (expected,))
    if field != "url":
        found = convert.filter_from_proto(pb.Filter(**{field: [value]}))
        assert getattr(found, field) == (expected,)


def test_a_name_is_composed_after_its_invisible_characters_go() -> None:
    """Control characters are dropped before NFC: a zero-width space or soft hyphen between
    a letter and its accent blocked the composition, and the stored name matched no filter."""
    name = "Jose\u200b\u0301 Garci\u00ad\u0301a"
    assert clean_text(name) == "Jos\u00e9 Garc\u00eda"
    paper = convert.paper_from_proto(_paper(authors=[name], title="Cafe\u200b\u0301"))
    assert paper.authors == ("Jos\u00e9 Garc\u00eda",) and paper.title == "Caf\u00e9"
    found = convert.filter_from_proto(pb.Filter(authors=["Jos\u00e9 Garc\u00eda"]))
    assert found.authors == paper.authors


def test_non_starter_runs_of_combining_marks_are_split_before_normalising() -> None:
    """NFC sorts a run of combining marks by insertion: an abstract of "a" and 40,000 marks
    sorted against their order held the gateway's loop 6.6 s (quadratic in the run). Runs
    past MAX_NON_STARTERS get a grapheme joiner every that many marks (UAX #15's stream-safe
    form), normal text is left as it was, and the split is idempotent."""
    marks = sorted((chr(c) for c in range(0x300, 0x370) if unicodedata.combining(chr(c))),
                   key=lambda c: -unicodedata.combining(c))
    run = "".join(marks[i % len(marks)] for i in range(10 * MAX_NON_STARTERS + 5))
    safe = stream_safe("a" + run)
    assert safe.replace(GRAPHEME_JOINER, "") == "a" + run and safe.count(GRAPHEME_JOINER) == 10
    assert max(len(part) for part in safe[1:].split(GRAPHEME_JOINER)) == MAX_NON_STARTERS
    cleaned = clean_text("a" + run + " b")  # NFC makes two marks of a few (U+0344)
    runs = [len(part) for part in re.findall(r"[\u0300-\u034e\u0350-\u036f]+", cleaned)]
    assert max(runs) <= MAX_NON_STARTERS and cleaned.count(GRAPHEME_JOINER) >= 10
    assert cleaned.endswith(" b") and clean_text(cleaned) == cleaned
    assert stream_safe("a" + marks[0] * MAX_NON_STARTERS) == "a" + marks[0] * MAX_NON_STARTERS
    written = "Sch\u00f6nheit 1\u0302\u0323 \u0915\u094d\u0937 caf\u0065\u0301"
    assert stream_safe(written) == written
    paper = convert.paper_from_proto(_paper(abstract="a" + run))
    assert GRAPHEME_JOINER in paper.abstract


def test_the_runs_split_are_of_every_non_starter_and_only_those() -> None:
    """stream_safe's pattern is built from planes 0, 1 and 14 (fast, at first use): this
    Python's Unicode database has no non-starter elsewhere. A non-starter is a combining
    mark or a character that normalises to marks only (U+0F73, two in NFC; U+FF9E, one in
    NFKC), as UAX #15 counts them."""
    from papersearch.corpus.paper import _non_starter_runs

    run = re.compile(_non_starter_runs().pattern.removesuffix("++"))
    marks = {c for c in range(0x110000) if unicodedata.combining(chr(c)) or (
        (nfkd := unicodedata.normalize("NFKD", chr(c))) != chr(c)
        and all(unicodedata.combining(x) for x in nfkd))}
    assert {0x0301, 0x0F73, 0xFF9E} <= marks and 0x00E9 not in marks
    assert {c for c in range(0x110000) if run.fullmatch(chr(c))} == marks


def test_plain_text_skips_the_per_character_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASCII text holds no non-starter and printable text no control character: neither
    meets the pattern or the per-character scans (10,000 ids of 256 ASCII characters took
    0.37-0.63 s of the event loop in them)."""
    from papersearch.corpus import paper
    from tests.module_stand_in import ModuleStandIn

    def never(*_: object) -> None:
        raise AssertionError("per-character work on plain text")

    monkeypatch.setattr(paper, "_non_starter_runs", never)
    assert clean_text("Graph  neural networks") == "Graph neural networks"
    assert convert.paper_id_from_proto("x" * 256) == "x" * 256
    monkeypatch.undo()
    monkeypatch.setattr(paper, "unicodedata", ModuleStandIn(unicodedata, category=never))
    assert clean_text("Caf\u00e9 na\u00efve") == "Caf\u00e9 na\u00efve"
    assert convert.paper_id_from_proto("caf\u00e9-2024") == "caf\u00e9-2024"


@pytest.mark.parametrize("mark", ["\u0f73", "\u0344", "\uff9e"])
def test_characters_that_normalise_to_marks_are_split_too(mark: str) -> None:
    """U+0F73 has combining class 0 but is two marks in NFC: 80,000 of them in an abstract
    held the loop 27 s, the pattern of marks alone missing them. An id or a text stored is
    its own cleaned form (U+0344 is two marks in NFC: a second pass split the stored id,
    which then found no paper)."""
    cleaned = clean_text("a" + mark * 10_000)
    assert GRAPHEME_JOINER in cleaned and clean_text(cleaned) == cleaned
    assert max(map(len, unicodedata.normalize("NFKD", cleaned).split(GRAPHEME_JOINER))) <= 100
    stored = convert.paper_from_proto(_paper(paper_id="p" + mark * 16)).id
    assert convert.paper_id_from_proto(stored) == stored


def test_names_collapse_spaces_as_ingest_stores_them() -> None:
    # "Jane  Doe" (two spaces, or a no-break space) is the "Jane Doe" ingest stores and filters
    # name: UpsertPapers kept it as sent, so a filter or a re-ingest missed it
    paper = convert.paper_from_proto(_paper(authors=[" Jane  Doe ", "Li\u00a0Wei"],
                                            categories=["cs.CL  "]))
    assert paper.authors == ("Jane Doe", "Li Wei") and paper.categories == ("cs.CL",)
    assert clean_text("Li\u00a0Wei") == "Li Wei"
    names = convert.filter_from_proto(pb.Filter(authors=["Jane   Doe"]))
    assert names.authors == ("Jane Doe",)


def test_ids_are_nfc_normalised_everywhere() -> None:
    composed, decomposed = "caf\u00e9-2024", "cafe\u0301-2024"
    assert convert.paper_from_proto(_paper(paper_id=decomposed)).id == composed
    assert convert.paper_id_from_proto(decomposed) == composed
    assert convert.paper_ids_from_proto([composed, decomposed]) == (composed,)
    similar = convert.similar_query_from_proto(pb.SimilarPapersRequest(paper_id=decomposed),
                                               LIMITS)
    assert similar.examples.positive == (composed,)
    names = convert.filter_from_proto(pb.Filter(authors=["Jose\u0301"]))
    assert names.authors == ("Jos\u00e9",)


@pytest.mark.parametrize("field", ["categories", "authors"])
def test_filter_lists_at_and_past_the_limit(field: str) -> None:
    assert len(getattr(convert.filter_from_proto(pb.Filter(**{field: ["v"] * 100})), field)) == 100
    with pytest.raises(InvalidQuery, match=f"filter.{field} has 101 entries; the limit is 100"):
        convert.filter_from_proto(pb.Filter(**{field: ["v"] * 101}))
    # a name of nothing but control characters is blank once cleaned: dropped, as " " is
    assert getattr(convert.filter_from_proto(pb.Filter(**{field: ["\x00", " "]})), field) == ()


def test_query_at_and_past_its_limit() -> None:
    assert convert.search_query_from_proto(_search(query="q" * 2048), LIMITS).text == "q" * 2048
    with pytest.raises(InvalidQuery, match="query is 2049 characters; the limit is 2048"):
        convert.search_query_from_proto(_search(query="q" * 2049), LIMITS)


def test_dates_at_the_ends_of_the_calendar() -> None:
    flt = convert.filter_from_proto(pb.Filter(published_from="0001-01-01",
                                              published_to="9999-12-31"))
    assert (flt.published_from, flt.published_to) == (date.min, date.max)
    assert flt.published_range() == ("0001-01-01", None)
    assert SearchFilter(published_to=date.max).published_range() == ("0001-01-01", None)
    assert SearchFilter(date.max, date.max).published_range() == ("9999-12-31", None)
    with pytest.raises(InvalidQuery, match="filter.published_from is not a valid date"):
        convert.filter_from_proto(pb.Filter(published_from="0000-12-31"))


def test_error_messages_quote_a_short_escaped_prefix() -> None:
    hostile = "\u202e" + "x" * 10_000
    with pytest.raises(InvalidQuery) as info:
        convert.filter_from_proto(pb.Filter(published_to=hostile))
    message = str(info.value)
    assert len(message) < 200 and "\u202e" not in message and "\\u202e" in message
    assert "(10001 characters)" in message
    assert quoted("ab") == "'ab'" and quoted("a" * 65) == f"{'a' * 64!r}... (65 characters)"


def _result() -> SearchResult:
    other = Paper(id="p2", title="Second", abstract="")
    return SearchResult(
        hits=(
            SearchHit(PAPER, 0.9, StageScores(dense=0.8, sparse=12.5, fused=0.03, rerank=4.2)),
            SearchHit(other, 0.5, StageScores(dense=-0.1)),
        ),
        reranked=True,
        timings_ms={"encode": 1.5, "retrieve": 2.0, "rerank": 10.0, "total": 13.5},
        feedback=True,
    )


def test_search_response() -> None:
    response = convert.search_response_to_proto(_result())
    assert [h.paper.paper_id for h in response.hits] == ["2401.00001", "p2"]
    assert response.reranked is True and response.feedback is True
    assert dict(response.timings_ms) == {
        "encode": 1.5,
        "retrieve": 2.0,
        "rerank": 10.0,
        "total": 13.5,
    }
    first, second = response.hits
    assert first.score == pytest.approx(0.9)
    assert first.stages.rerank == pytest.approx(4.2)
    assert second.stages.HasField("dense") and second.stages.dense == pytest.approx(-0.1)
    for name in ("sparse", "fused", "rerank"):
        assert not second.stages.HasField(name)


def test_search_response_round_trip() -> None:
    result = _result()
    wire = pb.SearchResponse.FromString(
        convert.search_response_to_proto(result).SerializeToString()
    )
    assert convert.search_result_from_proto(wire) == result


def test_empty_search_response() -> None:
    response = convert.search_response_to_proto(SearchResult((), False, {}))
    assert list(response.hits) == [] and response.reranked is False
    assert response.feedback is False


def test_upsert_summary_caps_errors() -> None:
    errors = [f"#{i}: paper_id must not be empty" for i in range(1, 151)]
    summary = convert.upsert_summary_to_proto(received=200, upserted=50, errors=errors)
    assert (summary.received, summary.upserted, summary.skipped) == (200, 50, 150)
    assert len(summary.errors) == convert.MAX_UPSERT_ERRORS


# --- the generated gRPC module over a real (loopback) channel --------------------------------


class _Search(pb_grpc.SearchServiceServicer):
    def Search(self, request, context):  # noqa: N802 - gRPC method name
        try:
            query = convert.search_query_from_proto(request, LIMITS)
        except InvalidQuery as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        hit = SearchHit(PAPER, float(query.top_k), StageScores(dense=0.5))
        return convert.search_response_to_proto(SearchResult((hit,), query.rerank, {"total": 1.0}))


class _Index(pb_grpc.IndexServiceServicer):
    def UpsertPapers(self, request_iterator, context):  # noqa: N802
        received, errors = 0, []
        for received, message in enumerate(request_iterator, start=1):
            try:
                convert.paper_from_proto(message)
            except InvalidQuery as exc:
                errors.append(f"#{received}: {exc}")
        return convert.upsert_summary_to_proto(received, received - len(errors), errors)


def test_stubs_over_loopback() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SearchServiceServicer_to_server(_Search(), server)
    pb_grpc.add_IndexServiceServicer_to_server(_Index(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            search = pb_grpc.SearchServiceStub(channel)
            response = search.Search(pb.SearchRequest(query="q"), timeout=10)
            assert response.hits[0].score == 10.0 and response.reranked is True
            with pytest.raises(grpc.RpcError) as failure:
                search.Search(pb.SearchRequest(query="q", top_k=1000), timeout=10)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "top_k must be between 1 and 100" in failure.value.details()
            papers = [convert.paper_to_proto(PAPER), pb.Paper(paper_id="bad")]
            summary = pb_grpc.IndexServiceStub(channel).UpsertPapers(iter(papers), timeout=10)
            assert (summary.received, summary.upserted, summary.skipped) == (2, 1, 1)
            assert summary.errors == ["#2: paper 'bad' has neither title nor abstract"]
    finally:
        server.stop(grace=None)


def test_messages_pickle_by_their_real_module() -> None:
    """Ray pickles messages by reference: their __module__ must be importable."""
    import pickle

    request = pb.SearchRequest(query="graph neural networks", top_k=3)
    assert type(request).__module__ == "papersearch.api.v1.papersearch_pb2"
    assert pickle.loads(pickle.dumps(request)) == request


def test_a_watch_is_checked_against_the_servers_top_k_limits() -> None:
    """WatchSearch has no top_k: its query was built with top_k 10, refused by a server whose
    max_top_k is below 10 ("top_k must be between 1 and 5, got 10" on every watch)."""
    settings = SearchSettings(default_top_k=5, max_top_k=5)
    query = convert.watch_query_from_proto(pb.WatchSearchRequest(query="x"), settings, 0.25)
    assert query.text == "x" and query.replay_limit == 5


@pytest.mark.parametrize("field", ["authors", "categories", "url", "title", "abstract"])
def test_a_value_far_past_its_limit_is_refused_before_it_is_cleaned(
    field: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 4 MiB author, category, url, title or abstract was NFC-normalised and scanned per
    character in Python (~0.4 s of the gateway's event loop) before its length was checked;
    such a value is now refused without that work, while spaces that cleaning collapses
    (a value past its limit only before cleaning) still pass."""
    def not_huge(clean: Callable[..., str]) -> Callable[..., str]:
        def checked(text: str, *args: str) -> str:
            assert len(text) < 1 << 20, "the huge value was cleaned"
            return clean(text, *args)
        return checked

    monkeypatch.setattr(convert, "clean_text", not_huge(convert.clean_text))
    huge = "a" * (4 << 20)
    message = _paper(**{field: [huge] if field in ("authors", "categories") else huge})
    name = f"{field}[0]" if field in ("authors", "categories") else field
    with pytest.raises(InvalidQuery, match=rf"{re.escape(name)} is {len(huge)} characters "
                                           "before cleaning; the limit is"):
        convert.paper_from_proto(message)
    with pytest.raises(InvalidQuery, match=r"authors\[0\] is .* before cleaning"):
        convert.filter_from_proto(pb.Filter(authors=[huge]))
    # spaces that cleaning collapses pass, cleaned as collapsed: 4 MB of them around two
    # letters took the per-character work whole (~1 s of the event loop a request)
    padded = "a" + " " * (4 << 20) + "b"
    message = _paper(**{field: [padded] if field in ("authors", "categories") else padded})
    assert getattr(convert.paper_from_proto(message), field) in ("a b", ("a b",))
    assert convert.filter_from_proto(pb.Filter(authors=[padded])).authors == ("a b",)
    monkeypatch.undo()
    spaced = "Jane" + " " * 5000 + "Doe"
    assert convert.paper_from_proto(_paper(authors=[spaced])).authors == ("Jane Doe",)
