"""`amilab modules check AMI --kernel K …`: the static verdict of each out-of-tree module an
AMI carries on each kernel, without booting. The modules are the .ko copies its build kept
(artifacts, by digest); a kernel's side is its index (symvers.py), built once per kernel."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.build.kernel import kernel_for_record
from builder.build.own_kernel import OWN_KERNEL_KEY
from builder.errors import BadInput
from builder.images.kernel_refs import find_kernel
from builder.images.records import ImageRecord
from builder.images.registry import Registry
from builder.modules.elf import ModuleFacts, read_module
from builder.modules.own_headers import headers_of
from builder.modules.symvers import KernelIndex, cached_index, kernel_index
from builder.modules.verdict import Verdict, check

RECORD_KEY = "out_of_tree_modules"  # builder.build.out_of_tree.RECORD_KEY


@dataclass(frozen=True)
class Cell:
    module: dict[str, Any]  # the AMI's record of it (Name, Version, KernelRelease, Source…)
    kernel: ImageRecord
    verdict: Verdict
    seconds: float  # the check alone, the kernel's index already loaded

    def to_json(self) -> dict[str, Any]:
        m = self.module
        return {
            "Module": m["Name"],
            "Version": m["Version"],
            "Source": m["Source"],
            "BuiltFor": m["KernelRelease"],
            "KernelId": self.kernel.image_id,
            "KernelName": self.kernel.name,
            "KernelRelease": self.kernel.kernel_release,
            **self.verdict.to_json(),
            "Milliseconds": round(self.seconds * 1000, 2),
        }


def index_of(aki: ImageRecord, log: Path | None = None) -> KernelIndex:
    """The kernel's export index: cached by the package and version its record names, else
    made from the unpacked kernel and its headers (once)."""
    own = headers_of(aki)
    if own is not None:
        return kernel_index(kernel_for_record(aki, log), log, own)
    package, version = aki.kernel_settings.package or "", aki.package_version or ""
    if package and version and (found := cached_index(package, version)) is not None:
        return found
    if OWN_KERNEL_KEY in aki.extra and not package:  # files, not a Debian package
        raise BadInput(f"{aki.image_id} ({aki.name}) was registered without --headers: "
                       "no Module.symvers to check against (see --headers)")  # fmt: skip
    return kernel_index(kernel_for_record(aki, log), log)


def modules_for(records: list[dict[str, Any]], release: str) -> list[dict[str, Any]]:
    """One record per module name: the copy built for `release` (add-modules adds one per
    kernel it rebuilt for), else the first (whose verdict then names what it was built for)."""
    chosen: dict[str, dict[str, Any]] = {}
    for m in records:
        if m["Name"] not in chosen or m.get("KernelRelease") == release:
            chosen[m["Name"]] = m
    return list(chosen.values())


def image_modules(image: ImageRecord) -> list[tuple[dict[str, Any], ModuleFacts]]:
    found = image.extra.get(RECORD_KEY) or []
    if not found:
        raise BadInput(f"{image.image_id} ({image.name}) has no out-of-tree modules "
                       "(recipe keys dkms, extra-modules)")  # fmt: skip
    return [(m, read_module(Path(m["Artifact"]))) for m in found]


def check_image(
    image_ref: str, kernel_refs: list[str], log: Path | None = None, say: Any = None
) -> list[Cell]:
    """One cell per module and kernel; kernels named as everywhere (ID, name, catalogue)."""
    registry = Registry()
    image = registry.find(image_ref, "machine")
    modules = image_modules(image)
    cells = []
    for ref in kernel_refs or [image.kernel_id or ""]:
        if not ref:
            raise BadInput(f"{image.image_id} has no default kernel: name one with --kernel")
        aki = find_kernel(ref, registry, say)
        index = index_of(aki, log)
        chosen = modules_for([r for r, _ in modules], aki.kernel_release or "")
        for record, facts in modules:
            if not any(record is c for c in chosen):
                continue
            t0 = time.perf_counter()
            verdict = check(facts, index, aki.architecture)
            cells.append(Cell(record, aki, verdict, time.perf_counter() - t0))
    return cells
