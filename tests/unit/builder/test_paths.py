"""Where the shipped elements and kernel definitions are found: an installed wheel's copy
beside the modules, else the checkout's top-level folders; the overrides come after."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import paths


def test_a_checkout_uses_its_top_level_folders() -> None:
    assert not (Path(paths.__file__).parent / "shipped").exists()
    assert paths.elements_path()[0] == paths.PROJECT_ROOT / "elements"
    assert paths.kernels_dirs()[0] == paths.PROJECT_ROOT / "kernels"
    assert (paths.elements_path()[0] / "ec2-base").is_dir()
    assert list(paths.kernels_dirs()[0].glob("*.yaml"))


def test_an_installed_package_uses_its_own_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elements").mkdir()
    (tmp_path / "kernels").mkdir()
    monkeypatch.setattr(paths, "_SHIPPED", tmp_path)
    monkeypatch.delenv("AMILAB_ELEMENTS_PATH", raising=False)
    monkeypatch.delenv("AMILAB_KERNELS_PATH", raising=False)
    assert paths.elements_path() == [tmp_path / "elements"]
    assert paths.kernels_dirs() == [tmp_path / "kernels"]


def test_overrides_follow_the_shipped_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMILAB_ELEMENTS_PATH", "/a:/b")
    monkeypatch.setenv("AMILAB_KERNELS_PATH", "/k")
    assert paths.elements_path()[1:] == [Path("/a"), Path("/b")]
    assert paths.kernels_dirs()[1:] == [Path("/k")]
