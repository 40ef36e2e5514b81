"""Hibernation, as EC2 does it: `stop-instances --hibernate` keeps the guest's RAM, and the
next `start-instances` resumes it where it was (processes, tmpfs, uptime).

EC2 has the guest write its RAM to its root volume (suspend-to-disk through an agent); here
the host saves it from outside, with QEMU's migration to a file beside the root volume
(harness.launch.migration), so any image hibernates without an agent in it. The rules are
EC2's: only an instance launched with `HibernationOptions.Configured` may hibernate, and only
when its root volume can hold its RAM (refused at launch); a hibernated instance's type,
kernel and ramdisk do not change; terminating it discards the saved state.

The record says what is true at every moment: the saved state is in `Amilab.Hibernation`
(its file, the fingerprint of the QEMU build and command line that wrote it) only once the
file is complete; a save that fails leaves the guest running and the record saying why; a
start whose QEMU or command line no longer matches the state (QEMU upgraded, a volume
attached while hibernated) boots cold, discards the state and says so in the
StateTransitionReason, as does a load that fails.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import BadInput
from builder.images import volumes
from builder.images.records import now_iso
from builder.images.tables import Row
from builder.steps import Step
from harness.instances import store
from harness.launch import migration

if TYPE_CHECKING:  # the launch pipeline only where a supervisor runs it, not in every command
    from harness.launch.steps import Instance

DESIRED = "hibernate"  # Amilab.Desired: what the supervisor does on SIGTERM
HIBERNATE = (
    "Client.UserInitiatedHibernate",
    "Client.UserInitiatedHibernate: User initiated hibernate",
)
SUFFIX = ".hibernation"
GIB_MIB = 1024
# what ModifyInstanceAttribute may not change while the RAM waits: the guest's devices and
# the kernel in its memory are the ones the state was saved with
FIXED = ("InstanceType", "Kernel", "Ramdisk")


# ------------------------------------------------------------------ the rules


def parse_options(text: str) -> bool:
    """The aws CLI's `--hibernation-options Configured=true` (or its JSON form)."""
    text = text.strip()
    value: Any
    if text.startswith("{"):
        try:
            value = json.loads(text).get("Configured")
        except (ValueError, AttributeError):
            value = None
    else:
        key, _, value = text.partition("=")
        if key.strip() != "Configured":
            value = None
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise BadInput(
            f"--hibernation-options {text!r}: expected Configured=true|false or "
            '{"Configured": true}'
        )
    return value


def options(rec: Row) -> dict[str, bool]:
    """DescribeInstances' HibernationOptions (false for instances launched before it)."""
    return {"Configured": bool((rec.get("HibernationOptions") or {}).get("Configured"))}


def check_launch(configured: bool, memory_mib: int, instance_type: str, root_gib: int) -> None:
    """RunInstances' refusal when hibernation cannot work: EC2 requires a root volume that
    can hold the RAM (its prerequisite refusals use this code, e.g. for an unencrypted root)."""
    if configured and root_gib * GIB_MIB < memory_mib:
        raise BadInput(
            "UnsupportedHibernationConfiguration: For hibernation, the root device volume "
            f"must be at least as large as the instance's RAM: the root volume is "
            f"{root_gib} GiB, instance type {instance_type} has {memory_mib / GIB_MIB:.2f} "
            "GiB of RAM. Launch with a larger root volume (--block-device-mapping "
            "DEVICE=:GiB) or a smaller instance type."
        )


def root_gib(mappings: list[dict[str, Any]], root_device: str, image_gib: int) -> int:
    """The root volume's size as the launch will make it (the mapping's, at least the
    image's)."""
    for m in mappings:
        if m.get("DeviceName") == root_device and "Ebs" in m:
            return max(int(m["Ebs"].get("VolumeSize") or 0), image_gib)
    return image_gib


def refuse_stop(rec: Row, state: str, force: bool) -> None:
    """StopInstances(Hibernate=true)'s refusals, checked for every instance before any."""
    iid = rec["InstanceId"]
    if not options(rec)["Configured"]:
        raise BadInput(
            "UnsupportedHibernationConfiguration: The instance can't be hibernated because it "
            f"was not configured at launch for hibernation: {iid}"
        )
    if force:
        raise BadInput("InvalidParameterCombination: Hibernate and Force cannot be used together")
    if state not in ("running", "stopped", "stopping"):
        raise BadInput(
            f"IncorrectInstanceState: The instance '{iid}' is not in the 'running' state."
        )


def hibernated(rec: Row) -> bool:
    return rec["State"]["Name"] == "stopped" and bool(rec["Amilab"].get("Hibernation"))


def refuse_modify(rec: Row, names: list[str]) -> None:
    """ModifyInstanceAttribute on a hibernated instance: its type, kernel and ramdisk stay."""
    fixed = [n for n in names if n in FIXED]
    if fixed and hibernated(rec):
        raise BadInput(
            f"IncorrectInstanceState: The instance '{rec['InstanceId']}' is hibernated; "
            f"its {fixed[0]} cannot be changed until it has been started."
        )


# ------------------------------------------------------------- the saved state


def state_file(rec: Row) -> Path | None:
    """Where the instance's RAM goes: beside its root volume (None without one)."""
    for m in rec.get("BlockDeviceMappings") or []:
        if m["DeviceName"] == rec["RootDeviceName"]:
            vol = volumes.volumes().get(m["Ebs"]["VolumeId"])
            if vol is not None:
                path = volumes.volume_path(vol)
                return path.with_name(path.stem + SUFFIX)
    return None


def _files(rec: Row) -> list[Path]:
    saved = rec.get("Amilab", {}).get("Hibernation") or {}
    found = [Path(saved["File"])] if saved.get("File") else []
    if (path := state_file(rec)) is not None:
        found.append(path)
    return found + [p.with_name(p.name + migration.PARTIAL) for p in found]


def drop_partial(rec: Row) -> None:
    """A save cut short (its supervisor killed mid-way) leaves no half-written file behind."""
    for p in _files(rec):
        if p.name.endswith(migration.PARTIAL):
            p.unlink(missing_ok=True)


def discard(rec: Row) -> None:
    """The saved state's files gone (terminated, resumed or no longer loadable)."""
    for p in _files(rec):
        p.unlink(missing_ok=True)


def saved_note(rec: Row) -> str:
    """What describe/CLI say about an instance's saved state, or ''."""
    saved = rec.get("Amilab", {}).get("Hibernation")
    if saved and rec["State"]["Name"] == "stopped":
        return f"hibernated at {saved['SavedAt']} ({saved['Bytes'] / 2**20:.0f} MiB saved)"
    return ""


def start_note(rec: Row) -> str:
    """How the last start went, for start-instances' output: resumed, or a cold boot and why
    (set by the supervisor); '' for an ordinary start."""
    if rec["State"]["Name"] == "pending" and rec["Amilab"].get("Hibernation"):
        return "resuming from hibernation"
    resume = rec["Amilab"].get("Resume") or {}
    return str(resume.get("Note") or "")


def refuse_if_failed(rec: Row) -> None:
    """`stop-instances --hibernate --wait` ended with the instance running: the save failed."""
    if rec["State"]["Name"] == "running":
        why = rec["Amilab"].get("HibernateError") or "see the supervisor's log"
        raise BadInput(
            f"IncorrectInstanceState: {rec['InstanceId']} could not be hibernated ({why}); "
            "it is still running"
        )


# ------------------------------------------------------------ in the supervisor


def _update(iid: str, change: Callable[[Row], None]) -> Row:
    return store.instances().update(iid, change, "InvalidInstanceID.NotFound")


def hibernate(iid: str, inst: Instance, log: Callable[[str], None]) -> tuple[str, Any] | None:
    """Save the guest and end its QEMU: ("stopped", the hibernate reason). None when the save
    failed: the guest runs on, the record back to running with the reason."""
    assert inst.qemu is not None and inst.dir is not None
    rec = store.find(iid)
    dest = state_file(rec)
    mon = inst.qemu.qmp(inst.dir.qmp_socket)
    try:
        if dest is None:
            raise migration.MigrationFailed("the instance has no root volume to save beside")
        version, size = migration.save(mon, dest)
        entry = {
            "File": str(dest), "Bytes": size, "SavedAt": now_iso(), "QemuVersion": version,
            "Fingerprint": migration.fingerprint(version, inst.argv), "Argv": inst.argv,
        }  # fmt: skip
        try:
            _update(iid, lambda r: r["Amilab"].update(Hibernation=entry, Resume=None,
                                                      HibernateError=None))  # fmt: skip
        except BaseException:
            dest.unlink(missing_ok=True)
            with contextlib.suppress(Exception):
                mon.cmd("cont")
            raise
    except migration.MigrationFailed as e:
        why = str(e)
        log(f"hibernation failed, the guest runs on: {why}")

        def still_running(r: Row) -> None:
            store.set_state(r, "running")
            r["StateTransitionReason"] = f"amilab: hibernation failed ({why}); still running"
            r["Amilab"].update(Desired=None, HibernateError=why)

        _update(iid, still_running)
        return None
    log(f"hibernated: {size / 2**20:.0f} MiB of RAM and device state in {dest}")
    inst.qemu.stop(inst.dir.qmp_socket, timeout=10.0)  # `quit`: nothing left to run
    return "stopped", HIBERNATE


class _Resume:
    """What PrepareResume found, for CompleteResume."""

    def __init__(self, record: Row, log: Callable[[str], None]) -> None:
        self.record = record
        self.log = log
        self.file: Path | None = None
        self.note = ""


class PrepareResume(Step["Instance"]):
    """Between composing QEMU's command line and starting it: a saved state that still fits
    adds `-incoming defer`; one that does not is discarded with a note (a cold boot)."""

    name = "resume"

    def __init__(self, shared: _Resume) -> None:
        self.shared = shared

    def run(self, s: Instance) -> None:
        rec = self.shared.record
        drop_partial(rec)
        saved = rec["Amilab"].get("Hibernation")
        if not saved:
            return
        path = Path(saved["File"])
        version = migration.binary_version(s.argv[0]) or "unknown"
        why = ""
        if not path.is_file():
            why = "its file is missing"
        elif version != saved.get("QemuVersion"):
            why = f"it was saved by QEMU {saved.get('QemuVersion')}, this is {version}"
        elif migration.fingerprint(version, s.argv) != saved.get("Fingerprint"):
            change = migration.differences(saved.get("Argv") or [], s.argv)
            why = f"the instance's QEMU command line changed since ({change})"
        if why:
            self.shared.note = f"cold boot: the hibernated state was not resumed: {why}"
            return
        self.shared.file = path
        s.argv = s.argv + migration.INCOMING


class CompleteResume(Step["Instance"]):
    """Once QEMU is up: load the saved state and let the guest run (or, if the load fails,
    start QEMU again cold); either way the state is spent, as the disk moves on from here."""

    name = "resume"

    def __init__(self, shared: _Resume) -> None:
        self.shared = shared

    def run(self, s: Instance) -> None:
        sh = self.shared
        iid = sh.record["InstanceId"]
        if sh.file is not None:
            assert s.qemu is not None and s.dir is not None
            try:
                t0 = time.monotonic()
                size = sh.file.stat().st_size
                migration.load(s.qemu.qmp(s.dir.qmp_socket), sh.file)
                sh.note = "resumed from hibernation"
                took = time.monotonic() - t0
                sh.log(f"{sh.note}: {size / 2**20:.0f} MiB loaded in {took:.2f} s")
            except Exception as e:  # noqa: BLE001 - any failure to load means a cold boot
                sh.note = f"cold boot: loading the hibernated state failed: {e}"
                from harness.launch.steps import StartQemu

                s.qemu.kill()
                s.argv = migration.without_incoming(s.argv)
                StartQemu().run(s)
        if sh.note.startswith("cold"):
            sh.log(sh.note)
        if sh.note:
            discard(sh.record)
            _update(iid, lambda r: r["Amilab"].update(Hibernation=None, Resume={
                "Note": sh.note, "At": now_iso()}))  # fmt: skip
        else:
            _update(iid, lambda r: r["Amilab"].update(Resume=None))


def resume_steps(record: Row, log: Callable[[str], None]) -> tuple[Step[Instance], Step[Instance]]:
    """The two steps a start adds around StartQemu (see PrepareResume, CompleteResume)."""
    shared = _Resume(record, log)
    return PrepareResume(shared), CompleteResume(shared)


def running_reason(r: Row) -> None:
    """Once running: a start that should have resumed but booted cold says so (an ordinary
    start, or a resume, has EC2's empty reason)."""
    note = str((r["Amilab"].get("Resume") or {}).get("Note") or "")
    if note.startswith("cold"):
        r["StateTransitionReason"] = f"amilab: {note}"
