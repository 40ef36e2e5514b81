"""What the image lifecycle calls answer, in AWS's shapes, for the CLI's `--json` (and later
the API server): built from the records the calls return, with describe-images' field names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from builder.images.registry import ImageRecord


def registered(rec: ImageRecord) -> dict[str, Any]:
    """RegisterImage's answer (the ID) with the record it registered."""
    return {"ImageId": rec.image_id, "Images": [rec.describe()]}


def image_tags(records: list[ImageRecord]) -> dict[str, Any]:
    """Each image's ID and tags after create-tags/delete-tags."""
    return {"Images": [{"ImageId": r.image_id, "Tags": r.describe()["Tags"]} for r in records]}


def launch_permission(rec: ImageRecord) -> dict[str, Any]:
    """describe-image-attribute --attribute launchPermission, with the image's ID."""
    d = rec.describe()
    return {k: d[k] for k in ("ImageId", "Public", "LaunchPermissions")}


def deregistered(image_ids: list[str]) -> dict[str, Any]:
    return {"Deregistered": [{"ImageId": i} for i in image_ids]}


def kernel_catalogue(
    definitions: list[Any], registered: list[ImageRecord], resolutions: list[Any] | None = None
) -> dict[str, Any]:
    """The kernel definitions (kernels/*.yaml), each with the AKIs registered from it, and
    with `resolutions` (kernel.resolve_versions) what each stands for in its suite today."""
    rows = []
    for i, d in enumerate(definitions):
        akis = [
            {"ImageId": r.image_id, "KernelRelease": r.kernel_release, "Version": r.package_version}
            for r in registered
            if r.kernel_settings.definition == d.name
        ]
        rows.append(
            {
                "Name": d.name,
                "Package": d.package,
                "Architecture": d.architecture,
                "Description": d.description,
                "RamdiskModules": list(d.ramdisk_modules),
                "Cmdline": d.cmdline,
                "Registered": akis,
            }
        )
        if resolutions is not None:
            res = resolutions[i]
            same = (res.release, res.version)
            aki = [r.image_id for r in registered if (r.kernel_release, r.package_version) == same]
            rows[-1].update(
                {
                    "Suite": res.suite,
                    "ExactPackage": res.package,
                    "Version": res.version,
                    "KernelRelease": res.release,
                    "Downloaded": res.downloaded,
                    "ImageId": aki[0] if aki else None,
                }
            )
    return {"Kernels": rows}
