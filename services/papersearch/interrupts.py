"""Ctrl-C for long commands: SIGINT always raises KeyboardInterrupt, and an interrupted command
says in one line what it kept. SIGTERM (``timeout``, ``docker stop``, a Kubernetes Job deleted)
is taken as Ctrl-C: it killed the command at once, with no line and no cleanup."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_STATUS = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that says what the interrupted work kept, e.g. "ingest: 320 papers
    written; run again to resume"."""


SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what stops a command as Ctrl-C does


def catch_sigint() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt, SIGINT also where the process started
    with it ignored: a background job of a non-interactive shell inherits SIGINT ignored, and
    Python then installs no handler, so Ctrl-C on its process group did nothing."""
    for signum in SIGNALS:
        signal.signal(signum, signal.default_int_handler)


def ignore() -> None:
    """SIGINT and SIGTERM ignored from now on: for a process that is ending (main thread)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def handlers_kept() -> Iterator[None]:
    """The block's changes to the SIGINT and SIGTERM handlers undone: ``ray.init`` installs a
    SIGTERM handler that exits at once (exit 15, no line, no cleanup). Main thread only."""
    main = threading.current_thread() is threading.main_thread()
    kept = {signum: signal.getsignal(signum) for signum in SIGNALS} if main else {}
    try:
        yield
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def interrupted_by(error: BaseException) -> bool:
    """Whether ``error`` is Ctrl-C, or was caused by it (an import it cut short fails with an
    ImportError raised from the KeyboardInterrupt)."""
    return any(isinstance(cause, KeyboardInterrupt) for cause in _chain(error))


def message(interrupt: KeyboardInterrupt) -> str:
    """The one line; what the interrupted work kept, also when a second Ctrl-C came while it
    cleaned up (its KeyboardInterrupt holds the first's Interrupted as its context)."""
    detail = next((str(cause) for cause in _chain(interrupt)
                   if isinstance(cause, Interrupted)), "")
    return f"papersearch: interrupted ({detail})" if detail else "papersearch: interrupted"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was raised from or while handling, each once."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        yield cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


@contextmanager
def held() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) waits for the block to end, then raises KeyboardInterrupt (also when
    the block then fails): a write and its count go together (a SIGINT landing as the engine's
    write returned left it uncounted). Only in the main thread, where Python runs signal
    handlers, and not for a signal the process ignores."""
    if threading.current_thread() is not threading.main_thread():  # nothing to hold
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _: caught.append(signum))
                for signum in SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    except Exception as error:  # the block failed after Ctrl-C: still an interrupt (exit 130)
        if caught:
            raise KeyboardInterrupt from error
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt
