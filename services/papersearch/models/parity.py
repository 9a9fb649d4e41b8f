"""How far an int8 graph may drift from its fp32 graph, judged the same way at export and load.

Export records fp32 reference outputs for a few fixed inputs in the manifest (the self-check).
A runtime asked for int8 runs those inputs through the int8 graph on *its* CPU: int8 kernels
differ between CPUs (AVX2 without VNNI multiplies with a saturating instruction where VNNI does
not), so a graph that agreed where it was exported can disagree where it is served. Below the
export threshold the runtime serves fp32 instead and says so.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from papersearch.models.manifest import ModelKind

INT8_MIN_AGREEMENT = 0.98
SELF_CHECK_INPUTS = 8  # texts for embedders; twice as many (query, passage) pairs for rerankers
# x86 flags that decide which int8 kernels onnxruntime runs; reported beside the self-check.
INT8_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")

ModelInput = str | tuple[str, str]


def agreement(kind: ModelKind, reference: np.ndarray, outputs: np.ndarray) -> float:
    """Embedders: the lowest cosine between matching rows. Rerankers: Pearson r of the scores
    (a cross-encoder's ranking is what matters, not its logit scale). 0 where nothing can
    agree: a non-finite value (NaN, inf) on either side, or constant scores."""
    if not (np.isfinite(reference).all() and np.isfinite(outputs).all()):
        return 0.0
    if kind == "embedder":
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(outputs, axis=1)
        return float((np.sum(reference * outputs, axis=1) / np.maximum(norms, 1e-12)).min())
    if np.ptp(reference) == 0 or np.ptp(outputs) == 0:
        return 0.0
    return float(np.corrcoef(reference.ravel(), outputs.ravel())[0, 1])


@dataclass(frozen=True, slots=True)
class SelfCheck:
    """Fixed model inputs and the fp32 graph's outputs for them, as stored in a manifest."""

    inputs: tuple[ModelInput, ...]
    reference: np.ndarray  # (len(inputs), width) float32
    threshold: float = INT8_MIN_AGREEMENT

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [list(i) if isinstance(i, tuple) else i for i in self.inputs],
            "reference": np.round(self.reference.astype(np.float64), 7).tolist(),
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelfCheck:
        inputs = tuple(tuple(i) if isinstance(i, list) else i for i in data["inputs"])
        return cls(inputs, np.asarray(data["reference"], dtype=np.float32), data["threshold"])


def self_check_inputs(kind: ModelKind, inputs: Sequence[ModelInput]) -> list[ModelInput]:
    """The first parity inputs; for rerankers matching and non-matching pairs alike."""
    if kind == "embedder":
        return list(inputs[:SELF_CHECK_INPUTS])
    half = len(inputs) // 2  # parity pairs: matching ones first, then shifted ones
    return list(inputs[:SELF_CHECK_INPUTS]) + list(inputs[half : half + SELF_CHECK_INPUTS])


@functools.cache
def cpu_int8_flags() -> tuple[str, ...]:
    """The int8-relevant instruction set extensions this CPU reports (Linux /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return ()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in INT8_CPU_FLAGS if f in flags)
    return ()
