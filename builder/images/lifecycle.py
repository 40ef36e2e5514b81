"""An image's life after its build, as on EC2: bundle, register from a manifest, copy,
deregister, tags, launch permissions, and describe-images filters.

Images are immutable: registering a bundle, copying or restoring always makes a new ID
(the disk's digest plus a fresh registration nonce and time), never changes an old one.
Only attributes change in place: tags and launch permissions.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import AmilabError, BadInput
from builder.ids import file_sha256, sparse_sha256
from builder.images import bundle as bundle_mod
from builder.images import factory, volumes
from builder.images.bundle_keys import (
    ec2_key_pair,
    load_private_key,
    remember_signing_cert,
    signing_certs,
)
from builder.images.bundle_upload import fetch_bundle
from builder.images.image_files import image_file, kernel_release_of, probe_disk, work_dir
from builder.images.manifest import Manifest, parse_manifest
from builder.images.records import KernelSettings, RamdiskSettings
from builder.images.registry import (
    ImageRecord,
    Registry,
    account_id,
    check_name_free,
    store_artifact,
)
from builder.images.shapes import owner_of
from builder.state import pending

_ACCOUNT_LEN = 12


# --------------------------------------------------------------------------- bundle


def bundle_image(
    ref: str,
    cert: Path,
    private_key: Path,
    dest: Path,
    *,
    ec2_cert: Path | None = None,
    prefix: str | None = None,
    user: str | None = None,
) -> bundle_mod.BundleResult:
    """ec2-bundle-image for a registered image (AMI, AKI or ARI)."""
    rec = Registry().find(ref)
    src = image_file(rec)
    ec2 = ec2_cert or ec2_key_pair()[0]
    account = user or rec.owner_id or account_id()
    bdm: dict[str, str] = {}
    if rec.image_type == "machine" and rec.root_device_name:
        bdm = {"ami": rec.root_device_name.removeprefix("/dev/"), "root": rec.root_device_name}
    result = bundle_mod.bundle_file(
        src,
        dest,
        prefix or rec.name,
        user=account,
        image_type=rec.image_type,
        architecture=rec.architecture,
        user_cert=cert,
        private_key=private_key,
        ec2_cert=ec2,
        kernel_id=rec.kernel_id if rec.image_type == "machine" else None,
        ramdisk_id=rec.ramdisk_id if rec.image_type == "machine" else None,
        block_device_mapping=bdm,
        kernel_name=(rec.kernel_release or rec.name) if rec.image_type == "kernel" else None,
    )
    # as uploading a signing certificate to AWS: `register` checks signatures against it
    remember_signing_cert(account, cert)
    result.image_id = rec.image_id
    return result


# ------------------------------------------------------------------------- register


def register_manifest(
    manifest_path: Path | str,
    *,
    name: str | None = None,
    description: str = "",
    certs: list[Path] | None = None,
    virtualization: str | None = None,
    endpoint_url: str | None = None,
) -> ImageRecord:
    """`register-image --image-location MANIFEST`: check the bundle as EC2 did (signature
    against the account's signing certificates, every part, the tar digest), decrypt it
    with amilab's EC2 key, store the image and register it under a new ID. ImageLocation is
    the manifest (`bucket/path/name.manifest.xml` for one in S3, fetched first); the image's
    bytes live in the artifact store. Nothing is registered and nothing kept if any check
    fails."""
    if str(manifest_path).startswith("s3://"):
        fetched = work_dir("fetch-bundle")
        try:
            local = fetch_bundle(str(manifest_path), fetched, endpoint_url)
            where = str(manifest_path).removeprefix("s3://")
            return _register_manifest(
                local, name, description, certs, virtualization, location=where
            )
        finally:
            shutil.rmtree(fetched, ignore_errors=True)
    local = Path(manifest_path).resolve()
    return _register_manifest(local, name, description, certs, virtualization)


def _register_manifest(
    manifest_path: Path,
    name: str | None,
    description: str,
    certs: list[Path] | None,
    virtualization: str | None,
    location: str | None = None,
) -> ImageRecord:
    m = parse_manifest(manifest_path)
    known = certs or signing_certs(m.user)
    if not known:
        raise BadInput(
            f"{manifest_path}: no signing certificate is known for account {m.user}: "
            "bundle with amilab first or pass --cert"
        )
    bundle_mod.check_signature(m, manifest_path, known)
    registry = Registry()
    name = name or m.name
    kernel_id, ramdisk_id = m.kernel_id, m.ramdisk_id
    virt = virtualization or ("paravirtual" if kernel_id else "hvm")
    if m.image_type == "machine":
        _check_launch_refs(registry, kernel_id, ramdisk_id)
        check_name_free(registry, name)
    ec2_key = load_private_key(ec2_key_pair()[1])
    aes_key, iv = bundle_mod.decrypt_key_iv(m, ec2_key, "amilab's EC2 key")
    work = work_dir("register")
    try:
        image = bundle_mod.restore_parts(m, manifest_path, aes_key, iv, work, out_name="image")
        rec = _record_for(m, image, location or str(manifest_path), name, description, virt)
        if m.image_type == "machine":
            return registry.register_new(rec)
        return registry.register([rec])[0]  # same bytes, same AKI/ARI: kept as it was
    finally:
        shutil.rmtree(work, ignore_errors=True)


def register_snapshot(
    name: str,
    root_device: str,
    mappings: list[dict[str, Any]],
    *,
    virtualization: str = "hvm",
    architecture: str = "x86_64",
    kernel_id: str | None = None,
    ramdisk_id: str | None = None,
    description: str = "",
) -> ImageRecord:
    """RegisterImage of an EBS-backed AMI: the snapshot mapped at `root_device` is its disk
    (read to find its partitions and root filesystem, never written); the other mappings
    are kept as given. A new ID every time, as EC2 gives."""
    registry = Registry()
    check_name_free(registry, name)
    _check_launch_refs(registry, kernel_id, ramdisk_id)
    root = next((m for m in mappings if m.get("DeviceName") == root_device), None)
    snap_id = ((root or {}).get("Ebs") or {}).get("SnapshotId")
    if not snap_id:
        raise BadInput(
            f"InvalidBlockDeviceMapping: the root device {root_device} must map a snapshot"
        )
    out = []
    for m in mappings:  # each snapshot must exist; sizes default to the snapshot's
        m = {**m, "Ebs": dict(m["Ebs"])} if "Ebs" in m else dict(m)
        if (ebs := m.get("Ebs")) and ebs.get("SnapshotId"):
            snap = volumes.find_snapshot(ebs["SnapshotId"])
            ebs.setdefault("VolumeSize", snap["VolumeSize"])
            ebs.setdefault("DeleteOnTermination", True)
            ebs.setdefault("VolumeType", "standard")
            ebs.setdefault("Encrypted", False)
        out.append(m)
    snap = volumes.find_snapshot(snap_id)
    if snap["State"] != "completed":
        raise BadInput(f"IncorrectState: snapshot {snap_id} is {snap['State']}")
    disk = volumes.snapshot_path(snap)
    launch = probe_disk(disk)
    kernel = registry.get(kernel_id) if kernel_id else None
    launch.kernel_release = kernel.kernel_release if kernel else None
    reg = factory.Registration(
        name, virtualization, root_device, architecture, kernel_id, ramdisk_id
    )
    digest = snap["Amilab"].get("Digest") or sparse_sha256(disk)
    image = factory.machine_image(
        reg, digest, launch, {"raw": str(disk)}, description=description,
        extra={"registered_from": snap_id}, fresh=True,
    )  # fmt: skip
    image.block_device_mappings = out
    with registry.transaction():  # a DeleteSnapshot meanwhile: it comes first or sees the AMI
        for m in out:
            if (ebs := m.get("Ebs")) and ebs.get("SnapshotId"):
                volumes.find_snapshot(ebs["SnapshotId"])
        return registry.register_new(image)


def _record_for(
    m: Manifest,
    image: Path,
    manifest_path: str,
    name: str,
    description: str,
    virt: str,
) -> ImageRecord:
    """The record of a bundle's decrypted image, moved into the artifact store; its
    ImageLocation is the manifest, as on EC2."""
    location, bundle_user = manifest_path, {"bundle_user": m.user}
    if m.image_type in ("kernel", "ramdisk"):
        digest = file_sha256(image)
        is_kernel = m.image_type == "kernel"
        stored = store_artifact(image, digest, ".vmlinuz" if is_kernel else ".initrd")
        release = (kernel_release_of(stored) or m.kernel_name) if is_kernel else None
        what = f"kernel {release}" if is_kernel else "ramdisk"
        return factory.content_image(
            digest, name, location, KernelSettings() if is_kernel else RamdiskSettings(),
            release=release, architecture=m.architecture, locations={"raw": str(stored)},
            description=description or f"{what} registered from a bundle", extra=bundle_user,
        )  # fmt: skip
    digest = sparse_sha256(image)
    launch = probe_disk(image)
    stored = {"raw": str(store_artifact(image, digest, ".raw"))}
    kernel = Registry().get(m.kernel_id) if m.kernel_id else None
    launch.kernel_release = kernel.kernel_release if kernel else None
    root_device = m.block_device_mapping.get("root") or (
        "/dev/sda1" if launch.partitioning == "none" else "/dev/xvda"
    )
    registration = factory.Registration(
        name, virt, root_device, m.architecture, m.kernel_id, m.ramdisk_id
    )
    return factory.machine_image(
        registration, digest, launch, stored, description=description, image_location=location,
        instance_store=True, extra={"bundle_digest": m.digest, **bundle_user}, fresh=True,
    )  # fmt: skip


def _check_launch_refs(registry: Registry, kernel_id: str | None, ramdisk_id: str | None) -> None:
    for ref, kind in ((kernel_id, "kernel"), (ramdisk_id, "ramdisk")):
        if ref and registry.get(ref) is None:
            raise BadInput(f"{kind} {ref} is not registered: register it first")


# ----------------------------------------------------------------------------- copy


def copy_image(
    ref: str,
    name: str,
    *,
    description: str | None = None,
    copy_tags: bool = False,
    wait: bool = True,
) -> ImageRecord:
    """copy-image: the same bytes under a new ID and name; tags only when asked, launch
    permissions never (a copy starts private, owned by whoever copied it). The source's disk
    is checked against its digest first, as a copy reads it (`verify_disk`). `wait` commits
    the copy whole and available; without it the copy is registered pending at once (EC2's
    CopyImage answers so) and `finish_copy` ends it."""
    registry = Registry()
    src = registry.find(ref, "machine")
    if src.state != "available":
        raise BadInput(f"InvalidAMIID.Unavailable: {src.image_id} is {src.state}")
    rec = factory.reregistered(
        src,
        name,
        {"copied_from": src.image_id},
        digest=src.digest or sparse_sha256(image_file(src)),
        description=description,
        tags=src.tags if copy_tags else {},
        extra={"source_image_id": src.image_id},
    )
    if not wait:
        return registry.register_new(pending.hold(rec))
    check_name_free(registry, name)  # before the disk is read
    verify_disk(rec)
    return registry.register_new(rec)


def finish_copy(image_id: str) -> ImageRecord:
    """A pending copy's disk checked, then the copy available, or failed with the reason."""
    try:
        verify_disk(Registry().find(image_id, "machine"))
    except Exception as e:  # an unreadable disk too: the copy ends, never stays pending
        pending.image_failed(image_id, str(e) or type(e).__name__)
        raise
    return pending.image_done(image_id)


def verify_disk(rec: ImageRecord) -> None:
    """Every file of the image's disk is there, and its raw disk (when it has one) still has
    the digest the image was registered with (fsck's digest cache spares a second hash)."""
    from builder.state.verified import DigestCache

    for fmt, loc in rec.locations.items():
        if not Path(loc).is_file():
            raise AmilabError(f"{rec.image_id}: its {fmt} disk {loc} is missing (see amilab fsck)")
    raw = rec.locations.get("raw")
    if raw and rec.digest and DigestCache().digest(Path(raw), ".raw") != rec.digest:
        raise AmilabError(
            f"{rec.image_id}: its disk {raw} does not match its digest (see amilab fsck)"
        )


# ----------------------------------------------------------------------- deregister


def dependents(registry: Registry, image_id: str) -> list[str]:
    """Registered machine images that launch with this kernel or ramdisk."""
    return [
        r.image_id
        for r in registry.list("machine")
        if r.image_id != image_id and image_id in (r.kernel_id, r.ramdisk_id)
    ]


def deregister(ref: str, *, force: bool = False) -> ImageRecord:
    """Drop the record; the lookup, the check for images that launch with it and the
    removal are one transaction, so a machine image registered meanwhile is seen, and two
    deregisters of one image give one success and one NotFound."""
    registry = Registry()
    with registry.transaction():
        rec = registry.find(ref)
        users = dependents(registry, rec.image_id)
        if users and not force:
            raise BadInput(
                f"{rec.image_id} is used by {', '.join(users)}: "
                "deregister those first or use --force"
            )
        if not registry.remove(rec.image_id):
            raise BadInput(f"{ref}: no such image in the registry ({registry.path})")
    return rec


# -------------------------------------------------------------- tags and permissions


_TAG_KEY_MAX, _TAG_VALUE_MAX = 128, 256
TAG_LIMIT = 50  # EC2's tags per resource


def parse_tags(items: list[str]) -> dict[str, str]:
    """KEY=VALUE items (a bare KEY means an empty value, as EC2 allows)."""
    tags: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or len(key) > _TAG_KEY_MAX or len(value) > _TAG_VALUE_MAX:
            raise BadInput(f"tag {item!r}: expected KEY=VALUE (key 1-128, value 0-256 chars)")
        if key.lower().startswith("aws:"):
            raise BadInput(f"tag {key!r}: the aws: prefix is reserved")
        tags[key] = value
    return tags


def add_tags(have: dict[str, str], tags: dict[str, str], resource: str) -> None:
    """`tags` added to a resource's `have` (a key it has takes the new value), or EC2's
    TagLimitExceeded, adding none, when it would then carry more than TAG_LIMIT."""
    total = len(have.keys() | tags.keys())
    if total > TAG_LIMIT:
        raise BadInput(
            f"TagLimitExceeded: The maximum number of tags for a resource has been reached: "
            f"{resource} would have {total} (it has {len(have)}; at most {TAG_LIMIT})"
        )
    have.update(tags)


def tag(image_ids: list[str], tags: dict[str, str]) -> list[ImageRecord]:
    """Tags added to every image or (TagLimitExceeded for one of them) to none."""
    registry = Registry()
    if not tags:
        raise BadInput("no tags given: use KEY=VALUE")
    with registry.transaction():
        return [registry.update(i, lambda r: add_tags(r.tags, tags, r.image_id))
                for i in _ids(registry, image_ids)]  # fmt: skip


def untag(image_ids: list[str], items: list[str] | None) -> list[ImageRecord]:
    """Remove tags: KEY removes the key whatever its value, KEY=VALUE only with that value;
    None removes every tag the image has when the change is made (DeleteTags without Tags)."""
    registry = Registry()

    def change(rec: ImageRecord) -> None:
        if items is None:
            rec.tags.clear()
        for item in items or []:
            key, eq, value = item.partition("=")
            if key in rec.tags and (not eq or rec.tags[key] == value):
                del rec.tags[key]

    return [registry.update(i, change) for i in _ids(registry, image_ids)]


def _ids(registry: Registry, refs: list[str]) -> list[str]:
    return [registry.find(ref).image_id for ref in refs]


def _account(value: str) -> str:
    if value == "self":
        return account_id()
    if not (len(value) == _ACCOUNT_LEN and value.isdigit()):
        raise BadInput(f"account {value!r}: expected a 12-digit account ID")
    return value


def set_launch_permission(
    ref: str,
    *,
    add: list[str] | None = None,
    remove: list[str] | None = None,
    public: bool | None = None,
    reset: bool = False,
) -> ImageRecord:
    """modify-image-attribute --launch-permission: per account ID, or the group 'all'."""
    registry = Registry()
    added = [_account(a) for a in add or []]
    removed = [_account(a) for a in remove or []]
    rec = registry.find(ref)

    def change(r: ImageRecord) -> None:
        if reset:
            r.launch_permissions, r.public = [], False
        for a in added:
            if a not in r.launch_permissions:
                r.launch_permissions.append(a)
        r.launch_permissions = [a for a in r.launch_permissions if a not in removed]
        if public is not None:
            r.public = public

    return registry.update(rec.image_id, change)


# ------------------------------------------------------------------------- filters


@dataclass
class ImageFilter:
    """describe-images --owners/--executable-users/--filters, for `amilab images`."""

    owners: list[str] = field(default_factory=list)  # account IDs, "self"
    names: list[str] = field(default_factory=list)  # patterns with * and ?
    tags: list[str] = field(default_factory=list)  # KEY=PATTERN, or KEY (tag-key)
    executable_by: list[str] = field(default_factory=list)  # account IDs, "self", "all"
    image_ids: list[str] = field(default_factory=list)

    def matches(self, rec: ImageRecord) -> bool:
        owner = owner_of(rec)
        if self.owners and owner not in {_owner(o) for o in self.owners}:
            return False
        if self.names and not any(fnmatch.fnmatchcase(rec.name, p) for p in self.names):
            return False
        if self.image_ids and rec.image_id not in self.image_ids:
            return False
        for item in self.tags:
            key, eq, pattern = item.partition("=")
            if key not in rec.tags:
                return False
            if eq and not fnmatch.fnmatchcase(rec.tags[key], pattern):
                return False
        if self.executable_by:
            allowed = False
            for who in self.executable_by:
                if who == "all":
                    allowed = allowed or rec.public
                else:
                    acct = _owner(who)
                    allowed = allowed or rec.public or acct == owner
                    allowed = allowed or acct in rec.launch_permissions
            if not allowed:
                return False
        return True


def _owner(value: str) -> str:
    return account_id() if value == "self" else value


def describe_images(
    image_type: str | None = None, flt: ImageFilter | None = None
) -> list[ImageRecord]:
    records = Registry().list(image_type)
    return [r for r in records if flt is None or flt.matches(r)]
