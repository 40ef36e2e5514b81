"""The `--json` payloads the library now builds are, key for key and in order, the dicts the
CLI built inline before (the old expressions are kept here as the reference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.images import responses
from builder.images.bundle import BundleResult
from builder.images.manifest import Manifest, Part
from builder.images.records import KernelSettings
from builder.images.registry import ImageRecord
from builder.images.store import RestoreResult
from builder.images.store_tasks import StoreTask


def _same(got: Any, want: Any) -> None:
    assert json.dumps(got) == json.dumps(want)  # order too: the JSON printed is the same


def _record(image_id: str, image_type: str = "machine", **kw: Any) -> ImageRecord:
    return ImageRecord(image_id=image_id, image_type=image_type, name=image_id, **kw)


AMI = _record(
    "ami-0123456789abcdef0",
    kernel_id="aki-0123456789abcdef0",
    ramdisk_id="ari-0123456789abcdef0",
    tags={"b": "2", "a": "1"},
    public=True,
    launch_permissions=["111122223333"],
)
AKI = _record("aki-0123456789abcdef0", "kernel", kernel_release="6.1.0-x")
ARI = _record("ari-0123456789abcdef0", "ramdisk")


def test_bundle() -> None:
    m = Manifest(
        name="img", user="111122223333", image_type="machine", architecture="x86_64",
        digest="ab" * 20, size=3 << 20, bundled_size=12345, ec2_encrypted_key="k",
        user_encrypted_key="k", ec2_encrypted_iv="i", user_encrypted_iv="i",
        parts=[Part("img.part.00", "cd" * 20), Part("img.part.01", "ef" * 20)],
    )  # fmt: skip
    r = BundleResult(Path("/b/img.manifest.xml"), m, seconds=1.23456, image_id=AMI.image_id)
    _same(r.describe(), {
        "ImageId": r.image_id, "ManifestPath": str(r.manifest_path), "Name": m.name,
        "Digest": m.digest, "Size": m.size, "BundledSize": m.bundled_size,
        "Parts": [p.filename for p in m.parts], "Seconds": round(r.seconds, 3),
    })  # fmt: skip


def test_store_and_restore() -> None:
    t = StoreTask("t-1", AMI.image_id, "/dir", f"{AMI.image_id}.bin", "Completed", 100,
                  "2026-01-01T00:00:00.000Z", bytes_stored=4096)  # fmt: skip
    _same(t.describe_stored(), {**t.describe(), "Bytes": t.bytes_stored})
    for r in (RestoreResult(AMI, AKI, ARI, "k.bin", 2.0), RestoreResult(AKI, object_key="x")):
        _same(r.describe(), {
            "ImageId": r.image.image_id, "ObjectKey": r.object_key,
            "KernelId": r.image.kernel_id, "RamdiskId": r.image.ramdisk_id,
            "Images": [x.describe() for x in (r.image, r.kernel, r.ramdisk) if x],
        })  # fmt: skip


def test_register_tags_launch_permission_deregister() -> None:
    _same(responses.registered(AMI), {"ImageId": AMI.image_id, "Images": [AMI.describe()]})
    _same(
        responses.image_tags([AMI, AKI]),
        {"Images": [{"ImageId": r.image_id, "Tags": r.describe()["Tags"]} for r in (AMI, AKI)]},
    )
    d = AMI.describe()
    _same(
        responses.launch_permission(AMI),
        {k: d[k] for k in ("ImageId", "Public", "LaunchPermissions")},
    )
    assert responses.launch_permission(AMI)["LaunchPermissions"] == [
        {"UserId": "111122223333"}, {"Group": "all"}
    ]  # fmt: skip
    gone = [AMI.image_id, AKI.image_id]
    _same(responses.deregistered(gone), {"Deregistered": [{"ImageId": i} for i in gone]})


def test_kernel_catalogue() -> None:
    from types import SimpleNamespace

    d = SimpleNamespace(name="debian-cloud", package="linux-image-cloud-amd64", description="x",
                        ramdisk_modules=("virtio_blk",), cmdline="console=ttyS0",
                        architecture="x86_64")  # fmt: skip
    mine = _record("aki-00000000000000001", "kernel", kernel_release="6.1.0-x",
                   package_version="6.1.1",
                   kernel_settings=KernelSettings(definition="debian-cloud"))  # fmt: skip
    other = _record("aki-00000000000000002", "kernel", kernel_settings=KernelSettings("y"))
    registered = [mine, other]
    want = [{
        "Name": d.name, "Package": d.package, "Architecture": d.architecture,
        "Description": d.description, "RamdiskModules": list(d.ramdisk_modules),
        "Cmdline": d.cmdline,
        "Registered": [{"ImageId": r.image_id, "KernelRelease": r.kernel_release,
                        "Version": r.package_version} for r in registered
                       if r.kernel_settings.definition == d.name],
    }]  # fmt: skip
    _same(responses.kernel_catalogue([d], registered), {"Kernels": want})
    assert len(want[0]["Registered"]) == 1
