"""Asyncio tasks a caller may leave behind."""

from __future__ import annotations

import asyncio
from typing import Any


def forget(task: asyncio.Future[Any]) -> None:
    """Take ``task``'s outcome as seen, now or when it ends: a task whose caller left without
    reading it (cancelled by its client's deadline, or a stream that ended meanwhile) was
    logged by asyncio at ERROR with a traceback when collected ("Task exception was never
    retrieved"), an alarm for what a client did. The outcome stays readable."""
    task.add_done_callback(_seen)


def _seen(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
