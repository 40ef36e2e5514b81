"""Write plans.json: harness.plan.make_plan(...) for every machine image of the registry in
$AMILAB_HOME, plus a few variants, serialised as plain dicts.

Run against the legacy code (commit 6f828e4), from its worktree:

    cd /work/legacy && PYTHONPATH=/work/legacy AMILAB_HOME=/tmp/amilab-legacy-registry/home \
        /work/main/.venv/bin/python /work/legacy-data/make_plans.py /work/legacy-data/plans.json

Each entry is {"label", "call", "plan"} or {"label", "call", "error"}:
  call   the arguments make_plan was called with; "image" is the AMI ID given to
         Registry().find(image_id, "machine"); every other key is make_plan's keyword argument
         of that name (all of them are given, defaults included; registry=None, i.e. the
         default Registry() of $AMILAB_HOME)
  plan   LaunchPlan's fields: profile, virtualization, disk {path, format, bus}, kernel_id,
         ramdisk_id, cmdline, expected_release, notes, pv_grub, imported, kernel_path,
         ramdisk_path (paths as str or null)
  error  {"type": exception class name, "message": str(exception)} when make_plan raised
         (a variant the image does not allow, e.g. a disk format it lacks)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from builder.registry import Registry
from harness.plan import make_plan

DEFAULTS: dict[str, Any] = {
    "kernel_ref": None,
    "ramdisk_ref": None,
    "firmware": None,
    "disk_format": None,
    "disk_bus": "virtio",
    "append": None,
}


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


def serialise(plan: Any) -> dict[str, Any]:
    return {
        "image_id": plan.image.image_id,
        "profile": plan.profile,
        "virtualization": plan.virtualization,
        "disk": {"path": str(plan.disk.path), "format": plan.disk.format, "bus": plan.disk.bus},
        "kernel_id": plan.kernel_id,
        "ramdisk_id": plan.ramdisk_id,
        "cmdline": plan.cmdline,
        "expected_release": plan.expected_release,
        "notes": list(plan.notes),
        "pv_grub": plan.pv_grub,
        "imported": plan.imported,
        "kernel_path": _path(plan.kernel_path),
        "ramdisk_path": _path(plan.ramdisk_path),
    }


def run_case(registry: Registry, label: str, image_id: str, **kwargs: Any) -> dict[str, Any]:
    call = {"image": image_id, **DEFAULTS, **kwargs}
    image = registry.find(image_id, "machine")
    args = {k: v for k, v in call.items() if k != "image"}
    try:
        plan = make_plan(image, **args)
    except Exception as e:  # noqa: BLE001 - recorded as the expected behaviour
        return {"label": label, "call": call, "error": {"type": type(e).__name__,
                                                        "message": str(e)}}
    return {"label": label, "call": call, "plan": serialise(plan)}


def cases(registry: Registry) -> list[dict[str, Any]]:
    machines = registry.list("machine")
    out = [run_case(registry, f"default:{m.name}", m.image_id) for m in machines]
    by_name = {m.name: m for m in machines}
    pv, hvm = by_name["debian-pv"], by_name["debian-hvm"]
    locations_pv = pv.extra.get("locations") or {}
    extra: list[tuple[str, str, dict[str, Any]]] = [
        # asked for
        ("pv:own-kernel,ramdisk-none", pv.image_id,
         {"kernel_ref": pv.kernel_id, "ramdisk_ref": "none"}),
        ("hvm:firmware-uefi", hvm.image_id, {"firmware": "uefi"}),
        ("hvm:pv-grub", hvm.image_id, {"kernel_ref": "pv-grub"}),
        # more variants of the same two images
        ("pv:own-kernel,ramdisk-none,bus-nvme", pv.image_id,
         {"kernel_ref": pv.kernel_id, "ramdisk_ref": "none", "disk_bus": "nvme"}),
        ("pv:ramdisk-by-id", pv.image_id, {"ramdisk_ref": pv.ramdisk_id}),
        ("pv:append", pv.image_id, {"append": "loglevel=7 quiet"}),
        ("pv:kernel-by-name", pv.image_id,
         {"kernel_ref": registry.get(pv.kernel_id).name}),  # type: ignore[union-attr]
        ("pv:pv-grub-hd0", pv.image_id, {"kernel_ref": "pv-grub-hd0"}),
        ("hvm:firmware-bios", hvm.image_id, {"firmware": "bios"}),
        ("hvm:format-qcow2", hvm.image_id, {"disk_format": "qcow2"}),
        ("hvm:format-vmdk", hvm.image_id, {"disk_format": "vmdk"}),
        ("hvm:format-vmdk-stream", hvm.image_id, {"disk_format": "vmdk-stream"}),
        ("hvm:bus-nvme", hvm.image_id, {"disk_bus": "nvme"}),
        # refusals: the error is the expected result
        ("hvm:kernel-refused", hvm.image_id, {"kernel_ref": pv.kernel_id}),
        ("hvm:pv-grub-with-ramdisk-refused", hvm.image_id,
         {"kernel_ref": "pv-grub", "ramdisk_ref": pv.ramdisk_id}),
    ]
    # the PV image with disk_format="qcow2": only if it has one; the refusal otherwise
    extra.insert(3, ("pv:format-qcow2" + ("" if "qcow2" in locations_pv else "-refused"),
                     pv.image_id, {"disk_format": "qcow2"}))
    out += [run_case(registry, label, iid, **kw) for label, iid, kw in extra]
    return out


def main() -> None:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("plans.json")
    registry = Registry()
    plans = cases(registry)
    payload = {"amilab_home": str(registry.home), "commit": "6f828e4", "plans": plans}
    dest.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{dest}: {len(plans)} plans")


if __name__ == "__main__":
    main()
