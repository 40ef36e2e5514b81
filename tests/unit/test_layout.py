"""The layout's rules, read from the source: builder never imports harness, the layers of
DESIGN.md hold (no module imports a higher layer, no two modules import each other, directly
or around a loop), and the wheel (pyproject.toml's package list and data globs) carries every
package and data file."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
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


# DESIGN.md's layers, from the bottom up: a module may import its own layer and those below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("builder",),
    ("harness.imds",),
    ("harness.launch",),
    ("harness.smoke", "harness.instances"),
    ("harness.matrix", "harness.api", "harness.results"),
    ("harness.cli",),
    ("bench",),
)
LAYERED = ("builder", "harness", "bench")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:`, which never run (their `else:` does)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _imported(node: ast.AST, package: str, modules: set[str]) -> list[str]:
    """The modules of the tree an import statement loads: `from X import y` is X.y when
    that is a module, else X (a package's __init__ is not counted for its submodules, so
    a package re-exporting its modules is no cycle); a relative import is read against
    `package`; each name stands for the most specific module it falls in."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join([*parts[: len(parts) - (node.level - 1)], *([base] if base else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
        return []
    out = []
    for dotted in names:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted:
            out.append(dotted)
    return out


def import_graph(root: Path, tops: tuple[str, ...] = LAYERED) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports, at any depth (inside functions too)."""
    files = {
        _module_name(root, p): p
        for top in tops
        for p in (root / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {
            target
            for node in _runtime_nodes(tree)
            for target in _imported(node, package, set(files))
            if target != name
        }
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other, directly or around a loop (the strongly
    connected components of more than one module, found with Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer_of(module: str) -> int | None:
    for i, row in enumerate(LAYERS):
        if any(module == top or module.startswith(f"{top}.") for top in row):
            return i
    return None  # e.g. the harness package itself: above nothing, below nothing


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = layer_of(module), layer_of(target)
            if low is not None and high is not None and high > low:
                out.append(f"{module} (layer {low + 1}) imports {target} (layer {high + 1})")
    return out


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 100  # the walk found the packages
    cycles = import_cycles(graph)
    assert cycles == [], "modules that import each other:\n" + "\n".join(map(" <-> ".join, cycles))


def test_no_module_imports_a_higher_layer() -> None:
    upward = upward_imports(import_graph(ROOT))
    assert upward == [], "imports against the layers of DESIGN.md:\n" + "\n".join(upward)


def test_the_layer_check_finds_cycles_and_upward_imports(tmp_path: Path) -> None:
    files = {
        "builder/__init__.py": "",
        "builder/a.py": "def f():\n    from builder import b\n",  # in a function: counts
        "builder/b.py": "import builder.c\n",
        "builder/c.py": "from . import a\nfrom builder.d import thing\n",
        "builder/d.py": (
            "from typing import TYPE_CHECKING\nthing = 1\n"
            "if TYPE_CHECKING:\n    from harness.cli import main\n"  # never runs: no edge
            "else:\n    import builder.e\n"
        ),
        "builder/e.py": "import os\nimport harness.imds.server\n",  # upward
        "harness/__init__.py": "",
        "harness/imds/__init__.py": "",
        "harness/imds/server.py": "from builder.e import x\n",  # with e: a second cycle
        "harness/cli/__init__.py": "from harness.imds import server\n",  # downward: fine
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["builder.d"] == {"builder.e"}
    assert import_cycles(graph) == [
        ["builder.a", "builder.b", "builder.c"],
        ["builder.e", "harness.imds.server"],
    ]
    assert upward_imports(graph) == [
        "builder.e (layer 1) imports harness.imds.server (layer 2)",
    ]
    (tmp_path / "builder/e.py").write_text("import os\n")
    (tmp_path / "builder/a.py").write_text("")
    graph = import_graph(tmp_path)
    assert import_cycles(graph) == [] and upward_imports(graph) == []


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
