"""The one place that builds the Serve application from settings.

The Serve config (deploy/serve/papersearch.yaml) names ``papersearch.serving.app:build_app``;
``serve run``/``serve deploy``, ``papersearch serve`` and the KubeRay RayService all use it.
Deployment options (replicas, autoscaling, queue limits, CPUs) come from that YAML; settings come
from PAPERSEARCH_* variables / PAPERSEARCH_CONFIG where the app is built, and from ``args``:
``args.settings`` (a nested mapping of overrides) and ``args.base_dir`` (resolves relative paths).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from papersearch.encoder.deployment import QueryEncoderDeployment
from papersearch.gateway.deployment import GatewayDeployment
from papersearch.reranker.deployment import RerankerDeployment
from papersearch.settings import Settings, load_settings, warn_unread_variables


def settings_from_args(args: dict[str, Any]) -> Settings:
    """``args.settings`` over the environment and PAPERSEARCH_CONFIG; ValueError in one line
    naming each invalid setting, as the CLI's (pydantic's own message repeated the values given,
    API keys among them, and named no variable)."""
    settings = load_settings(**args.get("settings", {}))
    warn_unread_variables(os.environ)
    base = args.get("base_dir")
    return absolute_paths(settings, Path(base)) if base else settings


def absolute_paths(settings: Settings, base: Path) -> Settings:
    """Replicas may start in another working directory: pin every relative path to ``base``."""

    def fix(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    models = settings.models.model_copy(
        update={"repository": fix(settings.models.repository),
                "cache_dir": fix(settings.models.cache_dir)}
    )
    index = settings.index.model_copy(update={"data_dir": fix(settings.index.data_dir)})
    serve = settings.serve.model_copy(update={  # the gateway replica reads these
        name: fix(path) for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file",
                                     "drain_file")
        if (path := getattr(settings.serve, name)) is not None})
    return settings.model_copy(update={"models": models, "index": index, "serve": serve,
                                       "corpus_dir": fix(settings.corpus_dir)})


def build_app(args: dict[str, Any]) -> Application:
    settings = settings_from_args(args)
    # serve.deployment turns each class into a Deployment; its type hints keep the class
    encoder = QueryEncoderDeployment.bind(settings)  # type: ignore[attr-defined]
    reranker = RerankerDeployment.bind(settings)  # type: ignore[attr-defined]
    return GatewayDeployment.bind(settings, encoder, reranker)  # type: ignore[attr-defined]
