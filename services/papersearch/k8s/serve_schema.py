"""serveConfigV2 against Ray's own Serve schema, strictly.

KubeRay hands serveConfigV2 to Serve's REST API, which validates it with
``ray.serve.schema.ServeDeploySchema``. That schema ignores keys it does not know, so a typo
(``num_replica: 4``) would deploy silently with the default. Here every key must be a field of
the model it lands in, except inside free-form mappings (``args``, ``runtime_env``, ...);
``autoscaling_config``, a plain mapping in that schema, is checked against Serve's
``AutoscalingConfig`` the same way, and its policy's ``policy_kwargs`` against the signature
of the class Serve builds with them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel


def parse(text: str) -> dict[str, Any]:
    """serveConfigV2 as Serve's REST API would accept it; ValueError says why it would not."""
    from ray.serve.schema import ServeDeploySchema

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not YAML: {error}") from error
    if not isinstance(data, Mapping):
        raise ValueError("not a mapping")
    try:
        ServeDeploySchema.model_validate(data)
    except Exception as error:  # noqa: BLE001 (pydantic's error, whichever flavour)
        raise ValueError(f"ServeDeploySchema: {error}") from error
    return dict(data)


def serve_config_errors(text: str) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    try:
        data = parse(text)
    except ValueError as error:
        return [str(error)]
    return unknown_keys(data, ServeDeploySchema.model_validate(data))


def unknown_keys(data: Any, model: Any, where: str = "") -> list[str]:
    """Keys of ``data`` that are not fields of the parsed ``model``, recursively."""
    if not isinstance(model, BaseModel) or not isinstance(data, Mapping):
        return []
    fields = type(model).model_fields
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    errors: list[str] = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            errors.append(f"{path}: unknown key (Serve would ignore it)")
            continue
        errors.extend(_nested(value, getattr(model, key, None), path))
    return errors


def _nested(value: Any, parsed: Any, path: str) -> list[str]:
    if path.endswith(".autoscaling_config") and isinstance(value, Mapping):
        from ray.serve.config import AutoscalingConfig

        try:
            parsed = AutoscalingConfig.model_validate(value)
        except Exception as error:  # noqa: BLE001
            return [f"{path}: {error}"]
        return unknown_keys(value, parsed, path) + _policy_kwargs_errors(parsed.policy,
                                                                        f"{path}.policy")
    if isinstance(parsed, BaseModel):
        return unknown_keys(value, parsed, path)
    if isinstance(parsed, list | tuple) and isinstance(value, list):
        errors: list[str] = []
        for i, (item, parsed_item) in enumerate(zip(value, parsed, strict=False)):
            errors.extend(_nested(item, parsed_item, f"{path}[{i}]"))
        return errors
    return []


def _policy_kwargs_errors(policy: Any, path: str) -> list[str]:
    """Serve builds a policy class once with ``**policy_kwargs`` (a name its constructor lacks
    raises TypeError at deploy time) and ignores them for a plain function."""
    if not policy.policy_kwargs:
        return []
    built = _imported(str(policy.policy_function))
    if not inspect.isclass(built):
        return [f"{path}.policy_kwargs: {policy.policy_function} is no class (Serve would "
                "ignore them)"]
    try:
        inspect.signature(built).bind(**policy.policy_kwargs)
    except TypeError as error:
        return [f"{path}.policy_kwargs: {error} (Serve would raise it building "
                f"{policy.policy_function})"]
    return []


def _imported(path: str) -> Any:
    """What an import path names, read as Serve reads it: ``module:attr`` or ``module.attr``."""
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return getattr(importlib.import_module(module), name)
