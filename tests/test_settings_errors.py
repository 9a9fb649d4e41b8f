"""Settings that do not validate stop every command with one line naming them (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from papersearch.cli import main
from papersearch.settings import CONFIG_ENV, load_settings


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
     "search (PAPERSEARCH_SEARCH): Value error, search.default_top_k (10) is past "
     "search.max_top_k (5): every request leaving top_k unset would be refused"),
    ("PAPERSEARCH_SERVE", "x",
     "serve (PAPERSEARCH_SERVE): a section is set as JSON, e.g. "
     "PAPERSEARCH_SERVE='{\"key\": \"value\"}'"),
])
def test_an_invalid_environment_variable_is_named(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, variable: str,
        value: str, problem: str) -> None:
    monkeypatch.setenv(variable, value)
    assert error_line(capsys) == f"papersearch: error: invalid settings: {problem}"


def test_every_invalid_value_of_a_settings_file_is_named(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    settings_file(monkeypatch, tmp_path / "settings.yaml",
                  "index:\n  fusion: nope\n  prefetch_limit: 0\n")
    line = error_line(capsys)
    assert line.startswith("papersearch: error: invalid settings: ")
    assert "index.fusion (PAPERSEARCH_INDEX__FUSION): Input should be 'rrf', 'dbsf' or " \
           "'convex' (given 'nope')" in line
    assert "index.prefetch_limit (PAPERSEARCH_INDEX__PREFETCH_LIMIT): Input should be greater " \
           "than or equal to 1 (given 0)" in line


def test_a_settings_file_that_is_not_yaml_or_not_there(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    where = f"(--config or {CONFIG_ENV})"
    broken = settings_file(monkeypatch, tmp_path / "broken.yaml", "index: [unclosed\n")
    assert error_line(capsys).startswith(
        f"papersearch: error: settings file {broken} {where}: not valid YAML: while parsing")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.yaml"))
    assert error_line(capsys) == (
        f"papersearch: error: settings file {tmp_path / 'missing.yaml'} {where}: no such file")
    # a YAML scalar (the wrong file given): was "dictionary update sequence element #0 ..."
    scalar = settings_file(monkeypatch, tmp_path / "hostname", "buildhost\n")
    assert error_line(capsys) == (
        f"papersearch: error: settings file {scalar} {where}: expected sections (serve:, "
        "index:, ...), got a YAML str")


def test_valid_settings_load_as_before(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings_file(monkeypatch, tmp_path / "settings.yaml", "index:\n  prefetch_limit: 50\n")
    monkeypatch.setenv("PAPERSEARCH_TRAINING__TIME_BUDGET_S", "null")
    settings = load_settings()
    assert settings.index.prefetch_limit == 50 and settings.training.time_budget_s is None
