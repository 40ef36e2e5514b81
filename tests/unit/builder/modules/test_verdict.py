"""The static verdict on real modules: v4l2loopback.ko as Debian's dkms built it for
6.1.0-57-amd64 and a tiny Kbuild module built by amilab for the same kernel (tests/data/modules),
against that kernel's own Module.symvers lines; each refusal class made by changing one fact,
the CRC one by patching one CRC in the module's `__versions` (as the kernel would see it)."""

from __future__ import annotations

import dataclasses
import io
import pickle
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from builder.errors import BadInput
from builder.modules.elf import read_module
from builder.modules.symvers import Export, KernelIndex, parse_symvers
from builder.modules.verdict import check

DATA = Path(__file__).parents[3] / "data" / "modules"
RELEASE = "6.1.0-57-amd64"
VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "


@pytest.fixture(scope="module")
def index() -> KernelIndex:
    symbols = parse_symvers((DATA / "Module.symvers").read_text())
    return KernelIndex(RELEASE, VERMAGIC, True, True, False, symbols)


def test_reads_the_modules_facts() -> None:
    m = read_module(DATA / "v4l2loopback.ko")
    # no MODULE_VERSION in 0.12.7: the build records dkms.conf's PACKAGE_VERSION instead
    assert (m.name, m.version, m.release, m.license) == ("v4l2loopback", "", RELEASE, "GPL")
    assert m.architecture == "x86_64" and "videodev" in m.depends
    assert len(m.versions) == 66 and "video_ioctl2" in m.versions
    h = read_module(DATA / "hello.ko")
    assert (h.name, h.version, h.gpl_compatible) == ("hello", "1.0", True)


def test_both_load_on_their_own_kernel(index: KernelIndex) -> None:
    for name in ("v4l2loopback", "hello"):
        v = check(read_module(DATA / f"{name}.ko"), index, "x86_64")
        assert v.cls == "loads", v
        assert "CRCs match" in v.evidence[0]
        assert "unsigned: module verification fails, the kernel taints (E)" in v.notes


def _patched_crc(data: bytes, symbol: str) -> bytes:
    """The module's bytes with `symbol`'s CRC in __versions flipped."""
    elf = ELFFile(io.BytesIO(data))
    sec = elf.get_section_by_name("__versions")
    body = sec.data()
    for off in range(0, len(body), 64):
        if body[off + 8 : off + 64].split(b"\0", 1)[0] == symbol.encode():
            at = sec["sh_offset"] + off
            (crc,) = struct.unpack_from("<Q", data, at)
            return data[:at] + struct.pack("<Q", crc ^ 0xDEADBEEF) + data[at + 8 :]
    raise AssertionError(f"{symbol} not in __versions")


def test_a_patched_crc_is_refused_naming_the_symbol(index: KernelIndex, tmp_path: Path) -> None:
    patched = tmp_path / "v4l2loopback.ko"
    patched.write_bytes(_patched_crc((DATA / "v4l2loopback.ko").read_bytes(), "video_ioctl2"))
    v = check(read_module(patched), index, "x86_64")
    assert v.cls == "refused: symbol video_ioctl2 disagrees"
    assert v.evidence[0].startswith("v4l2loopback: disagrees about version of symbol video_ioctl2")
    assert "drivers/media/v4l2-core/videodev" in v.evidence[0]


def test_unknown_symbol(index: KernelIndex) -> None:
    symbols = {k: e for k, e in index.symbols.items() if k != "video_ioctl2"}
    v = check(read_module(DATA / "v4l2loopback.ko"), dataclasses.replace(index, symbols=symbols))
    assert v.cls == "refused: unknown symbol video_ioctl2"
    assert v.evidence == ("v4l2loopback: Unknown symbol video_ioctl2 (err -2)",)


def test_gpl_only_symbol_of_a_non_gpl_module(index: KernelIndex) -> None:
    m = dataclasses.replace(read_module(DATA / "v4l2loopback.ko"), license="Proprietary")
    v = check(m, index)
    assert v.cls.startswith("refused: GPL-only ")
    gpl = sorted(s for s in m.undefined if index.symbols[s].gpl_only)
    assert v.cls == f"refused: GPL-only {gpl[0]}" and v.problems["gpl-only"] == len(gpl)


def test_namespace_not_imported(index: KernelIndex) -> None:
    symbols = dict(index.symbols)
    symbols["video_ioctl2"] = symbols["video_ioctl2"]._replace(namespace="V4L2_TEST")
    v = check(read_module(DATA / "v4l2loopback.ko"), dataclasses.replace(index, symbols=symbols))
    assert v.cls == "refused: namespace V4L2_TEST not imported"
    m = dataclasses.replace(read_module(DATA / "v4l2loopback.ko"), import_ns=("V4L2_TEST",))
    assert check(m, dataclasses.replace(index, symbols=symbols)).cls == "loads"


def test_another_release_needs_a_rebuild(index: KernelIndex) -> None:
    other = dataclasses.replace(index, release="6.1.0-58-amd64",
                                vermagic="6.1.0-58-amd64 SMP preempt mod_unload modversions ")
    v = check(read_module(DATA / "hello.ko"), other)
    assert v.cls == "needs-rebuild"
    assert f"built for {RELEASE}" in v.evidence[0] and "6.1.0-58-amd64" in v.evidence[0]


def test_other_flags_are_a_version_magic_refusal(index: KernelIndex) -> None:
    rt = dataclasses.replace(index, vermagic=f"{RELEASE} SMP preempt_rt mod_unload modversions ")
    v = check(read_module(DATA / "hello.ko"), rt)
    assert v.cls == "refused: version magic"
    assert "should be" in v.evidence[0]


def test_another_architecture(index: KernelIndex) -> None:
    assert check(read_module(DATA / "hello.ko"), index, "arm64").cls == "refused: x86_64 module"


def test_not_a_module(tmp_path: Path) -> None:
    text = tmp_path / "x.ko"
    text.write_text("not a module")
    with pytest.raises(BadInput, match="not an ELF file"):
        read_module(text)
    exe = tmp_path / "true.ko"
    exe.write_bytes(Path("/bin/true").read_bytes())
    with pytest.raises(BadInput, match="not ET_REL"):
        read_module(exe)


def test_symvers_columns() -> None:
    got = parse_symvers("0x0000abcd\tfoo\tvmlinux\tEXPORT_SYMBOL_GPL\tNS_X\n"
                        "0x00000001\tbar\tfs/x/x\tEXPORT_SYMBOL\t\n")  # fmt: skip
    assert got == {"foo": Export(0xABCD, True, "NS_X", "vmlinux"),
                   "bar": Export(1, False, "", "fs/x/x")}  # fmt: skip


def test_a_whole_kernels_cached_index_gives_the_verdict(
    index: KernelIndex, tmp_path: Path
) -> None:
    # the cached index of a whole kernel: ~25,000 exports; how long a cell takes is
    # bench/modules.py's to measure (a time bound here failed on a loaded host)
    big = dict(index.symbols) | {f"sym{i}": Export(i, False, "", "vmlinux") for i in range(25000)}
    path = tmp_path / "index.pickle"
    path.write_bytes(pickle.dumps(dataclasses.replace(index, symbols=big)))
    m = read_module(DATA / "v4l2loopback.ko")
    loaded = pickle.loads(path.read_bytes())
    assert check(m, loaded).cls == "loads"
