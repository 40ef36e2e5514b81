"""What every family of instance operations shares: the record made true before it is
read (`reconcile`: a supervisor that is gone leaves the instance stopped), the supervisor's
signals, who owns an instance, its AWS shape, and waiting for a state."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from builder.errors import BadInput
from builder.images import volumes
from builder.images.tables import Row
from harness.instances import hibernation, hotplug, store


def supervisor_alive(rec: Row) -> bool:
    """Its supervisor, or while it is being launched the launching process, is alive."""
    sup = rec["Amilab"].get("Supervisor") or rec["Amilab"].get("Launcher") or {}
    return store.same_process(sup.get("Pid"), sup.get("Start"))


def _kill_leftovers(rec: Row) -> None:
    a = rec["Amilab"]
    for key in ("QemuPid", "NetworkPid"):
        pid = a.get(key)
        if pid and store.process_start(pid) is not None:
            try:
                if Path(f"/proc/{pid}/cwd").resolve() == Path(a["Dir"]).resolve():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def reconcile(rec: Row) -> Row:
    """The record made true: a supervised state with no supervisor behind it is stopped
    (terminated, if it was on its way there), with EC2's StateReason saying why."""
    if rec["State"]["Name"] not in store.SUPERVISED or supervisor_alive(rec):
        return rec
    with store.locked(rec["InstanceId"]):
        rec = reconcile_locked(rec["InstanceId"])
    if rec["State"]["Name"] == "terminated":
        release_terminated(rec)
    return rec


def reconcile_locked(iid: str) -> Row:
    """`reconcile` for a caller that holds the instance's lock."""
    settled: list[tuple[str, str]] = []

    def change(r: Row) -> None:
        if r["State"]["Name"] not in store.SUPERVISED:
            # a request recorded as its supervisor was finishing: no QEMU will carry it out
            settled.extend(hotplug.settle(r))
            return
        if supervisor_alive(r):
            return
        _kill_leftovers(r)
        hibernation.drop_partial(r)  # a save its supervisor did not finish
        pid = (r["Amilab"].get("Supervisor") or {}).get("Pid")
        launcher = r["Amilab"].pop("Launcher", None)
        end = "terminated" if r["State"]["Name"] == "shutting-down" or launcher else "stopped"
        why = (
            f"the process launching it (pid {launcher.get('Pid')}) ended before it started"
            if launcher
            else f"the instance's supervisor (pid {pid}) ended without stopping it; "
            "its QEMU died with it"
        )
        store.set_state(r, end, ("Server.InternalError", f"Server.InternalError: {why}"))
        r["Amilab"].update(Supervisor=None, QemuPid=None, NetworkPid=None, Desired=None)
        settled.extend(hotplug.settle(r))  # no guest holds a device any more

    rec = store.instances().update(iid, change)
    hotplug.settle_volumes(iid, settled)
    return rec


def release_terminated(rec: Row) -> None:
    """What a terminated instance gives back: volumes mapped with DeleteOnTermination are
    deleted, the others detached (they stay, available); its directory goes. Idempotent."""
    hibernation.discard(rec)  # a hibernated instance's saved RAM goes with it
    for m in rec.get("BlockDeviceMappings", []):
        vid = m["Ebs"]["VolumeId"]
        if volumes.volumes().get(vid) is None:
            continue
        with contextlib.suppress(BadInput):
            volumes.detach(vid)
        if m["Ebs"].get("DeleteOnTermination"):
            with contextlib.suppress(BadInput):
                volumes.delete_volume(vid)
    shutil.rmtree(rec["Amilab"]["Dir"], ignore_errors=True)


def public(rec: Row) -> Row:
    """The AWS shape, plus where the instance's SSH really is: port 22 of its address,
    unless the host's own sshd holds port 22 of every address (then another port; EC2's
    shape has no field for it, so amilab's own key says it)."""
    out = {k: v for k, v in rec.items() if k != "Amilab"}
    out["HibernationOptions"] = hibernation.options(rec)  # also for records from before it
    out["amilab:SshPort"] = int(rec.get("Amilab", {}).get("SshPort") or 22)
    return out


def acting_account() -> str:
    """The account this request acts as (an API request: its signer's); a new instance's owner."""
    from builder.images.shapes import account_id

    return account_id()


def owner_of_instance(rec: Row) -> str:
    """Who launched it; instances launched before owners were kept are the local account's."""
    from builder.images.shapes import local_account_id

    return str(rec["Amilab"].get("OwnerId") or local_account_id())


def current_states(ids: list[str]) -> list[tuple[Row, str]]:
    """(record now, previous state name) for each ID, all checked before any is touched."""
    recs = [reconcile(store.find(i)) for i in ids]
    return [(r, r["State"]["Name"]) for r in recs]


def wait_for(instance_id: str, states: tuple[str, ...], timeout: float) -> Row:
    deadline = time.monotonic() + timeout
    while True:
        rec = reconcile(store.find(instance_id))
        if rec["State"]["Name"] in states:
            return rec
        if time.monotonic() > deadline:
            raise BadInput(
                f"{instance_id} is {rec['State']['Name']}, not {'/'.join(states)}, "
                f"after {timeout:.0f} s"
            )
        time.sleep(0.2)


def signal_supervisor(rec: Row, sig: int) -> bool:
    sup = rec["Amilab"].get("Supervisor") or {}
    if not store.same_process(sup.get("Pid"), sup.get("Start")):
        return False
    try:
        os.kill(sup["Pid"], sig)
    except ProcessLookupError:
        return False
    return True


def transition(rec: Row, previous: str) -> dict[str, Any]:
    return {
        "InstanceId": rec["InstanceId"],
        "CurrentState": rec["State"],
        "PreviousState": store.state(previous),
    }
