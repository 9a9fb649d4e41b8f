"""A shard's indexes built in a process of their own: ``python -m papersearch.index.build PATH
DIM {ram,disk} PARENT_PID``, run by EdgeStore.optimize for a large index.

qdrant-edge holds the GIL through its calls, and an optimize's HNSW build takes seconds per
10,000 papers (26 s at 32,000 on 2 cores): in the process that serves, it stopped the gateway's
event loop (searches, health, deadlines) for a migration's build; in ``papersearch ingest``,
Ctrl-C and SIGTERM waited for its end. Here it holds only this process, which its parent
waits on (signals taken) and kills if stopped; the shard's WAL lock keeps it to one process at
a time. It dies with its parent (Linux): a parent killed outright (SIGKILL, an OOM kill) left
it building, the index locked, for the build's length. Prints ``changed`` or ``unchanged``; a
failure is one line on stderr, exit 1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with(parent: int) -> None:
    """SIGKILL this process when its parent ends (not a Python handler: the engine holds the
    GIL); a parent already gone (this process adopted) ends it now."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        raise ProcessLookupError(f"its parent process {parent} is gone")


def main(argv: list[str]) -> int:
    from papersearch.index.edge import build_apart_here

    try:
        path, dim, vectors, parent = Path(argv[0]), int(argv[1]), argv[2], int(argv[3])
        die_with(parent)
        changed = build_apart_here(path, dim, on_disk=vectors == "disk")
    except Exception as error:  # noqa: BLE001 (said to the parent, which raises StoreError)
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print("changed" if changed else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
