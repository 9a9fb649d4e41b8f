"""Fine-tune the default cross-encoder reranker with weak supervision (torch; export side only).

Initialised from the bundled MiniLM weights with a fresh one-logit head. Each step takes groups
of (pseudo-query, own passage, k mined negatives) and applies a listwise softmax cross-entropy
over each group's k+1 logits, so the positive must outscore its hard negatives, plus
(``distill_weight``) the KL divergence from the softmax of the group's fused first-stage scores
(at ``distill_temperature``) to the softmax of its logits: score distillation from the first
stage, which also orders the negatives among themselves. Seeded and deterministic; the
checkpoint is cached under the model cache keyed by everything that affects it.

Resumable: every ``checkpoint_every_s`` the whole training state (weights, optimizer, schedule,
RNG states, step, the epoch's order) replaces ``<key>.resume/checkpoint.pt`` atomically, and a
run with the same key continues from it to the same weights as an uninterrupted run. Ctrl-C
stops within a fraction of a step; what was checkpointed stays. A run holds its resume
folder's lock (shared) while it trains and removes the resume folders of other keys whose lock
it can take: left by runs whose settings or examples have changed since, never resumed. A
resume folder goes only under its lock taken exclusively: a run that finishes removes its own
only where no other run of its key still trains (that one removes it when it finishes).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from papersearch import interrupts
from papersearch.durable import exclusive, is_open_file, remove_stale, replaced, staged
from papersearch.interrupts import Interrupted
from papersearch.modelbuild.export import terminal_bars_only
from papersearch.modelbuild.mining import TrainingExample
from papersearch.models.runtime import cut_query, query_tokens
from papersearch.settings import TrainingSettings

log = logging.getLogger(__name__)

DONE_MARKER = "training.json"
RESUME_SUFFIX = ".resume"  # <key>.resume/ holds the latest checkpoint of an unfinished run
CHECKPOINT_FILE = "checkpoint.pt"
RESUME_LOCK = ".lock"  # in <key>.resume/: held by the runs training that key
# How a long query is cut to leave the passage room (_fit): in the key, as it changes the inputs
QUERY_CUT = "token-end"
HEAD_PREFIXES = ("classifier", "bert.pooler")
LOSS_WINDOW = 50  # steps in the running loss shown and recorded
PROBE_PASSES = 2  # throw-away passes timed before training; the first also warms up
# Kept aside from training.time_budget_s for what follows training: publishing the weights, the
# ONNX export, its int8 copy and their checks (the manifest's parity.export_seconds; README, The
# default reranker; the time measured: README, Results, Figures behind the limits):
# EXPORT_RESERVE_S, or the time of EXPORT_RESERVE_STEPS training steps where that is longer.
# The export runs the same torch and onnxruntime work a step does, so it slows down with the
# CPU as the steps do.
EXPORT_RESERVE_S = 90.0
EXPORT_RESERVE_STEPS = 15
# A budget-fitted run fits its step count again on the pace of its own steps 2 to 1 + this (the
# probe leaves the optimizer's step out).
PACED_STEPS = 5
BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
              "[{elapsed}<{remaining}, {rate_inv_fmt}{postfix}]")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: no weights worth exporting follow."""


def checkpoint_key(
    base_dir: Path, examples: Sequence[TrainingExample], cfg: TrainingSettings
) -> str:
    digest = hashlib.sha256()
    digest.update((base_dir / "config.json").read_bytes())
    digest.update(QUERY_CUT.encode())
    # no effect on the weights (torch_threads has: its sums run in another order, so a resume
    # with another count would not end on the uninterrupted run's weights)
    ignored = {"corpora", "checkpoint_every_s"}
    digest.update(cfg.model_dump_json(exclude=ignored).encode())
    for example in examples:
        digest.update(json.dumps(asdict(example)).encode())
    return digest.hexdigest()[:16]


def train(
    base_dir: Path, examples: Sequence[TrainingExample], cfg: TrainingSettings, cache_dir: Path,
    *, probe: bool = True, deadline: float | None = None,
) -> Path:
    """Train (or reuse) a checkpoint; return its Hugging Face format directory.

    Resumes from the last checkpoint of the same key and ends with the same weights as an
    uninterrupted run. ``probe`` times a throw-away step first and logs the estimate.
    ``deadline`` (``time.monotonic()``; ``training.time_budget_s`` from the command's start):
    a fresh run trains only the steps that fit before it, less the export's reserve, by the
    probe's pace and then again by that of its own first steps (PACED_STEPS); a resumed run
    keeps its checkpoint's step count.
    """
    if not examples:
        raise ValueError("no training examples: the training corpora gave no usable pairs")
    target = cache_dir / "reranker-checkpoints" / checkpoint_key(base_dir, examples, cfg)
    resume_dir = target.with_name(target.name + RESUME_SUFFIX)
    if (target / DONE_MARKER).is_file():
        _remove_resume(resume_dir)  # unless a run of this key still trains (it removes it)
        log.info("reranker checkpoint cached", extra={"path": str(target)})
        return target
    with _training(resume_dir):
        _remove_other_resumes(resume_dir)
        return _train(base_dir, examples, cfg, target, resume_dir, probe=probe,
                      deadline=deadline)


def _train(
    base_dir: Path, examples: Sequence[TrainingExample], cfg: TrainingSettings, target: Path,
    resume_dir: Path, *, probe: bool, deadline: float | None,
) -> Path:
    """``train``'s run, its resume folder's lock held."""
    _seed_everything(cfg.seed, cfg.torch_threads)
    terminal_bars_only()  # transformers' as the training's own (disable=None below)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, local_files_only=True
    )
    model.train()
    groups_per_step = max(1, cfg.batch_size // (cfg.negatives_per_query + 1))
    steps_per_epoch = (len(examples) + groups_per_step - 1) // groups_per_step
    all_steps = cfg.epochs * steps_per_epoch
    saved = _read_checkpoint(resume_dir)
    # Hooks on the parameters: Python runs during backward, so Ctrl-C interrupts it there
    # instead of after the whole backward pass (seconds on a slow CPU).
    hooks = [p.register_hook(_interruptible) for p in model.parameters() if p.requires_grad]
    first = saved["step"] if saved is not None else 0  # the step this run starts at
    checkpointed = first
    plan = _Plan.of(saved) if saved is not None else _Plan(all_steps)
    # a resumed run keeps its checkpoint's plan
    pace = _Pace(deadline, all_steps) if deadline is not None and saved is None else None
    try:
        if probe or pace is not None:
            per_step = _probe(model, tokenizer, examples[:groups_per_step], cfg)
            if pace is not None:
                plan = _Plan(pace.first(per_step))
            if probe:  # a log record: it was printed, outside the log's format and level
                log.info(_estimate(first, plan.steps, per_step, all_steps), extra={
                    "step": first, "steps": plan.steps, "steps_without_budget": all_steps,
                    "s_per_step": round(per_step, 2),
                    "eta_s": round((plan.steps - first) * per_step)})
        optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: plan.factor(s))
        order = list(range(len(examples)))
        rng = random.Random(cfg.seed)
        losses: list[float] = []
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            order, losses = saved["order"], saved["losses"]
            rng.setstate(saved["rng"])
            torch.set_rng_state(saved["torch_rng"])
            log.info("reranker training resumed", extra={"path": str(resume_dir), "step": first})
        last_save = time.monotonic()
        with tqdm(total=plan.steps, initial=first, desc="train reranker", unit="step",
                  bar_format=BAR_FORMAT, disable=None) as bar:  # none in a log file
            step = first
            while step < plan.steps:
                if step % steps_per_epoch == 0:
                    rng.shuffle(order)
                start = (step % steps_per_epoch) * groups_per_step
                group = [examples[i] for i in order[start : start + groups_per_step]]
                loss = _step(model, tokenizer, group, cfg)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"train-reranker diverged at step {step + 1:,} (loss {loss.item()}): "
                        "lower training.learning_rate; checkpoints before it stay")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                del losses[:-LOSS_WINDOW]
                bar.set_postfix(loss=f"{np.mean(losses):.3f}")
                bar.update()
                step += 1
                if pace is not None and (refit := pace.after(step, plan.steps)) != plan.steps:
                    plan.steps = bar.total = refit  # the warm-up stays as begun
                    bar.refresh()
                # a budgeted run's plan is final once its own pace refitted it: a checkpoint
                # before that held the probe's count, and a resumed run (which keeps its
                # checkpoint's plan) trained another number of steps, to other weights
                if (step < plan.steps and (pace is None or step >= 1 + PACED_STEPS)
                        and time.monotonic() - last_save >= cfg.checkpoint_every_s):
                    # a checkpoint and its count go together: Ctrl-C as the save returned said
                    # "no checkpoint yet" with one on disk
                    with interrupts.held():
                        _save_checkpoint(resume_dir, {
                            "step": step, **asdict(plan), "order": order,
                            "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                            "losses": losses, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(),
                        })
                        checkpointed, last_save = step, time.monotonic()
    except KeyboardInterrupt:
        kept = (f"{checkpointed:,} of {plan.steps:,} steps checkpointed; run again to resume"
                if checkpointed else "no checkpoint yet; run again to start over")
        raise Interrupted(f"train-reranker: {kept}") from None
    finally:
        for hook in hooks:
            hook.remove()
    summary = {"examples": len(examples), "steps": plan.steps, "steps_without_budget": all_steps,
               "final_loss": float(np.mean(losses)), **cfg.model_dump(mode="json")}
    _publish(target, model, tokenizer, summary)  # _training then removes resume_dir
    log.info("reranker trained", extra={"path": str(target), "steps": plan.steps,
                                        "final_loss": round(summary["final_loss"], 4)})
    return target


@contextmanager
def _training(resume_dir: Path) -> Iterator[None]:
    """Hold ``resume_dir``'s lock (made if absent; shared: runs of one key ran side by side
    before it and still do) while this run trains: a resume folder is removed only under its
    lock taken exclusively (_remove_locked), so it stays while this run holds it. Taken again
    where the folder was removed between the lock file's open and the lock. A run that
    finishes (the block ends without an exception; one that fails keeps its checkpoint to
    resume from) removes the folder, unless another run of the key still trains: that run
    removes it when it finishes (the first of two same-key runs to finish removed it, lock
    file included, and another key's run then removed the second's checkpoint mid-training)."""
    lock = resume_dir / RESUME_LOCK
    while True:
        resume_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = lock.open("a")
        except FileNotFoundError:  # removed meanwhile by another key's run
            continue
        with handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            if is_open_file(handle.fileno(), lock):
                yield
                # the lock held shared converted to exclusive, without waiting: no deadlock
                # with another run doing the same, and as a refused conversion drops this
                # run's shared lock, of two runs finishing at once the later removes it
                _remove_locked(resume_dir, handle)
                return


def _remove_other_resumes(resume_dir: Path) -> None:
    """Remove the resume folders of keys other than ``resume_dir``'s that no run trains now
    (their lock free): a change of settings or examples gives another key, so they were never
    resumed and stayed for good (the whole training state, ~260 MB each)."""
    for other in sorted(resume_dir.parent.glob("*" + RESUME_SUFFIX)):
        if other == resume_dir or not other.is_dir():
            continue
        size = _remove_resume(other)
        if size is not None:
            log.info("another key's resume checkpoint removed",
                     extra={"path": str(other), "bytes": size})


def _remove_resume(resume_dir: Path) -> int | None:
    """Remove ``resume_dir`` unless a run of its key trains now (holds its lock): its size in
    bytes, None where it stays (or is not there, or not this user's to remove)."""
    try:
        handle = (resume_dir / RESUME_LOCK).open("a")
    except OSError:  # not there (removed meanwhile), or not this user's
        return None
    with handle:
        return _remove_locked(resume_dir, handle)


def _remove_locked(resume_dir: Path, handle: IO[str]) -> int | None:
    """Remove ``resume_dir`` if ``handle`` (its lock file, open) takes the lock exclusively
    without waiting, and is still the folder's lock file: its size in bytes; else None.
    Where ``handle`` holds the lock shared, flock converts it; on Linux a conversion refused
    (another run holds it shared) drops the shared lock too, so call it only when done."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a run of its key trains now
        return None
    if not is_open_file(handle.fileno(), resume_dir / RESUME_LOCK):  # removed (and made again)
        return None
    size = sum(f.stat().st_size for f in resume_dir.rglob("*") if f.is_file())
    shutil.rmtree(resume_dir, ignore_errors=True)
    return size


def _publish(
    target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    summary: dict[str, Any],
) -> None:
    """Write the trained model beside ``target`` and rename it into place: all or nothing.
    A copy left by a publish killed mid-way (a whole model's size) is removed first."""
    with exclusive(target.parent / f".{target.name}.lock", f"publishing {target.name}"):
        remove_stale(target.parent, target.name)
        with staged(target, replace=True) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / DONE_MARKER).write_text(json.dumps(summary, indent=2, default=str))


def _interruptible(grad: torch.Tensor) -> None:
    """A parameter hook that does nothing: calling it lets Python handle a pending Ctrl-C."""


def _probe(
    model: torch.nn.Module, tokenizer: object, group: Sequence[TrainingExample],
    cfg: TrainingSettings,
) -> float:
    """Seconds per step, from throw-away forward + backward passes on one group (the last one
    counts: the first also warms up). The torch RNG (dropout) is restored and the gradients
    dropped, so the trained weights do not change."""
    rng_state = torch.get_rng_state()
    try:
        for _ in range(PROBE_PASSES):
            started = time.perf_counter()
            _step(model, tokenizer, group, cfg).backward()
            seconds = time.perf_counter() - started
            model.zero_grad(set_to_none=True)
    finally:
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng_state)
    return seconds


def export_reserve(per_step: float) -> float:
    """Seconds kept aside for what follows training on a CPU that takes ``per_step`` seconds
    per step."""
    return max(EXPORT_RESERVE_S, EXPORT_RESERVE_STEPS * per_step)


def fit_steps(all_steps: int, per_step: float, seconds_left: float) -> int:
    """How many of ``all_steps`` steps of ``per_step`` seconds fit in ``seconds_left``, less
    the export's reserve (0 to ``all_steps``)."""
    left = seconds_left - export_reserve(per_step)
    return min(all_steps, int(max(0.0, left) // per_step))


@dataclass(slots=True)
class _Plan:
    """A run's step count and learning-rate factor: linear warm-up over the first tenth of the
    steps planned at the start, then linear decay to zero at ``steps``."""

    steps: int
    warmup: int = 0  # 0: a tenth of steps (at least 1)

    def __post_init__(self) -> None:
        self.warmup = self.warmup or max(1, self.steps // 10)

    @classmethod
    def of(cls, saved: dict[str, Any]) -> _Plan:
        """A checkpoint's (one from before budgets has no warm-up saved: a tenth, as then)."""
        return cls(saved["steps"], saved.get("warmup", 0))

    def factor(self, step: int) -> float:
        # (a budget refit may leave fewer steps than the warm-up: it then ends still warming)
        decay = max(1, self.steps - self.warmup + 1)
        return min((step + 1) / self.warmup, max(0.0, (self.steps - step) / decay))


@dataclass(slots=True)
class _Pace:
    """Fits a fresh run's step count to ``deadline`` (training.time_budget_s): first by the
    probe's seconds per step, then again by the pace of the run's own steps 2 to
    1 + PACED_STEPS (the probe leaves the optimizer's step out)."""

    deadline: float  # time.monotonic()
    all_steps: int
    since: float = 0.0  # when step 1 ended

    def first(self, per_step: float) -> int:
        left = self.deadline - time.monotonic()
        steps = fit_steps(self.all_steps, per_step, left)
        if steps < 1:
            raise ValueError(
                f"training.time_budget_s leaves {max(0.0, left):.0f} s after mining, not enough "
                f"for one training step (~{per_step:.1f} s here) and the export "
                f"({export_reserve(per_step):.0f} s kept aside): raise it, or unset it to train "
                f"all {self.all_steps:,} steps")
        return steps

    def after(self, done: int, steps: int) -> int:
        """The step count once ``done`` steps are done (``steps`` so far)."""
        now = time.monotonic()
        if done == 1:
            self.since = now
        elif done == 1 + PACED_STEPS:
            per_step = (now - self.since) / PACED_STEPS
            return done + fit_steps(self.all_steps - done, per_step, self.deadline - now)
        return steps


def _estimate(step: int, steps: int, per_step: float, all_steps: int | None = None) -> str:
    left = steps - step
    where = f"resuming at step {step:,}: {left:,} of {steps:,} steps left" if step else \
        f"{steps:,} steps"
    if all_steps is not None and steps < all_steps:
        where += f" (of {all_steps:,}: what fits training.time_budget_s)"
    return (f"train-reranker: {where}, ~{per_step:.1f} s/step here, about "
            f"{_duration(left * per_step)} (resumes from checkpoints; Ctrl-C is safe)")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _save_checkpoint(resume_dir: Path, state: dict[str, Any]) -> None:
    """Replace the resume checkpoint atomically (durable.replaced). The folder is not made
    here: _training made it and holds its lock, and a resume folder goes only under its lock
    taken exclusively (_remove_locked), so it cannot vanish while this run trains. Made again
    here, it would have held no lock, and another key's run could remove it mid-training."""
    try:
        with replaced(resume_dir / CHECKPOINT_FILE) as f:
            torch.save(state, f)
    except BaseException as error:
        if isinstance(error.__context__, KeyboardInterrupt):  # torch.save's writer, closing
            raise error.__context__ from None  # after Ctrl-C, raises a RuntimeError instead
        raise
    log.debug("reranker checkpoint saved", extra={"path": str(resume_dir), "step": state["step"]})


def _read_checkpoint(resume_dir: Path) -> dict[str, Any] | None:
    """The resume checkpoint's whole training state, if there is one: its step count (fitted
    to a time budget or not) is the run's."""
    path = resume_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu")
    return state


def _param_groups(model: torch.nn.Module, cfg: TrainingSettings) -> list[dict[str, object]]:
    """The fresh head (pooler + classifier) learns faster than the pretrained encoder body."""
    head: list[torch.nn.Parameter] = []
    body: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        (head if name.startswith(HEAD_PREFIXES) else body).append(parameter)
    return [
        {"params": body, "lr": cfg.learning_rate},
        {"params": head, "lr": cfg.learning_rate * cfg.head_learning_rate_factor},
    ]


def _step(
    model: torch.nn.Module, tokenizer: object, group: Sequence[TrainingExample],
    cfg: TrainingSettings,
) -> torch.Tensor:
    queries, passages = [], []
    for example in group:
        query = _fit(tokenizer, example.query, query_tokens(cfg.max_length))
        for passage in (example.positive, *example.negatives):
            queries.append(query)
            passages.append(passage)
    batch = tokenizer(  # type: ignore[operator]
        queries, passages, padding=True, truncation="only_second", max_length=cfg.max_length,
        return_tensors="pt",
    )
    logits = model(**batch).logits.view(len(group), -1)
    target = torch.zeros(len(group), dtype=torch.long)  # the positive is always first
    loss = torch.nn.functional.cross_entropy(logits, target)
    if cfg.distill_weight > 0 and all(example.teacher for example in group):
        loss = loss + cfg.distill_weight * _distillation(logits, group, cfg.distill_temperature)
    return loss


def _fit(tokenizer: object, query: str, tokens: int) -> str:
    """``query`` cut to at most ``tokens`` tokens, so that the passage keeps room (truncation
    cuts only the passage; a claim can be long for a small ``max_length``): at a token's
    end, as the served reranker cuts it (models/runtime.py, cut_query). A cut at a word
    boundary kept other text than serving did for one query in ten."""
    offsets = tokenizer(query, add_special_tokens=False,  # type: ignore[operator]
                        return_offsets_mapping=True)["offset_mapping"]
    return cut_query(query, offsets, tokens)


def _distillation(
    logits: torch.Tensor, group: Sequence[TrainingExample], temperature: float
) -> torch.Tensor:
    """KL(teacher || reranker) per group, averaged: the teacher is the softmax of the fused
    first-stage scores divided by ``temperature``."""
    teacher = torch.tensor([example.teacher for example in group], dtype=logits.dtype)
    return torch.nn.functional.kl_div(
        torch.log_softmax(logits, dim=1), torch.log_softmax(teacher / temperature, dim=1),
        log_target=True, reduction="batchmean",
    )


def _seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
