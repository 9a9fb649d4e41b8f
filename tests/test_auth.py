"""API key scopes on every method through a real gateway, and fail-closed settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from papersearch.api.convert import WatchQuery
from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.encoder.runtime import Encoder
from papersearch.pipeline.query import SearchQuery
from papersearch.settings import ServeSettings, Settings
from tests.gateway_helpers import scratch_gateways

WRITE, READ = "write-key", "read-key"
PAPER = Paper(id="auth-1", title="Scoped keys", abstract="A paper written with a write key.")

Call = Callable[[SearchClient], Any]
READS: dict[str, Call] = {
    "Search": lambda c: c.search(SearchQuery("scoped keys", rerank=False)),
    "SimilarPapers": lambda c: c.similar("no-such-paper"),
    "GetPaper": lambda c: c.get("no-such-paper"),
    # the first event (caught_up) is the answer: the watch was let in
    "WatchSearch": lambda c: next(iter(c.watch(WatchQuery("scoped keys"), timeout_s=30.0))),
}
WRITES: dict[str, Call] = {
    "UpsertPapers": lambda c: c.upsert([PAPER]),
    "DeletePapers": lambda c: c.delete(["no-such-paper"]),
}


@pytest.fixture(scope="module")
def target(sample_settings: Settings, embedder_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("auth-index")
    encoder = Encoder(embedder_dir)
    with scratch_gateways(sample_settings, encoder, data_dir) as (servers, backend, _):
        yield servers.start(backend, api_keys=[SecretStr(WRITE)], read_api_keys=[SecretStr(READ)])


def _code(target: str, key: str | None, call: Call) -> grpc.StatusCode:
    with SearchClient(target, api_key=key, timeout_s=60.0) as client:
        try:
            call(client)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


PASSED_AUTH = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}  # unknown ids: auth let it in


@pytest.mark.slow
@pytest.mark.parametrize("method", [*READS, *WRITES])
@pytest.mark.parametrize("key", [None, "wrong-key", WRITE[:-1]], ids=["none", "wrong", "prefix"])
def test_missing_or_wrong_key_is_unauthenticated(target: str, method: str,
                                                 key: str | None) -> None:
    call = {**READS, **WRITES}[method]
    assert _code(target, key, call) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
@pytest.mark.parametrize("method", list(READS))
def test_read_key_may_search(target: str, method: str) -> None:
    assert _code(target, READ, READS[method]) in PASSED_AUTH


@pytest.mark.slow
@pytest.mark.parametrize("method", list(WRITES))
def test_read_key_on_a_write_method_is_permission_denied(target: str, method: str) -> None:
    assert _code(target, READ, WRITES[method]) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.slow
@pytest.mark.parametrize("method", [*READS, *WRITES])
def test_write_key_may_call_every_method(target: str, method: str) -> None:
    assert _code(target, WRITE, {**READS, **WRITES}[method]) in PASSED_AUTH


@pytest.mark.slow
def test_health_needs_no_key(target: str) -> None:
    with SearchClient(target, timeout_s=30.0) as client:
        assert client.health() in {"SERVING", "NOT_SERVING"}


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "papersearch.example"])
def test_non_loopback_without_keys_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="allow_unauthenticated"):
        ServeSettings(grpc_host=host).check_access()
    ServeSettings(grpc_host=host, allow_unauthenticated=True).check_access()
    ServeSettings(grpc_host=host, read_api_keys=[SecretStr("k")]).check_access()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    ServeSettings(grpc_host=host).check_access()


def test_any_origin_without_keys_is_refused() -> None:
    """With no keys, http_cors_origins ['*'] let any web page a user opened delete papers from
    a gateway on 127.0.0.1: it needed no rebound name, its Host header is a loopback one."""
    with pytest.raises(ValueError, match=r"'\*' without serve.api_keys"):
        ServeSettings(http_cors_origins=["*"]).check_access()
    ServeSettings(http_cors_origins=["*"], api_keys=[SecretStr("k")]).check_access()
    ServeSettings(http_cors_origins=["https://app.example.org"]).check_access()


def test_serve_refuses_to_start_open_on_a_public_address(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from papersearch.cli import main

    monkeypatch.setenv("PAPERSEARCH_SERVE__GRPC_HOST", "0.0.0.0")
    assert main(["serve"]) == 2  # before Ray or anything else starts
    assert "serve.allow_unauthenticated=true" in capsys.readouterr().err


def test_keys_are_not_in_the_settings_repr() -> None:
    settings = ServeSettings(api_keys=[SecretStr(WRITE)], read_api_keys=[SecretStr(READ)])
    assert WRITE not in repr(settings) and READ not in repr(settings)
    assert WRITE not in settings.model_dump_json()
