"""The image records an instance was launched with (its AMI, and the AKI and ARI its plan
chose), kept in the instance's record, so the instance keeps what it needs of them when
they are deregistered: EC2 lets an instance whose AMI is deregistered run, stop, start and
be imaged. Deregistration drops a record but keeps the artifacts (as EBS snapshots are
kept), so the kept record still names files that exist; a DeregisterImage racing a
RunInstances gives EC2's outcomes: the launch read the image first (it launches, with the
image's files) or it did not (InvalidAMIID.NotFound). `prune` must count these records'
files as referenced while the instance is not terminated."""

from __future__ import annotations

from typing import Any

from builder.errors import BadInput
from builder.images.records import ImageRecord, record_from_dict, record_to_dict
from builder.images.registry import Registry
from builder.images.tables import Row

KEY = "LaunchImages"  # under the instance record's Amilab


def kept(*records: ImageRecord | None) -> dict[str, dict[str, Any]]:
    """What a launch keeps: each record by its ID."""
    return {r.image_id: record_to_dict(r) for r in records if r is not None}


class LaunchRegistry(Registry):
    """The registry, with an instance's kept records behind it: an image deregistered since
    the launch is found by its ID as it was when the instance was launched."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.kept = {k: record_from_dict(v) for k, v in records.items()}

    def get(self, image_id: str) -> ImageRecord | None:
        return super().get(image_id) or self.kept.get(image_id)

    def find(self, ref: str, image_type: str | None = None) -> ImageRecord:
        try:
            return super().find(ref, image_type)
        except BadInput:
            rec = self.kept.get(ref)
            if rec is None or (image_type and rec.image_type != image_type):
                raise
            return rec


def registry_for(record: Row) -> Registry:
    """The registry an instance's operations read its images from."""
    return LaunchRegistry(record.get("Amilab", {}).get(KEY) or {})
