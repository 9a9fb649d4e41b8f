"""The ``papersearch`` command line: a thin layer over the library, configured by Settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from papersearch import interrupts
from papersearch.client_retry import add_retry_argument
from papersearch.client_tls import add_tls_arguments, tls_asked
from papersearch.evaluation.modes import EVAL_MODES
from papersearch.index.errors import SPENT_ERRNOS, StorageExhausted, StoreError
from papersearch.index.query import MODES, RECOMMEND_STRATEGIES
from papersearch.loadtest.command import add_arguments as add_loadtest_arguments
from papersearch.loadtest.command import split_target
from papersearch.logs import configure_logging, route_library_logs
from papersearch.modelbuild.sources import ModelSourceError
from papersearch.models.manifest import ProviderUnavailable
from papersearch.paths import FolderRefused, shown
from papersearch.serving.node_drain import NodeDrainError
from papersearch.settings import (
    DEADLINE_MAX_S,
    MAX_COUNT,
    Settings,
    load_settings,
    warn_unread_variables,
)

if TYPE_CHECKING:
    from papersearch.client import SearchClient
    from papersearch.evaluation.datasets import EvalDataset
    from papersearch.index.query import Explanation, SearchFilter
    from papersearch.index.store import Store
    from papersearch.pipeline.query import SearchResult

T = TypeVar("T")


log = logging.getLogger(__name__)


class RemoteError(RuntimeError):
    """The gateway answered with an error status (or none could be reached)."""

Command = Callable[[Settings, argparse.Namespace], int]

# A user's mistake or a missing prerequisite: one line on stderr, exit 2, no traceback.
EXTRA_MODULES = {  # what pyproject.toml's extras install, as imported
    "export": ("torch", "transformers", "onnx", "onnxscript", "packaging"),
    "loadtest": ("prometheus_client", "matplotlib"),
}
GRPC_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")
# Spent resources (space, quota, descriptors, memory): not a user's mistake, exit 1.
RESOURCE_ERRNOS = SPENT_ERRNOS | {errno.ENOMEM}
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, TimeoutError,
               StoreError, ModelSourceError, RemoteError, ProviderUnavailable, NodeDrainError,
               FolderRefused)


def _iso_date(value: str) -> date:
    """A YYYY-MM-DD date; one written so that is no day of the calendar (2024-02-30) is said
    as such, not as a format error."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as error:  # argparse showed "invalid fromisoformat value"
        raise argparse.ArgumentTypeError(f"{value!r} is no date ({error})") from None


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="published_from", type=_iso_date,
                        help="only papers published on or after (YYYY-MM-DD)")
    parser.add_argument("--to", dest="published_to", type=_iso_date,
                        help="only papers published on or before (YYYY-MM-DD)")
    parser.add_argument("--category", action="append", default=[],
                        help="only papers in this category (repeatable: any of them)")
    parser.add_argument("--author", action="append", default=[],
                        help="only papers by this author (repeatable: any of them)")


def _add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    """--target and how to reach it (_ask_gateway): key, TLS, retries."""
    parser.add_argument("--target", metavar="HOST:PORT",
                        help="ask a running gateway over gRPC instead of in-process")
    parser.add_argument("--api-key", default=os.environ.get("PAPERSEARCH_API_KEY"),
                        help="x-api-key for --target (default: $PAPERSEARCH_API_KEY)")
    add_tls_arguments(parser)
    add_retry_argument(parser)


def _remote(args: argparse.Namespace) -> bool:
    """Whether to ask a gateway (--target) rather than run in-process; how to reach one given
    without one is a mistake, not something to ignore."""
    if args.target is not None and not args.target.strip():
        raise ValueError("--target is empty: give HOST:PORT, or leave it out to run in-process")
    if args.target is not None:
        _check_target(args.target, tls_asked(args))
    if args.target is None:
        given = [flag for flag, value in (("--tls", args.tls), ("--ca", args.ca),
                                          ("--cert", args.cert), ("--key", args.key),
                                          ("--server-name", args.server_name),
                                          ("--wait-for-ready", args.wait_for_ready)) if value]
        if given:
            raise ValueError(f"{', '.join(given)} only with --target (without it the search "
                             "runs in-process)")
    return args.target is not None


def _check_target(target: str, tls: bool) -> None:
    """HOST:PORT ([v6]:PORT), or a gRPC target name (dns:, ipv4:, ipv6:, unix:); a bare host
    only with TLS (port 443): without, "localhost" went to 443 where no gateway listens."""
    if target.startswith(GRPC_TARGET_SCHEMES) or (tls and ":" not in target):
        return
    split_target(target)


def _filter(args: argparse.Namespace) -> SearchFilter:
    from papersearch.index.query import SearchFilter

    if args.published_from and args.published_to and args.published_from > args.published_to:
        raise ValueError(f"--from {args.published_from} is after --to {args.published_to}")
    return SearchFilter(args.published_from, args.published_to, tuple(args.category),
                        tuple(args.author))


def result_to_dict(result: SearchResult) -> dict[str, Any]:
    """A result as ``--json`` prints it: each hit with its paper's fields (the title and date
    alone had come, so a script had to ask GetPaper for the abstract, authors and link)."""
    return {
        "reranked": result.reranked,
        "rerank_depth": result.rerank_depth,
        "feedback": result.feedback,
        "below_min_relevance": result.below_min_relevance,
        "timings_ms": result.timings_ms,
        "hits": [
            {
                "paper_id": h.paper.id, "title": h.paper.title, "score": h.score,
                "published": h.paper.published.isoformat() if h.paper.published else None,
                "authors": list(h.paper.authors), "categories": list(h.paper.categories),
                "url": h.paper.url, "abstract": h.paper.abstract,
                "stages": {k: getattr(h.stages, k) for k in ("dense", "sparse", "fused", "rerank")},
                **({"explanation": dataclasses.asdict(h.explanation)} if h.explanation else {}),
            }
            for h in result.hits
        ],
    }


def format_result(result: SearchResult) -> str:
    lines = []
    for i, h in enumerate(result.hits, 1):
        lines.append(f"{i:>3}. {h.score:8.4f}  {h.paper.title or h.paper.abstract[:80]}  "
                     f"[{h.paper.id}]")
        if h.explanation is not None:
            lines += ["       " + line
                      for line in _format_explanation(h.explanation, bool(result.feedback))]
    total = result.timings_ms.get("total")  # SimilarPapers answers without timings
    dropped = result.below_min_relevance
    cut = f", {dropped} below --min-relevance" if dropped else ""
    depth = f" (top {result.rerank_depth})" if result.reranked else ""
    took = "" if total is None else f", {total:.1f} ms"
    lines.append(f"{len(result.hits)} hits{cut}, reranked={result.reranked}{depth}, "
                 f"feedback={result.feedback}{took}")
    return "\n".join(lines)


def _format_explanation(explanation: Explanation, expanded: bool = False) -> list[str]:
    """``expanded``: the search ran query feedback; its dense and BM25 stages are the
    expanded query's (what was fused), not the hit's stage scores for the query as typed."""
    def label(name: str) -> str:
        return f"{name} (expanded query)" if expanded and name in ("dense", "sparse") else name

    stages = ", ".join(
        f"{label(name)} #{stage.rank or '-'} "
        f"({'-' if stage.score is None else f'{stage.score:.4f}'})"
        for name in ("dense", "sparse", "fused", "rerank")
        if (stage := getattr(explanation, name)) is not None)
    lines = [stages]
    if explanation.fusion:
        lines.append(explanation.fusion)
    if explanation.terms:
        lines.append("BM25 terms: " + ", ".join(f"{t} {s:.3f}" for t, s in explanation.terms))
    return lines


def _needs_extra(extra: str, command: Command) -> Command:
    """``command``, where a module of the extra it needs is not installed: one line saying
    which extra to install, exit 2 (it was a ModuleNotFoundError's traceback)."""
    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return command(settings, args)
        except ModuleNotFoundError as error:
            if error.name not in EXTRA_MODULES[extra]:
                raise
            print(f"papersearch: error: {error.name} is not installed: install the {extra} "
                  f"extra (pip install 'papersearch[{extra}]'; make install has it)",
                  file=sys.stderr)
            return 2
    return run


def _models_export(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.modelbuild import prepare
    from papersearch.modelbuild.sources import resolve_source

    route_library_logs()  # transformers' console handler, installed at its import

    if args.reranker:  # a mistyped source fails before the embedder's export, not after
        resolve_source(args.reranker, settings.models.cache_dir)
    paths = prepare.prepare(settings, everything=args.all)
    if args.reranker:
        paths["reranker"] = prepare.export_reranker(settings, args.reranker)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def _models_info(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 1 where an export is damaged, or the embedder is not there to serve (missing, or
    not loadable here): `models info && serve` went on to serve nothing. A reranker missing
    or not loadable is not a failure: the service runs without one."""
    from papersearch.modelbuild.info import describe

    report = describe(settings)
    print(json.dumps(report, indent=2))
    damaged = any(isinstance(each, dict) and "damaged" in each for each in report.values())
    unserved = any(key in report["embedder"] for key in ("missing", "unusable"))
    return 1 if damaged or unserved else 0


def _models_train_reranker(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.modelbuild import prepare

    route_library_logs()  # transformers' console handler, installed at its import

    print(json.dumps({"reranker": str(prepare.train_reranker(settings))}))
    return 0


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.corpus.readers import detect_format
    from papersearch.ingest.distributed import RayIngester, ray_cluster
    from papersearch.ingest.pipeline import (
        Ingester,
        Ingests,
        IngestSummary,
        PruneRefused,
        ingest_paths,
    )
    from papersearch.pipeline.factory import LiveCheck, open_live

    paths = args.paths or _set_paths([settings.corpus_dir], "corpus_dir", "corpus paths")
    if args.ray and Path(args.ray).exists():
        raise ValueError(f"--ray {args.ray}: that is a corpus path, not a Ray address; write "
                         "corpus paths before --ray, or --ray=ADDRESS")
    for path in paths:  # before the index is created: a typo must not leave an empty one,
        detect_format(path)  # nor one path's format error stop the run after the others
    summary: IngestSummary | None = None
    refused: PruneRefused | None = None
    try:
        # Ray first: a cluster that is not there must not leave an index created (or held)
        with contextlib.nullcontext() if args.ray is None else ray_cluster(args.ray or None):
            encoder, store = open_live(settings, create=True)
            live = LiveCheck(settings, store)  # a migration's swap meanwhile stops the run
            made_for_nothing = False
            try:
                with store, contextlib.closing(live):
                    ingester: Ingests
                    if args.ray is None:
                        ingester = Ingester(store, encoder, settings.models.batch_size, live)
                    else:
                        ingester = RayIngester(store, encoder, settings, live)
                    try:
                        summary = ingest_paths(paths, store, ingester, update=args.update,
                                               progress=not args.quiet, prune=args.prune)
                    except PruneRefused as error:  # the papers were ingested: say so, and why
                        summary, refused = error.summary, error
                    finally:  # also when cut short (Ctrl-C, a failed write) before any write;
                        with interrupts.held():  # a second Ctrl-C must not keep it either
                            made_for_nothing = store.created and _holds_nothing(store)
            finally:
                if made_for_nothing:  # the folder it made, or what it wrote in an empty one
                    with interrupts.held():  # it was given (a volume's mount point, a link)
                        store.remove_if_made()
    except KeyboardInterrupt as interrupt:
        if summary is None or isinstance(interrupt, interrupts.Interrupted):
            raise
        _emit(json.dumps(summary.to_dict(), indent=2))  # the run was done: what it did
        raise interrupts.Interrupted("ingest: stopped after the run, as the index was closed: "
                                     "the summary above says what it did") from None
    _emit(json.dumps(summary.to_dict(), indent=2))
    if refused is not None and summary.read:
        print(f"papersearch: error: {refused}", file=sys.stderr)
        return 2
    if summary.read == 0:  # `ingest && search` went on with nothing indexed
        first = summary.skipped_records[:1]
        print(f"papersearch: error: no paper read from {', '.join(map(str, paths))}"
              + (f" ({summary.skipped} records skipped; the first: {first[0].source}: "
                 f"{first[0].reason})" if first else ": the corpus is empty"), file=sys.stderr)
        return 2
    if summary.unread_corpora:  # the others' papers are in: a corpus given is one read
        print(f"papersearch: error: no paper read from {'; '.join(summary.unread_corpora)} "
              "(the other corpora's papers were ingested: the summary above)", file=sys.stderr)
        return 2
    return 0


def _emit(text: str) -> None:
    """``text`` on stdout. A reader gone (`... | head`) is no failure of the command: its own
    status stands (a failed ingest's summary into a closed pipe had made it exit 0, its error
    line unsaid)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _stdout_gone()


def _stdout_gone() -> None:
    """Point stdout at /dev/null: Python's flush at exit would fail on the closed pipe too."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _holds_nothing(store: Store) -> bool:
    """Whether ``store`` is empty; False when that cannot be told (the server went away)."""
    try:
        return store.count() == 0
    except Exception:  # noqa: BLE001 (the run's own error is the one to report)
        return False


def _search(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.pipeline.query import SearchQuery

    remote = _remote(args)
    query = SearchQuery(
        text=args.query, top_k=_top_k(args, settings, remote), mode=args.mode,
        rerank=not args.no_rerank,
        filter=_filter(args), min_relevance=args.min_relevance, explain=args.explain,
        feedback=args.feedback,
    )
    if remote:  # the gateway checks it against its own limits, not this machine's settings
        result = _ask_gateway(args, lambda client: client.search(query))
    else:
        from papersearch.api import convert

        # checked and cleaned as the gateway does it ("Jane  Doe" is "Jane Doe"), before any
        # model or index is loaded
        query = convert.search_query_from_proto(convert.search_query_to_proto(query),
                                                settings.search)
        from papersearch.pipeline.factory import build_pipeline

        pipeline, store = build_pipeline(settings)
        with store:
            result = asyncio.run(pipeline.search(query))
    print(json.dumps(result_to_dict(result), indent=2) if args.json else format_result(result))
    return 0


def _top_k(args: argparse.Namespace, settings: Settings, remote: bool) -> int:
    """--top-k, else the default: this machine's ``search.default_top_k``, or for a gateway 0
    (the API's "its default"). Past the proto's int32 the request could not be built: the
    error was protobuf's "Value out of range", naming no option."""
    if args.top_k is not None:
        if not remote and not 0 <= args.top_k <= settings.search.max_top_k:
            raise ValueError(f"--top-k must be between 1 and {settings.search.max_top_k} "
                             f"(search.max_top_k; 0: the default), got {args.top_k}")
        if args.top_k == 0 and not remote:  # as over the API, and with --target
            return settings.search.default_top_k
        if not 0 <= args.top_k <= MAX_COUNT:
            raise ValueError(f"--top-k must be a positive number (at most the server's "
                             f"search.max_top_k), got {args.top_k}")
        return int(args.top_k)
    return 0 if remote else settings.search.default_top_k


def _similar(settings: Settings, args: argparse.Namespace) -> int:
    """Recommendations: SimilarPapers with the given positive and negative example papers."""
    from papersearch.api import convert
    from papersearch.index.query import Examples

    remote = _remote(args)
    if any(not paper_id.strip() for paper_id in (*args.paper_ids, *args.unlike)):
        # said in the API's names: "paper_id must not be empty (or give positive_ids)"
        raise ValueError("an empty PAPER_ID (or --unlike) names no paper")
    query = convert.SimilarQuery(Examples(tuple(args.paper_ids), tuple(args.unlike),
                                          args.strategy), _top_k(args, settings, remote),
                                 _filter(args))
    if remote:  # the gateway checks it against its own limits
        result = _ask_gateway(args, lambda client: client.similar(
            query.examples, query.top_k, query.filter))
    else:
        # checked as the gateway checks it, before any model or index is loaded
        query = convert.similar_query_from_proto(convert.similar_query_to_proto(query),
                                                 settings.search)
        from papersearch.pipeline.factory import open_live
        from papersearch.pipeline.query import SearchHit, SearchResult, StageScores

        _, store = open_live(settings)
        with store:
            started = time.perf_counter()  # the search's time, as `search` reports it
            hits = store.similar(query.examples, query.top_k, query.filter)
            total_ms = (time.perf_counter() - started) * 1000
        result = SearchResult(tuple(SearchHit(h.paper, h.score, StageScores(dense=h.dense_score))
                                    for h in hits), False, {"total": total_ms})
    print(json.dumps(result_to_dict(result), indent=2) if args.json else format_result(result))
    return 0


def _positive_timeout(timeout_s: float | None) -> None:
    """--timeout-s, a gRPC deadline or a wait, is positive and at most a year: inf or 1e10
    made gRPC's deadline one already past (DEADLINE_EXCEEDED at once)."""
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"--timeout-s must be a positive number of seconds, got {timeout_s:g}")
    if timeout_s is not None and not timeout_s <= DEADLINE_MAX_S:
        raise ValueError(f"--timeout-s must be at most {DEADLINE_MAX_S} seconds (a year), got "
                         f"{timeout_s:g}")


def _index_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.ingest.distributed import ray_cluster
    from papersearch.serving import launcher

    _positive_timeout(args.timeout_s)  # 0 reported a timeout while the migration went on
    action = "rollback" if args.rollback else "finish" if args.finish else "start"
    with ray_cluster(args.ray):
        report = launcher.migrate(settings, action, args.embedder, args.timeout_s)
    print(json.dumps(report, indent=2))
    return 0


def _index_delete(settings: Settings, args: argparse.Namespace) -> int:
    """DeletePapers on a running gateway: it deletes from every collection an embedder
    migration keeps in step (in-process, a delete would miss the collection being built, and
    the embedded shard is the running gateway's anyway)."""
    if not _remote(args):
        raise ValueError("index delete needs --target HOST:PORT: the running gateway deletes "
                         "(from every collection an embedder migration keeps in step)")
    from papersearch.api.convert import paper_ids_from_proto

    # the ids as the gateway counts them: cleaned (" p1" and "p1" are one) and each once; a
    # bad one is refused here, before the call
    asked = len(paper_ids_from_proto(args.paper_ids))
    deleted = _ask_gateway(args, lambda client: client.delete(args.paper_ids))
    print(json.dumps({"deleted": deleted, "asked": asked}) if args.json
          else f"deleted {deleted} of {asked} papers (the others were not in the index)")
    return 0


def _ask_gateway(args: argparse.Namespace, call: Callable[[SearchClient], T]) -> T:
    """``call`` on a client for ``--target`` (with its key, TLS and retry options); an error
    status becomes RemoteError."""
    import grpc

    from papersearch.client import SearchClient
    from papersearch.client_tls import tls_from_args

    with SearchClient(args.target, api_key=args.api_key, tls=tls_from_args(args),
                      retry=args.retry, wait_for_ready=args.wait_for_ready) as client:
        try:
            return call(client)
        except grpc.RpcError as error:
            raise RemoteError(_remote_error(args.target, error.code().name,
                                            error.details() or "")) from None


# What gRPC says of a target that is no gRPC server as this client reaches it, and what to do.
_HTTP_PORT = ("it does not speak gRPC: the HTTP front's port? the gateway's gRPC port is "
              "serve.grpc_port, 50051 by default")
_NOT_GRPC = (("Failed parsing HTTP/2", _HTTP_PORT),
             ("missing selected ALPN", _HTTP_PORT),  # the same, over TLS
             ("WRONG_VERSION_NUMBER", "it does not speak TLS: drop --tls, or check the port"),
             # the verify failures by their reason: "give --ca" was the advice for them all
             ("certificate has expired", "the gateway's certificate has expired: renew it there "
              "(serve.tls_cert_file); no client option mends it"),
             ("certificate is not yet valid", "the gateway's certificate is not valid yet: its "
              "start date is ahead of this machine's clock"),
             ("CERTIFICATE_VERIFY_FAILED", "its certificate is not trusted here: give --ca with "
              "the CA that signed it (trusted already: the gateway's file may lack the "
              "intermediate certificates after its own)"))


def _remote_error(target: str, status: str, details: str) -> str:
    hint = next((what for said, what in _NOT_GRPC if said in details), None)
    return f"{target}: {status}: {details}" + (f" ({hint})" if hint else "")


# A watch that ended with one of these after it was live is opened again (--reconnect): the
# gateway drained or restarted (UNAVAILABLE), or this watcher fell behind (RESOURCE_EXHAUSTED).
_RECONNECT_ON = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
_RECONNECT_PAUSE_S = (0.5, 10.0)  # first pause, then doubled up to this
_DEADLINE_SLACK_S = 0.5  # gRPC may end a call at its deadline a little early


def _watch(settings: Settings, args: argparse.Namespace) -> int:
    """Print a saved search's matches as the gateway indexes them, until Ctrl-C or
    --timeout-s. A watch that was live once and is ended by the gateway (drain, restart, this
    watcher too slow) is opened again, and again while the gateway is not back, pausing
    0.5 s doubled up to 10 s, with a replay of the papers published from the day it ended (or
    --since): matches written meanwhile and published since come back; papers already
    printed are not printed again."""
    import grpc

    from papersearch.api.convert import WatchQuery
    from papersearch.client import SearchClient
    from papersearch.client_tls import tls_from_args

    _positive_timeout(args.timeout_s)
    _check_target(args.target, tls_asked(args))
    query = WatchQuery(args.query, _filter(args), args.min_relevance, args.since,
                       args.replay_limit)
    ends = None if args.timeout_s is None else time.monotonic() + args.timeout_s
    printed: set[str] = set()
    pause = _RECONNECT_PAUSE_S[0]
    live = False  # caught up once: a failure after that (the gateway restarting) reconnects
    with SearchClient(args.target, api_key=args.api_key, tls=tls_from_args(args)) as client:
        while True:
            left = None if ends is None else ends - time.monotonic()
            if left is not None and left <= 0:
                return 0
            watching = client.watch(query, timeout_s=left)
            try:
                for event in watching:
                    if event.caught_up:
                        live, pause = True, _RECONNECT_PAUSE_S[0]
                        print(f"watching {args.target} for new matches (Ctrl-C stops)",
                              file=sys.stderr, flush=True)
                    elif event.hit is not None and event.hit.paper.id not in printed:
                        printed.add(event.hit.paper.id)
                        print(_format_watch_hit(event.hit, event.replayed, args.json),
                              flush=True)
            except grpc.RpcError as error:
                code = error.code()
                if (code == grpc.StatusCode.DEADLINE_EXCEEDED and ends is not None
                        and time.monotonic() >= ends - _DEADLINE_SLACK_S):
                    return 0  # --timeout-s: the watch ran its course (not the gateway's
                    # deadline for its start: its encode or replay past serve.max_deadline_s)
                if not (args.reconnect and live and code.name in _RECONNECT_ON):
                    raise RemoteError(_remote_error(args.target, code.name,
                                                    error.details() or "")) \
                        from None
                print(f"the watch ended ({code.name}: {error.details()}); reconnecting in "
                      f"{pause:g} s", file=sys.stderr, flush=True)
            else:  # a gateway's watch never ends OK: a proxy's or another server's did
                if not (args.reconnect and live):
                    raise RemoteError(f"{args.target}: the watch stream ended without a status")
                print(f"the watch stream ended; reconnecting in {pause:g} s", file=sys.stderr,
                      flush=True)
            finally:
                watching.cancel()
            ended_on = datetime.now(UTC).date()  # before the pause, which may pass midnight
            left = None if ends is None else ends - time.monotonic()
            time.sleep(pause if left is None else max(0.0, min(pause, left)))
            pause = min(2 * pause, _RECONNECT_PAUSE_S[1])
            since = ended_on if query.replay_since is None else min(query.replay_since,
                                                                   ended_on)
            query = dataclasses.replace(query, replay_since=since)


def _format_watch_hit(hit: Any, replayed: bool, as_json: bool) -> str:
    paper = hit.paper
    published = paper.published.isoformat() if paper.published else None
    if as_json:
        return json.dumps({"paper_id": paper.id, "title": paper.title, "score": hit.score,
                           "published": published, "replayed": replayed})
    mark = "replay" if replayed else "new"
    return (f"{mark:>6}  {hit.score:6.3f}  {published or '-':10}  "
            f"{paper.title or paper.abstract[:80]}  [{paper.id}]")


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.serving.launcher import serve_forever

    serve_forever(settings)
    return 0


def _drain(settings: Settings, args: argparse.Namespace) -> int:
    if args.ray_node:
        from papersearch.serving.node_drain import drain_ray_node

        drained = drain_ray_node(settings.serve.node_drain_s)
        print(f"papersearch: {drained.replicas} Serve replicas moved off Ray node "
              f"{drained.node_id} in {drained.seconds:.1f} s")
        return 0
    from papersearch.serving.drain import request_drain

    seconds = request_drain(settings.serve)
    if seconds is None:
        print(f"papersearch: no gateway accepts calls on port {settings.serve.grpc_port}: "
              "nothing to drain")
    else:
        print(f"papersearch: gateway drained in {seconds:.1f} s")
    return 0


def _loadtest(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.loadtest.command import run

    return run(settings, args)


def _eval(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.encoder.runtime import Encoder
    from papersearch.evaluation.datasets import (
        check_servable,
        corpus_counts,
        judged_queries,
        load_dataset,
    )
    from papersearch.evaluation.harness import run_eval
    from papersearch.models.manifest import ModelNotFound
    from papersearch.reranker.runtime import Reranker

    dataset = load_dataset(args.dataset)  # before the models load: a typo fails at once
    check_servable(dataset, settings.search)
    modes = args.mode or list(EVAL_MODES)
    reranker = None  # measured even where serving has the stage switched off
    if any(m.endswith("+rerank") for m in modes):
        try:
            reranker = Reranker.from_settings(settings.models)
        except ModelNotFound as error:
            if args.mode:  # asked for by name
                raise
            modes = [m for m in modes if not m.endswith("+rerank")]
            print(f"papersearch: note: the +rerank modes are left out: {error}",
                  file=sys.stderr)
    reports = run_eval(dataset, modes, settings, Encoder.from_settings(settings.models), reranker)
    _say_skipped([dataset])
    judged, corpus = judged_queries(dataset), corpus_counts(dataset)
    out = {"dataset": dataset.name, "queries": len(dataset.queries), "judged_queries": judged,
           "corpus": corpus,
           "index.prf_enabled": settings.index.prf_enabled,  # what hybrid ran (see below)
           "modes": {m: r.to_dict() for m, r in reports.items()}}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        unscored = len(dataset.queries) - judged
        print(f"{dataset.name}: {len(dataset.queries)} queries" + (
            f", {judged} scored ({unscored} without a relevant judgment)" if unscored else ""))
        print(_corpus_line(dataset.name, corpus))
        print(f"{'mode':<16}{'nDCG@10':>10}{'R@100':>10}{'MRR@10':>10}{'ms/query':>10}")
        for mode, report in reports.items():
            print(f"{mode:<16}{report.ndcg_at_10:>10.4f}{report.recall_at_100:>10.4f}"
                  f"{report.mrr_at_10:>10.4f}{report.ms_per_query or 0:>10.1f}")
        if settings.index.prf_enabled and {"hybrid", "hybrid+rerank"} & set(reports):
            print("note: hybrid searches run as configured: with query feedback "
                  "(index.prf_enabled, the default), as hybrid+feedback does; "
                  "PAPERSEARCH_INDEX__PRF_ENABLED=false measures them without")
    return 0


def _tune_rerank(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.encoder.runtime import Encoder
    from papersearch.evaluation.datasets import check_servable, corpus_counts, load_dataset
    from papersearch.evaluation.tuning import tune_rerank
    from papersearch.reranker.runtime import Reranker

    settings.check_not_held_out([args.dataset], "tuning")
    dataset = load_dataset(args.dataset)
    check_servable(dataset, settings.search)
    grid = tune_rerank(dataset, settings, Encoder.from_settings(settings.models),
                       Reranker.from_settings(settings.models))
    baseline = next(p for p in grid if p.weight == 0.0)
    _say_skipped([dataset])
    print(json.dumps({
        "dataset": dataset.name,
        "corpus": corpus_counts(dataset),
        "rerank_top_n": settings.search.rerank_top_n,
        "first_stage_ndcg@10": baseline.ndcg_at_10,
        "best": {"weight": grid[0].weight, "k": grid[0].k, "ndcg@10": grid[0].ndcg_at_10},
        "grid": [{"weight": p.weight, "k": p.k, "ndcg@10": round(p.ndcg_at_10, 4)} for p in grid],
    }, indent=2))
    return 0


def _tune(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.encoder.runtime import Encoder
    from papersearch.evaluation.datasets import check_servable, load_dataset
    from papersearch.evaluation.fusion_tuning import MIN_JUDGED_QUERIES, tune_fusion

    tune_sets = args.tune or _set_paths(settings.tune_sets, "tune_sets", "--tune")
    held_out_sets = args.held_out or _set_paths(settings.held_out_sets, "held_out_sets",
                                                "--held-out")
    settings.check_not_held_out(tune_sets, "tuning")
    tuning = [load_dataset(p) for p in tune_sets]
    held_out = [load_dataset(p) for p in held_out_sets]
    for dataset in (*tuning, *held_out):
        check_servable(dataset, settings.search)
    out = tune_fusion(tuning, held_out, settings, Encoder.from_settings(settings.models))
    _say_skipped([*tuning, *held_out])
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    names = [*out["tuning_sets"], *out["held_out_sets"]]
    width = {n: max(11, len(n) + 1) for n in names}  # a set is known by its whole name
    print(f"{'nDCG@10':<30}" + "".join(f"{n:>{width[n]}}" for n in names)
          + f"{'tuning':>9}{'held-out':>9}")
    for label, row in [("baseline (as configured)", out["baseline"]),
                       ("baseline + query feedback", out["feedback"]),
                       *((c["name"] + ("" if c["runs_in_store"] else " *"), c)
                         for c in out["candidates"])]:
        print(f"{label:<30}" + "".join(f"{row['ndcg@10'][n]:>{width[n]}.4f}" for n in names)
              + f"{row['tuning_mean']:>9.4f}{row['held_out_mean']:>9.4f}")
    print("* shown for reference: the Store does not run it")
    for name, counts in out["corpora"].items():
        print(_corpus_line(name, counts))
    print(f"the baseline: {_variables(out['baseline']['settings'])}")
    chosen = out["chosen"]
    if chosen is None:
        print("no candidate the Store runs beats the baseline on every tuning set: keep it")
    else:
        print(f"chosen on the tuning sets: {chosen['name']}: {_variables(chosen['settings'])}")
        _print_verdicts(chosen["against_baseline"])
        if chosen["too_few_queries"]:
            print(f"too few judged queries to judge on {_counted(chosen['too_few_queries'])} "
                  f"(a set needs {MIN_JUDGED_QUERIES}): keep the baseline")
        else:
            print("held-out sets agree: adopt it" if chosen["adopt"]
                  else "held-out sets do not all agree: keep the baseline")
    feedback = out["feedback"]
    print("query feedback against the baseline (its settings: "
          f"{', '.join(f'{k}={v}' for k, v in feedback['settings'].items())}):")
    _print_verdicts(feedback["against_baseline"])
    if feedback["too_few_queries"]:
        print(f"too few judged queries to judge on {_counted(feedback['too_few_queries'])} "
              f"(a set needs {MIN_JUDGED_QUERIES}): keep index.prf_enabled as it is")
    elif feedback["tuning_sets_agree"] and feedback["held_out_sets_agree"]:
        print("every set gains: keep index.prf_enabled=true (the default)")
    elif feedback["tuning_sets_agree"]:
        print("the tuning sets gain, the held-out sets do not all agree: weigh its cost "
              "(index.prf_enabled)")
    else:
        print("the tuning sets do not all gain: consider index.prf_enabled=false")
    return 0


def _say_skipped(datasets: Sequence[EvalDataset]) -> None:
    """On stderr, the corpus records each set's read skipped (where, why; the first few): a
    judged paper skipped, with no other copy read, scores as a miss. Each was a log line
    alone, and a conflicting repeat's said it was "listed among the skipped records",
    unlisted."""
    from papersearch.evaluation.datasets import skipped_records

    for dataset in datasets:
        if lines := skipped_records(dataset):
            print(f"papersearch: {dataset.name}: corpus records skipped, each not indexed "
                  "(where, why):", file=sys.stderr)
            for line in lines:
                print(f"  {line}", file=sys.stderr)


def _corpus_line(name: str, counts: dict[str, int]) -> str:
    """A set's corpus read, for a table: ``counts`` as evaluation/datasets.corpus_counts."""
    conflicts = (f" ({counts['conflicts']:,} differing from the first copy)"
                 if counts["conflicts"] else "")
    listed = " (listed on stderr)" if counts["skipped"] or counts["conflicts"] else ""
    return (f"{name} corpus: {counts['read']:,} papers read, {counts['skipped']:,} records "
            f"skipped, {counts['duplicates']:,} repeats dropped{conflicts}{listed}")


def _set_paths(paths: list[Path], setting: str, given_by: str) -> list[Path]:
    """Paths a setting gave, the command line none: one that is not there is said as the
    setting's (the user typed no such path: "no such corpus file or folder:
    ../shared/eval/med" named neither the setting nor the fix)."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(
                f"no such file or folder: {shown(path)}, from the {setting} setting "
                f"(PAPERSEARCH_{setting.upper()}; its default is relative to the repository "
                f"root): give {given_by}, set {setting}, or run from the repository root")
    return paths


def _counted(sets: dict[str, int]) -> str:
    return ", ".join(f"{name} ({count})" for name, count in sets.items())


def _variables(settings: dict[str, Any]) -> str:
    """Dotted settings (``index.rrf_k``) as the environment variables that set them."""
    return " ".join(f"PAPERSEARCH_{name.replace('.', '__').upper()}={value}"
                    for name, value in settings.items())


def _print_verdicts(verdicts: dict[str, Any]) -> None:
    for name, verdict in verdicts.items():
        print(f"  {name}: {verdict['mean_difference']:+.4f}, {verdict['wins']} wins, "
              f"{verdict['losses']} losses, {verdict['ties']} ties, p={verdict['p_value']:.3f}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; a search's or watch's words are its query, one string, those after
    an option too (``search efficient --top-k 3 attention``: argparse takes a positional's
    words in one run; unquoted words were "unrecognized arguments: attention" under the
    top-level usage), and those after ``--`` wherever it stands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = _query_command(parser, argv)
    if command is not None:
        # "-hop": argparse reads "-h" given "op", and stops at "ignored explicit argument"
        hyphened = [w for w in argv[: _dashes(argv)] if re.fullmatch(r"-h[^-].*", w)]
        if hyphened:
            command.error(_minus_hint(hyphened, command))
    args, extra = parser.parse_known_args(argv)
    words = getattr(args, "query", None)
    if command is None or not isinstance(words, list):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args
    after = extra[_dashes(extra) + 1:]  # words, options, then "--" and more words
    extra = extra[: _dashes(extra)]
    dashed = [word for word in extra if word.startswith("-")]
    if any(word.startswith("--") for word in dashed):  # a mistyped option ("--topk")
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if dashed:  # "-vision", "-3D": query words argparse read as unknown options
        command.error(_minus_hint(dashed, command))
    if not [*words, *extra, *after]:  # none given; a blank one is the search's to refuse
        command.error("the following arguments are required: query")
    args.query = " ".join([*words, *extra, *after])
    return args


def _query_command(parser: argparse.ArgumentParser, argv: Sequence[str]
                   ) -> argparse.ArgumentParser | None:
    """The parser of the command ``argv`` runs where it takes a query (search, watch)."""
    options = iter(argv)
    for word in options:
        if word == "--config":
            next(options, None)
        elif not word.startswith("-"):
            query_parsers: dict[str, argparse.ArgumentParser] = parser.get_default("queries")
            return query_parsers.get(word)
    return None


def _dashes(words: Sequence[str]) -> int:
    """Where ``--`` stands in ``words`` (their length where it does not)."""
    return words.index("--") if "--" in words else len(words)


def _minus_hint(words: Sequence[str], command: argparse.ArgumentParser) -> str:
    return (f"unrecognized arguments: {' '.join(words)} (a query's words that begin with '-' "
            f"go after '--', its options before it: {command.prog} [OPTIONS] -- WORDS; a "
            f"minus excludes nothing, it searches for the word: README, Indexing and search)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="papersearch", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML settings file (also PAPERSEARCH_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="build the ONNX model repository")
    models_commands = models.add_subparsers(dest="models_command", required=True,
                                            metavar="COMMAND")
    export = models_commands.add_parser(
        "export", help="export the models the configuration serves: the embedder, and the "
                       "reranker_source if the rerank stage is on")
    export.add_argument("--reranker", metavar="SOURCE",
                        help="also export this cross-encoder (HF id, directory, pypi: spec)")
    export.add_argument("--all", action="store_true",
                        help="also the reranker when the stage is off: reranker_source if set, "
                             "else train the default (slow)")
    export.set_defaults(handler=_needs_extra("export", _models_export))
    info = models_commands.add_parser(
        "info", help="the models in the repository and the precision each runs on this CPU "
                     "(exit 1: an export damaged, or no embedder to serve)")
    info.set_defaults(handler=_models_info)
    trainer = models_commands.add_parser(
        "train-reranker", help="fine-tune and export the default cross-encoder (cached)"
    )
    trainer.set_defaults(handler=_needs_extra("export", _models_train_reranker))

    ingest = commands.add_parser("ingest", help="embed papers and upsert them into the index")
    ingest.add_argument("paths", nargs="*", type=Path,
                        help="corpus files/folders (default: corpus_dir, the sample corpus)")
    ingest.add_argument("--update", action="store_true",
                        help="re-embed every paper (default: skip papers stored as the corpus "
                             "has them, write the rest: a resume, or the corpus's changes)")
    ingest.add_argument(
        "--prune", action="store_true",
        help="then delete the stored papers none of these corpora holds (removed from them, or "
             "retitled Daily Papers papers); refused if a record was skipped")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help="encode on Ray (Ray Data actor pool, ingest.ray_encoders): a local instance of "
             "this machine's CPUs, or the cluster at ADDRESS (auto, ray://head:10001)")
    ingest.set_defaults(handler=_ingest)

    index = commands.add_parser("index", help="manage the served index")
    index_commands = index.add_subparsers(dest="index_command", required=True,
                                          metavar="COMMAND")
    migrate = index_commands.add_parser(
        "migrate", help="re-embed the served index with another embedder without downtime: "
                        "build beside it, mirror writes, swap (README, Embedder migration)")
    step = migrate.add_mutually_exclusive_group(required=True)
    step.add_argument("--embedder", metavar="NAME[@VERSION]",
                      help="build, check and swap to this exported embedder (default version: "
                           "the latest); the old collection is kept in step")
    step.add_argument("--rollback", action="store_true",
                      help="swap back to the previous collection (nothing is lost)")
    step.add_argument("--finish", action="store_true",
                      help="stop keeping the previous collection in step and delete it")
    migrate.add_argument("--ray", default="auto", metavar="ADDRESS",
                         help="the Ray cluster the service runs on (default: auto, this "
                              "machine's)")
    migrate.add_argument("--timeout-s", type=float, default=3600.0,
                         help="give up waiting after this long (the gateway goes on)")
    migrate.set_defaults(handler=_index_migrate)
    delete = index_commands.add_parser(
        "delete", help="delete papers by id through a running gateway (--target)")
    delete.add_argument("paper_ids", nargs="+", metavar="PAPER_ID")
    delete.add_argument("--json", action="store_true")
    _add_gateway_arguments(delete)
    delete.set_defaults(handler=_index_delete)

    search = commands.add_parser(
        "search", help="search the index: in-process, or a running gateway with --target")
    # "*", not "+": a query's word that begins with "-" is left to parse_args, which says
    # what to do (argparse said only "the following arguments are required: query")
    search.add_argument("query", nargs="*", type=str,
                        help="the query (required); its words need no quotes")
    search.add_argument("--top-k", type=int, help="default: search.default_top_k (10)")
    search.add_argument("--mode", default="hybrid", choices=MODES)
    search.add_argument("--no-rerank", action="store_true")
    _add_filter_arguments(search)
    search.add_argument("--min-relevance", type=float, metavar="COSINE",
                        help="drop hits whose dense cosine to the query is below this (-1 to 1; "
                             "modes dense and hybrid; README, Relevance cut-off)")
    search.add_argument("--explain", action="store_true",
                        help="per hit: its rank and score in each stage, the fusion formula "
                             "with its inputs, the BM25 terms it matched")
    search.add_argument("--feedback", action=argparse.BooleanOptionalAction, default=None,
                        help="query feedback on a hybrid search: a second pass with the query "
                             "expanded from the first pass's top papers (default: the server's "
                             "index.prf_enabled, on and shed under load; README, Results: Query "
                             "feedback)")
    search.add_argument("--json", action="store_true")
    _add_gateway_arguments(search)
    search.set_defaults(handler=_search, answer_only=True)

    similar = commands.add_parser(
        "similar", help="papers like the given ones (and unlike --unlike ones): recommendations")
    similar.add_argument("paper_ids", nargs="+", metavar="PAPER_ID",
                         help="indexed papers to find more like")
    similar.add_argument("--unlike", action="append", default=[], metavar="PAPER_ID",
                         help="an indexed paper the hits should be unlike (repeatable)")
    similar.add_argument("--strategy", choices=RECOMMEND_STRATEGIES,
                         help="how several examples combine (default: index.recommend_strategy)")
    similar.add_argument("--top-k", type=int, help="default: search.default_top_k (10)")
    _add_filter_arguments(similar)
    similar.add_argument("--json", action="store_true")
    _add_gateway_arguments(similar)
    similar.set_defaults(handler=_similar, answer_only=True)

    watch = commands.add_parser(
        "watch", help="a saved search: print new matching papers as a gateway indexes them")
    watch.add_argument("query", nargs="*", type=str,  # as search's
                       help="the saved search's query (required); its words need no quotes")
    watch.add_argument("--target", metavar="HOST:PORT", required=True, help="the gateway")
    watch.add_argument("--min-relevance", type=float, metavar="COSINE",
                       help="least dense cosine to the query (-1 to 1; default: the server's "
                            "serve.watch_min_relevance, 0.25)")
    watch.add_argument("--since", type=_iso_date, metavar="YYYY-MM-DD",
                       help="first replay the best matches published since this date")
    watch.add_argument("--replay-limit", type=int, default=0,
                       help="most papers replayed, with --since and after a reconnect "
                            "(default: the server's, 10)")
    _add_filter_arguments(watch)
    watch.add_argument("--timeout-s", type=float, help="stop after this long (default: never)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--reconnect", action=argparse.BooleanOptionalAction, default=True,
                       help="open the watch again when the gateway ends a live one (drain, "
                            "restart, too slow a reader), replaying from that day (default)")
    watch.add_argument("--api-key", default=os.environ.get("PAPERSEARCH_API_KEY"),
                       help="x-api-key (default: $PAPERSEARCH_API_KEY)")
    add_tls_arguments(watch)
    watch.set_defaults(handler=_watch)
    parser.set_defaults(queries={"search": search, "watch": watch})  # parse_args's errors

    evaluation = commands.add_parser("eval", help="ranking quality on a judged dataset")
    evaluation.add_argument("--dataset", type=Path, required=True,
                            help="BEIR folder, or any corpus (then its known-item set)")
    evaluation.add_argument("--mode", action="append",
                            choices=EVAL_MODES,
                            help="repeatable; default: all of them (hybrid+feedback: hybrid with "
                                 "query feedback whatever index.prf_enabled says; the +rerank "
                                 "ones only where a reranker is exported)")
    evaluation.add_argument("--json", action="store_true")
    evaluation.set_defaults(handler=_eval)

    serve = commands.add_parser(
        "serve", help="start Ray + the Serve app + the gRPC gateway (Ctrl-C stops)"
    )
    serve.set_defaults(handler=_serve)

    drain = commands.add_parser(
        "drain", help="make the local gateway drain (creates serve.drain_file) and wait until "
                      "its calls in flight have finished (Kubernetes preStop)")
    drain.add_argument("--ray-node", action="store_true",
                       help="instead: move the Serve replicas on this Ray node to other nodes "
                            "and wait (serve.node_drain_s at most; a model worker pod's preStop)")
    drain.set_defaults(handler=_drain)

    loadtest = commands.add_parser(
        "loadtest", help="drive a running gateway at a rate or in steps; JSON + PNG + summary"
    )
    add_loadtest_arguments(loadtest)
    loadtest.set_defaults(handler=_needs_extra("loadtest", _loadtest))

    fusion = commands.add_parser(
        "tune", help="compare hybrid fusions on judged sets: choose on tuning sets, judge on "
                     "held-out ones")
    fusion.add_argument("--tune", type=Path, action="append", metavar="BEIR_DIR",
                        help="repeatable; default: settings tune_sets (CACM, Cranfield)")
    fusion.add_argument("--held-out", type=Path, action="append", metavar="BEIR_DIR",
                        help="repeatable; default: settings held_out_sets (MED, CISI)")
    fusion.add_argument("--json", action="store_true")
    fusion.set_defaults(handler=_tune)

    tune = commands.add_parser(
        "tune-rerank", help="grid-search the rerank fusion weight and k (use a training set)"
    )
    tune.add_argument("--dataset", type=Path, required=True)
    tune.set_defaults(handler=_tune_rerank)
    _config_after_commands(parser)
    return parser


def _config_after_commands(parser: argparse.ArgumentParser) -> None:
    """--config after a command too (`papersearch search q --config f.yaml`): it was refused
    there as an unrecognized argument. Unset there, the one before the command stands."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for command in dict.fromkeys(action.choices.values()):  # type: ignore[union-attr]
            command.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                                 help="YAML settings file (also PAPERSEARCH_CONFIG)")
            _config_after_commands(command)


def _not_utf8(args: argparse.Namespace) -> str | None:
    """What says that a text argument (a query, a name, an id; not a path, which may be
    any bytes) holds bytes that are not UTF-8, as a terminal in another encoding sends them:
    they crashed deep in the encoder or the index."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not _encodes(text):
                raw = text.encode("utf-8", "surrogateescape")
                return (f"{name} ({raw!r}) is not valid UTF-8: check the terminal's encoding "
                        "(LANG)")
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _log_level(settings: Settings, args: argparse.Namespace) -> str:
    """settings.log_level, except that a one-shot answer (search, similar) logs only warnings
    unless log_level was set: its INFO lines (model checked, index opened and closed) would
    stand above every answer."""
    if getattr(args, "answer_only", False) and "log_level" not in settings.model_fields_set:
        return "WARNING"
    return settings.log_level


def main(argv: Sequence[str] | None = None, own_process: bool = False) -> int:
    """``own_process``: the process ends with the command (the console entry point); once the
    command is over, SIGINT and SIGTERM are ignored: a second, impatient Ctrl-C cut its one
    line short, or the interpreter's exit, with a traceback (threading's shutdown, logging's
    handlers closing)."""
    args = parse_args(argv)
    if (undecodable := _not_utf8(args)) is not None:
        print(f"papersearch: error: {undecodable}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
    except (ValueError, FileNotFoundError) as error:  # a setting invalid, the file missing
        print(f"papersearch: error: {error}", file=sys.stderr)
        return 2
    configure_logging(_log_level(settings, args), settings.log_format)
    warn_unread_variables(os.environ)
    handler: Command = args.handler
    interrupts.catch_sigint()
    try:
        try:
            return handler(settings, args)
        finally:
            if own_process:
                interrupts.ignore()
    except StorageExhausted as error:  # the machine's state, as a spent OSError below
        print(f"papersearch: error: {error}", file=sys.stderr)
        return 1
    except USER_ERRORS as error:
        print(f"papersearch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, what was committed stays
        print(interrupts.message(interrupt), file=sys.stderr, flush=True)
        return interrupts.EXIT_STATUS
    except BrokenPipeError:  # `... --json | head`: the reader has what it wanted
        _stdout_gone()
        return 0
    except OSError as error:  # a full disk, no descriptors: the machine's state, one line
        if error.errno not in RESOURCE_ERRNOS:
            raise
        print(f"papersearch: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # an import a command makes late, cut short by Ctrl-C
        if not interrupts.interrupted_by(error):
            raise
        print("papersearch: interrupted", file=sys.stderr, flush=True)
        return interrupts.EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
