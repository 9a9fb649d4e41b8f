"""Fine-tune the default cross-encoder reranker with weak supervision (torch; export side only).

Initialised from the bundled MiniLM weights with a fresh one-logit head. Each step takes a group
of (title, own abstract, k mined negatives) and applies a listwise softmax cross-entropy over
the k+1 logits, so the positive must outscore its hard negatives. Seeded and deterministic; the
checkpoint is cached under the model cache keyed by everything that affects it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from papersearch.reranker.mining import TrainingExample
from papersearch.settings import TrainingSettings

log = logging.getLogger(__name__)

DONE_MARKER = "training.json"
HEAD_PREFIXES = ("classifier", "bert.pooler")


def checkpoint_key(
    base_dir: Path, examples: Sequence[TrainingExample], cfg: TrainingSettings
) -> str:
    digest = hashlib.sha256()
    digest.update((base_dir / "config.json").read_bytes())
    digest.update(cfg.model_dump_json(exclude={"corpora", "torch_threads"}).encode())
    for example in examples:
        digest.update(json.dumps(asdict(example)).encode())
    return digest.hexdigest()[:16]


def train(
    base_dir: Path, examples: Sequence[TrainingExample], cfg: TrainingSettings, cache_dir: Path
) -> Path:
    """Train (or reuse) a checkpoint; return its Hugging Face format directory."""
    if not examples:
        raise ValueError("no training examples: the training corpora gave no usable pairs")
    target = cache_dir / "reranker-checkpoints" / checkpoint_key(base_dir, examples, cfg)
    if (target / DONE_MARKER).is_file():
        log.info("reranker checkpoint cached", extra={"path": str(target)})
        return target
    _seed_everything(cfg.seed, cfg.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, local_files_only=True
    )
    model.train()
    groups_per_step = max(1, cfg.batch_size // (cfg.negatives_per_query + 1))
    steps = cfg.epochs * ((len(examples) + groups_per_step - 1) // groups_per_step)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup + 1)))
    )
    order = list(range(len(examples)))
    rng = random.Random(cfg.seed)
    losses: list[float] = []
    with tqdm(total=steps, desc="train reranker", unit="step") as bar:
        for _ in range(cfg.epochs):
            rng.shuffle(order)
            for start in range(0, len(order), groups_per_step):
                group = [examples[i] for i in order[start : start + groups_per_step]]
                loss = _step(model, tokenizer, group, cfg.max_length)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(float(loss))
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
                bar.update()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    summary = {"examples": len(examples), "steps": steps, "final_loss": np.mean(losses[-50:]),
               **cfg.model_dump(mode="json")}
    (partial / DONE_MARKER).write_text(json.dumps(summary, indent=2, default=str))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    log.info("reranker trained", extra={"path": str(target), "steps": steps,
                                        "final_loss": round(float(summary["final_loss"]), 4)})
    return target


def _param_groups(model: torch.nn.Module, cfg: TrainingSettings) -> list[dict[str, object]]:
    """The fresh head (pooler + classifier) learns faster than the pretrained encoder body."""
    head, body = [], []
    for name, parameter in model.named_parameters():
        (head if name.startswith(HEAD_PREFIXES) else body).append(parameter)
    return [
        {"params": body, "lr": cfg.learning_rate},
        {"params": head, "lr": cfg.learning_rate * cfg.head_learning_rate_factor},
    ]


def _step(
    model: torch.nn.Module, tokenizer: object, group: Sequence[TrainingExample], max_length: int
) -> torch.Tensor:
    queries, passages = [], []
    for example in group:
        for passage in (example.positive, *example.negatives):
            queries.append(example.query)
            passages.append(passage)
    batch = tokenizer(  # type: ignore[operator]
        queries, passages, padding=True, truncation="only_second", max_length=max_length,
        return_tensors="pt",
    )
    logits = model(**batch).logits.view(len(group), -1)
    target = torch.zeros(len(group), dtype=torch.long)  # the positive is always first
    return torch.nn.functional.cross_entropy(logits, target)


def _seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
