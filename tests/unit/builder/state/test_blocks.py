"""Each block once: sparse files by their allocation, hard links once, FIEMAP's extents."""

from __future__ import annotations

import os
from pathlib import Path

from builder.state.blocks import BlockCounter, fiemap


def test_a_sparse_file_counts_what_it_holds(tmp_path: Path) -> None:
    f = tmp_path / "sparse"
    with open(f, "wb") as out:
        out.truncate(64 << 20)
        out.seek(1 << 20)
        out.write(os.urandom(1 << 20))
    size = BlockCounter().size(os.lstat(f), f)
    assert (1 << 20) <= size < (2 << 20)


def test_hard_links_count_once(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(os.urandom(1 << 20))
    os.link(a, tmp_path / "b")
    counter = BlockCounter()
    total, files = counter.tree(tmp_path)
    assert files == 2
    assert total == os.lstat(a).st_blocks * 512 + os.lstat(tmp_path).st_blocks * 512


def test_fiemap_extents_cover_the_allocation(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(os.urandom(3 << 20))
    os.sync()
    extents = list(fiemap(f))
    assert extents and sum(length for _, length, _ in extents) == 3 << 20
