"""`amilab fsck`: the registry checked against the artifact store, as `git fsck` checks
objects against their names.

Checks: every available record's files exist, and every artifact a record names matches the
digest its name carries (hashes cached by inode, size and mtime: `verified`); no artifact or
volume file exists that no record names (outside the work area); every snapshot an AMI names
and every volume an instance uses exist; no record is pending without its process; nothing a
dead process left stays in the work area; no volume is in use by an instance that does not
exist. `repair` fixes what can be fixed without losing anything: it fails stale pending
records, removes dead processes' work, makes such a volume available, and moves orphaned
files to `quarantine/<timestamp>/` (never deleting them); a missing file or a wrong digest
it reports, since only a person can say which copy is right.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import paths
from builder.images.registry import Registry
from builder.images.tables import JsonTable
from builder.state import pending, references, workarea
from builder.state.verified import DigestCache

ARTIFACT_NAME = re.compile(r"^([0-9a-f]{64})(\..+)$")
# kinds `repair` fixes, and the others it only reports
REPAIRABLE = (
    "PendingWithoutProcess",
    "WorkLeftover",
    "OrphanArtifact",
    "AttachedToMissingInstance",
)


@dataclass
class Finding:
    kind: str
    resource: str
    path: str
    detail: str

    def describe(self) -> dict[str, str]:
        return {"Kind": self.kind, "Resource": self.resource, "Path": self.path,
                "Detail": self.detail}  # fmt: skip


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    repaired: list[Finding] = field(default_factory=list)
    files_hashed: int = 0
    files_cached: int = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Findings": [f.describe() for f in self.findings]}
        if self.repaired:
            out["Repaired"] = [f.describe() for f in self.repaired]
        out["FilesHashed"], out["FilesFromCache"] = self.files_hashed, self.files_cached
        return out


def check() -> Report:
    report = Report()
    named = references.referenced()
    _pending(report)
    _work(report)
    _orphans(report, named)
    _records(report)
    _digests(report, named)
    return report


def repair() -> Report:
    """Fix what `check` finds that can be fixed, then check again: the report's findings are
    what is left, `repaired` what this call fixed."""
    before = check()
    repaired = [f for f in before.findings if f.kind in REPAIRABLE and _fix(f)]
    after = check()
    after.repaired = repaired
    return after


# ------------------------------------------------------------------------- checks


def _pending(report: Report) -> None:
    for item in pending.stale():
        report.findings.append(Finding("PendingWithoutProcess", item.key, "", item.detail))


def _work(report: Report) -> None:
    for item in workarea.leftovers():
        report.findings.append(Finding("WorkLeftover", item.path.name, str(item.path), item.why))


def _orphans(report: Report, named: references.References) -> None:
    for path, why in references.unreferenced(named):
        report.findings.append(Finding("OrphanArtifact", path.name, str(path), why))


def _exists(report: Report, resource: str, path: str, what: str) -> None:
    if path and not Path(path).exists():
        report.findings.append(Finding("MissingFile", resource, path, f"{what} is missing"))


def _records(report: Report) -> None:
    snapshots = {s["SnapshotId"]: s for s in JsonTable("snapshots", "snapshot").list()}
    volumes = {v["VolumeId"]: v for v in JsonTable("volumes", "volume").list()}
    for rec in Registry().list():
        if rec.state != "available":
            continue
        for fmt, loc in sorted(rec.locations.items()):
            _exists(report, rec.image_id, loc, f"its {fmt} disk")
        if not rec.locations:
            _exists(report, rec.image_id, rec.image_location, "its file")
        for m in rec.block_device_mappings:
            snap = (m.get("Ebs") or {}).get("SnapshotId")
            is_root = m.get("DeviceName") == rec.root_device_name
            if snap and snap not in snapshots and not is_root:
                report.findings.append(Finding(
                    "MissingSnapshot", rec.image_id, "",
                    f"{m.get('DeviceName')} maps {snap}, which does not exist"))  # fmt: skip
    for snap in snapshots.values():
        if snap["State"] == "completed":
            _exists(report, snap["SnapshotId"], snap["Amilab"].get("Path", ""), "its data")
    for vol in volumes.values():
        if vol["State"] in ("available", "in-use"):
            _exists(report, vol["VolumeId"], vol["Amilab"].get("Path", ""), "its disk")
    instances = JsonTable("instances", "instance").list()
    _attachments(report, volumes.values(), {i["InstanceId"] for i in instances})
    for inst in instances:
        if (inst.get("State") or {}).get("Name") == "terminated":
            continue
        for m in inst.get("BlockDeviceMappings") or []:
            vol_id = (m.get("Ebs") or {}).get("VolumeId")
            if vol_id and vol_id not in volumes:
                report.findings.append(Finding(
                    "MissingVolume", inst["InstanceId"], "",
                    f"{m.get('DeviceName')} uses {vol_id}, which does not exist"))  # fmt: skip


def _attachments(report: Report, volumes: Any, instances: set[str]) -> None:
    """A volume in use by an instance no record has (a launch records its instance before
    it attaches a volume, so only a launch's undo killed half-way leaves this)."""
    for vol in volumes:
        for a in vol.get("Attachments") or []:
            if vol["State"] == "in-use" and a.get("InstanceId") not in instances:
                report.findings.append(Finding(
                    "AttachedToMissingInstance", vol["VolumeId"], "",
                    f"in use by {a.get('InstanceId')}, which does not exist"))  # fmt: skip


def _digests(report: Report, named: references.References) -> None:
    cache = DigestCache()
    store = paths.artifacts_dir()
    subs = sorted(store.iterdir()) if store.is_dir() else []
    for path in sorted(f for d in subs if d.is_dir() for f in d.iterdir()):
        m = ARTIFACT_NAME.match(path.name)
        resource = named.owner(path)
        if not m or resource is None or not path.is_file():
            continue
        got = cache.digest(path, m.group(2))
        if got is not None and got != m.group(1):
            report.findings.append(Finding(
                "DigestMismatch", resource, str(path),
                f"its bytes hash to {got[:16]}…, its name says {m.group(1)[:16]}…"))  # fmt: skip
    report.files_hashed, report.files_cached = cache.hashed, cache.cached


# ------------------------------------------------------------------------- repair


def quarantine_dir() -> Path:
    return paths.amilab_home() / "quarantine" / time.strftime("%Y%m%dT%H%M%S")


def _fix(f: Finding) -> bool:
    if f.kind == "PendingWithoutProcess":
        return any(pending.fail(s) for s in pending.stale() if s.key == f.resource)
    if f.kind == "AttachedToMissingInstance":
        return _detach(f.resource)
    if f.kind == "WorkLeftover":
        return workarea.remove(Path(f.path))
    if f.kind == "OrphanArtifact":
        path = Path(f.path)
        if references.referenced().covers(path):  # named a moment ago: never move it
            return False
        dest = quarantine_dir() / path.relative_to(paths.amilab_home())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)
        workarea.fsync_dir(path.parent)
        return True
    return False


def _detach(volume_id: str) -> bool:
    """The volume back to available, if the instance it names is still missing (a launch
    records its instance before attaching, so a missing one is not coming)."""
    vol = JsonTable("volumes", "volume").get(volume_id) or {}
    ids = {a.get("InstanceId") for a in vol.get("Attachments") or []}
    instances = JsonTable("instances", "instance")
    if not ids or any(instances.get(i) for i in ids if i):
        return False
    changed = False

    def change(v: dict[str, Any]) -> None:
        nonlocal changed
        if v["State"] == "in-use" and {a.get("InstanceId") for a in v["Attachments"]} == ids:
            v["State"], v["Attachments"], changed = "available", [], True

    JsonTable("volumes", "volume").update(volume_id, change)
    return changed
