"""Key pairs over harness.instances.keypairs, which scopes them to the signer's account
(the server runs each request acting as it)."""

from __future__ import annotations

import base64
import binascii

from harness.api.actions.common import Context, Params, Result, action, require, tag_specs
from harness.api.actions.filters import field, filtered
from harness.api.errors import ApiError
from harness.instances import keypairs

_FIELDS = {"key-name": field("KeyName"), "fingerprint": field("KeyFingerprint"),
           "key-pair-id": field("KeyPairId"), "key-type": field("KeyType")}  # fmt: skip


@action("CreateKeyPair", "InvalidParameterValue")
def create_key_pair(p: Params, ctx: Context) -> Result:
    if p.get("KeyFormat") not in (None, "pem"):
        raise ApiError("InvalidParameterValue", "KeyFormat: only pem is made here")
    row, private = keypairs.create_key_pair(
        require(p, "KeyName"), p.get("KeyType") or "rsa", tag_specs(p, "key-pair")
    )
    return {"KeyName": row["KeyName"], "KeyFingerprint": row["KeyFingerprint"],
            "KeyMaterial": private, "KeyPairId": row["KeyPairId"], "Tags": row["Tags"]}  # fmt: skip


@action("ImportKeyPair", "InvalidKey.Format")
def import_key_pair(p: Params, ctx: Context) -> Result:
    material = require(p, "PublicKeyMaterial")  # a blob: the parser has base64-decoded it
    if isinstance(material, str):
        try:
            material = base64.b64decode(material, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                "InvalidKey.Format", "Key is not in valid OpenSSH public key format"
            ) from None
    try:
        text = bytes(material).decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(
            "InvalidKey.Format", "Key is not in valid OpenSSH public key format"
        ) from None
    row = keypairs.import_key_pair(require(p, "KeyName"), text, tag_specs(p, "key-pair"))
    return {"KeyName": row["KeyName"], "KeyFingerprint": row["KeyFingerprint"],
            "KeyPairId": row["KeyPairId"], "Tags": row["Tags"]}  # fmt: skip


@action("DescribeKeyPairs", "InvalidKeyPair.NotFound")
def describe_key_pairs(p: Params, ctx: Context) -> Result:
    rows = keypairs.describe_key_pairs(p.get("KeyNames") or None)
    if ids := p.get("KeyPairIds"):
        for i in ids:
            keypairs.find_key_pair_id(i)
        rows = [r for r in rows if r["KeyPairId"] in ids]
    if p.get("IncludePublicKey"):
        rows = [{**r, "PublicKey": keypairs.find_key_pair(r["KeyName"])["PublicKey"]} for r in rows]
    return {"KeyPairs": filtered(rows, p, _FIELDS)}


@action("DeleteKeyPair", "InvalidKeyPair.NotFound")
def delete_key_pair(p: Params, ctx: Context) -> Result:
    name = p.get("KeyName")
    if not name and p.get("KeyPairId"):
        rows = [r for r in keypairs.describe_key_pairs() if r["KeyPairId"] == p["KeyPairId"]]
        if not rows:  # as EC2: deleting what is not there (here: in this account) succeeds
            return {"Return": True}
        name = rows[0]["KeyName"]
    if not name:
        raise ApiError("MissingParameter", "The request must contain the parameter KeyName")
    keypairs.delete_key_pair(name)
    return {"Return": True}
