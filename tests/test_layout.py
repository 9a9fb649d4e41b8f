"""Import directions between the rooms of services/papersearch, read statically (ast).

models/ is the bottom room (manifest, ONNX runtime, int8 parity). encoder/ and reranker/ build on
it. modelbuild/ (sources, export, mining, training, `models info`) builds on all three and
imports torch and transformers; only the CLI imports it. Nothing that serves a query imports
modelbuild/ or the export extra, directly or through another papersearch module; nor k8s/ (the
Kubernetes tooling) or the tooling extras (load test plotting and metrics, manifest checks).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from tests.conftest import ROOT

SOURCE = ROOT / "services"
PACKAGE = SOURCE / "papersearch"
SERVING = ("encoder", "reranker", "models", "serving", "gateway", "pipeline", "retriever",
           "index")
EXPORT_EXTRA = {"torch", "transformers", "onnx", "onnxscript"}  # pyproject's `export` extra


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _in(module: str, room: str) -> bool:
    name = f"papersearch.{room}"
    return module == name or module.startswith(name + ".")


@cache
def _imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(papersearch modules, other top-level names) that `module` imports anywhere in its body:
    module level, inside functions, under TYPE_CHECKING."""
    path = MODULES[module]
    ours: set[str] = set()
    others: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] != "papersearch":
            others.add(name.split(".")[0])
            return
        parts = name.split(".")  # importing a.b.c runs a/__init__, a/b/__init__ too
        ours.update(".".join(parts[:i]) for i in range(2, len(parts) + 1)
                    if ".".join(parts[:i]) in MODULES)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}: relative import"
            add(node.module)
            for alias in node.names:  # `from papersearch.x import y` where y is a module
                if f"{node.module}.{alias.name}" in MODULES:
                    add(f"{node.module}.{alias.name}")
    return frozenset(ours), frozenset(others)


def _closure(roots: list[str]) -> dict[str, str]:
    """Every papersearch module reachable from roots, with the module that first imports it."""
    seen = {root: root for root in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        for imported in _imports(module)[0]:
            if imported not in seen:
                seen[imported] = module
                todo.append(imported)
    return seen


def _serving_modules() -> list[str]:
    return [m for m in MODULES if any(_in(m, room) for room in SERVING)]


def test_the_tree_is_read() -> None:
    assert "papersearch.models.runtime" in MODULES
    assert "papersearch.modelbuild.export" in MODULES
    assert "papersearch.encoder.runtime" in _serving_modules()
    assert "torch" in _imports("papersearch.modelbuild.export")[1]


def test_models_imports_nothing_above_it() -> None:
    upward = {f"{m} imports {i}" for m in MODULES if _in(m, "models")
              for i in _imports(m)[0]
              if not (_in(i, "models") or i in ("papersearch", "papersearch.settings",
                                                  "papersearch.paths"))}
    assert not upward


def test_serving_never_reaches_modelbuild_or_the_export_extra() -> None:
    reached = _closure(_serving_modules())
    modelbuild = {f"{m} (imported by {by})" for m, by in reached.items() if _in(m, "modelbuild")}
    assert not modelbuild
    extra = {f"{m} imports {name}" for m in reached for name in _imports(m)[1] & EXPORT_EXTRA}
    assert not extra


def test_only_the_cli_imports_modelbuild() -> None:
    importers = {m for m in MODULES if not _in(m, "modelbuild")
                 and any(_in(i, "modelbuild") for i in _imports(m)[0])}
    assert importers <= {"papersearch.cli"}


# The rooms that do the work, and the entry points above them (the front ends, the Serve app,
# the commands): a working room that reached up into one loaded it, and all it imports, with it.
WORKING = ("corpus", "ingest", "pipeline", "index", "retriever", "encoder", "reranker", "models",
           "evaluation", "api", "loadtest", "modelbuild")
ENTRY_POINTS = ("serving", "gateway", "cli", "console")


def test_no_working_room_imports_an_entry_point() -> None:
    upward = {f"{m} imports {i}" for m in MODULES if any(_in(m, room) for room in WORKING)
              for i in _imports(m)[0] if any(_in(i, room) for room in ENTRY_POINTS)}
    assert not upward


# pyproject's `loadtest` and `dev` extras: tooling the serving image does not install
TOOLING_EXTRAS = {"matplotlib", "prometheus_client", "kubernetes_validate", "jsonschema",
                  "ruamel", "psutil"}


def test_serving_never_reaches_the_k8s_tooling_or_the_tooling_extras() -> None:
    reached = _closure(_serving_modules())
    assert not {f"{m} (imported by {by})" for m, by in reached.items() if _in(m, "k8s")}
    assert not {f"{m} imports {name}" for m in reached
                for name in _imports(m)[1] & TOOLING_EXTRAS}


def test_the_autoscaling_policy_stands_alone() -> None:
    """Serve's controller unpickles the policy by value: it must not pull the package in."""
    ours, others = _imports("papersearch.autoscaling")
    assert not ours and others <= {"__future__", "asyncio", "logging", "math", "time",
                                   "collections", "contextlib", "dataclasses", "typing"}


def test_the_grpc_client_loads_no_server_side() -> None:
    """`import papersearch.client` loaded the gateway (for the x-api-key header's name) and the
    storage engine (through index/__init__'s re-exports): ~1.2 s, and a client's process
    holding qdrant_edge."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, papersearch.client; print(*sorted(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=120).stdout.split()
    server_side = {"ray", "qdrant_edge", "qdrant_client", "onnxruntime", "tokenizers",
                   "aiohttp", "torch"}
    assert not {m for m in loaded if m.split(".")[0] in server_side}
    assert not {m for m in loaded if any(_in(m, room) for room in
                                         ("gateway", "serving", "retriever", "encoder",
                                          "reranker", "models"))}
