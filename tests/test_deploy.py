"""Deployment artefacts, validated offline: every kustomize overlay rendered with kubectl and
every object checked (Kubernetes schemas, KubeRay's CRD, Ray's Serve schema, cross-object
rules), the serveConfigV2 derived from the Serve config byte for byte, and the policy scan.
Each validator is also shown a broken object, so a check that cannot fail does not pass."""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from papersearch.k8s import check, consistency, network, policy, serve_config
from papersearch.k8s.pods import PodTemplate
from papersearch.k8s.render import Rendered, load_objects, overlays, render
from papersearch.k8s.serve_schema import serve_config_errors
from tests.conftest import ROOT

SOURCE = ROOT / serve_config.SOURCE
KUSTOMIZATIONS = [serve_config.K8S / "base", *overlays(ROOT)]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {k.name: render(ROOT, k) for k in KUSTOMIZATIONS}


# -- serveConfigV2: derived from deploy/serve/papersearch.yaml -------------------------------

def test_no_overrides_leaves_the_serve_config_byte_for_byte() -> None:
    source = SOURCE.read_text()
    assert serve_config.derive(source, {}) == source
    patch = serve_config.render_patch(source, [str(serve_config.SOURCE)])
    assert yaml.safe_load(patch)["spec"]["serveConfigV2"] == source


def test_overrides_change_only_what_they_name() -> None:
    source = SOURCE.read_text()
    base = ROOT / serve_config.K8S / "base"
    overrides = serve_config.load_overrides([base / serve_config.OVERRIDES])
    derived = serve_config.derive(source, overrides)
    before, after = yaml.safe_load(source), yaml.safe_load(derived)

    def deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        (app,) = config["applications"]
        return {d["name"]: d for d in app["deployments"]}

    old, new = deployments(before), deployments(after)
    # what base/serve-overrides.yaml names, and only that (derive() checks its own output
    # against apply_overrides: comparing with that again could not fail)
    assert (old["Gateway"]["num_replicas"], new["Gateway"]["num_replicas"]) == (1, 2)
    assert new["Gateway"]["ray_actor_options"] == {"num_cpus": 0,
                                                   "resources": {"papersearch_gateway": 1}}
    assert new["QueryEncoder"]["ray_actor_options"]["num_cpus"] == 1
    assert old["QueryEncoder"]["ray_actor_options"]["num_cpus"] != 1
    for name in old:  # every other option as it was
        for key in set(old[name]) | set(new[name]):
            if (name, key) not in {("Gateway", "num_replicas"), ("Gateway", "ray_actor_options"),
                                   ("QueryEncoder", "ray_actor_options")}:
                assert old[name].get(key) == new[name].get(key), (name, key)
    unchanged = [line for line in source.splitlines() if line in derived.splitlines()]
    assert len(unchanged) >= len(source.splitlines()) - 6  # comments and layout survive
    with pytest.raises(serve_config.ServeConfigError, match="no deployment"):
        serve_config.derive(source, {"Gatewya": {"num_replicas": 2}})


def test_generated_patches_are_up_to_date() -> None:
    assert serve_config.main(["--check", "--root", str(ROOT)]) == 0, (
        "a serveConfigV2 patch drifted from deploy/serve/papersearch.yaml: "
        "run `make k8s-serve-config`")


def test_drift_is_detected(tmp_path: Path) -> None:
    for part in ("deploy/serve", "deploy/k8s"):
        shutil.copytree(ROOT / part, tmp_path / part)
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 0
    source = tmp_path / serve_config.SOURCE
    source.write_text(source.read_text().replace("max_ongoing_requests: 64",
                                                 "max_ongoing_requests: 65", 1))
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 1
    assert serve_config.main(["--root", str(tmp_path)]) == 0  # regenerate
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 0


@pytest.mark.parametrize("source", [serve_config.K8S / "overlays/prod/kustomization.yaml",
                                    serve_config.K8S / "overlays/prod/serve-overrides.yaml",
                                    serve_config.SOURCE])
def test_a_yaml_slip_in_a_source_is_one_line_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path) -> None:
    _copy_deploy(tmp_path)
    path = tmp_path / source
    path.write_text(path.read_text() + "  - path: [unclosed\n")
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 1
    said = capsys.readouterr().err
    assert said.startswith("error: not YAML: ") and said.count("\n") == 1, said
    assert f'in "{path}", line' in said, said


def test_a_patch_left_without_overrides_is_regenerated(tmp_path: Path) -> None:
    """An overlay whose serve-overrides.yaml is gone keeps its patch (its kustomization names
    it), which must then carry the base's result: --check and regenerating see it too."""
    for part in ("deploy/serve", "deploy/k8s"):
        shutil.copytree(ROOT / part, tmp_path / part)
    dev = tmp_path / serve_config.K8S / "overlays" / "dev"
    (dev / serve_config.OVERRIDES).unlink()
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 1
    assert serve_config.main(["--root", str(tmp_path)]) == 0
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 0
    base = tmp_path / serve_config.K8S / "base" / serve_config.GENERATED
    assert (yaml.safe_load((dev / serve_config.GENERATED).read_text())
            == yaml.safe_load(base.read_text()))


def _overlay(root: Path, name: str, kustomization: str, overrides: str | None) -> Path:
    """A new overlay in a copy of deploy/ (``root``), generated patches rewritten."""
    overlay = root / serve_config.K8S / "overlays" / name
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n" + kustomization)
    if overrides is not None:
        (overlay / serve_config.OVERRIDES).write_text(overrides)
    assert serve_config.main(["--root", str(root)]) == 0
    return overlay.relative_to(root)


def _copy_deploy(root: Path) -> None:
    for part in ("deploy/serve", "deploy/k8s"):
        shutil.copytree(ROOT / part, root / part)


def _bounds(item: Rendered) -> dict[str, Any]:
    return {name: d.get("num_replicas") or (d["autoscaling_config"]["min_replicas"],
                                            d["autoscaling_config"]["max_replicas"])
            for name, d in consistency.deployments(item).items()}


def test_an_overlay_of_an_overlay_keeps_the_lower_overlays_overrides(tmp_path: Path) -> None:
    """An overlay built on prod (`resources: [../prod]`) got base + its own overrides only:
    prod's QueryEncoder bounds (2..16) went back to the Serve config's, and the check, which
    derived the same chain, passed. The chain follows the resources: base, prod, prod-eu."""
    _copy_deploy(tmp_path)
    prod_eu = _overlay(tmp_path, "prod-eu", "resources:\n  - ../prod\npatches:\n"
                       "  - path: serve-config.generated.yaml\n",
                       "Reranker:\n  autoscaling_config: {min_replicas: 1, max_replicas: 6}\n")
    overlays = serve_config.K8S / "overlays"
    assert serve_config.chain_for(tmp_path, prod_eu) == tuple(
        p / serve_config.OVERRIDES for p in (serve_config.K8S / "base", overlays / "prod",
                                             prod_eu))
    header = (tmp_path / prod_eu / serve_config.GENERATED).read_text().splitlines()[:5]
    assert "#    + deploy/k8s/overlays/prod/serve-overrides.yaml" in header
    item = render(tmp_path, prod_eu)
    assert _bounds(item) == {"Gateway": 3, "QueryEncoder": (2, 16), "Reranker": (1, 6)}
    assert consistency.check_serve_config_derived(item, tmp_path) == []
    # built on two overlays at once: whose overrides apply is unclear, so it is refused
    (tmp_path / prod_eu / "kustomization.yaml").write_text(
        "resources:\n  - ../prod\n  - ../dev\n")
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 1
    with pytest.raises(serve_config.ServeConfigError, match="through 2 of its resources"):
        serve_config.chain_for(tmp_path, prod_eu)


def test_a_generated_patch_the_overlay_does_not_list_is_said_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new overlay with overrides whose kustomization.yaml did not list the generated patch
    failed the check with "run `make k8s-serve-config`", which said "up to date" and could
    never mend it. Both now say to add the patch entry; a stale patch still says regenerate."""
    _copy_deploy(tmp_path)
    staging = tmp_path / serve_config.K8S / "overlays" / "staging"
    staging.mkdir()
    (staging / "kustomization.yaml").write_text("resources:\n  - ../../base\n")
    (staging / serve_config.OVERRIDES).write_text(
        "QueryEncoder:\n  autoscaling_config: {min_replicas: 1, max_replicas: 4}\n")
    entry = "add `- path: serve-config.generated.yaml` under `patches:`"
    assert serve_config.main(["--root", str(tmp_path)]) == 1
    assert entry in capsys.readouterr().err
    assert serve_config.main(["--check", "--root", str(tmp_path)]) == 1
    relative = staging.relative_to(tmp_path)
    [error] = consistency.check_serve_config_derived(render(tmp_path, relative), tmp_path)
    assert f"{entry} in {relative}/kustomization.yaml" in error
    assert "run `make k8s-serve-config`" not in error
    prod = serve_config.K8S / "overlays" / "prod"
    overrides = tmp_path / prod / serve_config.OVERRIDES
    overrides.write_text(overrides.read_text().replace("max_replicas: 16", "max_replicas: 12"))
    [error] = consistency.check_serve_config_derived(render(tmp_path, prod), tmp_path)
    assert error.endswith(f"{prod / serve_config.GENERATED} is missing or stale: run "
                          "`make k8s-serve-config`")


@pytest.mark.parametrize("name", [k.name for k in KUSTOMIZATIONS])
def test_rendered_serve_config_is_the_derived_text(rendered: dict[str, Rendered],
                                                   name: str) -> None:
    item = rendered[name]
    actual = item.one("RayService")["spec"]["serveConfigV2"]
    assert actual == serve_config.expected_serve_config(ROOT, item.overlay)
    if not serve_config.chain_for(ROOT, item.overlay):
        assert actual == SOURCE.read_text()


# -- every rendered object validates ---------------------------------------------------------

@pytest.mark.parametrize("name", [k.name for k in KUSTOMIZATIONS])
def test_every_object_validates(rendered: dict[str, Rendered], name: str) -> None:
    result = check.validate(rendered[name], ROOT)
    assert result.errors == []
    assert sum(result.kinds.values()) >= 17
    for kind in ("RayService", "StatefulSet", "Service", "Job", "NetworkPolicy",
                 "PodDisruptionBudget", "PodMonitor", "ConfigMap"):
        assert result.kinds[kind] >= 1, kind


def test_prod_carries_no_secret_and_dev_only_placeholders(rendered: dict[str, Rendered]) -> None:
    assert rendered["prod"].find("Secret") == []
    for secret in rendered["dev"].find("Secret"):
        assert all(consistency.PLACEHOLDER in v for v in secret["stringData"].values())


def test_ray_version_matches_the_package_pin(rendered: dict[str, Rendered]) -> None:
    import tomllib

    from packaging.specifiers import SpecifierSet

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray = next(d for d in deps if d.startswith("ray[serve]"))
    pin = SpecifierSet(ray.removeprefix("ray[serve]"))
    for item in rendered.values():
        assert item.one("RayService")["spec"]["rayClusterConfig"]["rayVersion"] in pin


@pytest.mark.parametrize("overlay", [k.name for k in KUSTOMIZATIONS[1:]])
def test_an_overlays_image_entry_names_every_papersearch_image(tmp_path: Path,
                                                               overlay: str) -> None:
    """deploy/README's release step (a new tag, a digest in the overlay's `images:` entry)
    changed nothing: the base had renamed the image first, so the overlay's `name:
    papersearch` matched none, and an upgrade ran the old image."""
    shutil.copytree(ROOT / "deploy/k8s", tmp_path / "deploy/k8s")
    kustomization = tmp_path / serve_config.K8S / "overlays" / overlay / "kustomization.yaml"
    spec = yaml.safe_load(kustomization.read_text())
    [entry] = [e for e in spec["images"] if e["name"] == "papersearch"]
    pinned = f"registry.test/papersearch@sha256:{'0' * 64}"
    entry.pop("newTag")
    entry.update(newName="registry.test/papersearch", digest=f"sha256:{'0' * 64}")
    kustomization.write_text(yaml.safe_dump(spec))
    images = re.findall(r"image: (\S+)", render(tmp_path, kustomization.parent.relative_to(
        tmp_path)).text)
    assert sorted(set(images)) == ["docker.io/qdrant/qdrant:v1.20.0", pinned]
    assert images.count(pinned) == 4  # the head, gateway and worker groups, the ingest Job


# -- the validators fail on broken objects --------------------------------------------------

def _broken(item: Rendered, edit: Callable[[list[dict[str, Any]]], None]) -> Rendered:
    objects = copy.deepcopy(item.objects)
    edit(objects)
    return Rendered(item.overlay, "", objects)


def _first(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind)


def _set_serve(objects: list[dict[str, Any]], text: str) -> None:
    _first(objects, "RayService")["spec"]["serveConfigV2"] = text


def _edit_serve(objects: list[dict[str, Any]], old: str, new: str) -> None:
    text = _first(objects, "RayService")["spec"]["serveConfigV2"]
    assert old in text
    _set_serve(objects, text.replace(old, new, 1))


def _gateway_group(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _first(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


def _ingress(objects: list[dict[str, Any]], policy: str) -> list[dict[str, Any]]:
    return next(o for o in objects if o["kind"] == "NetworkPolicy"  # type: ignore[no-any-return]
                and o["metadata"]["name"] == policy)["spec"]["ingress"]


def _close(objects: list[dict[str, Any]], policy: str, rule: int, port: int) -> None:
    entries = _ingress(objects, policy)[rule]["ports"]
    assert any(e["port"] == port for e in entries)
    entries[:] = [e for e in entries if e["port"] != port]


def _move_http_port(objects: list[dict[str, Any]]) -> None:
    """The gateways serve HTTP on 8081 (settings and container port): the policy opens 8000."""
    _prod_env(objects)["PAPERSEARCH_SERVE__HTTP_PORT"] = "8081"
    next(p for p in _gateway_container(objects)["ports"] if p["name"] == "http").update(
        containerPort=8081)


BREAKAGES: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "core schema": (lambda o: _first(o, "StatefulSet")["spec"].update(replica=3),
                    "'replica' was unexpected"),
    "core type": (lambda o: _first(o, "Service")["spec"]["ports"][0].update(port="grpc"),
                  "is not of type 'integer'"),
    "CRD field": (lambda o: _gateway_group(o).update(maxReplica=3), "'maxReplica' was unexpected"),
    "CRD pod template": (lambda o: _gateway_group(o)["template"]["spec"]["containers"][0]
                         .update(imagePullpolicy="Always"), "'imagePullpolicy' was unexpected"),
    "serve unknown key": (lambda o: _edit_serve(o, "max_queued_requests: 512",
                                                "max_queue_requests: 512"),
                          "max_queue_requests: unknown key"),
    "serve autoscaling key": (lambda o: _edit_serve(o, "upscale_delay_s", "upscale_delays"),
                              "upscale_delays: unknown key"),
    "serve policy kwarg": (lambda o: _edit_serve(o, "scale_up_above: 0.5", "scale_up_abov: 0.5"),
                           "unexpected keyword argument 'scale_up_abov'"),
    "serve drift": (lambda o: _edit_serve(o, "max_ongoing_requests: 64",
                                          "max_ongoing_requests: 32"),
                    "serveConfigV2 differs"),
    "gateway replicas": (lambda o: _gateway_group(o).update(replicas=5, maxReplicas=5),
                         "must equal the gateway group"),
    "gateway probe": (lambda o: _gateway_group(o)["template"]["spec"]["containers"][0]
                      .pop("readinessProbe"), "gRPC readinessProbe"),
    "real secret": (lambda o: _first(o, "Secret")["stringData"].update({"api-key": "hunter2"}),
                    "not a CHANGE-ME placeholder"),
    "index key in the manifest": (lambda o: _set_env(_gateway_container(o), {
        "name": "PAPERSEARCH_INDEX__API_KEY", "value": "CHANGE-ME-qdrant-api-key"}),
        "PAPERSEARCH_INDEX__API_KEY must come from a Secret"),
    "read keys in the manifest": (lambda o: _set_env(_worker_container(o), {
        "name": "PAPERSEARCH_SERVE__READ_API_KEYS", "value": '["CHANGE-ME-read-key"]'}),
        "PAPERSEARCH_SERVE__READ_API_KEYS must come from a Secret"),
    "gateway keys in a ConfigMap": (lambda o: _first(o, "ConfigMap")["data"].update(
        PAPERSEARCH_SERVE__API_KEYS='["CHANGE-ME-gateway-api-key"]'),
        "PAPERSEARCH_SERVE__API_KEYS is a key: put it in a Secret"),
    "index key not Qdrant's": (lambda o: _set_env(_gateway_container(o), {
        "name": "PAPERSEARCH_INDEX__API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "papersearch-gateway", "key": "api-keys"}}}),
        "Qdrant's from papersearch-qdrant/api-key"),
    "setting typo": (lambda o: _first(o, "ConfigMap")["data"].update(
        PAPERSEARCH_INDEX__SHARDS="2"), "PAPERSEARCH_INDEX__SHARDS is no setting"),
    "setting value": (lambda o: _first(o, "ConfigMap")["data"].update(
        PAPERSEARCH_INDEX__REPLICATION_FACTOR="1"), "replication_factor must be 2"),
    "no limits": (lambda o: _first(o, "Job")["spec"]["template"]["spec"]["containers"][0]
                  ["resources"].pop("limits"), "no cpu limit"),
    "root fs": (lambda o: _first(o, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
                ["securityContext"].update(readOnlyRootFilesystem=False),
                "readOnlyRootFilesystem must be true"),
    "dangling selector": (lambda o: _first(o, "PodMonitor")["spec"]["selector"].update(
        matchLabels={"app": "nothing"}), "selects no pod"),
    "gateway HTTP port moved": (_move_http_port,
                                "serve.http_port 8081 from other namespaces is not admitted"),
    "gateway gRPC port closed": (lambda o: _close(o, "papersearch-ray", 1, 50051),
                                 "serve.grpc_port 50051 from other namespaces is not admitted"),
    "qdrant p2p closed": (lambda o: _close(o, "qdrant", 1, 6335),
                          "port 6335 from the other Qdrant peers is not admitted"),
    "qdrant clients shut out": (lambda o: _ingress(o, "qdrant")[0]["from"][0].update(
        podSelector={"matchLabels": {"papersearch.io/qdrant-client": "yes"}}),
        "port 6334 from Job/papersearch-ingest is not admitted"),
    "ray ports restricted": (lambda o: _ingress(o, "papersearch-ray")[0].update(
        ports=[{"protocol": "TCP", "port": 6379}]),
        "traffic on every port from RayService/papersearch group workers"),
    "metrics closed": (lambda o: _ingress(o, "papersearch-ray").pop(2),
                       "metrics port 8080 (PodMonitor/papersearch-ray) from other namespaces"),
    "dashboard closed": (lambda o: _ingress(o, "papersearch-ray").pop(3),
                         "head: the dashboard 8265 from other namespaces is not admitted"),
    "no serve port": (lambda o: _first(o, "RayService")["spec"]["rayClusterConfig"]
                      ["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].pop(),
                      "needs a port named serve"),
    "unknown kind": (lambda o: o.append({"apiVersion": "example.com/v1", "kind": "Widget",
                                         "metadata": {"name": "w"}}), "no schema"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_validation_catches(rendered: dict[str, Rendered], breakage: str) -> None:
    edit, expected = BREAKAGES[breakage]
    result = check.validate(_broken(rendered["dev"], edit), ROOT)
    assert any(expected in error for error in result.errors), result.errors


def _gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _gateway_group(objects)["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _set_env(container: dict[str, Any], env: dict[str, Any]) -> None:
    """``env`` in place of the container's variable of that name (or added)."""
    container["env"] = [e for e in container.get("env", []) if e["name"] != env["name"]] + [env]


# Input the checks raised on (a traceback from make k8s-check): an error line each now, or
# nothing where Serve and Kubernetes accept it. overlay -> edit, expected ("": no error).
UNFORESEEN: dict[str, tuple[str, Callable[[list[dict[str, Any]]], None], str]] = {
    "num_replicas auto": ("dev", lambda o: _edit_serve(o, "num_replicas: 1", "num_replicas: auto"),
                          "autoscaling maxima need 100 papersearch_gateway"),
    "no max_replicas": ("dev", lambda o: _edit_serve(o, "max_replicas: 1 ", "# "),
                        "serveConfigV2 differs"),
    "key the checks have no sample of": ("prod", lambda o: _set_env(_gateway_container(o), {
        "name": "PAPERSEARCH_SERVE__READ_API_KEYS",
        "valueFrom": {"secretKeyRef": {"name": "papersearch-gateway", "key": "search-keys"}}}),
        "refers to a missing secret key papersearch-gateway/search-keys"),
    "env ConfigMap from elsewhere": ("dev", lambda o: _gateway_container(o)["envFrom"].append(
        {"configMapRef": {"name": "papersearch-extra"}}),
        "envFrom ConfigMap papersearch-extra is not in this overlay"),
    "optional env ConfigMap": ("dev", lambda o: _gateway_container(o)["envFrom"].append(
        {"configMapRef": {"name": "papersearch-extra", "optional": True}}), ""),
    "serveConfigV2 no YAML": ("dev", lambda o: _set_serve(o, "applications: [\n"),
                              "replicas fit: not checked: serveConfigV2 is no Serve config"),
    "Gateway renamed": ("dev", lambda o: _edit_serve(o, "name: Gateway", "name: Front"),
                        "serveConfigV2 has no deployment Gateway"),
}


@pytest.mark.parametrize("case", sorted(UNFORESEEN))
def test_validation_reports_what_it_once_raised_on(rendered: dict[str, Rendered],
                                                    case: str) -> None:
    overlay, edit, expected = UNFORESEEN[case]
    result = check.validate(_broken(rendered[overlay], edit), ROOT)
    if expected:
        assert any(expected in error for error in result.errors), result.errors
    else:
        assert result.errors == []


@pytest.mark.parametrize(("deployment", "most"), [
    ({}, 1),
    ({"num_replicas": 3}, 3),
    ({"autoscaling_config": {"min_replicas": 1}}, 1),  # Serve's default max_replicas
    ({"num_replicas": "auto"}, 100),  # Serve's default for "auto"
    ({"num_replicas": "auto", "autoscaling_config": {"max_replicas": 7}}, 7),
])
def test_max_replicas_has_serves_defaults(deployment: dict[str, Any], most: int) -> None:
    assert consistency.max_replicas(deployment) == most



_SERVER = PodTemplate("Deployment/a", "ns", "a", {"app": "a"},
                      {"containers": [{"ports": [{"name": "grpc", "containerPort": 50051}]}]})
_CLIENT = PodTemplate("Deployment/b", "ns", "b", {"app": "b"}, {})


@pytest.mark.parametrize(("rule", "port", "source", "admitted"), [
    ({"ports": [{"port": "grpc"}]}, 50051, network.OUTSIDE, True),  # named on the destination
    ({"ports": [{"port": 50000, "endPort": 50100}]}, 50051, network.OUTSIDE, True),
    ({"ports": [{"protocol": "UDP", "port": 50051}]}, 50051, network.OUTSIDE, False),
    ({"ports": [{"port": 50051}]}, None, _CLIENT, False),  # not every port
    ({"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}, None, _CLIENT, True),
    ({"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}, 1, network.OUTSIDE, False),
    ({"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}, 1, _CLIENT, False),
    ({"from": [{"namespaceSelector": {}}], "ports": [{"port": 1}]}, 1, network.OUTSIDE, True),
])
def test_network_policies_admit_as_kubernetes_does(rule: dict[str, Any], port: int | None,
                                                   source: network.Source,
                                                   admitted: bool) -> None:
    policy = {"metadata": {"name": "p", "namespace": "ns"},
              "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [rule]}}
    assert network.admits([policy], _SERVER, port, source) is admitted
    egress_only = copy.deepcopy(policy)
    egress_only["spec"]["policyTypes"] = ["Egress"]
    elsewhere = copy.deepcopy(policy)
    elsewhere["metadata"]["namespace"] = "other"
    assert network.admits([egress_only, elsewhere], _SERVER, port, source)  # not isolated


def test_a_check_that_raises_is_an_error_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def raises(rendered: Rendered) -> list[str]:
        raise KeyError("spec")

    monkeypatch.setattr(consistency, "CHECKS", {"gaps": raises})
    assert check.main(["--no-policy", "--root", str(ROOT)]) == 1
    assert "ERROR gaps: KeyError: 'spec'" in capsys.readouterr().out


def test_prod_gateways_serve_tls_with_plaintext_probes(rendered: dict[str, Rendered]) -> None:
    env = consistency.settings_from_env(rendered["prod"].one("ConfigMap", _env_name(
        rendered["prod"]))["data"])
    assert env.serve.tls_cert_file is not None and env.serve.health_port == 50052
    ray = _gateway_container(rendered["prod"].objects)
    assert {p["name"]: p["containerPort"] for p in ray["ports"]}["grpc-health"] == 50052
    assert {"name": "gateway-tls", "mountPath": "/etc/papersearch/tls",
            "readOnly": True} in ray["volumeMounts"]
    for name in ("dev", "base"):
        data = rendered[name].one("ConfigMap", _env_name(rendered[name]))["data"]
        assert not any("TLS" in k or "HEALTH_PORT" in k for k in data)
    assert not check.validate(rendered["prod"], ROOT).errors


@pytest.mark.parametrize(("overlay", "host", "expected"), [
    ("prod", "qdrant", ""),
    ("prod", "qdrant.papersearch", ""),
    ("prod", "qdrant.papersearch.svc", ""),
    # Qdrant's cluster DNS name was refused as "no Service here"
    ("prod", "qdrant.papersearch.svc.cluster.local", ""),
    ("prod", "qdrant.papersearch.svc.k8s.example.", ""),  # another cluster domain, rooted
    ("prod", "qdrant.papersearch-dev.svc.cluster.local",
     "names namespace papersearch-dev, but Service/qdrant of this overlay is in papersearch"),
    ("prod", "qdrant.example.com", "index.url host qdrant.example.com is no Service here"),
    ("prod", "qdrant-db.papersearch.svc", "index.url host qdrant-db.papersearch.svc is no Service"),
    ("base", "qdrant.papersearch.svc.cluster.local",
     "names namespace papersearch, but these objects have none"),
])
def test_index_url_may_name_qdrant_by_its_cluster_dns_name(
        rendered: dict[str, Rendered], overlay: str, host: str, expected: str) -> None:
    def point(objects: list[dict[str, Any]]) -> None:
        _prod_env(objects)["PAPERSEARCH_INDEX__URL"] = f"http://{host}:6333"

    errors = consistency.check_settings(_broken(rendered[overlay], point))
    if expected:
        # each Qdrant client says it (the head, the two groups, the Job), and nothing else
        assert len(errors) == 4 and all(expected in error for error in errors), errors
    else:
        assert errors == []


def _env_name(item: Rendered) -> str:
    return next(c["metadata"]["name"] for c in item.find("ConfigMap")
                if c["metadata"]["name"].startswith("papersearch-env"))


def _prod_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return next(o for o in objects if o["kind"] == "ConfigMap"  # type: ignore[no-any-return]
                and o["metadata"]["name"].startswith("papersearch-env"))["data"]


_CLIENT_CA = "/etc/papersearch/client-ca"


TLS_BREAKAGES: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "probe on the TLS port": (lambda o: _gateway_container(o)["readinessProbe"]["grpc"].update(
        port=50051), "gRPC readinessProbe on 50052"),
    "no health port": (lambda o: _prod_env(o).pop("PAPERSEARCH_SERVE__HEALTH_PORT"),
                       "needs PAPERSEARCH_SERVE__HEALTH_PORT"),
    "health port undeclared": (lambda o: _gateway_container(o).update(ports=[
        p for p in _gateway_container(o)["ports"] if p["name"] != "grpc-health"]),
        "container port `grpc-health` 50052"),
    "http port undeclared": (lambda o: _gateway_container(o).update(ports=[
        p for p in _gateway_container(o)["ports"] if p["name"] != "http"]),
        "container port `http` 8000"),
    "cert not mounted": (lambda o: _gateway_container(o).update(volumeMounts=[
        m for m in _gateway_container(o)["volumeMounts"] if m["name"] != "gateway-tls"]),
        "no Secret volume mounted at /etc/papersearch/tls"),
    "TLS on the gateway container only": (lambda o: _gateway_container(o)["env"].extend(
        {"name": k, "value": _prod_env(o).pop(k)} for k in list(_prod_env(o)) if "TLS" in k),
        "group gateway: PAPERSEARCH_SERVE__TLS_CERT_FILE is '/etc/papersearch/tls/tls.crt', "
        "on the head unset"),
    "cert key name": (lambda o: _prod_env(o).update(
        PAPERSEARCH_SERVE__TLS_CERT_FILE="/etc/papersearch/tls/cert.pem"), "has no key cert.pem"),
    # the client CA file went unchecked: every gateway would stop at start
    "client CA not in the Secret": (lambda o: _prod_env(o).update(
        PAPERSEARCH_SERVE__TLS_CLIENT_CA_FILE="/etc/papersearch/tls/ca.crt"),
        "Secret papersearch-gateway-tls has no key ca.crt (its keys: tls.crt, tls.key): a "
        "client CA goes in Secret papersearch-gateway-client-ca"),
    "client CA not mounted": (lambda o: _prod_env(o).update(
        PAPERSEARCH_SERVE__TLS_CLIENT_CA_FILE=f"{_CLIENT_CA}/ca.crt"),
        f"{_CLIENT_CA}/ca.crt: no Secret volume mounted at {_CLIENT_CA} in gateway pods"),
}


@pytest.mark.parametrize("breakage", sorted(TLS_BREAKAGES))
def test_validation_catches_tls_breakage(rendered: dict[str, Rendered], breakage: str) -> None:
    edit, expected = TLS_BREAKAGES[breakage]
    result = check.validate(_broken(rendered["prod"], edit), ROOT)
    assert any(expected in error for error in result.errors), result.errors


def test_mutual_tls_as_deploy_readme_gives_it_passes(rendered: dict[str, Rendered]) -> None:
    def mutual(objects: list[dict[str, Any]]) -> None:
        _prod_env(objects)["PAPERSEARCH_SERVE__TLS_CLIENT_CA_FILE"] = f"{_CLIENT_CA}/ca.crt"
        _gateway_group(objects)["template"]["spec"]["volumes"].append(
            {"name": "client-ca", "secret": {"secretName": "papersearch-gateway-client-ca"}})
        _gateway_container(objects)["volumeMounts"].append(
            {"name": "client-ca", "mountPath": _CLIENT_CA, "readOnly": True})

    assert check.validate(_broken(rendered["prod"], mutual), ROOT).errors == []


def _ray_service(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "RayService")


DRAIN_BREAKAGES: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "liveness asks readiness": (lambda o: _gateway_container(o)["livenessProbe"]["grpc"].update(
        service="readiness"), "livenessProbe must ask grpc.health.v1 service 'liveness'"),
    "readiness asks nothing": (lambda o: _gateway_container(o)["readinessProbe"]["grpc"].pop(
        "service"), "readinessProbe must ask grpc.health.v1 service 'readiness'"),
    "no preStop drain": (lambda o: _gateway_container(o).pop("lifecycle"),
                         "preStop `papersearch drain`"),
    "no drain file": (lambda o: _prod_env(o).pop("PAPERSEARCH_SERVE__DRAIN_FILE"),
                      "PAPERSEARCH_SERVE__DRAIN_FILE"),
    "serve kills a draining gateway": (lambda o: _ray_service(o)["spec"].update(
        serveConfigV2=_ray_service(o)["spec"]["serveConfigV2"].replace(
            "graceful_shutdown_timeout_s: 55", "graceful_shutdown_timeout_s: 20")),
        "Gateway graceful_shutdown_timeout_s 20 < 54"),
    # Serve sleeps a wait loop (2 s) before it calls the drain: 52 s (notice, grace, margin)
    # was let through, and Serve's kill came before the drain's end
    "serve's wait loop left out": (lambda o: _ray_service(o)["spec"].update(
        serveConfigV2=_ray_service(o)["spec"]["serveConfigV2"].replace(
            "graceful_shutdown_timeout_s: 55", "graceful_shutdown_timeout_s: 53")),
        "Gateway graceful_shutdown_timeout_s 53 < 54 (Serve's wait loop 2"),
    "grace shorter than the drain": (lambda o: _prod_env(o).update(
        PAPERSEARCH_SERVE__DRAIN_GRACE_S="58", PAPERSEARCH_SERVE__MAX_DEADLINE_S="50"),
        "terminationGracePeriodSeconds 70 < 85"),
    "refusing while still an endpoint": (lambda o: _prod_env(o).update(
        PAPERSEARCH_SERVE__DRAIN_NOTICE_S="5"), "drain_notice_s 5 < 12"),
    "workers stop with their replicas": (lambda o: _worker_container(o).pop("lifecycle"),
                                         "group workers needs preStop `papersearch drain "
                                         "--ray-node`"),
    "drain looks for another app": (lambda o: _prod_env(o).update(
        PAPERSEARCH_SERVE__APP_NAME="search"), "serve.app_name 'search' names no application"),
    "worker grace shorter than its drain": (lambda o: _prod_env(o).update(
        PAPERSEARCH_SERVE__NODE_DRAIN_S="50"),
        "group workers terminationGracePeriodSeconds 60 < 65: node_drain_s 50"),
}


def _budget(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "PodDisruptionBudget"  # type: ignore[no-any-return]
                and o["metadata"]["name"] == name)["spec"]


def _workers_group(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(g for g in _ray_service(objects)["spec"]["rayClusterConfig"]  # type: ignore[no-any-return]
                ["workerGroupSpecs"] if g["groupName"] == "workers")


# A budget whose minAvailable the pods it selects cannot exceed refuses every eviction once
# they are that few (base/disruption-budgets.yaml: the workers' budget on a minimum of 1 did).
BUDGET_BREAKAGES: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "gateway budget at the group's size": (lambda o: _budget(o, "papersearch-gateway").update(
        minAvailable=3), "PodDisruptionBudget/papersearch-gateway: minAvailable 3 is not below "
        "3, the fewest pods it selects (RayService/papersearch group gateway 3"),
    "workers' budget on a minimum of 1": (lambda o: _workers_group(o).update(
        replicas=1, minReplicas=1), "PodDisruptionBudget/papersearch-workers: minAvailable 1 "
        "is not below 1, the fewest pods it selects (RayService/papersearch group workers 1; "
        "a Ray group shrinks to its minReplicas when idle)"),
    "qdrant budget refusing all": (lambda o: _budget(o, "qdrant").update(maxUnavailable=0),
                                   "PodDisruptionBudget/qdrant: maxUnavailable 0 allows no "
                                   "eviction of its 3 pods (StatefulSet/qdrant 3)"),
    "qdrant budget as a percentage": (lambda o: _budget(o, "qdrant").update(
        maxUnavailable="0%"), "maxUnavailable 0% allows no eviction"),
    "qdrant minAvailable 100%": (lambda o: _budget(o, "qdrant").update(
        maxUnavailable=None, minAvailable="100%"), "minAvailable 100% (3 of 3) is not below 3"),
    "percentage on Ray pods": (lambda o: _budget(o, "papersearch-gateway").update(
        minAvailable="50%"), "which a RayCluster owns without a scale subresource"),
    "maxUnavailable on Ray pods": (lambda o: _budget(o, "papersearch-workers").update(
        minAvailable=None, maxUnavailable=1), "give an integer minAvailable"),
    "budget of the ingest Job": (lambda o: _budget(o, "qdrant").update(selector={
        "matchLabels": {"app.kubernetes.io/component": "ingest"}}),
        "selects pods of Job/papersearch-ingest, whose number is not fixed"),
    "no count": (lambda o: _budget(o, "qdrant").update(maxUnavailable="one"),
                 "not checked: PodDisruptionBudget/qdrant: 'one' is no count or percentage"),
}


@pytest.mark.parametrize("breakage", sorted(BUDGET_BREAKAGES))
def test_validation_catches_budgets_that_block_drains(rendered: dict[str, Rendered],
                                                      breakage: str) -> None:
    edit, expected = BUDGET_BREAKAGES[breakage]

    def broken(objects: list[dict[str, Any]]) -> None:
        edit(objects)
        for budget in (o["spec"] for o in objects if o["kind"] == "PodDisruptionBudget"):
            for key in [k for k, v in budget.items() if v is None]:  # None: the key removed
                del budget[key]

    errors = consistency.all_errors(_broken(rendered["prod"], broken), ROOT)
    [error] = [e for e in errors if e.startswith("disruption budgets: ")]  # that budget's only
    assert expected in error


@pytest.mark.parametrize(("spec", "allowed"), [
    ({"maxUnavailable": 1}, True),
    ({"maxUnavailable": "34%"}, True),  # of 3, rounded up as Kubernetes does: 2
    ({"minAvailable": 2}, True),
    ({"minAvailable": "67%"}, False),  # 3 of 3
    ({"minAvailable": "66%"}, True),  # 2 of 3
    ({"minAvailable": 0}, True),  # protects nothing, refuses nothing
])
def test_budget_percentages_are_rounded_as_kubernetes_does(
        rendered: dict[str, Rendered], spec: dict[str, Any], allowed: bool) -> None:
    def budget(objects: list[dict[str, Any]]) -> None:
        qdrant = _budget(objects, "qdrant")
        qdrant.pop("maxUnavailable")
        qdrant.update(spec)

    errors = consistency.check_disruption_budgets(_broken(rendered["prod"], budget))
    assert (errors == []) is allowed, errors


def _worker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    group = next(g for g in _ray_service(objects)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
                 if g["groupName"] == "workers")
    return group["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("breakage", sorted(DRAIN_BREAKAGES))
def test_validation_catches_drain_breakage(rendered: dict[str, Rendered], breakage: str) -> None:
    edit, expected = DRAIN_BREAKAGES[breakage]
    result = check.validate(_broken(rendered["prod"], edit), ROOT)
    assert any(expected in error for error in result.errors), result.errors


def test_serve_schema_rejects_invalid_values() -> None:
    text = SOURCE.read_text().replace("num_replicas: 1\n", "num_replicas: -1\n", 1)
    assert text != SOURCE.read_text()
    assert serve_config_errors(text)
    assert serve_config_errors("applications: 3")


def test_compose_gives_qdrant_its_volumes_before_it_starts() -> None:
    """Docker makes a new named volume root's (the qdrant image has no storage folders to
    copy ownership from), and Qdrant runs as 10001: it could not write its storage. A
    one-off service with only CAP_CHOWN hands each of its volumes to that user first."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    qdrant, init = services["qdrant"], services["qdrant-volumes"]
    assert qdrant["depends_on"]["qdrant-volumes"] == {
        "condition": "service_completed_successfully"}
    assert init["volumes"] == qdrant["volumes"] and init["image"] == qdrant["image"]
    owner, *paths = init["entrypoint"][1:]
    assert init["entrypoint"][0] == "chown" and owner == qdrant["user"]
    assert sorted(paths) == sorted(v.split(":")[1] for v in qdrant["volumes"])
    assert (init["cap_drop"], init["cap_add"]) == (["ALL"], ["CHOWN"])


def test_compose_environment_builds_server_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    samples = {"QDRANT_API_KEY": "k", "PAPERSEARCH_API_KEYS": '["a", "b"]'}
    for name in ("papersearch", "ingest"):
        env = {k: re.sub(r"\$\{(\w+)[^}]*\}", lambda m: samples[m.group(1)], str(v))
               for k, v in compose["services"][name]["environment"].items()}
        assert not [k for k in env if consistency.unknown_setting(k)]
        settings = consistency.settings_from_env(env)
        assert settings.index.backend == "server" and settings.index.api_key is not None
        if name == "papersearch":
            assert settings.serve.grpc_host == "0.0.0.0"
            assert [k.get_secret_value() for k in settings.serve.api_keys] == ["a", "b"]


def test_load_objects_skips_empty_documents() -> None:
    assert load_objects("---\n---\nkind: A\n") == [{"kind": "A"}]


# -- the policy scan -----------------------------------------------------------------------

def test_exceptions_reconcile() -> None:
    """Each pattern of an exception must still accept a failure: an unused one is stale even
    where another pattern of the same exception is in use."""
    accepted = policy.Exception_("CKV_1", ("dev: Pod.*.a", "prod: Pod.*.a"), "because")
    stale = policy.Exception_("CKV_2", ("*",), "no longer true")
    findings = [policy.Finding("CKV_1", "dev: Pod.ns.a", "x"),
                policy.Finding("CKV_3", "dev: Pod.ns.a", "y")]
    report = policy.reconcile(findings, [accepted, stale])
    assert [f.check for f, _ in report.accepted] == ["CKV_1"]
    assert [f.check for f in report.unexplained] == ["CKV_3"]
    assert report.stale == [(accepted, "prod: Pod.*.a"), (stale, "*")] and not report.ok
    assert "STALE exception CKV_1 'prod: Pod.*.a'" in report.summary()


def test_every_exception_has_a_reason() -> None:
    exceptions = policy.load_exceptions(ROOT / policy.EXCEPTIONS)
    assert exceptions and all(len(e.reason) > 40 for e in exceptions)


@pytest.mark.slow
def test_policy_scan_has_no_unexplained_failure(rendered: dict[str, Rendered]) -> None:
    report = policy.scan(ROOT, [r for n, r in rendered.items() if n != "base"])
    print(report.summary())
    assert report.passed > 500
    assert report.ok, report.summary()


@pytest.mark.slow
def test_policy_scan_reports_a_new_failure(rendered: dict[str, Rendered]) -> None:
    def privileged(objects: list[dict[str, Any]]) -> None:
        container = _first(objects, "Job")["spec"]["template"]["spec"]["containers"][0]
        container["securityContext"]["privileged"] = True

    report = policy.scan(ROOT, [_broken(rendered["dev"], privileged)])
    assert any(f.check == "CKV_K8S_16" and "papersearch-ingest" in f.resource
               for f in report.unexplained), report.summary()


def test_every_overlay_sets_the_controller_loop_interval_of_the_settings(
        rendered: dict[str, Rendered]) -> None:
    from papersearch.serving.launcher import CONTROL_LOOP_ENV
    from papersearch.settings import ServeSettings

    for item in rendered.values():
        data = item.one("ConfigMap", _env_name(item))["data"]
        assert float(data[CONTROL_LOOP_ENV]) == ServeSettings().control_loop_interval_s


def test_the_image_model_build_has_the_default_training_corpora() -> None:
    """MODELS=build trains the reranker from training.corpora's defaults (paths under
    ../shared, from /build/app): the Dockerfile copies each of them to /build/shared."""
    from papersearch.settings import TrainingSettings

    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY --from=shared (\S+) /build/shared/\1$", dockerfile, re.M))
    wanted = {path.as_posix().removeprefix("../shared/")
              for path in TrainingSettings().corpora if path.as_posix().startswith("../shared/")}
    missing = {w for w in wanted if not any(w == c or w.startswith(c + "/") for c in copied)}
    assert wanted and not missing, missing


def test_the_image_installs_the_lock() -> None:
    """The image resolved every range afresh (newest ray, grpcio-tools, onnxruntime), not the
    locked versions the tests ran: each install of papersearch, and the stubs' build, is
    constrained by requirements/constraints.txt, which the build context includes."""
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    installs = re.findall(r"pip (?:install|wheel) [^\n]*papersearch[^\n]*|pip wheel [^\n]*",
                          dockerfile)
    assert len(installs) >= 3 and all("constraint" in line or "-c " in line
                                      for line in installs), installs
    assert "COPY requirements/constraints.txt /constraints.txt" in dockerfile
    assert "!requirements/constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.mark.parametrize(("resources", "cpus"), [
    ({"limits": {"cpu": "4"}, "requests": {"cpu": "2"}}, 4.0),
    ({"limits": {"cpu": "1500m"}}, 2.0),  # KubeRay's Quantity.Value() rounds up
    ({"requests": {"cpu": "3"}}, 3.0),  # no limit: the request
    ({}, 0.0),
])
def test_ray_cpus_of_a_pod_are_what_kuberay_starts_it_with(
    resources: dict[str, Any], cpus: float,
) -> None:
    from papersearch.k8s.pods import ray_resources

    assert ray_resources({}, {"resources": resources}) == {"CPU": cpus}
    assert ray_resources({"rayStartParams": {"num-cpus": "0"}},
                         {"resources": resources}) == {"CPU": 0.0}


def test_the_serve_config_is_deployed_under_serve_app_name_with_overrides_merged(
    tmp_path: Path,
) -> None:
    """`papersearch serve` deployed the YAML's own app name and then waited for
    serve.app_name (300 s, then stopped the app that ran); drain, migrate and the load test
    look it up by that name too. Settings overrides replaced a section of the file's
    args.settings whole (an override of serve.http_port dropped serve.api_keys)."""
    from papersearch.serving.launcher import load_config

    source = yaml.safe_load((ROOT / "deploy" / "serve" / "papersearch.yaml").read_text())
    (app,) = source["applications"]
    app["args"] = {"settings": {"serve": {"grpc_port": 6000, "api_keys": ["k1"]}}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(source))
    config = load_config(path, tmp_path, {"serve": {"http_port": None}}, app_name="search-prod")
    (deployed,) = config.applications
    assert deployed.name == "search-prod"
    assert deployed.args["settings"] == {
        "serve": {"grpc_port": 6000, "api_keys": ["k1"], "http_port": None}}
    source["applications"].append({**app, "name": "other", "route_prefix": "/other"})
    path.write_text(yaml.safe_dump(source))
    with pytest.raises(ValueError, match="no application named 'search-prod'"):
        load_config(path, tmp_path, app_name="search-prod")


def test_missing_serve_config_names_the_setting_and_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relative serve.serve_config is read from the working directory: an installed
    papersearch started outside the repository was told only that the file did not exist."""
    from papersearch.serving.launcher import load_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as relative:
        load_config(Path("deploy/serve/papersearch.yaml"), tmp_path)
    assert f"relative to the working directory {tmp_path}" in str(relative.value)
    assert "PAPERSEARCH_SERVE__SERVE_CONFIG" in str(relative.value)
    with pytest.raises(FileNotFoundError) as absolute:
        load_config(tmp_path / "missing.yaml", tmp_path)
    assert "working directory" not in str(absolute.value)
