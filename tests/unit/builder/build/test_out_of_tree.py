"""Hostile out-of-tree inputs in recipes (extra-modules): exit 2, one line naming the key,
nothing registered or cached (the real CLI; validation runs before anything is built)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_amilab

DATA = Path(__file__).parents[3] / "data" / "modules"


def _recipe(tmp: Path, entry: str) -> Path:
    path = tmp / "recipes" / "build.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        "images:\n  - name: demo\n    elements: [ec2-base]\n    kernel: debian-generic\n"
        f"    extra-modules: [{entry}]\n"
    )
    return path


def _arm64(tmp: Path) -> Path:
    data = bytearray((DATA / "hello.ko").read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine EM_AARCH64
    out = tmp / "recipes" / "hello-arm64.ko"
    out.write_bytes(bytes(data))
    return out


def _renamed(tmp: Path) -> Path:
    data = (DATA / "hello.ko").read_bytes().replace(b"name=hello\0", b"name=../ab\0")
    out = tmp / "recipes" / "escape.ko"
    out.write_bytes(data)
    return out


def _no_makefile(tmp: Path) -> Path:
    src = tmp / "recipes" / "src"
    src.mkdir()
    (src / "hello.c").write_text("int x;\n")
    return src


def _not_elf(tmp: Path) -> Path:
    out = tmp / "recipes" / "fake.ko"
    out.write_text("#!/bin/sh\necho not a module\n")
    return out


def _link_out(tmp: Path) -> Path:
    src = tmp / "recipes" / "linked"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m := hello.o\n")
    (src / "hello.c").symlink_to("/etc/passwd")
    return src


CASES = [
    ("not-elf", _not_elf, "not a kernel module (not an ELF file)"),
    ("other-architecture", _arm64, "an arm64 module, and this image is x86_64"),
    ("module-name-escapes", _renamed, "would escape /lib/modules"),
    ("no-makefile", _no_makefile, "needs a Makefile or Kbuild"),
    ("link-out-of-tree", _link_out, "a link out of the source tree"),
    ("path-escapes", lambda tmp: Path("../../etc"), "escapes the recipe's folder"),
    ("missing", lambda tmp: Path("nope.ko"), "no such file or directory"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_extra_module(case, tmp_path: Path) -> None:
    _, make, message = case
    (tmp_path / "recipes").mkdir()
    made = make(tmp_path)
    entry = made.name if made.is_absolute() else str(made)
    recipe = _recipe(tmp_path, entry)
    home = tmp_path / "home"
    result = run_amilab("build", str(recipe), env={"AMILAB_HOME": str(home)}, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{recipe}:5: extra-modules[0]:" in lines[0] and message in lines[0], lines[0]
    assert not (home / "registry.sqlite").exists() and not (home / "artifacts").exists()


def test_a_prebuilt_module_passes_validation(tmp_path: Path) -> None:
    from builder.build.out_of_tree import validate
    from builder.build.recipe import load_recipes

    (tmp_path / "recipes").mkdir()
    shutil.copy(DATA / "hello.ko", tmp_path / "recipes" / "hello.ko")
    [loaded] = load_recipes(_recipe(tmp_path, "hello.ko"))
    assert loaded.recipe.extra_modules == ("hello.ko",)
    validate(loaded)  # no DKMS packages: no index needed


def test_dkms_and_probes_keys_are_declared() -> None:
    result = run_amilab("build", "--help")
    for k in ("dkms", "extra-modules", "checks.probes"):
        assert k in result.stdout
