"""Where amilab keeps its state, caches and shipped data (DESIGN.md: State)."""

from __future__ import annotations

import os
from pathlib import Path

_SCRATCH_MIN_FREE = 3 << 30

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# An installed wheel carries elements/ and kernels/ here (pyproject.toml maps them to the
# package builder.shipped.*); a checkout, editable install included, has no such folder.
_SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_dir(name: str) -> Path:
    """The elements/ or kernels/ folder that ships with this amilab: the installed package's
    copy when amilab runs from a wheel, else the checkout's top-level folder."""
    installed = _SHIPPED / name
    return installed if installed.is_dir() else PROJECT_ROOT / name


def amilab_home() -> Path:
    if home := os.environ.get("AMILAB_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(xdg) / "amilab"


def cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "amilab"


def artifacts_dir() -> Path:
    return amilab_home() / "artifacts"


def work_root() -> Path:
    """Build work directories live beside the artifacts so results are moved, not copied."""
    return amilab_home() / "work"


def logs_dir() -> Path:
    return amilab_home() / "logs"


def kernels_dirs() -> list[Path]:
    dirs = [shipped_dir("kernels")]
    dirs += [Path(p) for p in os.environ.get("AMILAB_KERNELS_PATH", "").split(":") if p]
    return dirs


def elements_path() -> list[Path]:
    """The project's elements first, then AMILAB_ELEMENTS_PATH (colon-separated)."""
    dirs = [shipped_dir("elements")]
    dirs += [Path(p) for p in os.environ.get("AMILAB_ELEMENTS_PATH", "").split(":") if p]
    return dirs


def scratch_dir() -> Path | None:
    """Memory-backed directory for the image's root tree while it is built, or None.

    Unpacking the base tree and deleting it again costs ~7 s of filesystem work on this
    machine's disk and ~0.3 s in /dev/shm (measured), and the tree lives only until mkfs
    has copied it into the disk image. AMILAB_SCRATCH overrides; an empty value disables.
    """
    configured = os.environ.get("AMILAB_SCRATCH")
    candidate = Path(configured) if configured else Path("/dev/shm")
    if configured == "":
        return None
    try:
        st = os.statvfs(candidate)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize < _SCRATCH_MIN_FREE or not os.access(candidate, os.W_OK):
        return None
    return candidate
