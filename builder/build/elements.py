"""Elements in diskimage-builder's layout: discovery, dependency resolution, and hook phases.

Phases run in diskimage-builder's order with its split: root.d, extra-data.d and cleanup.d
outside the chroot (with TARGET_ROOT), pre-install.d, install.d, post-install.d and
finalise.d inside it (hooks copied to /tmp/in_target.d as diskimage-builder does). Within a
phase the hooks of all elements run in one run-parts order: sorted by file name.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder.build import chroot
from builder.build.arch import of as arch_of
from builder.build.schema import Located
from builder.children import ending_with_us
from builder.errors import BadInput, BuildFailed

PHASES: tuple[tuple[str, bool], ...] = (
    # (phase directory, runs inside the chroot)
    ("root.d", False),
    ("extra-data.d", False),
    ("pre-install.d", True),
    ("install.d", True),
    ("post-install.d", True),
    ("finalise.d", True),
    ("cleanup.d", False),
)
# run-parts accepts only these names (LSB names: no dots, so editor backups never run)
_HOOK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_IN_TARGET = "/tmp/in_target.d"
_TAIL_LINES = 15


@dataclass(frozen=True)
class Element:
    name: str
    path: Path
    deps: tuple[str, ...]
    provides: tuple[str, ...]


@dataclass(frozen=True)
class PackageInstall:
    name: str
    phase: str
    uninstall: bool
    element: str


@dataclass(frozen=True)
class Hook:
    element: str
    phase: str
    name: str
    path: Path


def _read_list(path: Path) -> tuple[str, ...]:
    if not path.exists():
        return ()
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return tuple(names)


def find(name: str, search: Sequence[Path]) -> Element | None:
    for base in search:
        path = base / name
        if path.is_dir():
            return Element(
                name,
                path,
                _read_list(path / "element-deps"),
                _read_list(path / "element-provides"),
            )
    return None


def resolve(
    names: Sequence[str], search: Sequence[Path], where: Located | None = None
) -> list[Element]:
    """Requested elements plus their element-deps, dependencies first; cycles and missing
    elements are reported by name (at the recipe's `elements` line when known)."""

    def fail(message: str) -> BadInput:
        return where.error("elements", message) if where else BadInput(message)

    order: list[Element] = []
    done: dict[str, Element] = {}
    provided: dict[str, str] = {}
    searched = ", ".join(str(p) for p in search)

    def visit(name: str, stack: list[str]) -> None:
        if name in done or name in provided:
            return
        if name in stack:
            cycle = " -> ".join(stack[stack.index(name) :] + [name])
            raise fail(f"element dependency cycle: {cycle}")
        element = find(name, search)
        if element is None:
            needed_by = f" (needed by element {stack[-1]!r})" if stack else ""
            raise fail(f"element {name!r}{needed_by} not found in: {searched}")
        for dep in element.deps:
            visit(dep, stack + [name])
        done[name] = element
        for alias in element.provides:
            provided[alias] = name
        order.append(element)

    for name in names:
        visit(name, [])
    return order


def package_installs(
    elements: Sequence[Element], architecture: str = "x86_64"
) -> list[PackageInstall]:
    """package-installs.yaml of every element (diskimage-builder's format: a mapping of
    package name to nothing or {phase, uninstall, arch})."""
    out: list[PackageInstall] = []
    for el in elements:
        path = el.path / "package-installs.yaml"
        if not path.exists():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise BadInput(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise BadInput(f"{path}: expected a mapping of package names")
        for pkg, opts in data.items():
            opts = opts or {}
            if not isinstance(opts, dict):
                raise BadInput(f"{path}: {pkg}: expected nothing or a mapping")
            arch = opts.get("arch")
            # diskimage-builder's filter names Debian's or EC2's architecture
            wanted = {architecture, arch_of(architecture).deb}
            if arch and not wanted & set(str(arch).split(",")):
                continue
            phase = str(opts.get("phase", "install.d"))
            if phase not in {p for p, _ in PHASES}:
                raise BadInput(f"{path}: {pkg}: unknown phase {phase!r}")
            out.append(PackageInstall(str(pkg), phase, bool(opts.get("uninstall")), el.name))
    return out


def hooks(elements: Sequence[Element], phase: str) -> list[Hook]:
    found: list[Hook] = []
    for el in elements:
        d = el.path / phase
        if not d.is_dir():
            continue
        for script in d.iterdir():
            if _HOOK_NAME.match(script.name) and script.is_file() and _executable(script):
                found.append(Hook(el.name, phase, script.name, script))
    return sorted(found, key=lambda h: h.name)


def env_files(elements: Sequence[Element]) -> list[Path]:
    files: list[Path] = []
    for el in elements:
        d = el.path / "environment.d"
        if d.is_dir():
            files += [f for f in d.iterdir() if f.is_file()]
    return sorted(files, key=lambda f: f.name)


def _executable(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o111)


_WRAPPER = r"""
set -a
for f in $AMILAB_ENV_FILES; do . "$f"; done
set +a
unset AMILAB_ENV_FILES
exec "$0" "$@"
"""


class PhaseRunner:
    """Runs the element hooks of one build against one root tree."""

    def __init__(
        self,
        elements: Sequence[Element],
        root: Path,
        logs: Path,
        env: dict[str, str],
        on_hook: Callable[[Hook], None] | None = None,
    ) -> None:
        self.elements = list(elements)
        self.root = root
        self.logs = logs
        self.env = env
        self.on_hook = on_hook
        self.ran: list[Hook] = []

    def stage_in_target(self) -> None:
        """Copy hooks and environment.d into the root, as diskimage-builder does."""
        target = self.root / _IN_TARGET.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        env_dir = target / "environment.d"
        env_dir.mkdir(exist_ok=True)
        for f in env_files(self.elements):
            subprocess.run(["cp", "-p", str(f), str(env_dir / f.name)], check=True)
        for phase, inside in PHASES:
            if not inside:
                continue
            pdir = target / phase
            pdir.mkdir(exist_ok=True)
            for hook in hooks(self.elements, phase):
                subprocess.run(["cp", "-p", str(hook.path), str(pdir / hook.name)], check=True)

    def remove_in_target(self) -> None:
        chroot.remove_tree(self.root / _IN_TARGET.lstrip("/"))

    def run_phase(self, phase: str, inside: bool) -> None:
        for hook in hooks(self.elements, phase):
            self._run(hook, inside)

    def _run(self, hook: Hook, inside: bool) -> None:
        if self.on_hook:
            self.on_hook(hook)
        log = self.logs / hook.phase / f"{hook.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# element {hook.element}, phase {hook.phase}, hook {hook.name}\n")
        if inside:
            envs = " ".join(
                f"{_IN_TARGET}/environment.d/{f.name}" for f in env_files(self.elements)
            )
            argv = ["bash", "-c", _WRAPPER, f"{_IN_TARGET}/{hook.phase}/{hook.name}"]
            env = {**self.env, "AMILAB_ENV_FILES": envs}
            result = chroot.run(self.root, argv, env=env, log=log)
        else:
            envs = " ".join(str(f) for f in env_files(self.elements))
            env = {
                **chroot.BASE_ENV,
                **self.env,
                "TARGET_ROOT": str(self.root),
                "AMILAB_ENV_FILES": envs,
            }
            with open(log, "ab") as out:
                result = subprocess.run(
                    ending_with_us(["bash", "-c", _WRAPPER, str(hook.path)]),
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
        self.ran.append(hook)
        if result.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-_TAIL_LINES:]
            raise BuildFailed(
                f"element {hook.element!r}, phase {hook.phase}, script {hook.name} "
                f"exited with {result.returncode} (log: {log})\n" + "\n".join(tail)
            )
