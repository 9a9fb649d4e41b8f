"""int8 schemes side by side: agreement with fp32 and speed, for the exported embedder.

    python benchmarks/quantization.py > quantization.json              # quantize, measure
    qemu-x86_64 -cpu Haswell-v4 .venv/bin/python benchmarks/quantization.py --no-speed

Each scheme of papersearch.modelbuild.export.INT8_SCHEMES quantizes the latest exported fp32
embedder graph (once, into --work). On the same real abstracts every scheme reports the lowest
and mean cosine to the fp32 vectors (batches of 16), the lowest cosine between a text's vector
in its batch and encoded alone (activations are quantized per batch), and with --speed the
texts/s at batch 1 and 32 (or all the texts if fewer: one batch of 24 by default; the field
names the batch that ran) on one thread. The STRESS batch is the one that failed on an AVX2
CPU without VNNI. int8 kernels depend on the CPU: the second command
runs the agreement part on an emulated AVX2 CPU without VNNI or AVX-512 (qemu-user; speed
figures under emulation mean nothing, hence --no-speed). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np

from papersearch.corpus.readers import read_corpus
from papersearch.models.manifest import (
    FP32_FILE,
    INT8_FILE,
    MANIFEST,
    TOKENIZER_FILE,
    model_dir,
    sha256_file,
)
from papersearch.models.parity import cpu_int8_flags
from papersearch.models.runtime import OnnxModel, RuntimeOptions
from papersearch.settings import Int8Scheme, Settings

SCHEMES = get_args(Int8Scheme)  # export.INT8_SCHEMES' keys (export imports torch)
# The batch that failed on an AVX2 CPU without VNNI (issue 13): a long repetitive text drives
# activations to the range where full 8-bit u8 x s8 pair sums saturate.
STRESS = ["short", "a much longer text " * 30, "medium length text here"]
BATCH = 32  # the larger speed batch, at most: min(BATCH, texts) ran


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=24, help="abstracts compared")
    parser.add_argument("--alone", type=int, default=6, help="of them, also encoded alone")
    parser.add_argument("--seconds", type=float, default=6.0, help="per speed measurement")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--label", default="",
                        help="what CPU this is (qemu-user shows the host's /proc/cpuinfo flags)")
    parser.add_argument("--work", type=Path, default=Path("build/quantization"),
                        help="one model version folder per scheme (made once)")
    return parser.parse_args(argv)


def prepare(work: Path, settings: Settings) -> dict[str, Path]:
    """A version folder per scheme: the export's fp32 graph, tokenizer and manifest, and the
    scheme's int8 graph. Quantizing needs the export extra; measuring only onnxruntime."""
    source = model_dir(settings.models.repository, settings.models.embedder_name)
    folders = {}
    for scheme in SCHEMES:
        folder = work / source.name / scheme
        if not (folder / INT8_FILE).is_file():
            from papersearch.modelbuild.export import quantize

            folder.mkdir(parents=True, exist_ok=True)
            for name in (FP32_FILE, TOKENIZER_FILE):
                if not (folder / name).exists():
                    os.link(source / name, folder / name)
            quantize(folder / FP32_FILE, folder / (INT8_FILE + ".tmp"), scheme)
            # the manifest lists this scheme's graph: runtimes load only the files listed
            manifest = json.loads((source / MANIFEST).read_text())
            manifest["files"][INT8_FILE] = sha256_file(folder / (INT8_FILE + ".tmp"))
            (folder / MANIFEST).write_text(json.dumps(manifest))
            (folder / (INT8_FILE + ".tmp")).rename(folder / INT8_FILE)
        folders[scheme] = folder
    return folders


def encode(model: OnnxModel, texts: Sequence[str], batch: int) -> np.ndarray:
    return np.vstack([model.outputs(texts[i : i + batch]) for i in range(0, len(texts), batch)])


def texts_per_s(model: OnnxModel, texts: Sequence[str], batch: int, seconds: float) -> float:
    encode(model, texts[:batch], batch)  # warm-up
    started, passes = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        encode(model, texts, batch)
        passes += 1
    return round(passes * len(texts) / (time.perf_counter() - started), 1)


def batches(texts: Sequence[str]) -> tuple[int, ...]:
    """The speed batches: 1 and BATCH, or all the texts where fewer (one pass is one batch)."""
    return tuple(dict.fromkeys((1, min(BATCH, len(texts)))))


def _batch_vs_alone(model: OnnxModel, texts: Sequence[str]) -> float:
    together = model.outputs(texts)
    alone = np.vstack([model.outputs([t]) for t in texts])
    return round(float(np.sum(together * alone, axis=1).min()), 4)


def measure(folder: Path, texts: list[str], args: argparse.Namespace,
            reference: np.ndarray) -> dict[str, Any]:
    # batched as given (not one text per call as served): the batch effects are measured here
    model = OnnxModel(folder, RuntimeOptions("int8", 1, int8_alone=False), verify_int8=False)
    vectors = encode(model, texts, 16)
    alone = np.vstack([model.outputs([t]) for t in texts[: args.alone]])
    cosines = np.sum(vectors * reference, axis=1)
    result: dict[str, Any] = {
        "cosine_to_fp32_min": round(float(cosines.min()), 4),
        "cosine_to_fp32_mean": round(float(cosines.mean()), 4),
        "batch_vs_alone_min": round(float(np.sum(vectors[: args.alone] * alone, 1).min()), 4),
        "stress_batch_vs_alone_min": _batch_vs_alone(model, STRESS),
    }
    if args.speed:
        result |= {f"texts_per_s_batch_{b}": texts_per_s(model, texts, b, args.seconds)
                   for b in batches(texts)}
    return result


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings()
    papers = itertools.islice(read_corpus(settings.corpus_dir), args.texts)
    texts = [p.text for p in papers]
    folders = prepare(args.work, settings)
    fp32 = OnnxModel(folders[SCHEMES[0]], RuntimeOptions("fp32", 1))
    reference = encode(fp32, texts, 16)
    report: dict[str, Any] = {
        "label": args.label, "machine": platform.machine(),
        "cpu_int8_flags": list(cpu_int8_flags()),
        "texts": len(texts), "threads": 1, "schemes": {},
    }
    if args.speed:
        report["fp32"] = {f"texts_per_s_batch_{b}": texts_per_s(fp32, texts, b, args.seconds)
                          for b in batches(texts)}
    for scheme, folder in folders.items():
        report["schemes"][scheme] = measure(folder, texts, args, reference)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
