"""Environment for a Ray that this process starts on one machine (the service, a distributed
ingest, a test's), read by Ray when it is imported: set before."""

from __future__ import annotations

import os

# Bind 127.0.0.1 (not the host's address), no token auth, and no stray cluster started by a
# driver after its shutdown. An operator's own values win.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_AUTO_CONNECT": "0",
}


def use_local_ray_env() -> None:
    """LOCAL_RAY_ENV into this process's environment, where a variable is not set already."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
