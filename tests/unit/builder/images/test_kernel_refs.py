"""Kernels named by AKI ID, AKI name or catalogue name (issue #27's "any catalogue kernel by
name, everywhere"): what is registered is used, what is not is fetched (not here: that
needs the mirror; tests/integration/test_smoke.py does it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.images import factory, kernel_refs
from builder.images.kernel_refs import find_kernel
from builder.images.records import KernelSettings
from builder.images.registry import Registry


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home"))
    reg = Registry()
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(b"x")
    aki = factory.content_image(
        "1" * 64, "debian-cloud-trixie-6.12.95", str(vmlinuz),
        KernelSettings(definition="debian-cloud-trixie"), release="6.12.95+deb13-cloud-amd64",
    )  # fmt: skip
    reg.register([aki])
    return reg


def test_a_registered_kernel_by_id_name_or_catalogue_name(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fetch(*_: object) -> None:
        raise AssertionError("fetched a kernel that is registered")

    monkeypatch.setattr(kernel_refs, "register_catalogue_kernel", no_fetch)
    (aki,) = registry.list("kernel")
    assert find_kernel(aki.image_id, registry).image_id == aki.image_id
    assert find_kernel(aki.name, registry).image_id == aki.image_id
    assert find_kernel("debian-cloud-trixie", registry).image_id == aki.image_id


def test_a_catalogue_kernel_not_registered_is_fetched(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []
    (trixie,) = registry.list("kernel")

    def fetch(name: str, reg: Registry) -> tuple[object, object]:
        fetched.append(name)
        return trixie, None

    said: list[str] = []
    monkeypatch.setattr(kernel_refs, "register_catalogue_kernel", fetch)
    find_kernel("debian-cloud-sid", registry, said.append)
    assert fetched == ["debian-cloud-sid"]
    assert said == ["registering kernel debian-cloud-sid from the catalogue"]


def test_an_unknown_kernel_names_the_catalogue(registry: Registry) -> None:
    with pytest.raises(BadInput, match=r"no such kernel .*; nor is 'nope' a catalogue kernel"):
        find_kernel("nope", registry)
