"""Pure conversions between the papersearch.v1 protobuf messages and the pipeline's types.

Everything a client can get wrong raises :class:`InvalidQuery` (a ValueError) whose message
names the field; servers map it to INVALID_ARGUMENT. Nothing here does I/O or needs a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.corpus.paper import (
    MAX_ABSTRACT_CHARS,
    MAX_NAME_CHARS,
    MAX_NAMES,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    Paper,
    checked_id,
    clean_text,
    quoted,
)
from papersearch.index.query import Examples, Explanation, Mode, SearchFilter, StageRank
from papersearch.pipeline.query import (
    InvalidQuery,
    SearchHit,
    SearchQuery,
    SearchResult,
    StageScores,
)
from papersearch.settings import RecommendStrategy, SearchSettings

# Limits the proto documents and servers enforce (the query's is search.max_query_chars).
MAX_DELETE_IDS = 10_000
MAX_UPSERT_ERRORS = 100
# Trailing metadata of a failed UpsertPapers (the proto documents them): papers committed, and
# how many of the stream's first messages are done (written or skipped as invalid).
COMMITTED_KEY = "papersearch-committed"
COMMITTED_MESSAGES_KEY = "papersearch-committed-messages"

_MODES: dict[int, Mode] = {
    pb.MODE_UNSPECIFIED: "hybrid",
    pb.MODE_HYBRID: "hybrid",
    pb.MODE_DENSE: "dense",
    pb.MODE_SPARSE: "sparse",
}
_MODE_VALUES = {mode: pb.Mode.Name(value) for value, mode in _MODES.items()}  # by its name
_MODE_NAMES = ", ".join(pb.Mode.Name(v) for v in sorted(_MODES))
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class SimilarQuery:
    """A validated SimilarPapersRequest."""

    examples: Examples
    top_k: int = 10
    filter: SearchFilter = field(default_factory=SearchFilter)


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """A WatchSearch: ``min_relevance`` None means the server's default (validated requests
    always have one), ``replay_since`` None no replay."""

    text: str
    filter: SearchFilter = field(default_factory=SearchFilter)
    min_relevance: float | None = None
    replay_since: date | None = None
    replay_limit: int = 0  # 0: the server default (search.default_top_k)


# --- dates, ids, top_k ---------------------------------------------------------------------


def date_from_proto(value: str, field_name: str) -> date | None:
    """Parse a "YYYY-MM-DD" field: "" (or blank) -> None; anything else raises InvalidQuery."""
    text = value.strip()
    if not text:
        return None
    if not _ISO_DATE.fullmatch(text):
        raise InvalidQuery(f"{field_name} must be a date as YYYY-MM-DD, got {quoted(value)}")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidQuery(f"{field_name} is not a valid date: {quoted(value)} ({exc})") from None


def date_to_proto(value: date | None) -> str:
    return value.isoformat() if value is not None else ""


def top_k_from_proto(value: int, settings: SearchSettings) -> int:
    """0 -> settings.default_top_k; 1..settings.max_top_k as is; otherwise InvalidQuery."""
    if value == 0:
        return settings.default_top_k
    if not 1 <= value <= settings.max_top_k:
        raise InvalidQuery(
            f"top_k must be between 1 and {settings.max_top_k} "
            f"(0 means the default, {settings.default_top_k}), got {value}"
        )
    return value


def mode_from_proto(value: int) -> Mode:
    """A Mode enum number -> the pipeline's mode; MODE_UNSPECIFIED means hybrid."""
    try:
        return _MODES[value]
    except KeyError:
        raise InvalidQuery(f"unknown mode {value}; use one of {_MODE_NAMES}") from None


# Example ids past this many times search.max_similar_ids are refused before they are
# normalised (the limit counts distinct papers, two spellings of one id as one).
SIMILAR_IDS_SLACK = 4
# Ids a SimilarPapers request lists, repeats included: they are told apart on the event loop
# (README: Results, Figures behind the limits).
MAX_EXAMPLE_IDS = 10_000
# Cleaning (NFC, dropped control characters, collapsed spaces) shortens a text by less than
# this factor in practice: a value longer, spaces collapsed, than its limit times it is
# refused before the per-character work (a huge author name held the gateway's event loop,
# every other call waiting: README, Results, Figures behind the limits).
CLEANING_SLACK = 4


def _not_far_past(value: str, field_name: str, max_chars: int) -> str:
    """``value``, its runs of spaces made one when it is long (C speed; clean_text does the
    same, so its result is unchanged): 4 MB of spaces around two letters passed this check
    and then took clean_text's per-character work, ~1 s of the event loop a request."""
    if len(value) <= CLEANING_SLACK * max_chars:
        return value
    collapsed = " ".join(value.split())
    if len(collapsed) > CLEANING_SLACK * max_chars:
        raise InvalidQuery(f"{field_name} is {len(collapsed)} characters before cleaning; the "
                           f"limit is {max_chars}")
    return collapsed


def identifier(value: str, field_name: str, max_chars: int) -> str:
    """A name (author, category) or url, cleaned as ingest stores names and as titles are
    (corpus/paper.clean_text: control and format characters dropped, a tab a space, runs of
    spaces one, NFC). A name the readers of `papersearch ingest` stored cleaned had the whole
    paper refused here, and a filter for a name copied with a bidi mark (U+200E) was refused
    where it can match. More than ``max_chars`` characters raises InvalidQuery."""
    text = clean_text(_not_far_past(value, field_name, max_chars))
    if len(text) > max_chars:
        raise InvalidQuery(f"{field_name} is {len(text)} characters; the limit is {max_chars}")
    return text


def paper_id_from_proto(value: str, field_name: str = "paper_id") -> str:
    """A required id, stripped and NFC-normalised (two encodings of one id are one paper); blank,
    over MAX_PAPER_ID_BYTES in UTF-8, or holding a control character raises InvalidQuery."""
    try:
        return checked_id(value, field_name)
    except ValueError as error:
        raise InvalidQuery(str(error)) from None


def paper_ids_from_proto(values: Sequence[str]) -> tuple[str, ...]:
    """DeletePapersRequest.paper_ids: non-empty, no blank id, at most MAX_DELETE_IDS, deduplicated
    (first occurrence order kept). Counted before any is read: a flood costs no copy."""
    if not values:
        raise InvalidQuery("paper_ids must not be empty")
    if len(values) > MAX_DELETE_IDS:
        raise InvalidQuery(f"at most {MAX_DELETE_IDS} paper_ids per request, got {len(values)}")
    cleaned = (paper_id_from_proto(value, f"paper_ids[{i}]") for i, value in enumerate(values))
    return tuple(dict.fromkeys(cleaned))


def names_from_proto(values: Sequence[str], field_name: str) -> tuple[str, ...]:
    """Authors or categories: at most MAX_NAMES, each an identifier of at most MAX_NAME_CHARS;
    blank ones dropped. Counted before any is read."""
    if len(values) > MAX_NAMES:
        raise InvalidQuery(f"{field_name} has {len(values)} entries; the limit is {MAX_NAMES}")
    cleaned = (identifier(v, f"{field_name}[{i}]", MAX_NAME_CHARS) for i, v in enumerate(values))
    return tuple(name for name in cleaned if name)


def text_from_proto(value: str, field_name: str, max_chars: int) -> str:
    """Title or abstract, cleaned (clean_text); over ``max_chars`` raises InvalidQuery."""
    text = clean_text(_not_far_past(value, field_name, max_chars))
    if len(text) > max_chars:
        raise InvalidQuery(f"{field_name} is {len(text)} characters; the limit is {max_chars}")
    return text


# --- filter and queries --------------------------------------------------------------------


def filter_from_proto(message: pb.Filter) -> SearchFilter:
    """Filter -> SearchFilter; malformed dates or from > to raise InvalidQuery."""
    published_from = date_from_proto(message.published_from, "filter.published_from")
    published_to = date_from_proto(message.published_to, "filter.published_to")
    if published_from and published_to and published_from > published_to:
        raise InvalidQuery(
            f"filter.published_from ({published_from.isoformat()}) is after "
            f"filter.published_to ({published_to.isoformat()})"
        )
    return SearchFilter(
        published_from=published_from,
        published_to=published_to,
        categories=names_from_proto(message.categories, "filter.categories"),
        authors=names_from_proto(message.authors, "filter.authors"),
    )


def filter_to_proto(search_filter: SearchFilter) -> pb.Filter:
    return pb.Filter(
        published_from=date_to_proto(search_filter.published_from),
        published_to=date_to_proto(search_filter.published_to),
        categories=list(search_filter.categories),
        authors=list(search_filter.authors),
    )


def search_query_from_proto(request: pb.SearchRequest, settings: SearchSettings) -> SearchQuery:
    """SearchRequest -> a validated SearchQuery.

    top_k 0 means settings.default_top_k, an unset rerank means True (the pipeline still
    honours settings.rerank_enabled), MODE_UNSPECIFIED means hybrid, an unset min_relevance
    means no cut-off, an unset feedback the server's index.prf_enabled. Raises InvalidQuery.
    """
    query = SearchQuery(
        text=request.query,
        top_k=top_k_from_proto(request.top_k, settings),
        mode=mode_from_proto(request.mode),
        rerank=request.rerank if request.HasField("rerank") else True,
        filter=filter_from_proto(request.filter),
        min_relevance=request.min_relevance if request.HasField("min_relevance") else None,
        explain=request.explain,
        feedback=request.feedback if request.HasField("feedback") else None,
    )
    return query.validate(settings)


def search_query_to_proto(query: SearchQuery) -> pb.SearchRequest:
    """SearchQuery -> SearchRequest (for clients); rerank is always set explicitly,
    min_relevance and feedback only when the query has them."""
    return pb.SearchRequest(
        query=query.text,
        top_k=query.top_k,
        mode=_MODE_VALUES[query.mode],
        rerank=query.rerank,
        filter=filter_to_proto(query.filter),
        min_relevance=query.min_relevance,
        explain=query.explain,
        feedback=query.feedback,
    )


_STRATEGIES: dict[pb.RecommendStrategy, RecommendStrategy] = {
    pb.RECOMMEND_STRATEGY_AVERAGE_VECTOR: "average_vector",
    pb.RECOMMEND_STRATEGY_BEST_SCORE: "best_score",
    pb.RECOMMEND_STRATEGY_SUM_SCORES: "sum_scores",
}


def similar_query_from_proto(
    request: pb.SimilarPapersRequest, settings: SearchSettings
) -> SimilarQuery:
    """SimilarPapersRequest -> SimilarQuery: paper_id and positive_ids are the positive
    examples (at least one), negative_ids the negative ones, at most
    settings.max_similar_ids in all; an unset strategy is the index's recommend_strategy.
    Raises InvalidQuery."""
    def too_many(given: int) -> InvalidQuery:
        return InvalidQuery(f"{given} example papers (paper_id, positive_ids, negative_ids); "
                            f"the limit is {settings.max_similar_ids} (search.max_similar_ids)")

    listed = bool(request.paper_id) + len(request.positive_ids) + len(request.negative_ids)
    if listed > MAX_EXAMPLE_IDS:  # counted, not read: telling a flood of ids apart is slow
        raise InvalidQuery(f"{listed} example ids (paper_id, positive_ids, negative_ids); at "
                           f"most {MAX_EXAMPLE_IDS} per request, repeats included")
    given = len({request.paper_id, *request.positive_ids, *request.negative_ids} - {""})
    if given > SIMILAR_IDS_SLACK * settings.max_similar_ids:  # a flood: not normalised first
        raise too_many(given)
    positive = [paper_id_from_proto(request.paper_id)] if request.paper_id else []
    positive += _distinct_ids(request.positive_ids, "positive_ids")
    if not positive:
        raise InvalidQuery("paper_id must not be empty (or give positive_ids)")
    negative = _distinct_ids(request.negative_ids, "negative_ids")
    # distinct papers: a repeated id counts once, also written another way (" x", NFD)
    if (distinct := len({*positive, *negative})) > settings.max_similar_ids:
        raise too_many(distinct)
    strategy: RecommendStrategy | None = None  # unspecified: the index's default
    if request.strategy in _STRATEGIES:
        strategy = _STRATEGIES[request.strategy]
    elif request.strategy != pb.RECOMMEND_STRATEGY_UNSPECIFIED:
        names = ", ".join(pb.RecommendStrategy.Name(v) for v in sorted(_STRATEGIES))
        raise InvalidQuery(f"unknown strategy {request.strategy}; use one of {names}")
    try:
        examples = Examples(tuple(positive), tuple(negative), strategy)
    except ValueError as error:
        raise InvalidQuery(str(error)) from None
    return SimilarQuery(examples, top_k_from_proto(request.top_k, settings),
                        filter_from_proto(request.filter))


def _distinct_ids(values: Sequence[str], field_name: str) -> list[str]:
    """Each distinct id of ``values`` checked once (a request may repeat one a million times
    within its byte limit); an invalid one is named by its first position."""
    ids = []
    for value in dict.fromkeys(values):
        try:
            ids.append(checked_id(value, field_name))
        except ValueError:  # checked again to name its first position: raises InvalidQuery
            paper_id_from_proto(value, f"{field_name}[{list(values).index(value)}]")
            raise
    return ids


def similar_query_to_proto(query: SimilarQuery) -> pb.SimilarPapersRequest:
    """The client's side: positives after the first go to positive_ids."""
    codes = {name: code for code, name in _STRATEGIES.items()}
    examples = query.examples
    return pb.SimilarPapersRequest(
        paper_id=examples.positive[0], positive_ids=examples.positive[1:],
        negative_ids=examples.negative, top_k=query.top_k,
        filter=filter_to_proto(query.filter),
        strategy=(pb.RECOMMEND_STRATEGY_UNSPECIFIED if examples.strategy is None
                  else codes[examples.strategy]))


def watch_query_from_proto(request: pb.WatchSearchRequest, settings: SearchSettings,
                           default_min_relevance: float) -> WatchQuery:
    """WatchSearchRequest -> WatchQuery: the query, filter and min_relevance checked as
    Search's (an unset min_relevance: ``default_min_relevance``); replay_limit 0 means
    settings.default_top_k. Raises InvalidQuery."""
    min_relevance = (request.min_relevance if request.HasField("min_relevance")
                     else default_min_relevance)
    query = SearchQuery(text=request.query, top_k=settings.default_top_k, mode="dense",
                        filter=filter_from_proto(request.filter),
                        min_relevance=min_relevance).validate(settings)
    limit = request.replay_limit or settings.default_top_k
    if not 1 <= limit <= settings.max_top_k:
        raise InvalidQuery(
            f"replay_limit must be between 1 and {settings.max_top_k} "
            f"(0 means the default, {settings.default_top_k}), got {request.replay_limit}"
        )
    return WatchQuery(query.text, query.filter, min_relevance,
                      date_from_proto(request.replay_since, "replay_since"), limit)


def watch_query_to_proto(query: WatchQuery) -> pb.WatchSearchRequest:
    """WatchQuery -> WatchSearchRequest (for clients); min_relevance set only if given."""
    return pb.WatchSearchRequest(
        query=query.text, filter=filter_to_proto(query.filter),
        min_relevance=query.min_relevance, replay_since=date_to_proto(query.replay_since),
        replay_limit=query.replay_limit,
    )


# --- papers and results --------------------------------------------------------------------


def paper_to_proto(paper: Paper) -> pb.Paper:
    """Paper -> pb.Paper."""
    return pb.Paper(
        paper_id=paper.id,
        title=paper.title,
        abstract=paper.abstract,
        authors=list(paper.authors),
        published=date_to_proto(paper.published),
        categories=list(paper.categories),
        url=paper.url or "",
    )


def paper_from_proto(message: pb.Paper) -> Paper:
    """pb.Paper -> Paper, cleaned as the corpus readers do (id stripped, text NFC-normalised
    with whitespace collapsed, blank authors/categories dropped, "" url -> None).

    Raises InvalidQuery for an empty or invalid paper_id, neither title nor abstract, a bad
    date, or a field over its limit (MAX_*) or with control characters in an identifier.
    """
    paper_id = paper_id_from_proto(message.paper_id)
    title = text_from_proto(message.title, "title", MAX_TITLE_CHARS)
    abstract = text_from_proto(message.abstract, "abstract", MAX_ABSTRACT_CHARS)
    if not title and not abstract:
        raise InvalidQuery(f"paper {quoted(paper_id)} has neither title nor abstract")
    return Paper(
        id=paper_id,
        title=title,
        abstract=abstract,
        authors=names_from_proto(message.authors, "authors"),
        published=date_from_proto(message.published, f"paper {quoted(paper_id)}: published"),
        categories=names_from_proto(message.categories, "categories"),
        url=identifier(message.url, "url", MAX_URL_CHARS) or None,
    )


def stored_paper_from_proto(message: pb.Paper) -> Paper:
    """A paper in a response -> Paper, as the service stored it. Papers were cleaned on the
    way in (paper_from_proto), so a client takes the fields as sent: re-cleaning every abstract
    cost ~1.4 ms per 10-hit response, more than the search itself."""
    return Paper(
        id=message.paper_id,
        title=message.title,
        abstract=message.abstract,
        authors=tuple(message.authors),
        published=date.fromisoformat(message.published) if message.published else None,
        categories=tuple(message.categories),
        url=message.url or None,
    )


def stage_scores_to_proto(stages: StageScores) -> pb.StageScores:
    """StageScores -> pb.StageScores; None (stage not run) stays unset."""
    message = pb.StageScores()
    for name in ("dense", "sparse", "fused", "rerank"):
        value = getattr(stages, name)
        if value is not None:
            setattr(message, name, float(value))
    return message


def stage_scores_from_proto(message: pb.StageScores) -> StageScores:
    values = {
        name: getattr(message, name) if message.HasField(name) else None
        for name in ("dense", "sparse", "fused", "rerank")
    }
    return StageScores(**values)


def hit_to_proto(hit: SearchHit) -> pb.Hit:
    message = pb.Hit(
        paper=paper_to_proto(hit.paper),
        score=float(hit.score),
        stages=stage_scores_to_proto(hit.stages),
    )
    if hit.explanation is not None:
        message.explanation.CopyFrom(explanation_to_proto(hit.explanation))
    return message


_EXPLAINED_STAGES = ("dense", "sparse", "fused", "rerank")


def explanation_to_proto(explanation: Explanation) -> pb.Explanation:
    message = pb.Explanation(
        fusion=explanation.fusion,
        fusion_inputs={k: float(v) for k, v in explanation.fusion_inputs.items()},
        matched_terms=[pb.MatchedTerm(term=t, score=s) for t, s in explanation.terms])
    for name in _EXPLAINED_STAGES:
        stage: StageRank | None = getattr(explanation, name)
        if stage is not None:
            getattr(message, name).CopyFrom(pb.StageRank(rank=stage.rank or 0,
                                                         score=stage.score))
    return message


def explanation_from_proto(message: pb.Explanation) -> Explanation:
    stages = {name: StageRank(getattr(message, name).rank or None,
                              getattr(message, name).score
                              if getattr(message, name).HasField("score") else None)
              for name in _EXPLAINED_STAGES if message.HasField(name)}
    return Explanation(**stages, fusion=message.fusion,
                       fusion_inputs=dict(message.fusion_inputs),
                       terms=tuple((t.term, t.score) for t in message.matched_terms))


def search_response_to_proto(result: SearchResult) -> pb.SearchResponse:
    """SearchResult -> SearchResponse (hits in order, reranked and feedback flags, timings,
    hits cut)."""
    return pb.SearchResponse(
        hits=[hit_to_proto(hit) for hit in result.hits],
        reranked=result.reranked,
        timings_ms={key: float(value) for key, value in result.timings_ms.items()},
        below_min_relevance=result.below_min_relevance,
        rerank_depth=result.rerank_depth,
        feedback=result.feedback,
    )


def search_result_from_proto(response: pb.SearchResponse) -> SearchResult:
    """SearchResponse -> SearchResult (for clients and tests)."""
    hits = tuple(
        SearchHit(
            paper=stored_paper_from_proto(hit.paper),
            score=hit.score,
            stages=stage_scores_from_proto(hit.stages),
            explanation=(explanation_from_proto(hit.explanation)
                         if hit.HasField("explanation") else None),
        )
        for hit in response.hits
    )
    return SearchResult(
        hits, response.reranked, dict(response.timings_ms), response.below_min_relevance,
        response.rerank_depth, response.feedback,
    )


def upsert_summary_to_proto(
    received: int, upserted: int, errors: Iterable[str], skipped: int | None = None
) -> pb.UpsertSummary:
    """UpsertSummary with errors capped at MAX_UPSERT_ERRORS; skipped defaults to len(errors)."""
    error_list = list(errors)
    return pb.UpsertSummary(
        received=received,
        upserted=upserted,
        skipped=len(error_list) if skipped is None else skipped,
        errors=error_list[:MAX_UPSERT_ERRORS],
    )
