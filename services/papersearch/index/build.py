"""A shard's indexes built in a process of their own: ``python -m papersearch.index.build PATH
DIM {ram,disk}``, run by EdgeStore.optimize for a large index.

qdrant-edge holds the GIL through its calls, and an optimize's HNSW build takes seconds per
10,000 papers (26 s at 32,000 on 2 cores): in the process that serves, it stopped the gateway's
event loop (searches, health, deadlines) for a migration's build; in ``papersearch ingest``,
Ctrl-C and SIGTERM waited for its end. Here it holds only this process, which its parent
waits on (signals taken) and kills if stopped; the shard's WAL lock keeps it to one process at
a time. Prints ``changed`` or ``unchanged``; a failure is one line on stderr, exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from papersearch.index.edge import build_apart_here

    try:
        path, dim, vectors = Path(argv[0]), int(argv[1]), argv[2]
        changed = build_apart_here(path, dim, on_disk=vectors == "disk")
    except Exception as error:  # noqa: BLE001 (said to the parent, which raises StoreError)
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print("changed" if changed else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
