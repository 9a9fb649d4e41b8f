"""The `papersearch` command's entry point. Ctrl-C while the command's modules load (numpy,
gRPC, onnxruntime: a second or so) ends in the same one line and status as Ctrl-C later: it
printed a traceback, and an import it cut short (onnxruntime's ImportError, a class body's
RuntimeError) read as a broken install, exit 1."""

from __future__ import annotations

import os
import sys

from papersearch.interrupts import EXIT_STATUS, interrupted_by


def main() -> int:
    # gRPC's C core logs at INFO to stderr otherwise: a TLS handshake to a plain port printed
    # its own line above the command's one-line error
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        from papersearch.cli import main as run
    except (KeyboardInterrupt, Exception) as error:  # wrapped too: ImportError, RuntimeError
        if not interrupted_by(error):
            raise
        print("papersearch: interrupted (before it started: nothing was done)", file=sys.stderr)
        return EXIT_STATUS
    return run(own_process=True)
