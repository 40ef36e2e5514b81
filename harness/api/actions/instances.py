"""Instances: RunInstances and the state changes over harness.instances.operations, the
describes Terraform and the waiters poll, instance types and credit specifications."""

from __future__ import annotations

import base64
import binascii
import threading
from datetime import datetime
from typing import Any

from builder.build.kernel_catalogue import load_catalogue
from builder.errors import AmilabError
from builder.images.kernel_refs import find_kernel
from builder.images.tables import JsonTable, Row
from harness.api.actions import network
from harness.api.actions.common import Context, Params, Result, action, require, tag_specs
from harness.api.actions.filters import field, filtered, filters_of, match_filters
from harness.api.actions.lookup import find_instance, find_visible
from harness.api.errors import ApiError, from_library
from harness.instances import attributes, store
from harness.instances.operations import common, describe, launch, stop
from harness.launch.request import USER_DATA_MAX
from harness.launch.types import TYPES, InstanceType

_token_lock = threading.Lock()


def _ids(p: Params, ctx: Context, required: bool = True) -> list[str]:
    ids = list(p.get("InstanceIds") or [])
    if required and not ids:
        raise ApiError("MissingParameter", "The request must contain the parameter InstanceId")
    return [find_instance(i, ctx)["InstanceId"] for i in ids]


def instance_item(rec: Row, account: str) -> dict[str, Any]:
    """The record as EC2 describes it, with the network fields Terraform expects."""
    item = common.public(rec)
    zone = (item.get("Placement") or {}).get("AvailabilityZone") or network.ZONES[0]
    if zone not in network.ZONES:
        zone = network.ZONES[0]
    group = {"GroupId": network.default_group_id(account), "GroupName": "default"}
    vpc, subnet = network.default_vpc_id(account), network.subnet_id(account, zone)
    item.setdefault("VpcId", vpc)
    item.setdefault("SubnetId", subnet)
    item.setdefault("SecurityGroups", [group])
    item.setdefault("Monitoring", {"State": "disabled"})
    item.setdefault("EbsOptimized", False)
    item.setdefault("SourceDestCheck", True)
    item.setdefault("EnaSupport", False)
    item.setdefault("PlatformDetails", "Linux/UNIX")
    item.setdefault("UsageOperation", "RunInstances")
    item.setdefault("CpuOptions", {"CoreCount": 1, "ThreadsPerCore": 1})
    item.setdefault(
        "MetadataOptions",
        {
            "State": "applied",
            "HttpTokens": "optional",
            "HttpPutResponseHopLimit": 1,
            "HttpEndpoint": "enabled",
        },
    )
    item.setdefault("CapacityReservationSpecification", {"CapacityReservationPreference": "open"})
    item.setdefault("MaintenanceOptions", {"AutoRecovery": "default"})
    item.setdefault("PrivateDnsNameOptions", {"HostnameType": "ip-name"})
    item.setdefault("NetworkInterfaces", [{
        "NetworkInterfaceId": "eni-" + rec["InstanceId"][2:], "SubnetId": subnet, "VpcId": vpc,
        "Status": "in-use", "PrivateIpAddress": rec.get("PrivateIpAddress"),
        "Groups": [group], "SourceDestCheck": True, "InterfaceType": "interface",
        "OwnerId": account, "Attachment": {"DeviceIndex": 0, "Status": "attached",
                                           "DeleteOnTermination": True},
    }])  # fmt: skip
    # times as datetimes: the serializer parses strings with dateutil, a fifth of a describe
    item["LaunchTime"] = _when(item.get("LaunchTime"))
    item["BlockDeviceMappings"] = [
        {**m, "Ebs": {**m["Ebs"], "AttachTime": _when(m["Ebs"].get("AttachTime"))}}
        if "Ebs" in m else m
        for m in item.get("BlockDeviceMappings") or []
    ]  # fmt: skip
    if item["State"]["Name"] in ("stopped", "terminated"):
        item.pop("PublicIpAddress", None)
        item["PublicDnsName"] = ""
    return item


def _when(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


_FILTERS = {
    "instance-id": field("InstanceId"),
    "image-id": field("ImageId"),
    "instance-state-name": field("State", "Name"),
    "instance-state-code": field("State", "Code"),
    "instance-type": field("InstanceType"),
    "key-name": field("KeyName"),
    "kernel-id": field("KernelId"),
    "ramdisk-id": field("RamdiskId"),
    "availability-zone": field("Placement", "AvailabilityZone"),
    "private-ip-address": field("PrivateIpAddress"),
    "ip-address": field("PublicIpAddress"),
    "dns-name": field("PublicDnsName"),
    "private-dns-name": field("PrivateDnsName"),
    "architecture": field("Architecture"),
    "root-device-type": field("RootDeviceType"),
    "root-device-name": field("RootDeviceName"),
    "virtualization-type": field("VirtualizationType"),
    "vpc-id": field("VpcId"),
    "subnet-id": field("SubnetId"),
    "instance.group-id": field("SecurityGroups", "GroupId"),
    "instance.group-name": field("SecurityGroups", "GroupName"),
    "launch-time": field("LaunchTime"),
    "instance-lifecycle": field("InstanceLifecycle"),
    "block-device-mapping.volume-id": field("BlockDeviceMappings", "Ebs", "VolumeId"),
    "block-device-mapping.device-name": field("BlockDeviceMappings", "DeviceName"),
}


# ---------------------------------------------------------------------- run


def _user_data(p: Params) -> bytes | None:
    text = p.get("UserData")
    if text is None:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("InvalidParameterValue", "Invalid BASE64 encoding of user data") from None
    if len(data) > USER_DATA_MAX:
        raise ApiError("InvalidParameterValue", "User data is limited to 16384 bytes")
    return data


def _client_tokens() -> JsonTable:
    return JsonTable("api_client_tokens", "client token")


def _launch_key(p: Params) -> str:
    """What makes two RunInstances the same request, for ClientToken's check."""
    keep = {k: v for k, v in p.items() if k != "ClientToken"}
    return repr(sorted(keep.items(), key=lambda kv: kv[0]))


@action("RunInstances", "InvalidParameterValue")
def run_instances(p: Params, ctx: Context) -> Result:
    token = p.get("ClientToken")
    if token is not None and not (1 <= len(token) <= 64):
        raise ApiError("InvalidParameterValue", "ClientToken: 1-64 ASCII characters")
    if not token:
        return _run(p, ctx)
    key = f"{ctx.account_id}/{token}"
    with _token_lock:  # one launch per token, even when a retry races the first attempt
        seen = _client_tokens().get(key)
        if seen is not None:
            if seen["Request"] != _launch_key(p):
                raise ApiError("IdempotentParameterMismatch",
                               f"ClientToken {token} was used with other parameters")  # fmt: skip
            return _reservation(seen["ReservationId"], ctx)
        result = _run(p, ctx)
        _client_tokens().insert(key, {"ReservationId": result["ReservationId"],
                                      "Request": _launch_key(p)})  # fmt: skip
        return result


def _reservation(rid: str, ctx: Context) -> Result:
    for res in describe.describe_instances()["Reservations"]:
        if res["ReservationId"] == rid and res["OwnerId"] == ctx.account_id:
            return _reservation_item(res, ctx)
    raise ApiError("InvalidReservationID.NotFound", f"reservation {rid} does not exist")


def _reservation_item(
    res: dict[str, Any], ctx: Context, recs: dict[str, Row] | None = None
) -> Result:
    if recs is None:
        recs = {r["InstanceId"]: r for r in store.instances().list()}
    return {
        "ReservationId": res["ReservationId"], "OwnerId": res["OwnerId"],
        "Groups": [{"GroupId": network.default_group_id(ctx.account_id),
                    "GroupName": "default"}],
        "Instances": [instance_item(recs.get(i["InstanceId"], {**i, "Amilab": {}}),
                                    ctx.account_id) for i in res["Instances"]],
    }  # fmt: skip


def _catalogue_kernel(ref: Any) -> bool:
    """A KernelId that is no AKI ID but a kernel of the catalogue (kernels/*.yaml)."""
    return isinstance(ref, str) and not ref.startswith("aki-") and ref in load_catalogue()


def _run(p: Params, ctx: Context) -> Result:
    image = find_visible(require(p, "ImageId"), ctx)
    if image.image_type != "machine":
        raise ApiError("InvalidAMIID.NotFound", f"{image.image_id} is not a machine image")
    lo, hi = int(require(p, "MinCount")), int(require(p, "MaxCount"))
    if lo < 1 or hi < lo:
        raise ApiError(
            "InvalidParameterValue", f"MinCount {lo} and MaxCount {hi}: need 1 <= min <= max"
        )
    if lo > launch.MAX_COUNT:
        raise ApiError(
            "InstanceLimitExceeded",
            f"Your quota allows for {launch.MAX_COUNT} more running instance(s)",
        )
    kernel, ramdisk = p.get("KernelId"), p.get("RamdiskId")
    if kernel and _catalogue_kernel(kernel):
        # a kernel of amilab's catalogue by name, as Amazon's public AKIs were for everyone:
        # fetched and registered on first use
        kernel = find_kernel(str(kernel)).image_id
    elif kernel:
        k = find_visible(kernel, ctx)
        if k.image_type != "kernel":
            raise ApiError("InvalidParameterValue", f"KernelId {kernel} is not a kernel image")
    if ramdisk:
        r = find_visible(ramdisk, ctx)
        if r.image_type != "ramdisk":
            raise ApiError("InvalidParameterValue", f"RamdiskId {ramdisk} is not a ramdisk image")
    zone = (p.get("Placement") or {}).get("AvailabilityZone") or network.ZONES[0]
    if zone not in network.ZONES:
        raise ApiError("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
    if subnet := p.get("SubnetId"):
        zones = {network.subnet_id(ctx.account_id, z): z for z in network.ZONES}
        if subnet not in zones:
            raise ApiError("InvalidSubnetID.NotFound", f"The subnet ID '{subnet}' does not exist")
        zone = zones[subnet]
    for gid in p.get("SecurityGroupIds") or []:
        network.find_group(gid, ctx.account_id)
    tags = [f"{k}={v}" for k, v in tag_specs(p, "instance").items()]
    user_data = _user_data(p)
    mappings = []
    for m in p.get("BlockDeviceMappings") or []:
        if not str(m.get("DeviceName", "")).startswith("/dev/"):
            raise ApiError("InvalidBlockDeviceMapping", f"device name {m.get('DeviceName')!r}")
        mappings.append({k: v for k, v in m.items() if k in ("DeviceName", "Ebs", "VirtualName",
                                                            "NoDevice")})  # fmt: skip
    try:
        req = launch.RunRequest(
            image=image.image_id, count=min(hi, launch.MAX_COUNT),
            key_name=p.get("KeyName"), placement=zone,
            shutdown_behavior=p.get("InstanceInitiatedShutdownBehavior") or "stop",
            disable_api_termination=bool(p.get("DisableApiTermination")),
            disable_api_stop=bool(p.get("DisableApiStop")),
            block_device_mappings=mappings, kernels=[kernel] if kernel else [],
            ramdisk=ramdisk, instance_type=p.get("InstanceType") or None, tags=tags,
            hibernation_configured=bool((p.get("HibernationOptions") or {}).get("Configured")),
        )  # fmt: skip
        if user_data is not None:
            req.metadata["user_data"] = user_data
        result = launch.run_instances(req)
    except AmilabError as e:
        raise from_library(e) from None
    res = {"ReservationId": result["ReservationId"], "OwnerId": result["OwnerId"],
           "Instances": result["Instances"]}  # fmt: skip
    return _reservation_item(res, ctx)


# ------------------------------------------------------------------- describe


def _mine(ctx: Context, ids: list[str] | None = None) -> list[dict[str, Any]]:
    """The caller's reservations (their instances made true first: reconcile)."""
    out = []
    described = describe.describe_instances(ids or None)["Reservations"]
    recs = {r["InstanceId"]: r for r in store.instances().list()}  # read after reconcile
    for res in described:
        if res["OwnerId"] == ctx.account_id:
            out.append(_reservation_item(res, ctx, recs))
    return out


@action("DescribeInstances", "InvalidInstanceID.NotFound")
def describe_instances(p: Params, ctx: Context) -> Result:
    ids = _ids(p, ctx, required=False)
    filters = filters_of(p)
    reservations = []
    for res in _mine(ctx, ids):
        res["Instances"] = [i for i in res["Instances"] if match_filters(i, filters, _FILTERS)]
        if res["Instances"]:
            reservations.append(res)
    return {"Reservations": reservations}


@action("DescribeInstanceStatus", "InvalidInstanceID.NotFound")
def describe_instance_status(p: Params, ctx: Context) -> Result:
    ids = _ids(p, ctx, required=False)
    everything = bool(p.get("IncludeAllInstances"))
    fields = {"instance-state-name": field("InstanceState", "Name"),
              "availability-zone": field("AvailabilityZone"),
              "instance-status.status": field("InstanceStatus", "Status"),
              "instance-status.reachability": field("InstanceStatus", "Details", "Status"),
              "system-status.status": field("SystemStatus", "Status"),
              "system-status.reachability": field("SystemStatus", "Details", "Status")}  # fmt: skip
    out = []
    for res in _mine(ctx, ids):
        for i in res["Instances"]:
            state = i["State"]["Name"]
            if not everything and state != "running":
                continue
            rec = store.find(i["InstanceId"])
            item = {
                "InstanceId": i["InstanceId"],
                "InstanceState": i["State"],
                "AvailabilityZone": i["Placement"]["AvailabilityZone"],
                "SystemStatus": describe.status_check(rec),
                "InstanceStatus": describe.status_check(rec),
                "Events": describe.event_shapes(rec),
            }
            if match_filters(item, filters_of(p), fields):
                out.append(item)
    return {"InstanceStatuses": out}


@action("ModifyInstanceEventStartTime", "InvalidInstanceID.NotFound")
def modify_instance_event_start_time(p: Params, ctx: Context) -> Result:
    from harness.instances.events import parse_time

    iid = find_instance(require(p, "InstanceId"), ctx)["InstanceId"]
    when = require(p, "NotBefore")
    at = when.timestamp() if hasattr(when, "timestamp") else parse_time(str(when))
    return stop.modify_instance_event_start_time(iid, str(require(p, "InstanceEventId")), at)


# ---------------------------------------------------------------- state changes


@action("StopInstances", "IncorrectInstanceState")
def stop_instances(p: Params, ctx: Context) -> Result:
    # Force: EC2 skips the guest's orderly shutdown; here QEMU is ended without the button
    force = bool(p.get("Force"))
    hibernate = bool(p.get("Hibernate"))  # refusals: UnsupportedHibernationConfiguration
    return {"StoppingInstances": stop.stop_instances(_ids(p, ctx), force=force,
                                                     hibernate=hibernate)}  # fmt: skip


@action("StartInstances", "IncorrectInstanceState")
def start_instances(p: Params, ctx: Context) -> Result:
    return {"StartingInstances": launch.start_instances(_ids(p, ctx))}


@action("TerminateInstances", "IncorrectInstanceState")
def terminate_instances(p: Params, ctx: Context) -> Result:
    return {"TerminatingInstances": stop.terminate_instances(_ids(p, ctx))}


@action("RebootInstances", "IncorrectInstanceState")
def reboot_instances(p: Params, ctx: Context) -> Result:
    launch.reboot_instances(_ids(p, ctx))
    return {}


@action("GetConsoleOutput", "InvalidInstanceID.NotFound")
def get_console_output(p: Params, ctx: Context) -> Result:
    rec = find_instance(require(p, "InstanceId"), ctx)
    out = describe.console_output(rec["InstanceId"], latest=bool(p.get("Latest")))
    text = out["Output"]
    return {"InstanceId": out["InstanceId"], "Timestamp": out["Timestamp"],
            "Output": base64.b64encode(text.encode()).decode()}  # fmt: skip


@action("DescribeInstanceAttribute", "InvalidInstanceID.NotFound")
def describe_instance_attribute(p: Params, ctx: Context) -> Result:
    rec = find_instance(require(p, "InstanceId"), ctx)
    attribute = require(p, "Attribute")
    amilab = rec.get("Amilab") or {}
    md = (amilab.get("Launch") or {}).get("Metadata") or {}
    values: dict[str, tuple[str, Any]] = {
        "instanceType": ("InstanceType", {"Value": rec["InstanceType"]}),
        "kernel": ("KernelId", {"Value": rec.get("KernelId")}),
        "ramdisk": ("RamdiskId", {"Value": rec.get("RamdiskId")}),
        "userData": ("UserData", {"Value": md.get("user_data_b64")}),
        "disableApiTermination": ("DisableApiTermination",
                                  {"Value": attributes.protections(rec)["DisableApiTermination"]}),
        "disableApiStop": ("DisableApiStop",
                           {"Value": attributes.protections(rec)["DisableApiStop"]}),
        "instanceInitiatedShutdownBehavior": (
            "InstanceInitiatedShutdownBehavior", {"Value": amilab.get("ShutdownBehavior")}),
        "rootDeviceName": ("RootDeviceName", {"Value": rec.get("RootDeviceName")}),
        "blockDeviceMapping": ("BlockDeviceMappings", rec.get("BlockDeviceMappings") or []),
        "groupSet": ("Groups", [{"GroupId": network.default_group_id(ctx.account_id),
                                 "GroupName": "default"}]),
        "sourceDestCheck": ("SourceDestCheck", {"Value": True}),
        "ebsOptimized": ("EbsOptimized", {"Value": False}),
        "enaSupport": ("EnaSupport", {"Value": False}),
    }  # fmt: skip
    if attribute not in values:
        raise ApiError(
            "InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid."
        )
    key, value = values[attribute]
    return {"InstanceId": rec["InstanceId"], key: value}


# the Attribute=…&Value=… form's names → the structured parameters' names
_ATTRIBUTE_NAMES = {"instanceType": "InstanceType", "kernel": "Kernel", "ramdisk": "Ramdisk",
                    "userData": "UserData", "disableApiTermination": "DisableApiTermination",
                    "disableApiStop": "DisableApiStop",
                    "instanceInitiatedShutdownBehavior": "InstanceInitiatedShutdownBehavior",
                    "sourceDestCheck": "SourceDestCheck", "ebsOptimized": "EbsOptimized",
                    "enaSupport": "EnaSupport"}  # fmt: skip
# what is already so here is accepted (Terraform sends these); anything else is refused
_FIXED = {"SourceDestCheck": True, "EbsOptimized": False, "EnaSupport": False}


def _attribute_value(name: str, value: Any) -> Any:
    """A parameter's value as the library takes it: booleans, strings, user data as bytes
    (the structured UserData is a blob the parser has decoded; the Value form is base64,
    as RunInstances' UserData)."""
    if isinstance(value, dict):
        value = value.get("Value")
    if value is None:
        raise ApiError("MissingParameter", f"The request must contain the parameter {name}.Value")
    if name == "UserData":
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        try:
            return base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                "InvalidParameterValue", "Invalid BASE64 encoding of user data"
            ) from None
    if name in ("DisableApiTermination", "DisableApiStop", *_FIXED):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ApiError("InvalidParameterValue", f"Value ({value}) for {name}: true or false")
    return value


@action("ModifyInstanceAttribute", "InvalidInstanceID.NotFound")
def modify_instance_attribute(p: Params, ctx: Context) -> Result:
    iid = find_instance(require(p, "InstanceId"), ctx)["InstanceId"]
    changes: dict[str, Any] = {}
    if attribute := p.get("Attribute"):
        if attribute not in _ATTRIBUTE_NAMES:
            raise ApiError(
                "InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid."
            )
        changes[_ATTRIBUTE_NAMES[attribute]] = p.get("Value")
    for key, value in p.items():
        if key not in ("InstanceId", "Attribute", "Value", "DryRun"):
            changes[key] = value
    changes = {k: _attribute_value(k, v) for k, v in changes.items()}
    for key, value in list(changes.items()):
        if key in _FIXED and value == _FIXED[key]:
            del changes[key]
        elif key in _FIXED or key not in attributes.NAMES:
            raise ApiError(
                "UnsupportedOperation", f"ModifyInstanceAttribute {key} is not supported here"
            )
    if changes:
        try:
            attributes.modify_instance_attribute(iid, changes)
        except AmilabError as e:
            raise from_library(e) from None
    return {}


# ------------------------------------------------------------ types and credits


def _type_item(t: InstanceType) -> dict[str, Any]:
    item: dict[str, Any] = {
        "InstanceType": t.name, "CurrentGeneration": t.nitro,
        "FreeTierEligible": t.name in ("t2.micro", "t3.micro"),
        "SupportedUsageClasses": ["on-demand", "spot"],
        "SupportedRootDeviceTypes": ["ebs"] + (["instance-store"] if t.instance_store_gib else []),
        "SupportedVirtualizationTypes": list(t.virtualization),
        "BareMetal": False, "Hypervisor": t.hypervisor,
        "ProcessorInfo": {"SupportedArchitectures": list(t.architectures)},
        "VCpuInfo": {"DefaultVCpus": t.vcpus, "DefaultCores": t.vcpus,
                     "DefaultThreadsPerCore": 1},
        "MemoryInfo": {"SizeInMiB": t.memory_mib},
        "InstanceStorageSupported": bool(t.instance_store_gib),
        "EbsInfo": {"EbsOptimizedSupport": "supported" if t.nitro else "unsupported",
                    "EncryptionSupport": "unsupported",
                    "NvmeSupport": "required" if t.nitro else "unsupported"},
        "BurstablePerformanceSupported": t.name.startswith("t"),
        "AutoRecoverySupported": False,
        "SupportedBootModes": ["legacy-bios", "uefi"],
    }  # fmt: skip
    if t.instance_store_gib:
        item["InstanceStorageInfo"] = {
            "TotalSizeInGB": sum(t.instance_store_gib),
            "Disks": [{"SizeInGB": t.instance_store_gib[0], "Count": len(t.instance_store_gib),
                       "Type": "ssd" if t.nitro else "hdd"}],
        }  # fmt: skip
    return item


@action("DescribeInstanceTypes", "InvalidInstanceType")
def describe_instance_types(p: Params, ctx: Context) -> Result:
    names = p.get("InstanceTypes") or list(TYPES)
    for n in names:
        if n not in TYPES:
            raise ApiError(
                "InvalidInstanceType", f"The following supplied instance types do not exist: [{n}]"
            )
    fields = {"instance-type": field("InstanceType"),
              "current-generation": field("CurrentGeneration"),
              "processor-info.supported-architecture":
                  field("ProcessorInfo", "SupportedArchitectures"),
              "supported-virtualization-type": field("SupportedVirtualizationTypes"),
              "burstable-performance-supported": field("BurstablePerformanceSupported"),
              "hypervisor": field("Hypervisor")}  # fmt: skip
    items = [_type_item(TYPES[n]) for n in names]
    return {"InstanceTypes": filtered(items, p, fields)}


@action("DescribeInstanceCreditSpecifications", "InvalidInstanceID.NotFound")
def describe_instance_credit_specifications(p: Params, ctx: Context) -> Result:
    ids = _ids(p, ctx, required=False)
    out = []
    for res in _mine(ctx, ids):
        for i in res["Instances"]:
            t = i["InstanceType"]
            if t.startswith("t"):
                out.append(
                    {
                        "InstanceId": i["InstanceId"],
                        "CpuCredits": "standard" if t.startswith("t2") else "unlimited",
                    }
                )
    return {"InstanceCreditSpecifications": out}
