"""Fuzzing the VMDK reader with hypothesis: mutated fixtures and writer outputs must give
BadInput or a disk, never another exception, never a hang. Runs for AMILAB_FUZZ_SECONDS
(60 by default, so CI always fuzzes for a minute), each example under a 10 s alarm."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.disk.vmdk import open_vmdk
from builder.disk.vmdk.header import SECTOR, parse_header
from builder.disk.vmdk.stream_writer import write_stream_optimized
from builder.errors import BadInput
from tests.unit.builder.disk.vmdk.support import (
    DATA,
    descriptor,
    make_raw,
    qemu_vmdk,
    virtualbox_stream,
)

FUZZ_SECONDS = float(os.environ.get("AMILAB_FUZZ_SECONDS", "60"))
EXAMPLE_SECONDS = 10
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
               0xFFFFFFFFFFFFFFFF, 1 << 32, 1 << 40, 128, 512, 4096]


class _Hang(Exception):
    pass


@contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise _Hang(f"reader still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _hot_offsets(data: bytes) -> list[int]:
    """Byte offsets worth mutating: header fields, descriptor, GD, GTs, markers, footer."""
    hot = list(range(0, 80)) + list(range(SECTOR, SECTOR + 200))
    hot += list(range(max(0, len(data) - 3 * SECTOR), len(data), 4))
    try:
        h = parse_header(data[:SECTOR], "seed", len(data))
    except BadInput:
        return hot
    if h.gd_offset * SECTOR < len(data):
        gd = h.gd_offset * SECTOR
        hot += list(range(gd - 16, gd + 16))
        for i in range(min(h.num_gts, 4)):
            (gt,) = struct.unpack_from("<I", data, gd + 4 * i)
            if gt and gt * SECTOR + 64 < len(data):
                hot += list(range(gt * SECTOR, gt * SECTOR + 64))
                first = [g for g in struct.unpack_from("<16I", data, gt * SECTOR) if g]
                for g in first[:4]:
                    hot += list(range(g * SECTOR, g * SECTOR + 32))
    return [o for o in hot if 0 <= o < len(data)]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, bytes]]]:
    d = tmp_path_factory.mktemp("fuzz")
    raw = make_raw(d / "seed.raw", size=2 << 20, seed=11)
    ours = d / "ours.vmdk"
    write_stream_optimized(raw, ours)
    made = {
        "blank.vmdk": (DATA / "blank.vmdk").read_bytes(),
        "ubuntu.vmdk": (DATA / "ubuntu.2.0-disk1.vmdk").read_bytes(),
        "ours.vmdk": ours.read_bytes(),
        "vbox.vmdk": virtualbox_stream(ours, d / "vbox.vmdk").read_bytes(),
        "qemu-stream.vmdk": qemu_vmdk(raw, d / "qs.vmdk", "streamOptimized").read_bytes(),
        "qemu-sparse.vmdk": qemu_vmdk(raw, d / "qm.vmdk", "monolithicSparse").read_bytes(),
    }
    # Descriptor files: mutated descriptor text beside fixed extents.
    shutil.copy(raw, d / "x-flat.vmdk")
    shutil.copy(d / "qm.vmdk", d / "x-s001.vmdk")
    n = raw.stat().st_size // SECTOR
    made["flat.vmdk"] = descriptor("monolithicFlat", [f'RW {n} FLAT "x-flat.vmdk" 0']).encode()
    made["two.vmdk"] = descriptor(
        "twoGbMaxExtentSparse", [f'RW {n} SPARSE "x-s001.vmdk"', 'RW 2048 ZERO']
    ).encode()
    return d, sorted(made.items())


class _Corpus:
    """Seeds and their hot offsets, drawn by index so hypothesis never prints megabytes."""

    def __init__(self, seeds: list[tuple[str, bytes]]) -> None:
        self.seeds = seeds
        self.hot = [_hot_offsets(data) for _, data in seeds]


Op = tuple[str, int, int, bytes]


@st.composite
def mutations(draw: st.DrawFn, corpus: _Corpus) -> tuple[int, list[Op]]:
    """A seed index and the edits to make to it: small to print when a case fails."""
    index = draw(st.integers(0, len(corpus.seeds) - 1))
    hot = corpus.hot[index]
    ops = []
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.one_of(st.sampled_from(hot), st.integers(0, 1 << 24)))
        op = draw(st.sampled_from(["byte", "u32", "u64", "truncate", "delete", "insert"]))
        value = draw(st.sampled_from(INTERESTING)) if op in ("u32", "u64") else 0
        if op == "byte":
            value = draw(st.integers(0, 255))
        elif op == "delete":
            value = draw(st.integers(1, 600))
        blob = draw(st.binary(min_size=1, max_size=64)) if op == "insert" else b""
        ops.append((op, where, value, blob))
    return index, ops


def apply(seed: bytes, ops: list[Op]) -> bytes:
    buf = bytearray(seed)
    for op, where, value, blob in ops:
        where %= len(buf)
        if op == "byte":
            buf[where] = value
        elif op in ("u32", "u64"):
            fmt, size = ("<I", 4) if op == "u32" else ("<Q", 8)
            where -= where % size
            if where + size <= len(buf):
                struct.pack_into(fmt, buf, where, value & ((1 << (8 * size)) - 1))
        elif op == "truncate":
            del buf[max(1, where) :]
        elif op == "delete":
            del buf[where : where + value]
        else:
            buf[where:where] = blob
        if not buf:
            buf = bytearray(b"\0")
    return bytes(buf)


def test_fuzz_reader(seeds: tuple[Path, list[tuple[str, bytes]]]) -> None:
    directory, corpus = seeds
    target = directory / "fuzz.vmdk"
    counts = {"examples": 0, "rejected": 0, "read": 0}

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutations(_Corpus(corpus)))
    def one(case: tuple[int, list[Op]]) -> None:
        index, ops = case
        target.write_bytes(apply(corpus[index][1], ops))
        counts["examples"] += 1
        with _alarm(EXAMPLE_SECONDS):
            try:
                with open_vmdk(target) as image:
                    image.verify()
                    assert image.capacity > 0
                counts["read"] += 1
            except BadInput as e:
                msg = str(e)
                assert "\n" not in msg and msg, msg
                counts["rejected"] += 1

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    end = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < end:
        one()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(f"fuzz: {counts} in {FUZZ_SECONDS:.0f} s, peak memory grew {grown_mib:.0f} MiB")
    assert counts["examples"] > 0 and counts["rejected"] > 0
    assert grown_mib < 256  # bounded memory: no mutated header makes the reader allocate big
