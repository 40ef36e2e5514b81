"""What a kernel module (.ko) says about itself, read with pyelftools the way the kernel's
loader reads it: `.modinfo` (name, version, vermagic, license, import_ns, depends), the
symbol CRCs it was built against (`__versions`, or the extended `__version_ext_*` tables of
7.x kernels built with CONFIG_EXTENDED_MODVERSIONS), the symbols it leaves undefined (what
the kernel must resolve), and whether it carries BTF.

Anything that is not a relocatable ELF with a `.modinfo` is refused as bad input: a recipe's
prebuilt .ko is checked here before anything is built or cached.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import lzma
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from builder.errors import BadInput

# ELF e_machine → EC2's architecture names (builder.build.arch)
MACHINES = {"EM_X86_64": "x86_64", "EM_386": "i386", "EM_AARCH64": "arm64"}
# what the kernel's license_is_gpl_compatible() accepts (include/linux/license.h)
GPL_COMPATIBLE = frozenset({
    "GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL",
})  # fmt: skip
SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
SIGNATURE_MARKER = b"~Module signature appended~\n"
MODULE_NAME_MAX = 56  # MODULE_NAME_LEN - 1 on 64-bit kernels


@dataclass(frozen=True)
class ModuleFacts:
    """One module as the loader sees it."""

    name: str
    architecture: str
    vermagic: str
    license: str
    version: str  # MODULE_VERSION, else srcversion, else ""
    srcversion: str
    import_ns: tuple[str, ...]
    depends: tuple[str, ...]
    versions: dict[str, int] = field(default_factory=dict)  # symbol -> CRC it was built with
    undefined: tuple[str, ...] = ()  # symbols the kernel must resolve
    has_btf: bool = False
    signed: bool = False  # a module signature is appended (scripts/sign-file)

    @property
    def release(self) -> str:
        """The kernel release the module was built for (vermagic's first word)."""
        return self.vermagic.split(" ", 1)[0]

    @property
    def gpl_compatible(self) -> bool:
        return self.license in GPL_COMPATIBLE


def decompress(data: bytes, shown: str) -> bytes:
    """A .ko's bytes whatever the kernel's module compression (sid's are .ko.xz)."""
    try:
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard  # type: ignore[import-not-found]  # optional; Debian uses xz

            return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 28)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise BadInput(f"{shown}: cannot decompress the module: {e}") from None
    except ImportError:
        raise BadInput(f"{shown}: a zstd-compressed module (no zstandard module here)") from None
    return data


def read_module(path: Path, data: bytes | None = None) -> ModuleFacts:
    """The facts of the module at `path` (or of `data`, its bytes); BadInput when it is not a
    kernel module."""
    shown = str(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BadInput(f"{shown}: cannot read: {e.strerror}") from None
    data = decompress(data, shown)
    if data[:4] != b"\x7fELF":
        raise BadInput(f"{shown}: not a kernel module (not an ELF file)")
    try:
        facts = _facts(ELFFile(io.BytesIO(data)), shown)
    except (ELFError, struct.error, ValueError) as e:
        raise BadInput(f"{shown}: not a kernel module (bad ELF: {e})") from None
    if data.endswith(SIGNATURE_MARKER):
        facts = dataclasses.replace(facts, signed=True)
    return facts


def _facts(elf: ELFFile, shown: str) -> ModuleFacts:
    if elf["e_type"] != "ET_REL":
        raise BadInput(f"{shown}: not a kernel module (ELF type {elf['e_type']}, not ET_REL)")
    machine = MACHINES.get(elf["e_machine"])
    if machine is None:
        raise BadInput(f"{shown}: a module for {elf['e_machine']}, which amilab does not run")
    modinfo = elf.get_section_by_name(".modinfo")
    if modinfo is None:
        raise BadInput(f"{shown}: not a kernel module (no .modinfo section)")
    info: dict[str, list[str]] = {}
    for entry in modinfo.data().split(b"\0"):
        if b"=" in entry:
            k, v = entry.decode("utf-8", "replace").split("=", 1)
            info.setdefault(k, []).append(v)

    def one(key: str) -> str:
        return (info.get(key) or [""])[0]

    name = one("name") or _this_module_name(elf)
    versions = _versions(elf)
    return ModuleFacts(
        name=name,
        architecture=machine,
        vermagic=one("vermagic"),
        license=one("license"),
        version=one("version") or one("srcversion"),
        srcversion=one("srcversion"),
        import_ns=tuple(info.get("import_ns", ())),
        depends=tuple(d for d in one("depends").split(",") if d),
        versions=versions,
        undefined=_undefined(elf),
        has_btf=elf.get_section_by_name(".BTF") is not None,
    )


def _this_module_name(elf: ELFFile) -> str:
    """struct module's name field (offset 24 on 64-bit, 12 on 32-bit kernels) in
    .gnu.linkonce.this_module: modules older than 5.x carry no name= in .modinfo."""
    sec = elf.get_section_by_name(".gnu.linkonce.this_module")
    if sec is None:
        return ""
    data = sec.data()
    off = 24 if elf.elfclass == 64 else 12
    return data[off : off + 64].split(b"\0", 1)[0].decode("ascii", "replace")


def _versions(elf: ELFFile) -> dict[str, int]:
    """symbol -> CRC: `struct modversion_info { unsigned long crc; char name[64 - sizeof(long)]; }`
    entries; or the extended tables (one u32 CRC per NUL-terminated name)."""
    out: dict[str, int] = {}
    little = elf.little_endian
    sec = elf.get_section_by_name("__versions")
    if sec is not None:
        data = sec.data()
        word = 8 if elf.elfclass == 64 else 4
        fmt = ("<" if little else ">") + ("Q" if word == 8 else "I")
        for off in range(0, len(data) - 63, 64):
            (crc,) = struct.unpack_from(fmt, data, off)
            name = data[off + word : off + 64].split(b"\0", 1)[0].decode("ascii", "replace")
            if name:
                out[name] = crc & 0xFFFFFFFF
    names = elf.get_section_by_name("__version_ext_names")
    crcs = elf.get_section_by_name("__version_ext_crcs")
    if names is not None and crcs is not None:
        listed = [n.decode("ascii", "replace") for n in names.data().split(b"\0") if n]
        raw = crcs.data()
        values = struct.unpack(("<" if little else ">") + f"{len(raw) // 4}I", raw)
        out.update(zip(listed, values, strict=False))
    return out


def _undefined(elf: ELFFile) -> tuple[str, ...]:
    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        return ()
    found = {
        s.name
        for s in symtab.iter_symbols()
        if s.name and s["st_shndx"] == "SHN_UNDEF" and s["st_info"]["bind"] != "STB_LOCAL"
    }
    # the linker's own, never exported by the kernel
    found -= {"_GLOBAL_OFFSET_TABLE_", ".TOC."}
    return tuple(sorted(found))


def is_module_file(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def module_stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
