"""`papersearch serve`: a local Ray instance, the Serve config deployed on it, until stopped.

Deploys the same Serve config YAML that `serve run`/`serve deploy` and the RayService use (via
the deploy path `serve run` itself takes), with ``args.base_dir`` set so replicas resolve the
model repository and index paths the same way as this process.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from papersearch import interrupts
from papersearch.interrupts import Interrupted
from papersearch.local_ray import use_local_ray_env
from papersearch.logs import route_library_logs
from papersearch.settings import ServeSettings, Settings

log = logging.getLogger(__name__)

CONTROL_LOOP_ENV = "RAY_SERVE_CONTROL_LOOP_INTERVAL_S"  # serve.control_loop_interval_s
# a drain's wait past its notice and grace: the HTTP front's stop (at most 2 s), the gRPC
# server's (1 s), and the index's close (the embedded shard flushed)
DRAIN_CLOSE_S = 15.0


def load_config(
    path: Path,
    base_dir: Path,
    overrides: dict[str, Any] | None = None,
    deployment_options: dict[str, dict[str, Any]] | None = None,
    config_overrides: dict[str, Any] | None = None,
    app_name: str | None = None,
) -> Any:
    """The Serve config with ``args.base_dir`` (and optional settings overrides, merged key by
    key into the file's) filled in, per-deployment options (by deployment name) and top-level
    keys laid over the file's; its one application named ``app_name`` (serve.app_name, which
    drain, migrate and the load test look it up by), or, of several, one must be."""
    from ray.serve.schema import ServeDeploySchema

    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(
            f"Serve config {path} does not exist{where}: serve.serve_config names it "
            "(PAPERSEARCH_SERVE__SERVE_CONFIG); the default is the repository's "
            "deploy/serve/papersearch.yaml, read from the repository root")
    config = yaml.safe_load(path.read_text()) | (config_overrides or {})
    apps = config.get("applications", [])
    if app_name is not None and len(apps) == 1:
        apps[0]["name"] = app_name
    elif app_name is not None and all(app.get("name") != app_name for app in apps):
        raise ValueError(f"Serve config {path} has no application named {app_name!r} "
                         "(serve.app_name)")
    for app in apps:
        args = app.setdefault("args", {})
        args["base_dir"] = str(base_dir.resolve())
        if overrides:
            args["settings"] = merged(args.get("settings", {}), overrides)
        for deployment in app.get("deployments", []):
            deployment.update((deployment_options or {}).get(deployment["name"], {}))
    return ServeDeploySchema.model_validate(config)


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base`` key by key, into nested mappings (a None is a value): an
    override of one setting (serve.http_port) keeps the others of its section
    (serve.api_keys)."""
    out = dict(base)
    for key, value in over.items():
        inner = out.get(key)
        out[key] = (merged(inner, value) if isinstance(inner, Mapping)
                    and isinstance(value, Mapping) else value)
    return out


def banner(serve: ServeSettings) -> str:
    """What a started service says: where it serves and commands to try, over TLS where it
    serves TLS (the plaintext ones failed there with "Socket closed", no hint)."""
    target = f"{serve.grpc_host}:{serve.grpc_port}"
    tls = ("" if serve.tls_cert_file is None else " --ca CA.pem"
           + (" --cert CLIENT.pem --key CLIENT.key" if serve.tls_client_ca_file else ""))
    scheme = "http" if serve.tls_cert_file is None else "https"
    web = ("" if serve.http_port is None else
           f"HTTP/JSON and the search page: {scheme}://{serve.grpc_host}:{serve.http_port}/\n")
    about_tls = ("" if not tls else "(CA.pem: the CA that signed serve.tls_cert_file, or --tls "
                 "alone for a public one" + (", and a client certificate it accepts" if
                                              serve.tls_client_ca_file else "") + ")\n")
    return (f"papersearch is serving gRPC on {target} (Ctrl-C stops it). Try:\n"
            f'  papersearch search "graph neural networks" --target {target}{tls}\n'
            f"  papersearch loadtest --target {target}{tls} --rate 5 --duration 30\n"
            f"{about_tls}{web}"
            f"Metrics: http://127.0.0.1:{serve.metrics_port}/metrics  Serve status: "
            f"http://{serve.dashboard_host}:{serve.dashboard_port}/api/serve/applications/")


def start(
    settings: Settings, *, num_cpus: int | None = None, temp_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    deployment_options: dict[str, dict[str, Any]] | None = None,
    config_overrides: dict[str, Any] | None = None, timeout_s: float = 300.0,
) -> None:
    """Start Ray (if needed) and deploy the app; return once it is RUNNING.

    ``overrides`` (a JSON-able nested mapping of settings) reach every replica through the
    config's ``args.settings``; otherwise replicas read the same PAPERSEARCH_* environment.
    """
    from papersearch.gateway.tls import check_tls

    settings.serve.check_access()  # before Ray starts: the gateway replica would refuse too
    check_tls(settings.serve)
    use_local_ray_env()  # read when Ray is imported: set first
    # the Serve controller (a process of the Ray instance started below) reads it at import
    os.environ[CONTROL_LOOP_ENV] = str(settings.serve.control_loop_interval_s)
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions

    route_library_logs()  # Ray's and Serve's console handlers, installed at their import
    config = load_config(settings.serve.serve_config, Path.cwd(), overrides, deployment_options,
                         config_overrides, settings.serve.app_name)
    started_ray = not ray.is_initialized()
    if started_ray:
        # The dashboard serves Serve's status API (replica counts for the load test); the
        # metrics port exports Prometheus metrics (papersearch.telemetry).
        init_keeping_signals(num_cpus=num_cpus, namespace="serve",
                             _node_ip_address=settings.serve.ray_node_ip or None,
                             include_dashboard=True,
                             dashboard_host=settings.serve.dashboard_host,
                             dashboard_port=settings.serve.dashboard_port,
                             _metrics_export_port=settings.serve.metrics_port,
                             _temp_dir=str(temp_dir) if temp_dir else None)
    try:
        client = serve_api.serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
        )
        client.deploy_apps(config)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = serve.status().applications.get(settings.serve.app_name)
            if status is not None and status.status == "RUNNING":
                log.info("serve app running", extra={"app": settings.serve.app_name})
                return
            if status is not None and status.status == "DEPLOY_FAILED":
                raise RuntimeError(f"Serve app failed to deploy: {status.message}")
            time.sleep(1.0)
        raise TimeoutError(f"Serve app not RUNNING after {timeout_s:.0f} s")
    except BaseException:
        if started_ray:  # not left running (its ports, processes, temp dir) for a later start
            stop()
        raise


def drain(settings: Settings) -> None:
    """Drain the gateway (readiness NOT_SERVING, new calls refused, calls in flight finish
    within serve.drain_grace_s; gateway/server.py); returns when it has, or gave up."""
    from ray import serve

    started = time.monotonic()
    handle = serve.get_deployment_handle("Gateway", settings.serve.app_name)
    try:
        handle.drain.remote().result(  # then the HTTP front's stop and the index's close
            timeout_s=settings.serve.drain_notice_s + settings.serve.drain_grace_s
            + DRAIN_CLOSE_S)
    except Exception as error:  # noqa: BLE001 (shutting down regardless)
        log.warning("drain did not finish cleanly", extra={"reason": repr(error)[:300]})
    else:
        log.info("gateway drained", extra={"seconds": round(time.monotonic() - started, 3)})


def migrate(settings: Settings, action: str, embedder: str | None,
            timeout_s: float) -> dict[str, Any]:
    """One embedder migration step in the running app's gateway (pipeline/migration.py), on
    the Ray cluster this process is connected to. The migration mirrors writes inside one
    gateway, so it runs only while the Gateway deployment has exactly one replica."""
    from ray import serve

    route_library_logs()  # Serve's console handler, installed at its import
    app = serve.status().applications.get(settings.serve.app_name)
    if app is None or "Gateway" not in app.deployments:
        raise ValueError(f"no Serve app {settings.serve.app_name!r} with a Gateway on this Ray "
                         "cluster: start the service (`papersearch serve`) first")
    from ray.serve.schema import ReplicaState

    running = app.deployments["Gateway"].replica_states.get(ReplicaState.RUNNING, 0)
    if running != 1:
        raise ValueError(f"the Gateway deployment has {running} running replicas: a migration "
                         "mirrors writes inside one gateway, so run it with one replica")
    handle = serve.get_deployment_handle("Gateway", settings.serve.app_name)
    report: dict[str, Any] = handle.migrate.remote(action, embedder).result(timeout_s=timeout_s)
    if "error" in report:
        raise ValueError(f"migration {action}: {report['error']}")
    return report


def init_keeping_signals(**options: Any) -> None:
    """``ray.init(**options)`` keeping this process's signal handlers: it installs a SIGTERM
    handler that exits at once, so a SIGTERM during the deploy that follows (minutes) skipped
    `serve`'s drain."""
    import ray

    with interrupts.handlers_kept():
        ray.init(**options)


def stop() -> None:
    """Take the local Ray instance down with everything on it. Serve's own graceful shutdown is
    skipped: with the Serve config's request-path settings its controller waited 30-60 s for
    the replicas here, and the instance goes away whole anyway."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def serve_forever(settings: Settings) -> None:
    """Start everything, print how to query it, and shut down cleanly on Ctrl-C/SIGTERM: the
    gateway drains first (calls in flight finish), then Ray goes down; ``Interrupted`` is
    raised once everything is."""
    # Both stop cleanly, also when started in the background (where SIGINT starts ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    running = False
    try:
        start(settings, num_cpus=settings.serve.num_cpus)
        running = True
        print(banner(settings.serve), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut it short
            signal.signal(signum, signal.SIG_IGN)
        log.info("shutting down")
        if running:
            drain(settings)
        raise Interrupted("serve: stopped; Ray and the Serve app are down") from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        stop()
