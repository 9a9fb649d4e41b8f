"""Shared fixtures: real exported models, built once per test session."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

# Before gRPC is first used in this process. Ray forks its daemons with a preexec_fn (fork, then
# exec); while another thread of this process was inside gRPC, gRPC's fork handlers skipped
# themselves ("Other threads are currently calling into gRPC, skipping fork() handlers") and
# the child aborted before its exec: CI lost a Serve test module's Ray to a dashboard that
# died with SIGABRT. Measured here with three threads making calls: 7 of 200 such forks
# aborted, none with the handlers off, the setting gRPC documents for a fork always followed
# by exec.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

from papersearch import logs  # noqa: E402
from papersearch.local_ray import LOCAL_RAY_ENV  # noqa: E402
from papersearch.settings import Settings  # noqa: E402

# Ray's C++ side reads its configuration (token auth among it) once, when Ray is first imported:
# the commands set these before they import Ray, and so does this process before any test
# module does (two test modules import Ray when collected). Set later, this process's drivers
# kept token auth and hung connecting to a Ray instance started without it. Forced, not
# defaulted: the suite's Ray instances are its own whatever the host's shell exports (a
# RAY_ADDRESS would send every local start to the host's cluster).
os.environ.update(LOCAL_RAY_ENV)
os.environ.pop("RAY_ADDRESS", None)
# Every server a test starts is on loopback: never through a proxy the host may export.
for _name in ("no_proxy", "NO_PROXY"):
    os.environ[_name] = ",".join(filter(None, (os.environ.get(_name), "127.0.0.1,localhost")))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE_CORPUS = SHARED / "corpus" / "daily-papers"


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Fatal signals still dump the Python stacks after pytest's summary: its faulthandler
    plugin turns the handler off as it ends, and a CI run once died of SIGSEGV at interpreter
    exit, after every test had passed, with nothing said of where. The descriptor is a copy
    of stderr's, left open until the process ends."""
    import faulthandler

    if not faulthandler.is_enabled():
        faulthandler.enable(file=os.dup(sys.__stderr__.fileno() if sys.__stderr__ else 2))


@pytest.fixture(autouse=True)
def _process_state_restored() -> Iterator[None]:
    """What an in-process ``papersearch`` command changes for the whole process, put back
    after each test: the root logger (its handler writes to that test's captured stderr,
    closed after it), the libraries' loggers it routes there and the capture of warnings
    (papersearch.logs), and the SIGINT and SIGTERM handlers (``serve`` leaves both ignored,
    and every process started later inherited an ignored SIGTERM)."""
    loggers = [logging.getLogger(name) for name in ("", *logs.LIBRARY_LOGGERS)]
    kept = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    configured, filters = logs._configured, dict(logs._library_filters)
    handled = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for lg, (handlers, level, propagate) in zip(loggers, kept, strict=True):
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)
    logs._configured = configured
    logs._library_filters.clear()
    logs._library_filters.update(filters)
    logging.captureWarnings(False)
    for signum, handler in handled.items():
        if handler is not None:  # None: set outside Python, left alone
            signal.signal(signum, handler)


def benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (benchmarks are not a package), for
    tests of its pure functions; its folder is on the path, as when the script is run (they
    share ``common.py``)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def model_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings with a private model repository; the downloaded bundle cache is shared."""
    repository = tmp_path_factory.mktemp("models")
    settings = Settings(
        corpus_dir=SAMPLE_CORPUS,
        models={"repository": repository, "cache_dir": ROOT / ".cache" / "papersearch"},
        search={"rerank_enabled": True},  # the tests exercise the rerank stage
        training={
            "corpora": [SAMPLE_CORPUS],
            "max_pairs": 48,
            "negatives_per_query": 2,
            "batch_size": 6,
            "max_length": 96,
            "epochs": 3,
            "learning_rate": 1e-4,
        },
    )
    yield settings


@pytest.fixture(scope="session")
def embedder_dir(model_settings: Settings) -> Path:
    from papersearch.modelbuild.prepare import export_embedder

    return export_embedder(model_settings)


@pytest.fixture(scope="session")
def reranker_dir(model_settings: Settings, embedder_dir: Path) -> Path:
    """A reranker trained end to end on a slice of the sample corpus (tiny settings: seconds
    on the faster CPU class, minutes on the slower one)."""
    from papersearch.modelbuild.prepare import train_reranker

    return train_reranker(model_settings)


@pytest.fixture(scope="session")
def sample_settings(model_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Model settings plus a private embedded index of the sample corpus."""
    data_dir = tmp_path_factory.mktemp("index")
    return model_settings.model_copy(
        update={"index": model_settings.index.model_copy(update={"data_dir": data_dir})}
    )


@pytest.fixture(scope="session")
def sample_index(sample_settings: Settings, embedder_dir: Path) -> Path:
    """The sample corpus ingested once per session; returns the index data directory."""
    from papersearch.encoder.runtime import Encoder
    from papersearch.ingest.pipeline import Ingester, ingest_paths
    from papersearch.pipeline.factory import open_index

    encoder = Encoder(embedder_dir)
    with open_index(sample_settings, encoder, create=True) as store:
        ingest_paths([SAMPLE_CORPUS], store, Ingester(store, encoder), progress=False)
    return sample_settings.index.data_dir
