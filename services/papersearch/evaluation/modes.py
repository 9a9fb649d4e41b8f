"""The ranking modes an evaluation measures: the search modes (hybrid as configured, query
feedback included where ``index.prf_enabled`` says so), hybrid with query feedback asked for,
and hybrid with the reranker."""

from __future__ import annotations

from typing import Literal, get_args

from papersearch.index.query import Mode

EvalMode = Literal[Mode, Literal["hybrid+feedback", "hybrid+rerank"]]
EVAL_MODES: tuple[EvalMode, ...] = get_args(EvalMode)
FirstStageMode = Literal[Mode, Literal["hybrid+feedback"]]  # an EvalMode without +rerank


def first_stage_of(mode: EvalMode) -> FirstStageMode:
    """The first stage an evaluation mode ranks (and, with +rerank, reranks)."""
    return "hybrid" if mode == "hybrid+rerank" else mode


def search_of(stage: FirstStageMode) -> tuple[Mode, bool | None]:
    """A first stage as a search: its mode and its SearchQuery.feedback (None: as configured)."""
    return ("hybrid", True) if stage == "hybrid+feedback" else (stage, None)
