"""ModifyInstanceAttribute's rules, which the CLI and the API share.

EC2 changes an instance's launch settings only while it is stopped (the instance type, the
kernel, the ramdisk, the user data: the next start reads them from the record, see
`harness.instances.supervisor.build_instance`), and its protections and the
instance-initiated shutdown behaviour at any time (the supervisor reads the behaviour when
the guest powers off; stop and terminate read the protections). Every change is checked
before any is written, and the record is changed in one transaction under the instance's
lock, with the state read in that same transaction.
"""

from __future__ import annotations

import base64
from typing import Any

from builder.errors import BadInput
from builder.images.registry import Registry
from builder.images.tables import Row
from harness.instances import hibernation, store
from harness.instances.operations.common import reconcile
from harness.launch.request import USER_DATA_MAX
from harness.launch.types import check_image, instance_type

# changed only while stopped
WHILE_STOPPED = ("InstanceType", "Kernel", "Ramdisk", "UserData")
# changed at any time
ANY_TIME = ("InstanceInitiatedShutdownBehavior", "DisableApiTermination", "DisableApiStop")
NAMES = WHILE_STOPPED + ANY_TIME


def protections(rec: Row) -> dict[str, bool]:
    a = rec.get("Amilab") or {}
    return {
        "DisableApiTermination": bool(a.get("DisableApiTermination")),
        "DisableApiStop": bool(a.get("DisableApiStop")),
    }


def refuse_if_protected(rec: Row, what: str) -> None:
    """EC2's refusal of StopInstances/TerminateInstances on a protected instance."""
    attribute = {"terminated": "disableApiTermination", "stopped": "disableApiStop"}[what]
    if protections(rec)[attribute[0].upper() + attribute[1:]]:
        raise BadInput(
            f"OperationNotPermitted: The instance '{rec['InstanceId']}' may not be {what}. "
            f"Modify its '{attribute}' instance attribute and try again."
        )


def _checked(rec: Row, changes: dict[str, Any]) -> dict[str, Any]:
    """The changes as they will be written; EC2's refusal for the first bad one."""
    out: dict[str, Any] = {}
    registry = Registry()
    for name, value in changes.items():
        if name not in NAMES:
            raise BadInput(f"InvalidParameterValue: Value ({name}) for parameter attribute is "
                           "invalid.")  # fmt: skip
        if name == "InstanceType":
            itype = instance_type(str(value))
            check_image(itype, rec["Architecture"], rec.get("VirtualizationType") or "hvm")
            stores = len((rec.get("Amilab") or {}).get("InstanceStore") or [])
            if stores > len(itype.instance_store_gib):
                raise BadInput(
                    f"InvalidParameterCombination: The instance has {stores} instance store "
                    f"volume(s); the instance type {itype.name} has "
                    f"{len(itype.instance_store_gib)}"
                )
            out[name] = itype.name
        elif name in ("Kernel", "Ramdisk"):
            if (rec.get("VirtualizationType") or "hvm") == "hvm":
                raise BadInput(
                    f"InvalidParameterCombination: {name} applies to paravirtual instances; "
                    f"{rec['InstanceId']} is hvm"
                )
            kind = "kernel" if name == "Kernel" else "ramdisk"
            try:
                image = registry.find(str(value), kind)
            except BadInput:
                code = "InvalidAMIID.NotFound"
                raise BadInput(f"{code}: The image id '[{value}]' does not exist") from None
            if image.architecture != rec["Architecture"]:
                raise BadInput(
                    f"InvalidParameterValue: The {kind} {image.image_id} is "
                    f"{image.architecture}; the instance is {rec['Architecture']}"
                )
            out[name] = image.image_id
        elif name == "UserData":
            data = bytes(value)
            if len(data) > USER_DATA_MAX:
                raise BadInput("InvalidParameterValue: User data is limited to 16384 bytes")
            out[name] = data
        elif name == "InstanceInitiatedShutdownBehavior":
            if value not in ("stop", "terminate"):
                raise BadInput(
                    f"InvalidParameterValue: Value ({value}) for parameter "
                    "instanceInitiatedShutdownBehavior is invalid. Expected: 'stop', 'terminate'."
                )
            out[name] = value
        else:  # the protections
            if not isinstance(value, bool):
                raise BadInput(f"InvalidParameterValue: {name}: expected true or false")
            if value and rec.get("InstanceLifecycle") == "spot":
                attribute = name[0].lower() + name[1:]
                raise BadInput(
                    f"UnsupportedOperation: Modifying '{attribute}' is not supported for "
                    "spot instances."
                )
            out[name] = value
    return out


def _apply(r: Row, changes: dict[str, Any]) -> None:
    iid, state = r["InstanceId"], r["State"]["Name"]
    if state == "terminated":
        raise BadInput(f"IncorrectInstanceState: The instance '{iid}' is terminated")
    if any(n in WHILE_STOPPED for n in changes) and state != "stopped":
        raise BadInput(f"IncorrectInstanceState: The instance '{iid}' is not in the "
                       "'stopped' state.")  # fmt: skip
    hibernation.refuse_modify(r, list(changes))  # a saved RAM keeps its devices and kernel
    a = r["Amilab"]
    for name, value in changes.items():
        if name == "InstanceType":
            r["InstanceType"] = value
        elif name == "Kernel":
            r["KernelId"] = value
        elif name == "Ramdisk":
            r["RamdiskId"] = value
        elif name == "UserData":
            md = a.setdefault("Launch", {}).setdefault("Metadata", {})
            md.pop("user_data", None)
            if value:
                md["user_data_b64"] = base64.b64encode(value).decode()
            else:  # an empty value removes the user data
                md.pop("user_data_b64", None)
        elif name == "InstanceInitiatedShutdownBehavior":
            a["ShutdownBehavior"] = value
        else:
            a[name] = value


def modify_instance_attribute(instance_id: str, changes: dict[str, Any]) -> Row:
    """Change attributes of one instance (names as ModifyInstanceAttribute's parameters:
    InstanceType, Kernel, Ramdisk, UserData as bytes, InstanceInitiatedShutdownBehavior,
    DisableApiTermination, DisableApiStop); the record after."""
    if not changes:
        raise BadInput("MissingParameter: The request must contain an attribute to modify")
    rec = reconcile(store.find(instance_id))
    checked = _checked(rec, changes)
    with store.locked(instance_id):
        return store.instances().update(
            instance_id, lambda r: _apply(r, checked), "InvalidInstanceID.NotFound"
        )
