"""The x86 boot protocol's setup header of a bzImage: what a kernel file says about itself.

The header sits at 0x1f1 of the file; "HdrS" at 0x202 marks a kernel that follows the boot
protocol (2.00 on), and the 16-bit field at 0x20e points (from 0x200) at the NUL-terminated
kernel_version string, `uname -r` followed by the builder's details. Only the header is read:
a vmlinuz that is not a bzImage (an ELF vmlinux, a compressed blob, anything else) has none.
"""

from __future__ import annotations

from pathlib import Path

from builder.errors import BadInput

_MAGIC_AT = slice(0x202, 0x206)
_VERSION_PTR = slice(0x20E, 0x210)
_BOOT_FLAG = slice(0x1FE, 0x200)  # 0xAA55, as a boot sector's
# the version string is at most 0x200 + 0xffff in; its text is well under 256 bytes
HEADER_BYTES = 0x200 + 0x10000 + 256


def kernel_release(vmlinuz: bytes) -> str | None:
    """`uname -r` of a bzImage, from its setup header's kernel_version string."""
    if len(vmlinuz) < 0x210 or vmlinuz[_MAGIC_AT] != b"HdrS":
        return None
    pointer = int.from_bytes(vmlinuz[_VERSION_PTR], "little")
    if pointer == 0:  # protocol 2.00 allows no version string
        return None
    offset = pointer + 0x200
    text = vmlinuz[offset : offset + 256].split(b"\0", 1)[0].decode(errors="replace")
    release = text.split(" ", 1)[0]
    return release if release and release.isprintable() else None


def release_of_file(path: Path) -> str:
    """The release a bzImage file names; BadInput for a file that is no bzImage."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise BadInput(f"{path}: cannot read the kernel: {e.strerror or e}") from None
    release = kernel_release(head)
    if release is None or head[_BOOT_FLAG] != b"\x55\xaa":
        raise BadInput(f"{path}: not a bzImage (no x86 boot protocol header naming a release)")
    return release
