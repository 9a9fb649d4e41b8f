"""Ctrl-C for long commands: SIGINT always raises KeyboardInterrupt, and an interrupted command
says in one line what it kept."""

from __future__ import annotations

import signal

EXIT_STATUS = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that says what the interrupted work kept, e.g. "ingest: 320 papers
    written; run again to resume"."""


def catch_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt, also where the process started with it ignored: a
    background job of a non-interactive shell inherits SIGINT ignored, and Python then installs
    no handler, so Ctrl-C on its process group did nothing."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def message(interrupt: KeyboardInterrupt) -> str:
    detail = str(interrupt) if isinstance(interrupt, Interrupted) else ""
    return f"papersearch: interrupted ({detail})" if detail else "papersearch: interrupted"
