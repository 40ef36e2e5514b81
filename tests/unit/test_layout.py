"""The layout's rules, read from the source: builder never imports harness, and the wheel
(pyproject.toml's package list and data globs) carries every package and data file."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from tests.conftest import ROOT

CODE = ("builder", "harness")
# Shipped data outside the packages' own folders (mapped in by package-dir).
DATA = ("elements", "kernels")


def _modules(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def _names_harness(module: str | None) -> bool:
    return module is not None and (module == "harness" or module.startswith("harness."))


def harness_imports(path: Path) -> list[str]:
    """Each import of harness in a module, at any depth (inside functions too), as
    `line: statement`; importlib.import_module and __import__ of a literal name count."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str | None] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if called in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                names = [str(arg.value)]
        if any(_names_harness(n) for n in names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_builder_never_imports_harness() -> None:
    modules = _modules("builder")
    assert len(modules) > 20  # the walk found the package
    offenders = {
        str(p.relative_to(ROOT)): hits for p in modules if (hits := harness_imports(p))
    }
    assert offenders == {}, f"builder must not import harness: {offenders}"


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import os\nimport harness\nfrom harness.launch import plan\n"
        "def f():\n    import harness.cli as c\n"
        "    importlib.import_module('harness.smoke')\n"
        "from builder import harnessed\nimport harnessing\n"
    )
    assert [h.split(":")[0] for h in harness_imports(src)] == ["2", "3", "5", "6"]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dir(package: str, mapping: dict[str, str]) -> Path:
    return ROOT / mapping.get(package, package.replace(".", "/"))


def test_every_package_folder_is_in_the_wheel() -> None:
    listed = set(_setuptools()["packages"])
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in CODE
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    mapping = _setuptools().get("package-dir", {})
    assert all(_package_dir(p, mapping).is_dir() for p in listed), "a listed package is gone"


def test_every_data_file_is_in_the_wheel() -> None:
    """What setuptools would copy (each package's data globs, in its folder) covers every
    file in the code folders that is not a module, and everything in elements/ and kernels/;
    element hooks keep their executable bits because the wheel records file modes."""
    config = _setuptools()
    mapping = config.get("package-dir", {})
    shipped: set[Path] = set()
    for package, globs in config["package-data"].items():
        folder = _package_dir(package, mapping)
        shipped |= {f for g in globs for f in folder.glob(g) if f.is_file()}
    data = {
        f
        for top in (*CODE, *DATA)
        for f in (ROOT / top).rglob("*")
        if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts
    }
    assert any(f.parts[-3] == "elements" for f in data) and any(f.suffix == ".ini" for f in data)
    missing = sorted(str(f.relative_to(ROOT)) for f in data - shipped)
    assert missing == [], "add package-data globs in pyproject.toml for these"
