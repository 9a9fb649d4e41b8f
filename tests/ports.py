"""Free 127.0.0.1 ports for tests and benchmarks that start servers or Ray."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range, never the same one twice in
    a process. A port the kernel picked for ``bind(("127.0.0.1", 0))`` is free only until
    the next such bind: a Ray instance starting next binds dozens (GCS, raylet, workers), and
    once one took the metrics port handed to its dashboard agent, whose failure stopped the
    raylet ("The current node timed out during startup")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    # an ephemeral range from (nearly) 1024 leaves nothing below it: any unprivileged port
    first, end = (max(1024, low - 12_000), low) if low >= 3024 else (1024, 65536)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(first, end)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port found below the ephemeral range (from {low})")
