"""Will this module load into that kernel? The checks the kernel's loader makes
(kernel/module/{main,version}.c), made on the files, in the loader's order:

1. vermagic: a module built for another release is not in that kernel's /lib/modules at all:
   `needs-rebuild`. Same release, other flags (SMP, preempt, mod_unload, modversions):
   `refused: version magic` ("version magic '…' should be '…'").
2. each symbol the module imports, as resolve_symbol() does: not exported → `refused: unknown
   symbol S`; exported GPL-only to a module whose license is not GPL-compatible → `refused:
   GPL-only S` (dmesg says "Unknown symbol" there too); its CRC in `__versions` against
   Module.symvers → `refused: symbol S disagrees` ("disagrees about version of symbol S");
   exported in a namespace the module does not import → `refused: namespace N not imported`.
3. otherwise `loads`, with notes of what taints the kernel (out-of-tree, unsigned).

Every verdict carries its evidence: the lines that say why, as the kernel would log them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from builder.modules.elf import ModuleFacts
from builder.modules.symvers import KernelIndex

LOADS = "loads"
NEEDS_REBUILD = "needs-rebuild"
EVIDENCE_MAX = 12  # a module built for another ABI can differ in hundreds of symbols


@dataclass(frozen=True)
class Verdict:
    cls: str  # loads, needs-rebuild, refused: …
    evidence: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # taints and other facts that do not stop the load
    problems: dict[str, int] = field(default_factory=dict)  # kind -> count, every symbol

    @property
    def loads(self) -> bool:
        return self.cls == LOADS

    def to_json(self) -> dict[str, Any]:
        return {
            "Class": self.cls,
            "Evidence": list(self.evidence),
            "Notes": list(self.notes),
            "Problems": dict(self.problems),
        }


def symbol_problems(module: ModuleFacts, kernel: KernelIndex) -> list[tuple[str, str, str]]:
    """(kind, class, evidence line) for each imported symbol the loader would refuse."""
    out: list[tuple[str, str, str]] = []
    checks_crcs = kernel.modversions and bool(module.versions)
    # module_layout (to 6.2) is in __versions without being an undefined symbol
    names = sorted(set(module.undefined) | (set(module.versions) if checks_crcs else set()))
    for sym in names:
        export = kernel.symbols.get(sym)
        if export is None:
            if sym in module.undefined:
                out.append(("unknown", f"refused: unknown symbol {sym}",
                            f"{module.name}: Unknown symbol {sym} (err -2)"))  # fmt: skip
            continue
        if export.gpl_only and not module.gpl_compatible:
            out.append(("gpl-only", f"refused: GPL-only {sym}",
                        f"{module.name}: Unknown symbol {sym} (err -2): {sym} is "
                        f"EXPORT_SYMBOL_GPL and the module's license is "
                        f"{module.license or '(none)'!r}"))  # fmt: skip
            continue
        if checks_crcs and export.crc is not None:
            built = module.versions.get(sym)
            if built is None and sym in module.undefined:
                out.append(("no-version", f"refused: no symbol version for {sym}",
                            f"{module.name}: no symbol version for {sym}"))  # fmt: skip
                continue
            if built is not None and built != export.crc:
                out.append(("crc", f"refused: symbol {sym} disagrees",
                            f"{module.name}: disagrees about version of symbol {sym} "
                            f"(module 0x{built:08x}, kernel 0x{export.crc:08x} in "
                            f"{export.owner})"))  # fmt: skip
                continue
        if export.namespace and export.namespace not in module.import_ns:
            out.append(("namespace", f"refused: namespace {export.namespace} not imported",
                        f"{module.name}: module uses symbol ({sym}) from namespace "
                        f"{export.namespace}, but does not import it."))  # fmt: skip
    return out


def _magic_matches(module: ModuleFacts, kernel: KernelIndex) -> bool:
    """same_magic(): with CRCs on both sides the release word is skipped."""
    if kernel.modversions and module.versions:
        rest = module.vermagic.split(" ", 1)[1] if " " in module.vermagic else ""
        return rest.strip() == kernel.flags
    return module.vermagic.strip() == kernel.vermagic.strip()


def check(module: ModuleFacts, kernel: KernelIndex, architecture: str = "") -> Verdict:
    """The static verdict of `module` on `kernel` (whose machine is `architecture`)."""
    if architecture and module.architecture != architecture:
        return Verdict(
            f"refused: {module.architecture} module",
            (f"{module.name} is an {module.architecture} module; the kernel is {architecture}",),
        )
    problems = symbol_problems(module, kernel)
    counts: dict[str, int] = {}
    for kind, _, _ in problems:
        counts[kind] = counts.get(kind, 0) + 1
    lines = tuple(line for _, _, line in problems[:EVIDENCE_MAX])
    if len(problems) > EVIDENCE_MAX:
        lines += (f"… and {len(problems) - EVIDENCE_MAX} more symbol problems",)
    if module.release != kernel.release:
        abi = ("; its symbol CRCs also differ in " + ", ".join(f"{n} {k}" for k, n in
               counts.items())) if counts else ""  # fmt: skip
        why = (
            f"built for {module.release} (vermagic {module.vermagic.strip()!r}), "
            f"the kernel is {kernel.release} (vermagic {kernel.vermagic.strip()!r}): "
            f"no copy in /lib/modules/{kernel.release}{abi}"
        )
        # the symbol lines only say the ABI moved; three are enough to show it
        return Verdict(NEEDS_REBUILD, (why, *lines[:3]), problems=counts)
    if not _magic_matches(module, kernel):
        line = (f"{module.name}: version magic '{module.vermagic}' should be "
                f"'{kernel.vermagic}'")  # fmt: skip
        return Verdict("refused: version magic", (line, *lines), problems=counts)
    if kernel.module_sig_force and not module.signed:
        line = f"{module.name}: module verification failed: signature and/or required key missing"
        return Verdict("refused: unsigned module", (line, "CONFIG_MODULE_SIG_FORCE=y"))
    notes = ["out-of-tree module: taints the kernel (O)"]
    if not module.signed:
        notes.append("unsigned: module verification fails, the kernel taints (E)")
    if module.has_btf and kernel.btf_modules:
        notes.append("carries BTF, which this kernel reads (CONFIG_DEBUG_INFO_BTF_MODULES)")
    if problems:
        return Verdict(problems[0][1], lines, tuple(notes), counts)
    checked = len(set(module.undefined) | set(module.versions))
    crcs = "CRCs match" if kernel.modversions and module.versions else "no modversions"
    return Verdict(LOADS, (f"vermagic matches; {checked} symbols resolve, {crcs}",), tuple(notes))
