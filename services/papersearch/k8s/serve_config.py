"""The RayService's serveConfigV2, derived mechanically from the one Serve config.

deploy/serve/papersearch.yaml is what ``papersearch serve``, ``serve run`` and ``serve deploy``
use. Kubernetes needs a few deployment options of its own (the Gateway pinned to the gateway
worker group, autoscaling bounds per overlay), kept per kustomization in
``serve-overrides.yaml``: deployment name -> options laid over the file's (mappings merge,
anything else replaces, ``null`` removes the key). The source is edited as a round trip, so
every byte the overrides do not touch, comments included, stays as it is; without overrides the
result is the file itself, byte for byte.

Each kustomization with overrides carries the result as ``serve-config.generated.yaml``, a patch
that sets the RayService's ``spec.serveConfigV2``. A kustomization's overrides are laid over
those of every layer it is built on, as its ``resources`` lead down to the base (base -> prod ->
prod-eu: an overlay of an overlay keeps the lower overlay's options); one that carries the patch
without overrides of its own gets the result of the layer below.
``python -m papersearch.k8s.serve_config`` rewrites them, ``--check`` fails on drift; both fail
where a kustomization does not list its patch under ``patches`` (nothing could apply it).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from papersearch.serving.launcher import merged

SOURCE = Path("deploy/serve/papersearch.yaml")
K8S = Path("deploy/k8s")
OVERRIDES = "serve-overrides.yaml"
GENERATED = "serve-config.generated.yaml"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
RAYSERVICE_NAME = "papersearch"

Overrides = dict[str, dict[str, Any]]


class ServeConfigError(ValueError):
    """An override names no deployment, or the derived text does not say what it should."""


def repo_root() -> Path:
    """The repository checkout this module lives in (services/papersearch/k8s/)."""
    return Path(__file__).resolve().parents[3]


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merge recursively, None deletes, the rest replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_overrides(paths: Sequence[Path]) -> Overrides:
    """The chain of override files (base first), merged into one mapping by deployment name."""
    chained: dict[str, Any] = {}
    for path in paths:
        data = _parsed(path) or {}
        if not isinstance(data, Mapping) or not all(
            isinstance(v, Mapping) for v in data.values()
        ):
            raise ServeConfigError(f"{path}: expected deployment name -> options")
        for name, options in data.items():
            # merged keeping a later file's null: it deletes a key of the Serve config
            chained[name] = merged(chained.get(name, {}), options)
    return chained


def apply_overrides(data: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """The parsed Serve config with ``overrides`` applied (what the derived text must parse to)."""
    result = copy.deepcopy(data)
    found: set[str] = set()
    for app in result.get("applications", []):
        deployments = app.get("deployments", [])
        for i, deployment in enumerate(deployments):
            name = deployment.get("name")
            if name in overrides:
                deployments[i] = merge(deployment, overrides[name])
                found.add(name)
    _require_known(overrides, found)
    return result


def _require_known(overrides: Overrides, found: set[str]) -> None:
    unknown = sorted(set(overrides) - found)
    if unknown:
        raise ServeConfigError(f"overrides name no deployment of the Serve config: {unknown}")


def derive(source_text: str, overrides: Overrides) -> str:
    """The Serve config text with ``overrides`` applied; ``source_text`` itself if none."""
    if not overrides:
        return source_text
    from ruamel.yaml import YAML  # dev extra: only this tooling needs a round-trip YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 100
    rt.indent(mapping=2, sequence=4, offset=2)  # the source's own layout
    document = rt.load(source_text)
    found: set[str] = set()
    for app in document.get("applications", []):
        for deployment in app.get("deployments", []):
            name = deployment.get("name")
            if name in overrides:
                _merge_in_place(deployment, overrides[name])
                found.add(name)
    _require_known(overrides, found)
    out = io.StringIO()
    rt.dump(document, out)
    text = out.getvalue()
    expected = apply_overrides(yaml.safe_load(source_text), overrides)
    if yaml.safe_load(text) != expected:
        raise ServeConfigError("the derived Serve config does not parse to the merged options")
    return text


def _merge_in_place(target: Any, over: Mapping[str, Any]) -> None:
    for key, value in over.items():
        if value is None:
            if key in target:
                del target[key]
        elif isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
            _merge_in_place(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def render_patch(serve_config: str, provenance: Sequence[str]) -> str:
    """A kustomize patch setting the RayService's serveConfigV2 to exactly ``serve_config``."""
    if not serve_config.endswith("\n") or serve_config.endswith("\n\n"):
        raise ServeConfigError("the Serve config must end with exactly one newline")
    if any(line != line.rstrip() for line in serve_config.splitlines()):
        raise ServeConfigError("the Serve config has trailing whitespace (a YAML block drops it)")
    header = [
        "# GENERATED by `make k8s-serve-config` (python -m papersearch.k8s.serve_config)",
        *(f"# {'from' if i == 0 else '   +'} {source}" for i, source in enumerate(provenance)),
        "# Do not edit: tests/test_deploy.py fails when this drifts from its sources.",
    ]
    body = "".join(f"    {line}\n" if line else "\n" for line in serve_config.splitlines())
    patch = "\n".join([
        *header,
        "apiVersion: ray.io/v1",
        "kind: RayService",
        "metadata:",
        f"  name: {RAYSERVICE_NAME}",
        "spec:",
        "  serveConfigV2: |",
    ]) + "\n" + body
    if yaml.safe_load(patch)["spec"]["serveConfigV2"] != serve_config:
        raise ServeConfigError("the patch does not carry the Serve config byte for byte")
    return patch


@dataclass(frozen=True)
class Target:
    """A kustomization that carries a generated serveConfigV2 patch."""

    directory: Path  # relative to the repository root
    chain: tuple[Path, ...]  # override files, base first (relative to the repository root)

    @property
    def output(self) -> Path:
        return self.directory / GENERATED


def kustomization_file(root: Path, directory: Path) -> Path | None:
    """The kustomization file of a directory (relative to ``root``), None if it has none."""
    return next((root / directory / name for name in KUSTOMIZATION_FILES
                 if (root / directory / name).is_file()), None)


def _parsed(path: Path) -> Any:
    """A YAML file's data; a slip in it is a ServeConfigError naming it and the place."""
    try:
        with path.open(encoding="utf-8") as stream:  # the error's marks name the file
            return yaml.safe_load(stream)
    except yaml.YAMLError as error:
        raise ServeConfigError(f"not YAML: {' '.join(str(error).split())}") from None


def _source_text(root: Path) -> str:
    """The Serve config's text, checked to be YAML: without overrides it is carried as it is,
    so a slip in it would otherwise reach the cluster."""
    path = root / SOURCE
    if not path.is_file():
        raise ServeConfigError(f"{path} not found: the Serve config every patch derives from")
    _parsed(path)
    return path.read_text()


def _read_kustomization(root: Path, directory: Path) -> dict[str, Any]:
    path = kustomization_file(root, directory)
    if path is None:
        raise ServeConfigError(f"{directory} has no kustomization.yaml")
    spec = _parsed(path) or {}
    if not isinstance(spec, Mapping):
        raise ServeConfigError(f"{path.relative_to(root)}: expected a Kustomization mapping")
    return dict(spec)


def _built_on(root: Path, kustomization: Path) -> list[Path]:
    """The local kustomization directories among a kustomization's ``resources`` (and the old
    ``bases``), relative to ``root``; files and remote targets are no layers of ours."""
    spec = _read_kustomization(root, kustomization)
    entries = [*(spec.get("resources") or []), *(spec.get("bases") or [])]
    found: list[Path] = []
    for entry in (str(e) for e in entries):
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            continue
        directory = Path(os.path.normpath(kustomization / entry))
        if kustomization_file(root, directory) is not None:
            found.append(directory)
    return found


def _path_to_base(root: Path, kustomization: Path,
                  seen: frozenset[Path]) -> tuple[Path, ...] | None:
    base = K8S / "base"
    if kustomization == base:
        return (base,)
    if kustomization in seen:  # a cycle: kustomize refuses it with its own message
        return None
    below = [p for p in (_path_to_base(root, d, seen | {kustomization})
                         for d in _built_on(root, kustomization)) if p is not None]
    if len(below) > 1:
        raise ServeConfigError(
            f"{kustomization} is built on the base through {len(below)} of its resources "
            f"({', '.join(str(p[-1]) for p in below)}): whose serve-overrides.yaml apply is "
            "unclear; build it on one of them")
    return (*below[0], kustomization) if below else None


def layers(root: Path, kustomization: Path) -> tuple[Path, ...]:
    """The kustomizations from the base up to ``kustomization``, each built on the one before
    through its ``resources`` (base, prod, prod-eu for an overlay of the prod overlay)."""
    found = _path_to_base(root, kustomization, frozenset())
    if found is None:
        raise ServeConfigError(
            f"{kustomization} is not built on {K8S / 'base'} (its resources lead to no "
            "kustomization that is): no serveConfigV2 can be derived for it")
    return found


def chain_for(root: Path, kustomization: Path) -> tuple[Path, ...]:
    """Override files that apply to a kustomization directory: each layer's, from the base's
    up to its own (a layer without serve-overrides.yaml adds nothing)."""
    return tuple(layer / OVERRIDES for layer in layers(root, kustomization)
                 if (root / layer / OVERRIDES).is_file())


def applies_patch(root: Path, kustomization: Path) -> bool:
    """The kustomization lists its generated patch (``patches: - path:
    serve-config.generated.yaml``, or the old ``patchesStrategicMerge``): a file it does not
    list changes nothing, however current."""
    spec = _read_kustomization(root, kustomization)
    listed = [p.get("path") for p in spec.get("patches") or [] if isinstance(p, Mapping)]
    listed += list(spec.get("patchesStrategicMerge") or [])
    return any(isinstance(p, str) and os.path.normpath(p) == GENERATED for p in listed)


def why_not_derived(root: Path, kustomization: Path) -> str:
    """What to do where a kustomization renders another serveConfigV2 than its sources derive:
    the topmost layer that carries a generated patch decides (it overwrites those below)."""
    for layer in reversed(layers(root, kustomization)):
        target = Target(layer, chain_for(root, layer))
        path = root / target.output
        own = (root / layer / OVERRIDES).is_file()
        if layer != K8S / "base" and not own and not path.is_file():
            continue  # carries none: the one of the layer below shows through
        if not path.is_file() or path.read_text() != generate(root, target):
            return f"{target.output} is missing or stale: run `make k8s-serve-config`"
        if not applies_patch(root, layer):
            return (f"{target.output} is up to date but not applied (regenerating cannot mend "
                    f"that): add `- path: {GENERATED}` under `patches:` in "
                    f"{layer}/kustomization.yaml")
        return (f"{target.output} is up to date and applied, so a patch after it (in "
                f"{kustomization} or a layer between) sets serveConfigV2: put that change in a "
                f"{OVERRIDES} instead")
    return "no layer carries a generated patch: run `make k8s-serve-config`"


def targets(root: Path) -> list[Target]:
    """The base and every overlay that has overrides of its own or carries a generated patch
    (the others inherit the result of the layer they are built on)."""
    found = [Target(K8S / "base", chain_for(root, K8S / "base"))]
    overlays = root / K8S / "overlays"
    for overlay in sorted(p for p in overlays.iterdir() if p.is_dir()) if overlays.is_dir() else []:
        relative = overlay.relative_to(root)
        if (overlay / OVERRIDES).is_file() or (overlay / GENERATED).is_file():
            found.append(Target(relative, chain_for(root, relative)))
    return found


def expected_serve_config(root: Path, kustomization: Path) -> str:
    """The serveConfigV2 a rendered kustomization must carry."""
    chain = chain_for(root, kustomization)
    return derive(_source_text(root), load_overrides([root / p for p in chain]))


def generate(root: Path, target: Target) -> str:
    text = derive(_source_text(root), load_overrides([root / p for p in target.chain]))
    return render_patch(text, [str(SOURCE), *(str(p) for p in target.chain)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated patch is missing or stale")
    parser.add_argument("--root", type=Path, default=repo_root())
    args = parser.parse_args(argv)
    try:
        stale, unapplied = sync(args.root, check=args.check)
    except ServeConfigError as error:  # sources it cannot derive from: said, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    if stale:
        print(f"{stale} stale serveConfigV2 patch(es): run `make k8s-serve-config`",
              file=sys.stderr)
    if unapplied:
        print(f"{unapplied} generated patch(es) their kustomization.yaml does not apply: list "
              "each as said above", file=sys.stderr)
    return 1 if stale or unapplied else 0


def sync(root: Path, *, check: bool) -> tuple[int, int]:
    """Rewrite each generated patch that differs from its sources (``check``: show the diff,
    write nothing); how many differed, and how many their kustomization does not apply."""
    stale = unapplied = 0
    for target in targets(root):
        if not applies_patch(root, target.directory):
            unapplied += 1
            print(f"not applied: {target.output}: add `- path: {GENERATED}` under `patches:` "
                  f"in {target.directory}/kustomization.yaml", file=sys.stderr)
        wanted = generate(root, target)
        path = root / target.output
        current = path.read_text() if path.is_file() else ""
        if current == wanted:
            print(f"up to date: {target.output}")
        elif check:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), wanted.splitlines(keepends=True),
                str(target.output), f"{target.output} (regenerated)"))
        else:
            path.write_text(wanted)
            print(f"wrote {target.output}")
    return stale, unapplied


if __name__ == "__main__":
    sys.exit(main())
