"""Bad recipes: exit code 2, one line naming file, line and key, no traceback (real CLI)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_amilab

GOOD = """\
images:
  - name: demo
    elements: [ec2-base]
    kernel: debian-cloud
"""

# (id, recipe text, key named in the message, 1-based line the message must point at)
CASES = [
    ("unknown-key", GOOD + "    colour: red\n", "colour", 5),
    ("wrong-type-list", GOOD + "    packages: vim\n", "packages", 5),
    ("bad-choice", GOOD + "    ramdisk: maybe\n", "ramdisk", 5),
    ("bad-size", GOOD + "    disk:\n      size: 10Q\n", "disk.size", 6),
    ("size-out-of-range", GOOD + "    disk:\n      size: 1M\n", "disk.size", 6),
    ("unknown-disk-key", GOOD + "    disk:\n      sise: 2G\n", "disk.sise", 6),
    ("unknown-format", GOOD + "    disk:\n      formats: [vhd]\n", "disk.formats[0]", 6),
    (
        "label-too-long",
        GOOD + "    disk:\n      label: label-longer-than-16\n",
        "disk.label",
        6,
    ),
    ("bad-package", GOOD + "    packages: [Vim!]\n", "packages[0]", 5),
    ("bad-env-name", GOOD + "    environment:\n      1BAD: x\n", "environment.1BAD", 6),
    ("unknown-element", GOOD.replace("[ec2-base]", "[no-such-element]"), "elements", 3),
    ("element-cycle", GOOD.replace("[ec2-base]", "[cycle-a]"), "elements", 3),
    ("unknown-kernel", GOOD.replace("debian-cloud", "linux-99"), "kernel", 4),
    ("missing-name", "images:\n  - description: x\n", "name", 2),
    ("duplicate-image", GOOD + GOOD.replace("images:\n", ""), "name", 5),
    (
        "hvm-unpartitioned",
        GOOD + "    virtualization: hvm\n    disk:\n      partitioning: none\n",
        "disk.partitioning",
        7,
    ),
    ("bad-boot", GOOD + "    boot: coreboot\n", "boot", 5),
    ("yaml-syntax", GOOD + "    packages: [a, b\n", "yaml", 6),
    (
        "check-missing-run",
        GOOD + "    checks:\n      commands:\n        - name: x\n",
        "checks.commands[0].run",
        7,
    ),
    ("wrong-type-bool", GOOD + "    checks:\n      metadata: perhaps\n", "checks.metadata", 6),
    ("duplicate-key", GOOD + "    kernel: debian-generic\n", "kernel", 5),
    ("top-level-key", "imagez: []\n", "imagez", 1),
    ("modules-bad", GOOD + "    modules: some\n", "modules", 5),
    ("unknown-architecture", GOOD + "    architecture: sparc64\n", "architecture", 5),
    ("architecture-not-a-string", GOOD + "    architecture: [arm64]\n", "architecture", 5),
    # the image's own kernel goes into its tree: an x86_64 kernel for an arm64 image is refused
    ("kernel-of-another-arch", GOOD + "    architecture: arm64\n", "kernel", 4),
    (
        "i386-hvm-on-uefi",
        GOOD.replace("debian-cloud", "debian-686-pae-bookworm")
        + "    architecture: i386\n    virtualization: hvm\n    boot: uefi\n",
        "boot",
        7,
    ),
    (
        "arm64-hvm-on-bios",
        GOOD.replace("debian-cloud", "debian-cloud-arm64-bookworm")
        + "    architecture: arm64\n    virtualization: hvm\n    boot: bios\n",
        "boot",
        7,
    ),
]


@pytest.fixture
def cycle_elements(tmp_path: Path) -> Path:
    base = tmp_path / "elements"
    for name, dep in (("cycle-a", "cycle-b"), ("cycle-b", "cycle-a")):
        (base / name).mkdir(parents=True)
        (base / name / "element-deps").write_text(dep + "\n")
    return base


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe(case, tmp_path: Path, cycle_elements: Path) -> None:
    _, text, key, line = case
    recipe = tmp_path / "build.yaml"
    recipe.write_text(textwrap.dedent(text))
    result = run_amilab(
        "build",
        str(recipe),
        env={"AMILAB_HOME": str(tmp_path / "home"), "AMILAB_ELEMENTS_PATH": str(cycle_elements)},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{recipe}:{line}: {key}:" in lines[0], lines[0]
    assert not (tmp_path / "home" / "registry.sqlite").exists() or "images" not in result.stdout


def test_cycle_message_names_elements(tmp_path: Path, cycle_elements: Path) -> None:
    recipe = tmp_path / "build.yaml"
    recipe.write_text(GOOD.replace("[ec2-base]", "[cycle-a]"))
    result = run_amilab(
        "build",
        str(recipe),
        env={"AMILAB_ELEMENTS_PATH": str(cycle_elements), "AMILAB_HOME": str(tmp_path / "h")},
    )
    assert "cycle-a -> cycle-b -> cycle-a" in result.stderr


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    result = run_amilab("build", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "recipe file not found" in result.stderr


def test_bad_argument_exit_2() -> None:
    result = run_amilab("images", "--type", "floppy")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_help_lists_every_key() -> None:
    result = run_amilab("build", "--help")
    assert result.returncode == 0
    for k in (
        "name",
        "disk.size",
        "disk.partitioning",
        "ramdisk",
        "modules",
        "engine",
        "checks.modules",
        "kernel",
        "virtualization",
        "environment",
    ):
        assert f"  {k} " in result.stdout, k
