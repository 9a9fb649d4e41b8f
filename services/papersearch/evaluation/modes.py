"""The ranking modes an evaluation measures: the search modes, and hybrid with the reranker."""

from __future__ import annotations

from typing import Literal, get_args

from papersearch.index.query import Mode

EvalMode = Literal[Mode, Literal["hybrid+rerank"]]
EVAL_MODES: tuple[EvalMode, ...] = get_args(EvalMode)
