"""Headers the mirror does not have: exit 3 naming the package (and the version the suite
has instead), nothing downloaded or unpacked. Uses the private apt index of the machine's
mirror, as the build does (a kernel release with a version no suite carries)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.build.kernel_tree import Kernel
from builder.errors import EnvironmentProblem
from builder.modules import headers


def _kernel(release: str, version: str) -> Kernel:
    nowhere = Path("/nonexistent")
    return Kernel("own", f"linux-image-{release}", version, release, nowhere, nowhere,
                  nowhere, "0" * 64, (), "", suite="bookworm")  # fmt: skip


@pytest.mark.parametrize(
    "release, version",
    [("6.1.0-57-cloud-amd64", "0.0.0-amilab-nowhere"), ("9.9.9-amilab-nowhere", "9.9.9-1")],
)
def test_headers_missing_from_the_mirror_is_exit_3_naming_the_package(release, version) -> None:
    k = _kernel(release, version)
    with pytest.raises(EnvironmentProblem) as e:
        headers.unpacked_headers(k)
    assert e.value.exit_code == 3
    assert f"linux-headers-{release}={version} is not on the mirror's bookworm suite" in str(
        e.value
    )
    assert "\n" not in str(e.value)
    assert not headers.headers_dir(headers.headers_package(release), version).exists()
