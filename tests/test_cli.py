"""The command line and the client library as a user meets them: defaults, pipes, mistakes
reported before slow work (fast; a local gRPC server where a call is needed)."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.cli import _filter, _not_utf8, build_parser, main, parse_args
from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.index.errors import StorageExhausted
from papersearch.settings import SearchSettings, Settings
from tests.ports import free_port


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """`papersearch watch ... --json | head -1`: the reader went, and the command printed a
    BrokenPipeError traceback (exit 1)."""
    flood = ("import sys\nimport papersearch.cli as cli\n"
             "def flood(settings, args):\n"
             "    for _ in range(200_000):\n"
             "        print('x' * 80, flush=True)\n"
             "    return 0\n"
             "cli._search = flood\n"
             "sys.exit(cli.main(['search', 'q']))\n")
    process = subprocess.Popen([sys.executable, "-c", flood], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(100)
    process.stdout.close()  # as head does
    err = process.stderr.read().decode()
    assert process.wait(60) == 0 and "Traceback" not in err, err


@pytest.mark.parametrize(("raised", "code"), [
    (OSError(errno.ENOSPC, "No space left on device", "models/minilm-l6/2/model.onnx"), 1),
    (OSError(errno.EMFILE, "Too many open files"), 1),
    (StorageExhausted("index volume of data/index/papers has 3.0 MiB free, less than "
                      "index.min_free_mib (64): writes are refused until space is freed"), 1),
    (OSError(errno.EIO, "Input/output error"), None),
])
def test_a_spent_resource_is_one_line(raised: Exception, code: int | None,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk under `models export`, or no descriptors left for ingest's build child,
    ended in a 30-line traceback: one line naming the cause now (exit 1, the machine's state,
    not the user's mistake, as the index's own refusal to write on a full disk); another
    OSError is still a bug's traceback."""
    import papersearch.cli as cli

    def spent(settings: Settings, args: Any) -> int:
        raise raised

    monkeypatch.setattr(cli, "_search", spent)
    if code is None:
        with pytest.raises(OSError, match="Input/output"):
            main(["search", "q"])
        return
    assert main(["search", "q"]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"papersearch: error: {raised}") and err.count("\n") == 1, err


def test_top_k_defaults_to_the_settings_default() -> None:
    """--top-k defaulted to 10 whatever search.default_top_k said: with max_top_k 5 the plain
    command failed ("top_k must be between 1 and 5, got 10")."""
    from papersearch.cli import _top_k

    settings = Settings(search=SearchSettings(default_top_k=5, max_top_k=5))
    for command in (["search", "q"], ["similar", "p1"]):
        args = build_parser().parse_args(command)
        assert _top_k(args, settings, remote=False) == 5
        assert _top_k(args, settings, remote=True) == 0  # a gateway's own default
    args = build_parser().parse_args(["search", "q", "--top-k", "3"])
    assert _top_k(args, settings, remote=False) == _top_k(args, settings, remote=True) == 3
    for value in ("3000000000", "-5"):  # past int32: protobuf's "Value out of range" was all
        args = build_parser().parse_args(["similar", "p1", "--top-k", value])
        with pytest.raises(ValueError, match=f"--top-k must be a positive number .*got {value}"):
            _top_k(args, settings, remote=True)
    # in-process, this machine's limit names the option (it said "top_k must be between")
    for value in ("6", "-1"):
        args = build_parser().parse_args(["search", "q", "--top-k", value])
        with pytest.raises(ValueError, match=rf"--top-k must be between 1 and 5 "
                                             rf"\(search.max_top_k; 0: the default\), got {value}"):
            _top_k(args, settings, remote=False)
    args = build_parser().parse_args(["search", "q", "--top-k", "0"])  # the default, as remote
    assert _top_k(args, settings, remote=False) == 5 and _top_k(args, settings, remote=True) == 0
    # and --from after --to too (it said "published_from is after published_to")
    args = build_parser().parse_args(["search", "q", "--from", "2025-02-01", "--to", "2024-01-01"])
    with pytest.raises(ValueError, match="--from 2025-02-01 is after --to 2024-01-01"):
        _filter(args)


def test_an_empty_paper_id_is_said_in_the_command_s_words(
        capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["similar", ""], ["similar", "2401.00001", "--unlike", " "]):
        assert main(command) == 2
        assert capsys.readouterr().err.strip() == (
            "papersearch: error: an empty PAPER_ID (or --unlike) names no paper")


class Searches(pb_grpc.SearchServiceServicer):
    """A gateway whose limits are not this machine's: it records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def Search(self, request: pb.SearchRequest,  # noqa: N802
               context: grpc.ServicerContext) -> pb.SearchResponse:
        self.asked.append(request)
        return pb.SearchResponse()

    def SimilarPapers(self, request: pb.SimilarPapersRequest,  # noqa: N802
                      context: grpc.ServicerContext) -> pb.SearchResponse:
        self.asked.append(request)
        return pb.SearchResponse()


def test_a_gateway_judges_a_query_by_its_own_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --target the query was refused by this machine's settings (max_top_k 100,
    max_query_chars 2,048) before the gateway, whose limits may be larger, saw it; and an unset
    --top-k sent this machine's default, not the gateway's."""
    searches = Searches()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SearchServiceServicer_to_server(searches, server)
    target = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(target)
    server.start()
    monkeypatch.setenv("PAPERSEARCH_SEARCH__DEFAULT_TOP_K", "7")
    try:
        assert main(["search", "q" * 3000, "--top-k", "150", "--target", target]) == 0
        assert main(["search", "q", "--target", target]) == 0
        assert main(["similar", "p1", "--top-k", "150", "--target", target]) == 0
        assert main(["similar", "p1", "--target", target]) == 0
    finally:
        server.stop(0)
    assert [(len(getattr(r, "query", "")), r.top_k) for r in searches.asked] == [
        (3000, 150), (1, 0), (0, 150), (0, 0)]


def test_a_mistyped_reranker_source_fails_before_the_embedders_export(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from papersearch.modelbuild import prepare

    def exported(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("the embedder was exported first (~20 s) before the typo showed")

    monkeypatch.setattr(prepare, "prepare", exported)
    assert main(["models", "export", "--reranker", "./no/such/model"]) == 2
    assert "not a model directory" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "module", "extra"), [
    (["models", "export"], "torch", "export"),
    (["models", "train-reranker"], "transformers", "export"),
    (["loadtest", "--target", "127.0.0.1:1", "--rate", "1"], "matplotlib", "loadtest"),
])
def test_a_command_without_its_extra_says_which_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str],
    module: str, extra: str,
) -> None:
    """`models export` and `models train-reranker` without the export extra were a
    ModuleNotFoundError's traceback (loadtest alone said what to install)."""
    from papersearch.loadtest import command as loadtest
    from papersearch.modelbuild import prepare

    def missing(*_: Any, **__: Any) -> Any:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    for owner, name in ((prepare, "prepare"), (prepare, "train_reranker"), (loadtest, "run")):
        monkeypatch.setattr(owner, name, missing)
    assert main(command) == 2
    assert capsys.readouterr().err == (
        f"papersearch: error: {module} is not installed: install the {extra} extra (pip "
        f"install 'papersearch[{extra}]'; make install has it)\n")


def test_a_module_missing_from_no_extra_is_not_blamed_on_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from papersearch.modelbuild import prepare

    def missing(*_: Any, **__: Any) -> Any:
        raise ModuleNotFoundError("No module named 'papersearch.gone'", name="papersearch.gone")

    monkeypatch.setattr(prepare, "prepare", missing)
    with pytest.raises(ModuleNotFoundError, match="papersearch.gone"):
        main(["models", "export"])


class Upserts(pb_grpc.IndexServiceServicer):
    """An IndexService that counts: papers received, and stored ids among those deleted."""

    stored = {"p1", "p2"}

    def UpsertPapers(self, request_iterator: Iterator[pb.Paper],  # noqa: N802
                     context: grpc.ServicerContext) -> pb.UpsertSummary:
        return pb.UpsertSummary(received=sum(1 for _ in request_iterator))

    def DeletePapers(self, request: pb.DeletePapersRequest,  # noqa: N802
                     context: grpc.ServicerContext) -> pb.DeletePapersResponse:
        return pb.DeletePapersResponse(deleted=len(self.stored & set(request.paper_ids)))


@pytest.fixture
def index_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_IndexServiceServicer_to_server(Upserts(), server)
    target = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(target)
    server.start()
    yield target
    server.stop(0)


def test_index_delete_asks_the_gateway(index_server: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI had no delete: a paper removed from a corpus stayed searchable unless the user
    wrote Python."""
    assert main(["index", "delete", "p1", "p9", "p1", "--target", index_server]) == 0
    assert capsys.readouterr().out == (
        "deleted 1 of 2 papers (the others were not in the index)\n")
    assert main(["index", "delete", "p2", " p2", "--json", "--target", index_server]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 1, "asked": 1}  # one id, cleaned
    assert main(["index", "delete", "p2", "p\x01", "--target", index_server]) == 2
    assert "paper_ids[1]" in capsys.readouterr().err  # refused before the call
    assert main(["index", "delete", "p1"]) == 2
    assert "index delete needs --target" in capsys.readouterr().err


def test_an_error_of_the_callers_papers_is_raised_as_itself(index_server: str) -> None:
    """A paper iterable that fails (a bad line of the caller's corpus) came back as gRPC's
    UNKNOWN "Exception iterating requests!", the caller's error lost."""
    def papers() -> Iterator[Paper]:
        yield Paper(id="p1", title="A paper", abstract="")
        raise ValueError("corpus.jsonl:2: not JSON")

    with SearchClient(index_server, timeout_s=10) as client:
        assert client.upsert([Paper(id="p0", title="Fine", abstract="")]).received == 1
        with pytest.raises(ValueError, match="corpus.jsonl:2"):
            client.upsert(papers())


def test_an_api_key_read_from_a_file_loses_its_newline() -> None:
    """A key from a mounted secret file ends in a newline: the call failed with the gateway's
    'INTERNAL: Invalid metadata', as if the server were at fault."""
    with SearchClient("127.0.0.1:1", api_key="s3cret-key\n") as client:
        assert client.metadata == (("x-api-key", "s3cret-key"),)
    with pytest.raises(ValueError, match="not printable ASCII"):
        SearchClient("127.0.0.1:1", api_key="k\u00e9y")


@pytest.mark.parametrize(("command", "message"), [
    (["search", "q", "--tls"], "--tls only with --target"),
    (["similar", "p1", "--ca", "ca.pem", "--wait-for-ready"],
     "--ca, --wait-for-ready only with --target"),
    (["search", "q", "--target", " "], "--target is empty"),
    (["watch", "q", "--target", "127.0.0.1:1", "--timeout-s", "0"],
     "--timeout-s must be a positive number of seconds, got 0"),
    (["index", "migrate", "--finish", "--timeout-s", "-1"],
     "--timeout-s must be a positive number of seconds, got -1"),
    # gRPC took these for a deadline already past: DEADLINE_EXCEEDED at once
    (["watch", "q", "--target", "127.0.0.1:1", "--timeout-s", "inf"],
     "--timeout-s must be at most 31536000 seconds (a year), got inf"),
    (["index", "migrate", "--finish", "--timeout-s", "1e10"],
     "--timeout-s must be at most 31536000 seconds (a year), got 1e+10"),
])
def test_gateway_options_without_a_gateway_are_refused(
    command: list[str], message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """They were ignored: the search ran in-process, on whatever index was local."""
    assert main(command) == 2
    assert message in capsys.readouterr().err


def test_printed_results_label_the_expanded_query_and_omit_absent_timings() -> None:
    """With query feedback the explanation's dense and BM25 stages are the expanded query's:
    printed unlabelled beside the hit's own dense score they read as a contradiction. A
    SimilarPapers answer has no timings: it printed "0.0 ms"."""
    from papersearch.cli import format_result
    from papersearch.index.query import Explanation, StageRank
    from papersearch.pipeline.query import SearchHit, SearchResult, StageScores

    why = Explanation(dense=StageRank(1, 0.6234), sparse=StageRank(2, 7.5),
                      fused=StageRank(1, 0.9))
    hit = SearchHit(Paper(id="p", title="A paper", abstract=""), 0.9, StageScores(dense=0.3725),
                    why)
    fed = format_result(SearchResult((hit,), False, {"total": 12.0}, feedback=True))
    assert "dense (expanded query) #1 (0.6234), sparse (expanded query) #2" in fed
    assert fed.endswith("feedback=True, 12.0 ms")
    plain = format_result(SearchResult((hit,), False, {}))
    assert "dense #1 (0.6234)" in plain and plain.endswith("feedback=False")


def test_a_newcomers_mistakes_get_one_line(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """A query typed in a terminal of another encoding crashed in the encoder with a
    traceback; `--target localhost` went to port 443; a bad date said "invalid fromisoformat
    value"; an unknown corpus format did not say what is read."""
    assert main(["search", "Schr\udcf6dinger bridge"]) == 2  # argv's undecodable byte
    err = capsys.readouterr().err
    assert "query (b'Schr\\xf6dinger bridge') is not valid UTF-8" in err
    parsed = build_parser().parse_args(["ingest", str(tmp_path / "caf\udce9.jsonl")])
    assert _not_utf8(parsed) is None  # a path may be any bytes: not refused
    assert main(["search", "x", "--target", "localhost"]) == 2
    err = capsys.readouterr().err
    assert "--target must be HOST:PORT ([v6]:PORT for IPv6), got 'localhost'" in err
    for target in ("unix:/nonexistent/gateway.sock", "dns:///127.0.0.1:1"):  # gRPC's names
        assert main(["search", "x", "--target", target]) == 2
        assert "UNAVAILABLE" in capsys.readouterr().err, target
    with pytest.raises(SystemExit):
        main(["search", "x", "--from", "2024-13-01"])
    assert "--from: '2024-13-01' is no date (month must be in 1..12)" in capsys.readouterr().err
    (tmp_path / "papers.csv").write_text("id,title\n")
    assert main(["ingest", str(tmp_path / "papers.csv")]) == 2
    assert "expected a .jsonl file" in capsys.readouterr().err


def test_one_shot_answers_log_warnings_only_unless_a_level_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three INFO lines (model checked, index opened, closed) stood above every `search`."""
    from papersearch.cli import _log_level
    from papersearch.settings import load_settings

    monkeypatch.delenv("PAPERSEARCH_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PAPERSEARCH_CONFIG", raising=False)
    parser = build_parser()
    search, similar = parser.parse_args(["search", "q"]), parser.parse_args(["similar", "x"])
    ingest = parser.parse_args(["ingest", "papers.jsonl"])
    assert [_log_level(load_settings(), a) for a in (search, similar, ingest)] == [
        "WARNING", "WARNING", "INFO"]
    monkeypatch.setenv("PAPERSEARCH_LOG_LEVEL", "info")
    assert _log_level(load_settings(), search) == "INFO"
    monkeypatch.delenv("PAPERSEARCH_LOG_LEVEL")
    config = tmp_path / "settings.yaml"
    config.write_text("log_level: DEBUG\n")
    monkeypatch.setenv("PAPERSEARCH_CONFIG", str(config))  # what --config does, undone after
    assert _log_level(load_settings(), search) == "DEBUG"
    monkeypatch.delenv("PAPERSEARCH_CONFIG")
    assert main(["search", " "]) == 2  # refused before any work, after logging is set up
    assert logging.getLogger().level == logging.WARNING


def test_an_in_process_search_cleans_its_filter_as_the_gateway_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`search --author "A.  Author"` found nothing where `similar` and the gateway find "A.
    Author"; an empty --category filtered everything out; a tab or a bidi mark in a name is
    cleaned as the stored name was."""
    import papersearch.pipeline.factory as factory
    from papersearch.pipeline.query import SearchQuery, SearchResult

    asked: list[SearchQuery] = []

    class Recorded:
        async def search(self, query: SearchQuery) -> SearchResult:
            asked.append(query)
            return SearchResult((), False, {})

    class Closed:
        def __enter__(self) -> Closed:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(factory, "build_pipeline", lambda settings: (Recorded(), Closed()))
    assert main(["search", "graph", "--author", " A.  Author", "--category", "",
                 "--category", "cs.LG"]) == 0
    assert [(q.filter.authors, q.filter.categories) for q in asked] == [
        (("A. Author",), ("cs.LG",))]
    assert main(["search", "graph", "--author", "A.\tAuthor\u200e"]) == 0  # cleaned as stored
    assert asked[-1].filter.authors == ("A. Author",)


class Deadlines(pb_grpc.SearchServiceServicer, pb_grpc.IndexServiceServicer):
    """A gateway that records how long each call was given."""

    def __init__(self) -> None:
        self.left: dict[str, float] = {}

    def _seen(self, name: str, context: grpc.ServicerContext) -> None:
        self.left[name] = context.time_remaining() or 0.0

    def GetPaper(self, request: Any, context: grpc.ServicerContext) -> pb.Paper:  # noqa: N802
        self._seen("get", context)
        return pb.Paper(paper_id="p1", title="t")

    def SimilarPapers(self, request: Any,  # noqa: N802
                      context: grpc.ServicerContext) -> pb.SearchResponse:
        self._seen("similar", context)
        return pb.SearchResponse()

    def UpsertPapers(self, requests: Any,  # noqa: N802
                     context: grpc.ServicerContext) -> pb.UpsertSummary:
        self._seen("upsert", context)
        return pb.UpsertSummary(received=sum(1 for _ in requests))

    def DeletePapers(self, request: Any,  # noqa: N802
                     context: grpc.ServicerContext) -> pb.DeletePapersResponse:
        self._seen("delete", context)
        return pb.DeletePapersResponse()


def test_every_client_call_takes_a_deadline_of_its_own() -> None:
    """Only search and watch took timeout_s: an UpsertPapers stream longer than the client's
    30 s failed with nothing committed, and no call could be given less."""
    deadlines = Deadlines()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SearchServiceServicer_to_server(deadlines, server)
    pb_grpc.add_IndexServiceServicer_to_server(deadlines, server)
    target = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(target)
    server.start()
    try:
        with SearchClient(target, timeout_s=30) as client:
            client.get("p1", timeout_s=5)
            client.similar("p1", timeout_s=6)
            client.upsert([Paper(id="p1", title="t", abstract="")], timeout_s=500)
            client.delete(["p1"], timeout_s=7)
            given = dict(deadlines.left)
            client.get("p1")
    finally:
        server.stop(0)
    asked = {"get": 5, "similar": 6, "upsert": 500, "delete": 7}
    assert given.keys() == asked.keys()  # gRPC sends a deadline in whole units, rounded up
    assert all(asked[name] - 1 < given[name] <= asked[name] + 1 for name in asked), given
    assert 29 < deadlines.left["get"] <= 31  # the client's, when a call gives none


@pytest.mark.parametrize("argv", [
    ["--config", "top.yaml", "search", "q"], ["search", "q", "--config", "top.yaml"],
    ["models", "info", "--config", "top.yaml"], ["index", "migrate", "--finish", "--config",
                                                  "top.yaml"],
])
def test_config_is_taken_before_or_after_the_command(argv: list[str]) -> None:
    """`papersearch search q --config f.yaml` was refused: "unrecognized arguments"."""
    assert build_parser().parse_args(argv).config == Path("top.yaml")


def test_config_after_the_command_wins() -> None:
    args = build_parser().parse_args(["--config", "a.yaml", "search", "q", "--config", "b.yaml"])
    assert args.config == Path("b.yaml")
    assert build_parser().parse_args(["search", "q"]).config is None


def test_a_date_no_calendar_holds_is_said_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    """--from 2024-02-30 was refused as "expected a date YYYY-MM-DD": the format it had."""
    for value, said in [("2024-02-30", "'2024-02-30' is no date (day is out of range for month)"),
                        ("2024-2-3", "expected a date YYYY-MM-DD, got '2024-2-3'")]:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["search", "q", "--from", value])
        assert capsys.readouterr().err.rstrip().endswith(f"argument --from: {said}")


def test_a_target_that_is_no_grpc_server_gets_a_hint() -> None:
    """gRPC's own words for the HTTP front's port, or a plain one asked for TLS, named no
    cause; the hint says what to try."""
    from papersearch.cli import _remote_error

    http2 = ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8000: "
             "Failed parsing HTTP/2 (Expected SETTINGS frame as the first frame, got frame "
             "type 79)")
    assert _remote_error("127.0.0.1:8000", "UNAVAILABLE", http2).endswith(
        "(it does not speak gRPC: the HTTP front's port? the gateway's gRPC port is "
        "serve.grpc_port, 50051 by default)")
    tls = "... Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:...:"
    assert _remote_error("h:1", "UNAVAILABLE", tls + "WRONG_VERSION_NUMBER: ..."
                         ).endswith("(it does not speak TLS: drop --tls, or check the port)")
    # a TLS server whose certificate is not trusted: dropping --tls was the wrong advice
    assert "(its certificate is not trusted here: give --ca with the CA that signed it" in (
        _remote_error("h:1", "UNAVAILABLE", tls + "CERTIFICATE_VERIFY_FAILED: self signed"))
    # --ca given and right, the certificate expired: "give --ca" was the advice there too
    assert _remote_error("h:1", "UNAVAILABLE", tls + "CERTIFICATE_VERIFY_FAILED: certificate "
                         "has expired").endswith("(the gateway's certificate has expired: "
                                                 "renew it there (serve.tls_cert_file); no "
                                                 "client option mends it)")
    assert "(it does not speak gRPC: the HTTP front's port?" in _remote_error(
        "h:8000", "UNAVAILABLE", "Cannot check peer: missing selected ALPN property.")
    assert _remote_error("h:1", "NOT_FOUND", "no paper 'x'") == "h:1: NOT_FOUND: no paper 'x'"


def test_a_missing_path_from_a_setting_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Run from elsewhere, the relative defaults are not there: "no such corpus file or
    folder: ../shared/eval/med" named a path the user never typed, and neither the setting
    nor the fix."""
    monkeypatch.chdir(tmp_path)
    for name in ("PAPERSEARCH_CORPUS_DIR", "PAPERSEARCH_TUNE_SETS", "PAPERSEARCH_HELD_OUT_SETS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["ingest"]) == 2
    assert capsys.readouterr().err.startswith(
        "papersearch: error: no such file or folder: ../shared/corpus/daily-papers (")
    assert main(["tune", "--tune", str(tmp_path)]) == 2
    said = capsys.readouterr().err
    assert "from the held_out_sets setting (PAPERSEARCH_HELD_OUT_SETS; its default is " \
           "relative to the repository root): give --held-out" in said


def test_a_query_s_words_need_no_quotes() -> None:
    """``search efficient attention`` was "unrecognized arguments: attention" under the
    top-level usage."""
    args = parse_args(["search", "efficient", "attention", "--top-k", "3"])
    assert args.query == "efficient attention" and args.top_k == 3
    # and around options, in their order (argparse takes a positional's words in one run)
    args = parse_args(["search", "efficient", "--top-k", "3", "attention", "--json", "now"])
    assert args.query == "efficient attention now" and args.top_k == 3 and args.json
    with pytest.raises(SystemExit):  # a typo'd option is still one
        parse_args(["search", "efficient", "--topk", "3"])
    assert parse_args(["search", "one  query"]).query == "one  query"
    assert parse_args(["watch", "diffusion", "models", "--target", "h:1"]).query == (
        "diffusion models")


def test_a_query_word_with_a_leading_minus_is_told_to_go_after_dashes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``search transformers -vision`` said only "unrecognized arguments: -vision" under the
    top-level usage, ``search -3D`` "the following arguments are required: query", and
    ``search multi -hop`` "argument -h/--help: ignored explicit argument 'op'"."""
    for argv, dashed in ((["search", "transformers", "-vision"], "-vision"),
                         (["search", "-3D"], "-3D"),
                         (["search", "multi", "-hop", "reasoning"], "-hop"),
                         (["--config", "c.yaml", "search", "ad", "-hoc"], "-hoc"),
                         (["watch", "gpt", "-vision", "--target", "h:1"], "-vision")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        said = capsys.readouterr().err
        command = "watch" if "watch" in argv else "search"
        assert f"papersearch {command}: error: unrecognized arguments: {dashed} (a query's " \
               "words that begin with '-' go after '--', its options before it" in said, said
        assert "a minus excludes nothing" in said
    assert parse_args(["search", "--top-k", "3", "--", "transformers", "-vision"]).query == (
        "transformers -vision")
    args = parse_args(["search", "transformers", "--top-k", "3", "--", "-vision", "-hop"])
    assert args.query == "transformers -vision -hop" and args.top_k == 3
    assert parse_args(["search", "gpt", "-4"]).query == "gpt -4"  # a number: a word already
    with pytest.raises(SystemExit):
        parse_args(["search"])
    assert "papersearch search: error: the following arguments are required: query" in \
        capsys.readouterr().err
    assert parse_args(["search", ""]).query == ""  # given, blank: the search says what is wrong
    with pytest.raises(SystemExit):  # a mistyped option: said plainly, with its value
        parse_args(["search", "q", "--topk", "3"])
    assert "papersearch search: error: unrecognized arguments: --topk 3\n" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("report", "code"), [
    ({"embedder": {"missing": "no exported model"}, "reranker": {"name": "r"}}, 1),
    ({"embedder": {"unusable": "not an embedder export"}, "reranker": {"name": "r"}}, 1),
    ({"embedder": {"name": "e"}, "reranker": {"damaged": "model.onnx has sha256 ..."}}, 1),
    ({"embedder": {"name": "e"}, "reranker": {"missing": "no exported model"}}, 0),
    ({"embedder": {"name": "e"}, "reranker": {"unusable": "not a reranker export"}}, 0),
])
def test_models_info_fails_without_an_embedder_to_serve(
    report: dict[str, Any], code: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """Only a damaged export exited 1: with no embedder (a repository path mistyped, a manifest
    deleted) `models info && papersearch serve` went on to serve nothing. The reranker is
    optional: without one the service runs."""
    from papersearch.modelbuild import info

    monkeypatch.setenv("PAPERSEARCH_MODELS__REPOSITORY", str(tmp_path / "no-such-repository"))
    assert main(["models", "info"]) == 1  # as it is, nothing exported
    assert "no exported model" in json.loads(capsys.readouterr().out)["embedder"]["missing"]
    monkeypatch.setattr(info, "describe", lambda settings: report)
    assert main(["models", "info"]) == code
