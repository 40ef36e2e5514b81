"""Reproducible images (issue 18): the same recipe and inputs give the same disk bytes and the
same AMI; an unchanged rebuild registers and stores nothing; `--verify` names what differs.

What the cold pair does: every shipped recipe (`build.yaml`, native engine) is built in home A
with an empty XDG_CACHE_HOME, then, a while later, in home B with another XDG_CACHE_HOME that
holds no base root tree (mmdebstrap runs again, elements run again, the disk is made again)
but is given A's downloads: the .deb files, the private apt index and the unpacked kernel
package. Those are what the mirror serves (the inputs being held equal), not what the build
makes, and sharing them keeps this test within its time budget.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build, images

pytestmark = pytest.mark.integration

DOWNLOADS = ("debs", "apt", "kernels")  # what home B's fresh cache is given from A's


def _cmp(a: str, b: str) -> str:
    """Where two files differ (cmp -l: offset, octal bytes), for the failure message."""
    out = subprocess.run(["cmp", "-l", a, b], capture_output=True, text=True).stdout
    lines = out.splitlines()
    return f"{len(lines)} bytes differ, first: {lines[:8]}"


def _by_name(out: dict) -> dict[str, dict]:
    return {i["Name"]: i for i in out["Images"]}


def _artifacts(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "artifacts").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def cold_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path, dict]:
    a, b = tmp_path_factory.mktemp("home-a"), tmp_path_factory.mktemp("home-b")
    cache_a, cache_b = a / "cache", b / "cache"
    out_a = build(ROOT / "build.yaml", a / "home", env={"XDG_CACHE_HOME": str(cache_a)})
    for name in DOWNLOADS:
        src = cache_a / "amilab" / name
        if src.exists():
            shutil.copytree(src, cache_b / "amilab" / name, symlinks=True)
    assert not (cache_b / "amilab" / "rootfs").exists()
    out_b = build(ROOT / "build.yaml", b / "home", env={"XDG_CACHE_HOME": str(cache_b)})
    return a / "home", out_a, b / "home", out_b


def test_two_cold_builds_of_every_shipped_recipe_give_identical_disks_and_ids(
    cold_pair: tuple[Path, dict, Path, dict],
) -> None:
    _, out_a, _, out_b = cold_pair
    first, second = _by_name(out_a), _by_name(out_b)
    shipped = [r["name"] for r in yaml.safe_load((ROOT / "build.yaml").read_text())["images"]]
    assert sorted(first) == sorted(second) == sorted(shipped)
    for name in shipped:
        x, y = first[name], second[name]
        assert x["Cached"] is False and y["Cached"] is False
        # artifacts are named by their sha256: equal names, equal bytes (every format)
        for fmt, path in x["Locations"].items():
            other = y["Locations"][fmt]
            assert Path(path).name == Path(other).name, f"{name} {fmt}: {_cmp(path, other)}"
        assert x["ImageId"] == y["ImageId"], name
        inputs = x["amilab:BuildInputs"]
        assert inputs == y["amilab:BuildInputs"], name
        assert any(p.startswith("openssh-server=") for p in inputs["Packages"]), inputs
        assert inputs["BuildEpoch"] > 0 and inputs["RamdiskDigest"], inputs


def test_ten_rebuilds_register_and_store_nothing(
    cold_pair: tuple[Path, dict, Path, dict],
) -> None:
    _, _, home, out = cold_pair
    before = _artifacts(home)
    ids = sorted(i["ImageId"] for i in out["Images"])
    for _ in range(10):
        again = build(ROOT / "build.yaml", home, "--image", "debian-pv", env=_cache_of(home))
        (image,) = again["Images"]
        assert image["Cached"] is True
        assert image["ImageId"] == _by_name(out)["debian-pv"]["ImageId"]
    assert _artifacts(home) == before
    assert sorted(i["ImageId"] for i in images(home, "machine")) == ids
    disks = [n for n in before if n.endswith(".raw")]
    assert len(disks) == len(ids)  # one raw disk per AMI, none twice


def _cache_of(home: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(home.parent / "cache")}


def _element_recipe(tmp: Path, script: str) -> Path:
    """debian-pv plus an element whose install.d script is `script`."""
    element = tmp / "elements" / "stamp"
    (element / "install.d").mkdir(parents=True, exist_ok=True)
    hook = element / "install.d" / "50-stamp"
    hook.write_text("#!/bin/bash\nset -eu\n" + script + "\n")
    hook.chmod(0o755)
    data = yaml.safe_load((ROOT / "build.yaml").read_text())
    recipe = dict(data["images"][0], name="stamped")
    recipe["elements"] = [*recipe["elements"], "stamp"]
    path = tmp / "stamped.yaml"
    path.write_text(yaml.safe_dump({"images": [recipe]}))
    return path


def test_a_changed_element_file_gives_a_new_ami_and_verify_names_a_dated_file(
    cold_pair: tuple[Path, dict, Path, dict], tmp_path: Path
) -> None:
    _, _, home, _ = cold_pair
    env = {**_cache_of(home), "AMILAB_ELEMENTS_PATH": str(tmp_path / "elements")}
    recipe = _element_recipe(tmp_path, "echo one > /etc/amilab-stamp")
    first = build(recipe, home, env=env)["Images"][0]
    _element_recipe(tmp_path, "echo two > /etc/amilab-stamp")  # the same recipe file
    second = build(recipe, home, env=env)["Images"][0]
    assert first["Cached"] is False and second["Cached"] is False
    assert first["ImageId"] != second["ImageId"]
    assert (
        first["amilab:BuildInputs"]["ElementsDigest"]
        != second["amilab:BuildInputs"]["ElementsDigest"]
    )

    _element_recipe(tmp_path, "date +%s.%N > /etc/build-date")
    before = _artifacts(home)
    result = run_amilab(
        "build", str(recipe), "--verify", "--json",
        env={"AMILAB_HOME": str(home), **env},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    (verdict,) = json.loads(result.stdout)["Verify"]
    assert verdict["Reproducible"] is False
    named = {(d["Path"], d["What"]) for d in verdict["Differences"]}
    assert ("/etc/build-date", "content") in named, verdict["Differences"]
    assert _artifacts(home) == before  # --verify registers and stores nothing
    assert not any(os.scandir(home / "work")) if (home / "work").exists() else True
