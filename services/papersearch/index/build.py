"""A shard's indexes built, or its files read in, in a process of their own: ``python -m
papersearch.index.build {build,load} PATH DIM {ram,disk} PARENT_PID``, run by EdgeStore.optimize
for a large index (build), and before each load on a memory-backed volume (load: a page tmpfs
has no room for kills the process that touches it, so the child meets it first).

qdrant-edge holds the GIL through its calls, and an optimize's HNSW build takes seconds per
10,000 papers (26 s at 32,000 on 2 cores): in the process that serves, it stopped the gateway's
event loop (searches, health, deadlines) for a migration's build; in ``papersearch ingest``,
Ctrl-C and SIGTERM waited for its end. Here it holds only this process, which its parent
waits on (signals taken) and kills if stopped; the shard's WAL lock keeps it to one process at
a time. It dies with its parent (Linux): a parent killed outright (SIGKILL, an OOM kill) left
it building, the index locked, for the build's length. Prints ``changed`` or ``unchanged``
(build) or ``loaded``; a failure is one line on stderr, exit 1.
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
    from papersearch.index.edge import work_apart_here

    try:
        job, path, dim, vectors, parent = (argv[0], Path(argv[1]), int(argv[2]), argv[3],
                                           int(argv[4]))
        die_with(parent)
        said = work_apart_here(job, path, dim, on_disk=vectors == "disk")
    except Exception as error:  # noqa: BLE001 (said to the parent, which raises StoreError)
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(said)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
