"""Unix socket paths any layer can connect to or bind, however deep their directory."""

from __future__ import annotations

import os
from pathlib import Path


def unix_path(path: Path) -> str:
    """A connectable path for a Unix socket even when `path` exceeds sun_path's 108 bytes
    (deep test directories do): go through /proc/self/fd of the directory."""
    text = str(path)
    if len(text.encode()) < 100:
        return text
    fd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    # the fd stays open for the process's lifetime; one per instance is acceptable
    return f"/proc/self/fd/{fd}/{path.name}"
