"""Root engines: what makes a recipe's root tree and runs its elements (the recipe's `engine`).

native: an mmdebstrap base tarball and amilab's own element runner (engines/native.py);
diskimage-builder: disk-image-create, which runs the elements itself (engines/dib.py).
"""

from __future__ import annotations

from builder.build.engines.base import Phases, RootEngine
from builder.build.engines.dib import DibEngine
from builder.build.engines.native import NativeEngine

# recipe `engine:` value -> class; the recipe's choices and help derive from this table
ENGINES: dict[str, type[RootEngine]] = {cls.name: cls for cls in (NativeEngine, DibEngine)}


def engine_for(name: str) -> RootEngine:
    return ENGINES[name]()


__all__ = ["ENGINES", "DibEngine", "NativeEngine", "Phases", "RootEngine", "engine_for"]
