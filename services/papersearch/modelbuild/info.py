"""`papersearch models info`: each configured model's export and the precision it runs here.

Loading a model with int8 runs its self-check on this CPU (models/parity.py), so the report
says what a replica on this machine would actually serve, not what was exported elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from papersearch.encoder.runtime import Encoder
from papersearch.models.manifest import (
    ModelCorrupt,
    ModelNotFound,
    ProviderUnavailable,
    checked_file,
)
from papersearch.models.parity import SelfCheck, cpu_int8_flags
from papersearch.models.runtime import OnnxModel
from papersearch.reranker.runtime import Reranker
from papersearch.settings import ModelSettings, Settings


def describe(settings: Settings) -> dict[str, Any]:
    """The report; a model whose export is damaged (any file not the one its manifest lists)
    is "damaged", one not exported "missing"."""
    report: dict[str, Any] = {"cpu_int8_flags": list(cpu_int8_flags()),
                              "requested_precision": settings.models.precision}
    loaders: dict[str, Callable[[ModelSettings], OnnxModel]] = {
        "embedder": Encoder.from_settings, "reranker": Reranker.from_settings}
    for kind, load in loaders.items():
        try:
            model: OnnxModel = load(settings.models)
            for file in model.manifest.files:  # the ones this precision does not load too
                checked_file(model.version_dir, model.manifest, file)
        except ModelCorrupt as error:  # there, but not as exported: said apart from missing
            report[kind] = {"damaged": str(error)}
            continue
        except ModelNotFound as error:
            report[kind] = {"missing": str(error)}
            continue
        except (ValueError, ProviderUnavailable) as error:  # there, but not usable here
            report[kind] = {"unusable": str(error)}
            continue
        manifest = model.manifest
        threshold = (SelfCheck.from_dict(manifest.selfcheck).threshold
                     if manifest.selfcheck else None)
        report[kind] = {
            "name": manifest.name, "version": manifest.version,
            "sha256": manifest.sha256[:12],  # as an index built by another embedder names it
            "path": str(model.version_dir),
            "source": manifest.source, "created": manifest.created,
            "quantization": manifest.quantization, "export_parity": manifest.parity,
            "precision": model.precision, "int8_agreement_here": model.int8_agreement,
            "int8_threshold": threshold,
        }
    return report
