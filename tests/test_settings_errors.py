"""Settings that do not validate stop every command with one line naming them (fast)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from papersearch.cli import main
from papersearch.settings import (
    CONFIG_ENV,
    MAX_COUNT,
    ServeSettings,
    _UniqueKeys,
    load_settings,
    unread_variables,
)


def settings_file(monkeypatch: pytest.MonkeyPatch, path: Path, text: str) -> Path:
    """``text`` written to ``path``, the settings file of the commands that follow."""
    path.write_text(text)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


def error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "models", "info"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and not captured.out
    (line,) = captured.err.splitlines()
    return line


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("PAPERSEARCH_TRAINING__TIME_BUDGET_S", "-5",
     "training.time_budget_s (PAPERSEARCH_TRAINING__TIME_BUDGET_S): Input should be greater than "
     "0 (given '-5')"),
    ("PAPERSEARCH_SEARCH__TOPK", "5",  # a typo in a section: refused, not ignored
     "search.topk (PAPERSEARCH_SEARCH__TOPK): Extra inputs are not permitted"),
    # a misspelt key variable: its value is not repeated (it is a key)
    ("PAPERSEARCH_SERVE__API_KEY", "sup3rs3cret",
     "serve.api_key (PAPERSEARCH_SERVE__API_KEY): Extra inputs are not permitted"),
    # an empty key would let in a caller sending an empty x-api-key
    ("PAPERSEARCH_SERVE__READ_API_KEYS", '["ok-key", ""]',
     "serve.read_api_keys (PAPERSEARCH_SERVE__READ_API_KEYS): Value error, a key must not be "
     "empty or begin or end with a blank (its value is not repeated here)"),
    # a list is JSON in its own variable; a key given as plain text is not repeated
    ("PAPERSEARCH_SERVE__API_KEYS", "s3cret",
     "serve.api_keys (PAPERSEARCH_SERVE__API_KEYS): a list is set as JSON, e.g. "
     "PAPERSEARCH_SERVE__API_KEYS='[\"a\", \"b\"]'"),
    ("PAPERSEARCH_TRAINING__CORPORA", "[5]",
     "training.corpora.0 (PAPERSEARCH_TRAINING__CORPORA): Input is not a valid path for "
     "<class 'pathlib.Path'> (given 5)"),
    ("PAPERSEARCH_SEARCH__MAX_TOP_K", "5",  # below default_top_k: every plain Search refused
     "search (PAPERSEARCH_SEARCH__MAX_TOP_K): Value error, search.default_top_k (10) is past "
     "search.max_top_k (5): every request leaving top_k unset would be refused"),
    ("PAPERSEARCH_SERVE", "x",
     "serve (PAPERSEARCH_SERVE): a section is set as JSON, e.g. "
     "PAPERSEARCH_SERVE='{\"key\": \"value\"}'"),
    # a server's URL with the embedded backend: ingest filled a local shard, the server empty
    ("PAPERSEARCH_INDEX__URL", "http://qdrant:6333",
     "index (PAPERSEARCH_INDEX__URL): Value error, index.url and index.api_key are for a Qdrant "
     "server: set index.backend=server (PAPERSEARCH_INDEX__BACKEND=server) too, or leave them "
     "unset for the embedded index"),
    ("PAPERSEARCH_INDEX", '{"backend": "server", "url": "qdrant:6333"}',
     "index (PAPERSEARCH_INDEX): Value error, index.url must be an http:// or https:// URL, "
     "got 'qdrant:6333'"),
    # no host, or no port: both failed only at the first call, deep in urllib3
    ("PAPERSEARCH_INDEX", '{"backend": "server", "url": "http://"}',
     "index (PAPERSEARCH_INDEX): Value error, index.url names no host (http://qdrant:6333), "
     "got 'http://'"),
    ("PAPERSEARCH_INDEX", '{"backend": "server", "url": "https://qdrant:x"}',
     "index (PAPERSEARCH_INDEX): Value error, index.url's host or port is not valid "
     "(http://qdrant:6333; a user or password holding / ? # @ is percent-encoded), got "
     "'https://qdrant:x'"),
    # quoted without its password, one that does not parse too (it was shown whole)
    ("PAPERSEARCH_INDEX", '{"backend": "server", "url": "ftp://admin:s3cret@qdrant"}',
     "index (PAPERSEARCH_INDEX): Value error, index.url must be an http:// or https:// URL, "
     "got 'ftp://qdrant'"),
    ("PAPERSEARCH_INDEX", '{"backend": "server", "url": "https:admin:s3cret@qdrant:6333"}',
     "index (PAPERSEARCH_INDEX): Value error, index.url names no host (http://qdrant:6333), "
     "got 'qdrant:6333'"),
    ("PAPERSEARCH_INDEX", '{"backend": "server", "url": "admin:s3cret@qdrant:6333"}',
     "index (PAPERSEARCH_INDEX): Value error, index.url must be an http:// or https:// URL, "
     "got 'qdrant:6333'"),
    ("PAPERSEARCH_INDEX", '{"backend": "server", "url": "https://admin:se#cr/t?@qdrant:6333"}',
     "index (PAPERSEARCH_INDEX): Value error, index.url's host or port is not valid "
     "(http://qdrant:6333; a user or password holding / ? # @ is percent-encoded), got "
     "'https://qdrant:6333'"),
    # an empty path is the current directory: a template's unset variable moved the index
    ("PAPERSEARCH_INDEX__DATA_DIR", "",
     "index.data_dir (PAPERSEARCH_INDEX__DATA_DIR): Value error, an empty path is the current "
     "directory: give a path (given '')"),
    ("PAPERSEARCH_CORPUS_DIR", " ",
     "corpus_dir (PAPERSEARCH_CORPUS_DIR): Value error, an empty path is the current "
     "directory: give a path (given ' ')"),
    # a huge deadline meant as "none": gRPC took it for one already passed (HTTP calls 504)
    ("PAPERSEARCH_SERVE__MAX_DEADLINE_S", "1e10",
     "serve.max_deadline_s (PAPERSEARCH_SERVE__MAX_DEADLINE_S): Input should be less than or "
     "equal to 31536000 (given '1e10')"),
    # a name past a file name's 255 bytes: "File name too long" at its first use, a traceback
    ("PAPERSEARCH_INDEX__COLLECTION", "c" * 201,
     "index.collection (PAPERSEARCH_INDEX__COLLECTION): String should have at most 200 "
     f"characters (given '{'c' * 201}')"),
    # in a list too: held_out_sets=[""] was ".", and held out every set
    ("PAPERSEARCH_HELD_OUT_SETS", '["../shared/eval/med", ""]',
     "held_out_sets (PAPERSEARCH_HELD_OUT_SETS): Value error, an empty path is the current "
     "directory: give a path"),
    ("PAPERSEARCH_TUNE_SETS", '[""]',
     "tune_sets (PAPERSEARCH_TUNE_SETS): Value error, an empty path is the current "
     "directory: give a path"),
    ("PAPERSEARCH_TRAINING__CORPORA", '[" "]',
     "training.corpora (PAPERSEARCH_TRAINING__CORPORA): Value error, an empty path is the "
     "current directory: give a path"),
    # nothing expands a variable in a setting: "$HOME/idx" was a folder named "$HOME" here
    ("PAPERSEARCH_INDEX__DATA_DIR", "$HOME/idx",
     "index.data_dir (PAPERSEARCH_INDEX__DATA_DIR): Value error, $HOME is not expanded in a "
     "path setting (only a shell does that): write the path itself, or set it from the shell "
     "(given '$HOME/idx')"),
    ("PAPERSEARCH_HELD_OUT_SETS", '["${EVAL}/med"]',
     "held_out_sets (PAPERSEARCH_HELD_OUT_SETS): Value error, ${EVAL} is not expanded in a "
     "path setting (only a shell does that): write the path itself, or set it from the shell"),
    ("PAPERSEARCH_MODELS__RERANKER_NAME", "../elsewhere",  # one folder of models.repository
     "models.reranker_name (PAPERSEARCH_MODELS__RERANKER_NAME): String should match pattern "
     "'^[A-Za-z0-9][A-Za-z0-9._-]*$' (given '../elsewhere')"),
    ("PAPERSEARCH_SERVE__GRPC_HOST", "",  # gRPC failed to bind after Ray had started
     "serve.grpc_host (PAPERSEARCH_SERVE__GRPC_HOST): String should have at least 1 character "
     "(given '')"),
    # found only by torch minutes into a training run, without the setting's name
    ("PAPERSEARCH_TRAINING__LEARNING_RATE", "-1",
     "training.learning_rate (PAPERSEARCH_TRAINING__LEARNING_RATE): Input should be greater "
     "than 0 (given '-1')"),
    # at the clients' keepalive interval their quiet watches got GOAWAY every few pings
    ("PAPERSEARCH_SERVE__MIN_CLIENT_PING_INTERVAL_S", "60",
     "serve.min_client_ping_interval_s (PAPERSEARCH_SERVE__MIN_CLIENT_PING_INTERVAL_S): Input "
     "should be less than 30 (given '60')"),
    # the rerank window sized past the budget: adaptive depth never shrank it in time; a check
    # across sections names each setting's variable (it named neither)
    ("PAPERSEARCH_SEARCH__RERANK_TARGET_S", "5",
     "Value error, search.rerank_target_s=5 must be below serve.rerank_timeout_s=2 "
     "(search.rerank_target_s: PAPERSEARCH_SEARCH__RERANK_TARGET_S; serve.rerank_timeout_s: "
     "PAPERSEARCH_SERVE__RERANK_TIMEOUT_S)"),
    # a held-out set among the sets that choose: read unchecked by the benchmarks that tune
    ("PAPERSEARCH_TUNE_SETS", '["../shared/eval/cacm", "../shared/eval/med"]',
     "Value error, ../shared/eval/med is a held-out set (held_out_sets): a set kept to judge "
     "choices cannot be used for tuning (tune_sets); use another set, or take it out of "
     "held_out_sets (held_out_sets: PAPERSEARCH_HELD_OUT_SETS; tune_sets: "
     "PAPERSEARCH_TUNE_SETS)"),
    ("PAPERSEARCH_TUNE_SETS", '["/elsewhere/cacm", "../shared/eval/cacm"]',
     "Value error, tune_sets and held_out_sets give two sets named cacm: sets are known by "
     "their folder names, one set a name (tune_sets: PAPERSEARCH_TUNE_SETS; held_out_sets: "
     "PAPERSEARCH_HELD_OUT_SETS)"),
    # a key in both scopes has write access: refused, without its value
    ("PAPERSEARCH_SERVE", '{"api_keys": ["w-key", "both-key"], "read_api_keys": ["both-key"]}',
     "serve (PAPERSEARCH_SERVE): Value error, a key is in both serve.api_keys and "
     "serve.read_api_keys: give each key one scope (its value is not repeated here)"),
])
def test_an_invalid_environment_variable_is_named(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, variable: str,
        value: str, problem: str) -> None:
    monkeypatch.setenv(variable, value)
    assert error_line(capsys) == f"papersearch: error: invalid settings: {problem}"


def test_every_invalid_value_of_a_settings_file_is_named(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    path = settings_file(monkeypatch, tmp_path / "settings.yaml",
                         "index:\n  fusion: nope\n  prefetch_limit: 0\n")
    monkeypatch.setenv("PAPERSEARCH_INDEX__PREFETCH_LIMIT", "-1")  # the variable wins
    line = error_line(capsys)
    assert line.startswith("papersearch: error: invalid settings: ")
    # named where it was set: the file (not a variable nobody set), or the variable
    assert f"index.fusion (settings file {path}): Input should be 'rrf', 'dbsf' or " \
           "'convex' (given 'nope')" in line
    assert "index.prefetch_limit (PAPERSEARCH_INDEX__PREFETCH_LIMIT): Input should be greater " \
           "than or equal to 1 (given '-1')" in line


def test_settings_that_do_not_fit_together_name_the_file_only_for_what_it_sets(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A file setting only search.rerank_target_s was named as the source of
    serve.rerank_timeout_s too, whose default the user never wrote anywhere."""
    path = settings_file(monkeypatch, tmp_path / "settings.yaml",
                         "search:\n  rerank_target_s: 3\n")
    assert error_line(capsys).endswith(
        f"(search.rerank_target_s: settings file {path}; serve.rerank_timeout_s: "
        "PAPERSEARCH_SERVE__RERANK_TIMEOUT_S)")


def test_a_settings_file_says_each_thing_once(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A second ``serve:`` section dropped the first without a word; a section whose keys
    are all commented out was "Input should be a valid dictionary"; a file in another
    encoding was a bare UnicodeDecodeError."""
    twice = settings_file(monkeypatch, tmp_path / "twice.yaml",
                          "serve:\n  grpc_port: 1234\nserve:\n  http_port: 8001\n")
    line = error_line(capsys)
    assert line.startswith(f"papersearch: error: settings file {twice} ") \
        and "'serve' is given twice" in line
    settings_file(monkeypatch, tmp_path / "empty.yaml",
                  "serve:\n#  grpc_port: 1\nindex:\n  prefetch_limit: 50\n")
    assert load_settings().index.prefetch_limit == 50
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("serve:\n  grpc_host: caf\xe9\n".encode("latin-1"))
    monkeypatch.setenv(CONFIG_ENV, str(latin))
    assert "not UTF-8 text" in error_line(capsys)


@pytest.mark.parametrize(("variables", "problem"), [
    ({"PAPERSEARCH_LOG_LEVEL": "verbose"},
     "log_level (PAPERSEARCH_LOG_LEVEL): Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or "
     "'CRITICAL' (given 'VERBOSE')"),  # was a traceback from logging, in every replica too
    ({"PAPERSEARCH_SERVE__HEALTH_PORT": "50051"},  # the kernel shared its connections
     "serve (PAPERSEARCH_SERVE__HEALTH_PORT): Value error, serve.grpc_port and serve.health_port "
     "are both "
     "50051: each server needs a port of its own"),
    ({"PAPERSEARCH_SERVE__DASHBOARD_PORT": "50051"},  # Ray's dashboard, on the gRPC port
     "serve (PAPERSEARCH_SERVE__DASHBOARD_PORT): Value error, serve.grpc_port and "
     "serve.dashboard_port are both 50051: each server needs a port of its own"),
    ({"PAPERSEARCH_TRAINING__BATCH_SIZE": "3"},  # had trained groups of 4 anyway
     "training (PAPERSEARCH_TRAINING__BATCH_SIZE): Value error, training.batch_size=3 must hold "
     "one group of a positive and training.negatives_per_query=3 negatives (at least 4)"),
    ({"PAPERSEARCH_SERVE__NODE_DRAIN_S": "1e300"},
     "serve.node_drain_s (PAPERSEARCH_SERVE__NODE_DRAIN_S): Input should be less than or equal "
     "to 31536000 (given '1e300')"),
    ({"PAPERSEARCH_INDEX__SHARD_NUMBER": "4294967296"},  # past the request's uint32
     "index.shard_number (PAPERSEARCH_INDEX__SHARD_NUMBER): Input should be less than or equal "
     "to 2147483647 (given '4294967296')"),
    ({"PAPERSEARCH_TRAINING__MINING_DEPTH": "3"},  # minutes of mining, then "no examples"
     "training (PAPERSEARCH_TRAINING__MINING_DEPTH): Value error, training.mining_depth=3 must "
     "exceed "
     "training.negatives_per_query=3"),
    ({"PAPERSEARCH_TRAINING__MAX_PAIRS": "-1"},
     "training.max_pairs (PAPERSEARCH_TRAINING__MAX_PAIRS): Input should be greater than or "
     "equal to 1 (given '-1')"),
    ({"PAPERSEARCH_TRAINING__MAX_LENGTH": "1024"},  # BERT has 512 positions: a crash mid-run
     "training.max_length (PAPERSEARCH_TRAINING__MAX_LENGTH): Input should be less than or "
     "equal to 512 (given '1024')"),
    ({"PAPERSEARCH_SERVE__WATCH_POLL_S": "30"},  # polls would skip what the lookback misses
     "serve (PAPERSEARCH_SERVE__WATCH_POLL_S): Value error, serve.watch_poll_s=30 must be at "
     "most half "
     "serve.watch_lookback_s=10"),
    # gRPC's channel arguments are C ints: the gateway failed at start with an OverflowError
    ({"PAPERSEARCH_SERVE__MAX_CONNECTION_IDLE_S": "2592000"},
     "serve.max_connection_idle_s (PAPERSEARCH_SERVE__MAX_CONNECTION_IDLE_S): Input should be "
     "less than or equal to 2147483 (given '2592000')"),
    ({"PAPERSEARCH_SERVE__KEEPALIVE_TIMEOUT_S": "3e9"},
     "serve.keepalive_timeout_s (PAPERSEARCH_SERVE__KEEPALIVE_TIMEOUT_S): Input should be "
     "less than or equal to 2147483 (given '3e9')"),
    # an infinite feedback weight gave NaN scores (the sparse one) or failed every hybrid
    # search (the dense one); an infinite k3 made every query term NaN: nothing matched
    ({"PAPERSEARCH_INDEX__PRF_SPARSE_WEIGHT": "inf"},
     "index.prf_sparse_weight (PAPERSEARCH_INDEX__PRF_SPARSE_WEIGHT): Input should be a finite "
     "number (given 'inf')"),
    ({"PAPERSEARCH_INDEX__BM25_QUERY_K3": "Infinity"},
     "index.bm25_query_k3 (PAPERSEARCH_INDEX__BM25_QUERY_K3): Input should be a finite "
     "number (given 'Infinity')"),
    ({"PAPERSEARCH_INDEX__PRF_DENSE_WEIGHT": "1e308"},  # the expanded vector's norm overflowed
     "index.prf_dense_weight (PAPERSEARCH_INDEX__PRF_DENSE_WEIGHT): Input should be less than "
     "or equal to 100 (given '1e308')"),
    ({"PAPERSEARCH_SERVE__MAX_SEND_BYTES": "3000000000"},
     "serve.max_send_bytes (PAPERSEARCH_SERVE__MAX_SEND_BYTES): Input should be less than or "
     "equal to 2147483647 (given '3000000000')"),
    # steps outside 1..rerank_top_n - 1 were dropped without a word: the ladder became (30,)
    ({"PAPERSEARCH_SEARCH__RERANK_DEPTH_STEPS": "[40, 0, -5]"},
     "search (PAPERSEARCH_SEARCH__RERANK_DEPTH_STEPS): Value error, "
     "search.rerank_depth_steps=[40, 0, -5] must be windows below search.rerank_top_n=30 "
     "(1 to 29): give smaller steps, or [] for none"),
    ({"PAPERSEARCH_SEARCH__RERANK_TOP_N": "15",
      "PAPERSEARCH_SEARCH__RERANK_DEPTH_STEPS": "[20, 5]"},
     "search (PAPERSEARCH_SEARCH__RERANK_DEPTH_STEPS, PAPERSEARCH_SEARCH__RERANK_TOP_N): Value "
     "error, search.rerank_depth_steps=[20, 5] must be windows below search.rerank_top_n=15 "
     "(1 to 14; not 20): give smaller steps, or [] for none"),
])
def test_settings_that_would_fail_later_are_refused_at_load(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        variables: dict[str, str], problem: str) -> None:
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    assert error_line(capsys) == f"papersearch: error: invalid settings: {problem}"


@pytest.mark.parametrize("name", ["hnsw_m", "hnsw_ef_construct", "hnsw_ef", "rrf_k",
                                  "prefetch_limit"])
def test_an_index_count_no_engine_takes_is_refused_at_load(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Past 2**64 - 1 the embedded engine failed every search (hnsw_m, hnsw_ef_construct: the
    collection's creation) with "int too big to convert", naming no setting. Held to the bound
    of a request's own counts, which a Qdrant server takes too (its RRF k is a uint32)."""
    variable = f"PAPERSEARCH_INDEX__{name.upper()}"
    monkeypatch.setenv(variable, str(2**64))
    assert error_line(capsys) == (
        f"papersearch: error: invalid settings: index.{name} ({variable}): Input should be less "
        f"than or equal to {MAX_COUNT} (given '{2**64}')")
    monkeypatch.setenv(variable, str(MAX_COUNT))
    assert getattr(load_settings().index, name) == MAX_COUNT


@pytest.mark.parametrize(("variable", "value", "bound"), [
    ("PAPERSEARCH_MODELS__INTRA_OP_THREADS", "100000", "less than or equal to 1024"),
    ("PAPERSEARCH_TRAINING__TORCH_THREADS", str(2**31), "less than or equal to 1024"),
    ("PAPERSEARCH_TRAINING__SEED", "-1", "greater than or equal to 0"),
    ("PAPERSEARCH_TRAINING__SEED", str(2**32), f"less than or equal to {2**32 - 1}"),
    ("PAPERSEARCH_TRAINING__MAX_PAIRS", str(2**63), f"less than or equal to {MAX_COUNT}"),
    ("PAPERSEARCH_INDEX__PRF_DENSE_DOCS", str(2**31), f"less than or equal to {MAX_COUNT}"),
    ("PAPERSEARCH_INDEX__PRF_SPARSE_DOCS", str(2**31), f"less than or equal to {MAX_COUNT}"),
    ("PAPERSEARCH_INDEX__BM25_AVG_LEN", "1e-300", "greater than or equal to 1"),
])
def test_a_number_that_fails_deep_or_silently_is_refused_at_load(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, variable: str,
        value: str, bound: str) -> None:
    """These loaded and then: 100,000 onnxruntime threads spawned for ten minutes in a search
    (2**31: a binding's TypeError traceback); a seed numpy refuses failed training after
    minutes of mining; a feedback count past 2**31 - 1 failed every hybrid search naming no
    setting; a mean paper length of 1e-300 words gave every BM25 search 0 hits."""
    monkeypatch.setenv(variable, value)
    name = variable.removeprefix("PAPERSEARCH_").replace("__", ".").lower()
    assert error_line(capsys) == (f"papersearch: error: invalid settings: {name} ({variable}): "
                                  f"Input should be {bound} (given '{value}')")


def test_an_empty_model_source_is_refused_at_load(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty embedder source was read as the current directory: "papersearch: error: :
    directory has no config.json"."""
    monkeypatch.setenv("PAPERSEARCH_MODELS__EMBEDDER_SOURCE", "")
    assert "models.embedder_source (PAPERSEARCH_MODELS__EMBEDDER_SOURCE): String should " \
        "have at least 1 character" in error_line(capsys)
    # the reranker's is optional: empty (a template's unset ${RERANKER_SOURCE:-}) is none
    monkeypatch.delenv("PAPERSEARCH_MODELS__EMBEDDER_SOURCE")
    monkeypatch.setenv("PAPERSEARCH_MODELS__RERANKER_SOURCE", "")
    assert load_settings().models.reranker_source is None


def test_rerank_steps_below_a_lowered_window_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps given must be below rerank_top_n; the default steps (20, 10) below a lowered
    rerank_top_n are left out of the ladder, as the settings reference says."""
    monkeypatch.setenv("PAPERSEARCH_SEARCH__RERANK_TOP_N", "10")
    assert load_settings().search.rerank_depth_steps == [20, 10]
    for steps, kept in (("[5, 2]", [5, 2]), ("[9]", [9]), ("[]", [])):
        monkeypatch.setenv("PAPERSEARCH_SEARCH__RERANK_DEPTH_STEPS", steps)
        assert load_settings().search.rerank_depth_steps == kept


def test_a_home_folder_path_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``~/idx`` was a folder named "~" made in the current directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PAPERSEARCH_INDEX__DATA_DIR", "~/idx")
    monkeypatch.setenv("PAPERSEARCH_HELD_OUT_SETS", '["~/med", "rel/cisi"]')
    settings = load_settings()
    assert settings.index.data_dir == tmp_path / "idx"
    assert settings.held_out_sets == [tmp_path / "med", Path("rel/cisi")]


def test_a_log_level_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPERSEARCH_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_a_settings_file_that_is_not_yaml_or_not_there(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    where = f"(--config or {CONFIG_ENV})"
    broken = settings_file(monkeypatch, tmp_path / "broken.yaml", "index: [unclosed\n")
    assert error_line(capsys).startswith(
        f"papersearch: error: settings file {broken} {where}: not valid YAML at line 2, column "
        "1: while parsing")
    # PyYAML's message quotes the line, and the line may hold a key
    for text, problem in (('index:\n  api_key: "sk\x1b"\n', "character 21: special "
                           "characters are not allowed (U+001B)"),
                          ("? [a]\n: 1\n", "line 1, column 3: a key that is a list or a "
                           "mapping"),  # was a TypeError traceback
                          ('index:\n  api_key: "sk-live-9f8e\n', "line 3, column 1: while "
                           "scanning a quoted scalar; found unexpected end of stream"),
                          ("index:\n  api_key: sk-live-9f8e\n  api_key: sk-live-9f8e\n",
                           "line 3, column 3: 'api_key' is given twice")):
        leaky = settings_file(monkeypatch, tmp_path / "leaky.yaml", text)
        assert error_line(capsys) == (
            f"papersearch: error: settings file {leaky} {where}: not valid YAML at {problem}")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.yaml"))
    assert error_line(capsys) == (
        f"papersearch: error: settings file {tmp_path / 'missing.yaml'} {where}: no such file")
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ as in path settings; $HOME refused
    monkeypatch.setenv(CONFIG_ENV, "~/missing.yaml")
    assert error_line(capsys).endswith(f"{where}: no such file")
    (tmp_path / "home.yaml").write_text("index:\n  prefetch_limit: 50\n")
    monkeypatch.setenv(CONFIG_ENV, "~/home.yaml")
    assert load_settings().index.prefetch_limit == 50
    # --config too: it was resolved under the current directory before the ~ was looked at
    assert load_settings(Path("~/home.yaml")).index.prefetch_limit == 50
    with pytest.raises(ValueError, match=r"settings file \$HOME/home.yaml .*: \$HOME is not "):
        load_settings(Path("$HOME/home.yaml"))
    monkeypatch.setenv(CONFIG_ENV, "$HOME/home.yaml")
    assert error_line(capsys) == (f"papersearch: error: settings file $HOME/home.yaml {where}: "
                                  "$HOME is not expanded in a path setting (only a shell "
                                  "does that): write the path itself, or set it from the "
                                  "shell")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path))  # it is there: "no such file" misled
    assert error_line(capsys) == (
        f"papersearch: error: settings file {tmp_path} {where}: is a folder, not a YAML file")
    # a shell's <(...): its /dev/fd link resolves to "pipe:[...]", which had read "no such
    # file"; and the file is read again by every process that loads the settings
    fifo = tmp_path / "settings.fifo"
    os.mkfifo(fifo)
    for given in ([], ["--config", str(fifo)]):
        monkeypatch.setenv(CONFIG_ENV, str(fifo))
        assert error_line(capsys, *given) == (
            f"papersearch: error: settings file {fifo} {where}: not a regular file (a pipe or a "
            "device): give a YAML file, which every process that loads the settings reads again")
    # a YAML scalar (the wrong file given): was "dictionary update sequence element #0 ..."
    scalar = settings_file(monkeypatch, tmp_path / "hostname", "buildhost\n")
    assert error_line(capsys) == (
        f"papersearch: error: settings file {scalar} {where}: expected sections (serve:, "
        "index:, ...), got a YAML str")


def test_a_settings_file_that_cannot_be_read_or_is_named_empty(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A file without read permission was a PermissionError's traceback; an empty
    PAPERSEARCH_CONFIG (a template's unset ``${X:-}``) was silently no file at all."""
    path = settings_file(monkeypatch, tmp_path / "settings.yaml", "serve: {}\n")
    read_text = Path.read_text

    def unreadable(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", unreadable)
    assert error_line(capsys) == (f"papersearch: error: settings file {path} (--config or "
                                  f"{CONFIG_ENV}): cannot be read (Permission denied)")
    for empty in ("", " "):
        monkeypatch.setenv(CONFIG_ENV, empty)
        assert error_line(capsys) == (
            f"papersearch: error: settings file ({CONFIG_ENV}): an empty path is the current "
            f"directory: give a path, or unset {CONFIG_ENV}")


@pytest.mark.parametrize(("text", "problem"), [
    ("yes: 1\n", "line 1, column 1: the key 'yes' is read as a YAML bool, not a name"),
    ("null: 1\n", "line 1, column 1: the key 'null' is read as a YAML null, not a name"),
    ("serve: {}\n1: 2\n", "line 2, column 1: the key '1' is read as a YAML int, not a name"),
    ("serve:\n  off: 1\n", "line 2, column 3: the key 'off' is read as a YAML bool, not a name"),
])
def test_a_key_yaml_reads_as_no_name_is_named_with_its_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        text: str, problem: str) -> None:
    """``yes:``, ``null:`` or ``1:`` at the top was an AttributeError's traceback ('bool' object
    has no attribute 'lower')."""
    path = settings_file(monkeypatch, tmp_path / "settings.yaml", text)
    assert error_line(capsys) == (f"papersearch: error: settings file {path} (--config or "
                                  f"{CONFIG_ENV}): not valid YAML at {problem}")


@pytest.mark.parametrize(("text", "twice"), [
    ("index: {hnsw_ef: 12}\nIndex: {hnsw_ef: 50}\n", "Index"),
    ("log_level: debug\nLOG_LEVEL: error\n", "LOG_LEVEL"),
])
def test_a_key_given_twice_in_another_case_is_refused(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        text: str, twice: str) -> None:
    """Sections and top-level settings are read case-blind, and the second of ``index:`` and
    ``Index:`` was dropped without a word."""
    path = settings_file(monkeypatch, tmp_path / "settings.yaml", text)
    assert error_line(capsys) == (f"papersearch: error: settings file {path} (--config or "
                                  f"{CONFIG_ENV}): not valid YAML at line 2, column 1: "
                                  f"{twice!r} is given twice")


@pytest.mark.parametrize("section", ["- backend: server\n  - url: http://qdrant:6333", "5"])
def test_a_section_that_is_no_mapping_is_refused_whatever_the_variables_set(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        section: str) -> None:
    """With a variable setting one key of the section, the environment's mapping replaced the
    file's list in the merge: the file's backend: server was dropped and the search ran on the
    embedded index, exit 0."""
    path = settings_file(monkeypatch, tmp_path / "settings.yaml", f"index:\n  {section}\n")
    monkeypatch.setenv("PAPERSEARCH_INDEX__DATA_DIR", str(tmp_path / "index"))
    kind = "list" if section.startswith("-") else "int"
    assert error_line(capsys) == (f"papersearch: error: settings file {path} (--config or "
                                  f"{CONFIG_ENV}): index: expected a section (its settings as "
                                  f"keys), got a YAML {kind}")


def test_yaml_merge_keys_merge(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``<<: *defaults`` was refused as not valid YAML (no constructor for the merge tag). A
    key merged in and given again is overridden, as YAML has it; a key of the mapping's own
    said twice is still refused."""
    settings_file(monkeypatch, tmp_path / "merged.yaml",
                  "serve:\n  <<: &ports {grpc_port: 7000, http_port: 8001}\n  grpc_port: 7001\n"
                  "index:\n  <<: [{prefetch_limit: 40}, {hnsw_ef: 64}]\n")
    settings = load_settings()
    assert (settings.serve.grpc_port, settings.serve.http_port) == (7001, 8001)
    assert (settings.index.prefetch_limit, settings.index.hnsw_ef) == (40, 64)
    aliased = "base: &base {a: 1, b: 2}\nmine:\n  <<: *base\n  b: 3\n"
    assert yaml.load(aliased, Loader=_UniqueKeys)["mine"] == {"a": 1, "b": 3}  # noqa: S506
    twice = settings_file(monkeypatch, tmp_path / "twice.yaml",
                          "serve:\n  <<: {grpc_port: 1}\n  http_port: 2\n  http_port: 3\n")
    assert error_line(capsys) == (f"papersearch: error: settings file {twice} (--config or "
                                  f"{CONFIG_ENV}): not valid YAML at line 4, column 3: "
                                  "'http_port' is given twice")


def test_valid_settings_load_as_before(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings_file(monkeypatch, tmp_path / "settings.yaml", "index:\n  prefetch_limit: 50\n")
    monkeypatch.setenv("PAPERSEARCH_TRAINING__TIME_BUDGET_S", "null")
    settings = load_settings()
    assert settings.index.prefetch_limit == 50 and settings.training.time_budget_s is None
    # two known-item sets in one folder are two sets (the folder's name named both: refused)
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text('{"id": "1", "title": "t", "abstract": "a"}\n')
    monkeypatch.setenv("PAPERSEARCH_TUNE_SETS", json.dumps([str(tmp_path / "a.jsonl")]))
    monkeypatch.setenv("PAPERSEARCH_HELD_OUT_SETS", json.dumps([str(tmp_path / "b.jsonl")]))
    assert load_settings().held_out_sets == [tmp_path / "b.jsonl"]
    # one page of a folder held out: the folder may not tune (it holds the page's queries)
    monkeypatch.setenv("PAPERSEARCH_TUNE_SETS", json.dumps([str(tmp_path)]))
    monkeypatch.setenv("PAPERSEARCH_HELD_OUT_SETS", json.dumps([str(tmp_path / "b.jsonl")]))
    with pytest.raises(ValueError, match="is a held-out set"):
        load_settings()


def test_the_serve_app_pins_every_relative_path(tmp_path: Path) -> None:
    """Serve replicas may start in another working directory: the gateway's TLS files and
    drain file were left relative (only models, index and corpus were pinned)."""
    from papersearch.serving.app import settings_from_args

    settings = settings_from_args({"base_dir": str(tmp_path), "settings": {"serve": {
        "tls_cert_file": "certs/tls.crt", "tls_key_file": "certs/tls.key",
        "tls_client_ca_file": "certs/ca.pem", "drain_file": "run/drain"}}})
    serve = settings.serve
    for path in (serve.tls_cert_file, serve.tls_key_file, serve.tls_client_ca_file,
                 serve.drain_file, settings.models.repository, settings.index.data_dir,
                 settings.corpus_dir):
        assert path is not None and path.is_absolute() and path.is_relative_to(
            tmp_path.resolve().parent), path
    assert serve.drain_file == (tmp_path / "run" / "drain").resolve()


def test_the_serve_app_names_an_invalid_setting_without_its_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """build_app built Settings itself: pydantic's own message repeated the values given (a
    key's first characters, a Qdrant key in index.url) and named no variable."""
    from papersearch.serving.app import settings_from_args

    keys = ["9f" * 24, "3c" * 24 + " "]  # a blank after a key: never matches what clients send
    monkeypatch.setenv("PAPERSEARCH_SERVE__API_KEYS", json.dumps(keys))
    with pytest.raises(ValueError) as raised:
        settings_from_args({})
    assert str(raised.value) == (
        "invalid settings: serve.api_keys (PAPERSEARCH_SERVE__API_KEYS): Value error, a key "
        "must not be empty or begin or end with a blank (its value is not repeated here)")
    monkeypatch.delenv("PAPERSEARCH_SERVE__API_KEYS")
    for overrides, problem in (
            ({"serve": {"read_api_keys": keys}}, "serve.read_api_keys "
             "(the app's args.settings): Value error, a key must not be empty"),
            ({"index": {"backend": "server", "url": f"http://reader:{keys[0]}@qdrant:x"}},
             "index (the app's args.settings): Value error, index.url's host or port is not "
             "valid (http://qdrant:6333; a user or password holding / ? # @ is "
             "percent-encoded), got 'http://qdrant:x'")):
        with pytest.raises(ValueError) as raised:
            settings_from_args({"settings": overrides})
        assert str(raised.value).startswith(f"invalid settings: {problem}")
        assert "9f9f" not in str(raised.value) and "3c3c" not in str(raised.value)


def test_the_serve_app_overrides_the_environment_and_the_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from papersearch.serving.app import settings_from_args

    settings_file(monkeypatch, tmp_path / "settings.yaml",
                  "index:\n  prefetch_limit: 40\n  rrf_k: 7\n")
    monkeypatch.setenv("PAPERSEARCH_INDEX__PREFETCH_LIMIT", "50")
    monkeypatch.setenv("PAPERSEARCH_INDEX__HNSW_EF", "64")
    index = settings_from_args({"settings": {"index": {"prefetch_limit": 60}}}).index
    assert (index.prefetch_limit, index.hnsw_ef, index.rrf_k) == (60, 64, 7)
    with pytest.raises(ValueError, match="config_file .*Extra inputs are not permitted"):
        settings_from_args({"settings": {"config_file": str(tmp_path / "settings.yaml")}})


def refused(**overrides: Any) -> str:
    """load_settings' one-line error for ``overrides``."""
    with pytest.raises(ValueError) as raised:
        load_settings(**overrides)
    return str(raised.value)


def test_the_serve_app_warns_of_a_variable_that_names_no_setting(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Only the CLI warned: serve run/deploy and the RayService, which build the app
    themselves, read PAPERSEARCH_SERVE_DRAIN_NOTICE_S (one underscore) as nothing, unsaid."""
    from papersearch.serving.app import settings_from_args

    monkeypatch.setenv("PAPERSEARCH_SERVE_DRAIN_NOTICE_S", "12")
    assert settings_from_args({}).serve.drain_notice_s == 0.0
    # named in the words too: where Serve builds the app, no handler prints extra fields
    assert [r.getMessage().split()[2] for r in caplog.records
            if "names no setting" in r.getMessage()] == ["PAPERSEARCH_SERVE_DRAIN_NOTICE_S"]


@pytest.mark.parametrize(("env", "overrides", "expected"), [
    ({"PAPERSEARCH_INDEX__HNSW_M": "16"}, {"index": {"hnsw_m": 2**40}},
     "index.hnsw_m (the app's args.settings): Input should be less than or equal to "
     "2147483647 (given 1099511627776)"),
    # a top-level setting and a key that is no setting, given there, are theirs too
    ({}, {"log_level": "loud", "index": {"hnsw_mm": 16}},
     "log_level (the app's args.settings): Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' "
     "or 'CRITICAL' (given 'LOUD'); index.hnsw_mm (the app's args.settings): Extra inputs "
     "are not permitted"),
    # a check of a section: the settings it names, each from where it is set
    ({"PAPERSEARCH_SEARCH__MAX_TOP_K": "20"}, {"search": {"default_top_k": 30}},
     "search (the app's args.settings, PAPERSEARCH_SEARCH__MAX_TOP_K): Value error, "
     "search.default_top_k (30) is past search.max_top_k (20)"),
    ({"PAPERSEARCH_SERVE__RERANK_TIMEOUT_S": "5"}, {"search": {"rerank_target_s": 9}},
     "Value error, search.rerank_target_s=9 must be below serve.rerank_timeout_s=5 "
     "(search.rerank_target_s: the app's args.settings; serve.rerank_timeout_s: "
     "PAPERSEARCH_SERVE__RERANK_TIMEOUT_S)"),
    # a variable the overrides win over is not named for a section's check either
    ({"PAPERSEARCH_SERVE__HTTP_PORT": "9000"}, {"serve": {"http_port": 50051}},
     "serve (the app's args.settings): Value error, serve.grpc_port and serve.http_port are "
     "both 50051"),
    # without overrides (the commands), the variable is named as before
    ({"PAPERSEARCH_INDEX__HNSW_M": "2"}, {},
     "index.hnsw_m (PAPERSEARCH_INDEX__HNSW_M): Input should be greater than or equal to 4 "
     "(given '2')"),
])
def test_a_bad_value_the_serve_app_gives_is_named_as_its_own(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], overrides: dict[str, Any],
        expected: str) -> None:
    """A value of the app's args.settings that did not validate was blamed on its variable,
    set to a valid value or not set at all: the operator looked in the wrong place."""
    from papersearch.serving.app import settings_from_args

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as raised:
        load_settings(**overrides)
    assert str(raised.value).startswith(f"invalid settings: {expected}")
    if overrides:
        with pytest.raises(ValueError, match=re.escape(expected)):
            settings_from_args({"settings": overrides})


@pytest.mark.parametrize(("given", "kept"), [
    ("https://App.Example.org/", "https://app.example.org"),  # as a browser's Origin has it
    ("https://app.example.org:443", "https://app.example.org"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),  # bücher, as sent
    ("chrome-extension://abcdefghij", "chrome-extension://abcdefghij"),
    ("*", "*"),
])
def test_cors_origins_are_kept_as_browsers_send_them(given: str, kept: str) -> None:
    assert ServeSettings(http_cors_origins=[given]).http_cors_origins == [kept]


@pytest.mark.parametrize("given", ["app.example.org", "", "https://app.example.org/app",
                                   "https://app.example.org:99999", "https://*.example.org",
                                   "https://app.example.org/?x=1", "https://u:p@example.org"])
def test_what_is_not_a_web_origin_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="is not a web origin"):
        ServeSettings(http_cors_origins=[given])


def test_a_host_not_in_ascii_is_refused_not_converted() -> None:
    """Python's IDNA 2003 codec turned https://faß.de into https://fass.de: another domain."""
    with pytest.raises(ValueError, match="ASCII \\(punycode\\) form"):
        ServeSettings(http_cors_origins=["https://faß.de"])


def test_the_null_origin_is_refused() -> None:
    """Sandboxed frames and local files send "null": allowing it allows any page."""
    with pytest.raises(ValueError, match="'null' is the origin any sandboxed frame"):
        ServeSettings(http_cors_origins=["null"])


def test_a_variable_that_names_no_setting_is_warned_about(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One underscore where two belong, or a misspelt top-level setting: loading cannot refuse
    them (any PAPERSEARCH_ variable may be set), and they were silently not read."""
    environ = {"PAPERSEARCH_SERVE_GRPC_PORT": "6000", "PAPERSEARCH_LOG_LEVLE": "DEBUG",
               "PAPERSEARCH_SERVE__GRPC_PORT": "6001", "PAPERSEARCH_SERVE": "{}",
               "PAPERSEARCH_LOG_LEVEL": "INFO", "PAPERSEARCH_API_KEY": "client-key",
               CONFIG_ENV: "", "HOME": "/root"}
    assert unread_variables(environ) == ["PAPERSEARCH_LOG_LEVLE", "PAPERSEARCH_SERVE_GRPC_PORT"]
    # Kubernetes' links to Service papersearch-grpc are no settings, and no typos
    links = {"PAPERSEARCH_GRPC_SERVICE_HOST": "10.0.0.7", "PAPERSEARCH_GRPC_SERVICE_PORT": "50051",
             "PAPERSEARCH_GRPC_SERVICE_PORT_GRPC": "50051", "PAPERSEARCH_GRPC_PORT": "tcp://x",
             "PAPERSEARCH_GRPC_PORT_50051_TCP_ADDR": "10.0.0.7"}
    assert unread_variables(environ | links) == unread_variables(environ)
    monkeypatch.setenv("PAPERSEARCH_SERVE_GRPC_PORT", "6000")
    assert main(["drain"]) == 2  # no drain file: fails at once, after the warning
    warning, error = capsys.readouterr().err.splitlines()
    assert "names no setting" in warning and "PAPERSEARCH_SERVE_GRPC_PORT" in warning
    assert error.startswith("papersearch: error: serve.drain_file is not set")


def test_a_value_from_the_file_is_not_blamed_on_a_variable_never_set(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Any PAPERSEARCH_SERVE__* variable made a file's bad serve value "PAPERSEARCH_SERVE__
    GRPC_PORT"'s, a variable nobody had set."""
    path = settings_file(monkeypatch, tmp_path / "settings.yaml", "serve:\n  grpc_port: 0\n")
    problem = "Input should be greater than or equal to 1 (given 0)"
    monkeypatch.setenv("PAPERSEARCH_SERVE__HTTP_PORT", "9001")
    assert error_line(capsys) == ("papersearch: error: invalid settings: serve.grpc_port "
                                  f"(settings file {path}): {problem}")
    monkeypatch.setenv("PAPERSEARCH_SERVE", '{"health_port": 9002}')  # it could be in here
    assert error_line(capsys) == ("papersearch: error: invalid settings: serve.grpc_port "
                                  f"(PAPERSEARCH_SERVE or settings file {path}): {problem}")
    # a check of the whole section names the variables set in it, not the section's own
    # (PAPERSEARCH_SERVE, never set); a typo under a setting is named as written
    monkeypatch.delenv("PAPERSEARCH_SERVE")
    monkeypatch.delenv(CONFIG_ENV)
    monkeypatch.setenv("PAPERSEARCH_SERVE__GRPC_PORT__X", "5")
    assert error_line(capsys).startswith("papersearch: error: invalid settings: serve.grpc_port "
                                         "(PAPERSEARCH_SERVE__GRPC_PORT__X): ")


def test_a_check_of_a_section_names_the_variables_it_is_about(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """index.url without index.backend=server named every PAPERSEARCH_INDEX__* variable set
    (PAPERSEARCH_INDEX__DATA_DIR too), not the one at fault."""
    monkeypatch.setenv("PAPERSEARCH_INDEX__PREFETCH_LIMIT", "50")
    monkeypatch.setenv("PAPERSEARCH_INDEX__URL", "http://qdrant:6333")
    assert error_line(capsys).startswith("papersearch: error: invalid settings: index "
                                         "(PAPERSEARCH_INDEX__URL): Value error, index.url ")


def test_a_check_of_a_section_still_names_the_settings_file(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Naming the variables it is about dropped the file, which may hold the value at fault."""
    path = settings_file(monkeypatch, tmp_path / "settings.yaml",
                         "index:\n  url: http://qdrant:6333\n")
    monkeypatch.setenv("PAPERSEARCH_INDEX__BACKEND", "embedded")
    assert error_line(capsys).startswith(
        "papersearch: error: invalid settings: index (PAPERSEARCH_INDEX__BACKEND or settings "
        f"file {path}): Value error, index.url ")
