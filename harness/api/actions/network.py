"""What Terraform, Packer and the SDKs ask about before they launch: regions, availability
zones, a default VPC with one subnet per zone, and security groups. Security groups are
records only (the guests' network is slirp's; nothing filters it); each account has a
`default` group in the default VPC, as on EC2."""

from __future__ import annotations

import hashlib
from typing import Any

from builder.ids import random_id
from builder.images.records import now_iso
from builder.images.tables import JsonTable, Row
from harness.api.actions.common import Context, Params, Result, action, check_ids, require, tags_of
from harness.api.actions.filters import field, filtered, filters_of, match_filters
from harness.api.errors import ApiError

REGION = "us-east-1"
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
VPC_CIDR = "172.31.0.0/16"


def _stable(prefix: str, *parts: str) -> str:
    return f"{prefix}-" + hashlib.sha256("/".join(parts).encode()).hexdigest()[:17]


def default_vpc_id(account: str) -> str:
    return _stable("vpc", "default-vpc", account)


def subnet_id(account: str, zone: str) -> str:
    return _stable("subnet", "default-subnet", account, zone)


def default_group_id(account: str) -> str:
    return _stable("sg", "default-group", account)


def groups() -> JsonTable:
    return JsonTable("security_groups", "security group")


def _default_group(account: str) -> Row:
    return {
        "GroupId": default_group_id(account), "GroupName": "default",
        "Description": "default VPC security group", "OwnerId": account,
        "VpcId": default_vpc_id(account),
        "IpPermissions": [{"IpProtocol": "-1", "UserIdGroupPairs": [
            {"GroupId": default_group_id(account), "UserId": account}]}],
        "IpPermissionsEgress": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        "Tags": [],
    }  # fmt: skip


def account_groups(account: str) -> list[Row]:
    rows = [g for g in groups().list() if g["OwnerId"] == account]
    if not any(g["GroupName"] == "default" for g in rows):
        rows.insert(0, _default_group(account))
    return rows


def find_group(group_id: str, account: str) -> Row:
    for g in account_groups(account):
        if g["GroupId"] == group_id:
            return g
    raise ApiError("InvalidGroup.NotFound", f"The security group '{group_id}' does not exist")


def subnet_item(account: str, zone: str) -> dict[str, Any]:
    n = ZONES.index(zone)
    return {
        "SubnetId": subnet_id(account, zone), "VpcId": default_vpc_id(account),
        "AvailabilityZone": zone, "AvailabilityZoneId": f"use1-az{n + 1}",
        "CidrBlock": f"172.31.{16 * n}.0/20", "AvailableIpAddressCount": 4091,
        "DefaultForAz": True, "MapPublicIpOnLaunch": True, "State": "available",
        "OwnerId": account, "Tags": [],
        "SubnetArn": f"arn:aws:ec2:{REGION}:{account}:subnet/{subnet_id(account, zone)}",
    }  # fmt: skip


@action("DescribeRegions")
def describe_regions(p: Params, ctx: Context) -> Result:
    items = [{"RegionName": REGION, "Endpoint": f"ec2.{REGION}.amazonaws.com",
              "OptInStatus": "opt-in-not-required"}]  # fmt: skip
    names = p.get("RegionNames") or []
    for n in names:
        if n != REGION:
            raise ApiError("InvalidParameterValue", f"Invalid region: {n} (only {REGION} here)")
    fields = {"region-name": field("RegionName"), "endpoint": field("Endpoint")}
    return {"Regions": filtered(items, p, fields)}


@action("DescribeAvailabilityZones")
def describe_availability_zones(p: Params, ctx: Context) -> Result:
    items = [{"ZoneName": z, "ZoneId": f"use1-az{i + 1}", "State": "available",
              "RegionName": REGION, "ZoneType": "availability-zone",
              "OptInStatus": "opt-in-not-required", "GroupName": REGION,
              "NetworkBorderGroup": REGION, "Messages": []}
             for i, z in enumerate(ZONES)]  # fmt: skip
    for n in p.get("ZoneNames") or []:
        if n not in ZONES:
            raise ApiError("InvalidParameterValue", f"Invalid availability zone: [{n}]")
    if names := p.get("ZoneNames"):
        items = [i for i in items if i["ZoneName"] in names]
    fields = {"zone-name": field("ZoneName"), "state": field("State"),
              "region-name": field("RegionName"), "zone-id": field("ZoneId"),
              "zone-type": field("ZoneType"), "opt-in-status": field("OptInStatus")}  # fmt: skip
    return {"AvailabilityZones": filtered(items, p, fields)}


@action("DescribeAccountAttributes")
def describe_account_attributes(p: Params, ctx: Context) -> Result:
    values = {"supported-platforms": ["VPC"], "default-vpc": [default_vpc_id(ctx.account_id)],
              "max-instances": ["20"]}  # fmt: skip
    names = p.get("AttributeNames") or list(values)
    return {"AccountAttributes": [
        {"AttributeName": n, "AttributeValues": [{"AttributeValue": v} for v in values[n]]}
        for n in names if n in values]}  # fmt: skip


@action("DescribeVpcs", "InvalidVpcID.NotFound")
def describe_vpcs(p: Params, ctx: Context) -> Result:
    vpc = {
        "VpcId": default_vpc_id(ctx.account_id), "CidrBlock": VPC_CIDR, "State": "available",
        "IsDefault": True, "InstanceTenancy": "default", "OwnerId": ctx.account_id,
        "DhcpOptionsId": "dopt-00000000", "Tags": [],
        "CidrBlockAssociationSet": [{"AssociationId": "vpc-cidr-assoc-0", "CidrBlock": VPC_CIDR,
                                     "CidrBlockState": {"State": "associated"}}],
    }  # fmt: skip
    for i in check_ids(p.get("VpcIds") or [], "vpc", "InvalidVpcID.Malformed"):
        if i != vpc["VpcId"]:
            raise ApiError("InvalidVpcID.NotFound", f"The vpc ID '{i}' does not exist")
    fields = {"vpc-id": field("VpcId"), "is-default": field("IsDefault"),
              "state": field("State"), "cidr": field("CidrBlock"),
              "owner-id": field("OwnerId")}  # fmt: skip
    return {"Vpcs": filtered([vpc], p, fields)}


@action("DescribeSubnets", "InvalidSubnetID.NotFound")
def describe_subnets(p: Params, ctx: Context) -> Result:
    items = [subnet_item(ctx.account_id, z) for z in ZONES]
    ids = check_ids(p.get("SubnetIds") or [], "subnet", "InvalidSubnetID.Malformed")
    for i in ids:
        if i not in {s["SubnetId"] for s in items}:
            raise ApiError("InvalidSubnetID.NotFound", f"The subnet ID '{i}' does not exist")
    if ids:
        items = [s for s in items if s["SubnetId"] in ids]
    fields = {"subnet-id": field("SubnetId"), "vpc-id": field("VpcId"),
              "availability-zone": field("AvailabilityZone"), "default-for-az":
              field("DefaultForAz"), "state": field("State"),
              "cidr-block": field("CidrBlock")}  # fmt: skip
    return {"Subnets": filtered(items, p, fields)}


_GROUP_FIELDS = {
    "group-id": field("GroupId"), "group-name": field("GroupName"),
    "vpc-id": field("VpcId"), "owner-id": field("OwnerId"),
    "description": field("Description"),
}  # fmt: skip


@action("DescribeSecurityGroups", "InvalidGroup.NotFound")
def describe_security_groups(p: Params, ctx: Context) -> Result:
    rows = account_groups(ctx.account_id)
    ids = check_ids(p.get("GroupIds") or [], "sg", "InvalidGroupId.Malformed")
    names = p.get("GroupNames") or []
    for i in ids:
        find_group(i, ctx.account_id)
    for n in names:
        if n not in {g["GroupName"] for g in rows}:
            raise ApiError("InvalidGroup.NotFound", f"The security group '{n}' does not exist")
    if ids or names:
        rows = [g for g in rows if g["GroupId"] in ids or g["GroupName"] in names]
    filters = filters_of(p)
    return {"SecurityGroups": [g for g in rows if match_filters(g, filters, _GROUP_FIELDS)]}


@action("CreateSecurityGroup")
def create_security_group(p: Params, ctx: Context) -> Result:
    name = require(p, "GroupName")
    description = require(p, "Description")
    if len(name) > 255 or name.startswith("sg-") or name == "default":
        raise ApiError("InvalidParameterValue", f"Invalid value '{name}' for GroupName")
    vpc = p.get("VpcId") or default_vpc_id(ctx.account_id)
    if vpc != default_vpc_id(ctx.account_id):
        raise ApiError("InvalidVpcID.NotFound", f"The vpc ID '{vpc}' does not exist")
    gid = random_id("sg")
    tags = [{"Key": k, "Value": v} for s in p.get("TagSpecifications") or []
            for k, v in tags_of(s.get("Tags")).items()]  # fmt: skip
    row = {
        "GroupId": gid, "GroupName": name, "Description": description,
        "OwnerId": ctx.account_id, "VpcId": vpc, "IpPermissions": [],
        "IpPermissionsEgress": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        "Tags": tags, "Amilab": {"Created": now_iso()},
    }  # fmt: skip
    with groups().transaction():  # the name check and the insert are one step
        if any(g["GroupName"] == name for g in account_groups(ctx.account_id)):
            raise ApiError("InvalidGroup.Duplicate", f"The security group '{name}' already exists")
        groups().insert(gid, row)
    return {"GroupId": gid, "Tags": tags}


def _group_ref(p: Params, ctx: Context) -> Row:
    if p.get("GroupId"):
        return find_group(p["GroupId"], ctx.account_id)
    name = require(p, "GroupName")
    for g in account_groups(ctx.account_id):
        if g["GroupName"] == name:
            return g
    raise ApiError("InvalidGroup.NotFound", f"The security group '{name}' does not exist")


@action("DeleteSecurityGroup", "InvalidGroup.NotFound")
def delete_security_group(p: Params, ctx: Context) -> Result:
    g = _group_ref(p, ctx)
    if g["GroupName"] == "default":
        raise ApiError("CannotDelete", "the default security group cannot be deleted")
    groups().delete(g["GroupId"])
    return {"Return": True, "GroupId": g["GroupId"]}


def _permissions(p: Params) -> list[dict[str, Any]]:
    perms = list(p.get("IpPermissions") or [])
    if p.get("IpProtocol"):
        perm: dict[str, Any] = {"IpProtocol": p["IpProtocol"]}
        for k in ("FromPort", "ToPort"):
            if p.get(k) is not None:
                perm[k] = p[k]
        if p.get("CidrIp"):
            perm["IpRanges"] = [{"CidrIp": p["CidrIp"]}]
        perms.append(perm)
    if not perms:
        raise ApiError("MissingParameter", "The request must contain the parameter IpPermissions")
    return perms


def _change_rules(p: Params, ctx: Context, key: str, add: bool) -> Result:
    g = _group_ref(p, ctx)
    perms = _permissions(p)
    if g["GroupName"] == "default":
        groups().ensure(g["GroupId"], g)  # the default group's row, made once

    def change(r: Row) -> None:
        if add:
            for perm in perms:
                if perm in r[key]:
                    raise ApiError("InvalidPermission.Duplicate", "the rule already exists")
            r[key].extend(perms)
        else:
            r[key] = [x for x in r[key] if x not in perms]

    groups().update(g["GroupId"], change, "InvalidGroup.NotFound")
    return {"Return": True}


@action("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound")
def authorize_ingress(p: Params, ctx: Context) -> Result:
    return _change_rules(p, ctx, "IpPermissions", True)


@action("AuthorizeSecurityGroupEgress", "InvalidGroup.NotFound")
def authorize_egress(p: Params, ctx: Context) -> Result:
    return _change_rules(p, ctx, "IpPermissionsEgress", True)


@action("RevokeSecurityGroupIngress", "InvalidGroup.NotFound")
def revoke_ingress(p: Params, ctx: Context) -> Result:
    return _change_rules(p, ctx, "IpPermissions", False)


@action("RevokeSecurityGroupEgress", "InvalidGroup.NotFound")
def revoke_egress(p: Params, ctx: Context) -> Result:
    return _change_rules(p, ctx, "IpPermissionsEgress", False)
