"""Files into an ext2/3/4 filesystem inside a disk image file, with e2fsprogs' debugfs.

No mount, no loop device, no appliance: debugfs opens the filesystem where it starts in the
file (e2fsprogs' unix I/O manager takes `FILE?offset=BYTES`, so a partition is reached at its
offset) and runs a command file: mkdir, write, symlink, set_inode_field. Under TCG this is
what makes add-modules cost about a disk copy instead of a libguestfs appliance boot.

Two debugfs traits shape this module:
- it reports errors on stderr and still exits 0, so any stderr line but its version banner
  is an error here;
- its path lookup does not follow a symlink in the middle of a path, and `mkdir` through one
  (e.g. /lib/modules/X on a merged-/usr image whose /lib is a link) corrupts the directory
  tree. Every path handed to it is resolved here first, component by component, as the
  guest's kernel would; and `e2fsck -fn` checks the result before it counts.

What debugfs cannot take (another filesystem, features this e2fsprogs does not know, a
journal that needs recovery) is reported by `open_fs` returning None: the caller uses
libguestfs instead.
"""

from __future__ import annotations

import os
import posixpath
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildFailed, EnvironmentProblem

_MAX_LINKS = 40  # as Linux's path walk (ELOOP)
_UNSAFE = set('"\\\n\r\t')  # what debugfs's command-line quoting cannot carry


class Unsupported(Exception):
    """This tree cannot be written through debugfs (a name its quoting cannot carry)."""


@dataclass(frozen=True)
class Entry:
    kind: str  # "dir" | "file" | "symlink" | "other"
    target: str = ""  # a symlink's destination


def open_fs(disk: Path, offset: int = 0) -> E2fs | None:
    """The ext2/3/4 filesystem at `offset` in `disk`, if e2fsprogs can write it safely."""
    for tool in ("debugfs", "dumpe2fs", "e2fsck"):
        if not _which(tool):
            raise EnvironmentProblem(f"{tool} is missing (e2fsprogs; scripts/setup.sh)")
    fs = E2fs(f"{disk}?offset={offset}" if offset else str(disk))
    r = subprocess.run(["dumpe2fs", "-h", fs.spec], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    header = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in r.stdout.splitlines())
        if v
    )
    features = header.get("Filesystem features", "").split()
    if "needs_recovery" in features or header.get("Filesystem state") != "clean":
        return None
    return fs


def _which(tool: str) -> bool:
    return any(
        os.access(Path(d) / tool, os.X_OK)
        for d in (*os.environ.get("PATH", "").split(os.pathsep), "/sbin", "/usr/sbin")
        if d
    )


def _q(path: str) -> str:
    if _UNSAFE & set(path):
        raise Unsupported(f"{path!r}: a name debugfs's command quoting cannot carry")
    return f'"{path}"'


class E2fs:
    """One filesystem in a disk image file; `spec` is what debugfs/e2fsck open."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def _debugfs(self, commands: list[str], write: bool = False) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
            script.write("\n".join(commands) + "\n")
            script.flush()
            argv = ["debugfs", *(["-w"] if write else []), "-f", script.name, self.spec]
            r = subprocess.run(argv, capture_output=True, text=True, errors="replace")
        errors = [
            ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")
        ]
        if r.returncode != 0 or errors:
            raise BuildFailed(
                f"debugfs on {self.spec}: {(errors or ['exit ' + str(r.returncode)])[0]}"
            )
        return r.stdout

    def lookup(self, path: str) -> Entry | None:
        """What `path` names (not following a final symlink); None if nothing does."""
        r = subprocess.run(
            ["debugfs", "-R", f"stat {_q(path)}", self.spec],
            capture_output=True, text=True, errors="replace",
        )  # fmt: skip
        if "Type:" not in r.stdout:
            return None
        kind = r.stdout.split("Type:", 1)[1].split()[0]
        if kind == "directory":
            return Entry("dir")
        if kind == "regular":
            return Entry("file")
        if kind == "symlink":
            return Entry("symlink", self._link_target(path, r.stdout))
        return Entry("other")

    def _link_target(self, path: str, stat_out: str) -> str:
        marker = 'Fast link dest: "'
        if marker in stat_out:
            return stat_out.split(marker, 1)[1].rsplit('"', 1)[0]
        with tempfile.TemporaryDirectory() as tmp:  # a slow link: its target is file data
            out = Path(tmp) / "link"
            self._debugfs([f"dump {_q(path)} {_q(str(out))}"])
            return out.read_text(errors="replace")

    def resolve(self, path: str) -> str:
        """`path` with every symlink followed, as the guest's kernel resolves it (absolute
        targets from the filesystem's root, relative ones from the link's directory); a
        component that does not exist yet ends the walk and the rest is kept as given."""
        parts = [p for p in path.split("/") if p]
        done, hops = "/", 0
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                done = posixpath.dirname(done.rstrip("/")) or "/"
                continue
            here = posixpath.join(done, name)
            entry = self.lookup(here)
            if entry is None:
                return posixpath.join(here, *parts)
            if entry.kind != "symlink":
                done = here
                continue
            hops += 1
            if hops > _MAX_LINKS:
                raise BuildFailed(f"{path}: too many levels of symbolic links in the image")
            if entry.target.startswith("/"):
                done = "/"
            parts = [p for p in entry.target.split("/") if p] + parts
        return done

    def read_text(self, path: str) -> str | None:
        """A regular file's text (symlinks followed); None if there is no such file."""
        real = self.resolve(path)
        if (entry := self.lookup(real)) is None or entry.kind != "file":
            return None
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "file"
            self._debugfs([f"dump {_q(real)} {_q(str(out))}"])
            return out.read_text(errors="replace")

    def mkdir_commands(self, path: str) -> list[str]:
        """Commands that make `path` (already resolved) and its missing parents."""
        missing: list[str] = []
        here = path.rstrip("/") or "/"
        while here != "/":
            entry = self.lookup(here)
            if entry is not None:
                if entry.kind != "dir":
                    raise BuildFailed(f"{here} in the image is not a directory")
                break
            missing.append(here)
            here = posixpath.dirname(here)
        return [f"mkdir {_q(p)}" for p in reversed(missing)]

    def tree_commands(self, src: Path, dest: str) -> list[str]:
        """Commands that copy the host directory `src` to `dest` (resolved, not existing):
        directories, regular files (owned by root, modes as on the host) and symlinks."""
        commands = [f"mkdir {_q(dest)}"]
        if stat.S_IMODE(src.stat().st_mode) != 0o755:
            commands.append(f"sif {_q(dest)} mode 0{src.stat().st_mode:o}")
        for root, dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            base = dest if rel == "." else posixpath.join(dest, *Path(rel).parts)
            for name in sorted(dirs) + sorted(files):
                host = Path(root) / name
                guest = posixpath.join(base, name)
                st = host.lstat()
                if stat.S_ISLNK(st.st_mode):
                    commands.append(f"symlink {_q(guest)} {_q(os.readlink(host))}")
                elif stat.S_ISDIR(st.st_mode):
                    commands.append(f"mkdir {_q(guest)}")
                    if stat.S_IMODE(st.st_mode) != 0o755:
                        commands.append(f"sif {_q(guest)} mode 0{st.st_mode:o}")
                elif stat.S_ISREG(st.st_mode):
                    commands.append(f"write {_q(str(host))} {_q(guest)}")
                else:
                    raise Unsupported(f"{host}: neither a file, a directory nor a symlink")
            dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        return commands

    def file_commands(self, src: Path, dest: str) -> list[str]:
        """Commands that put the host file `src` at `dest` (resolved), replacing a file."""
        entry = self.lookup(dest)
        if entry is not None and entry.kind == "dir":
            raise BuildFailed(f"{dest} in the image is a directory")
        drop = [f"rm {_q(dest)}"] if entry is not None else []
        return [*drop, f"write {_q(str(src))} {_q(dest)}"]

    def run(self, commands: list[str]) -> None:
        """Run the commands read-write, then have e2fsck check the filesystem (read-only):
        what it finds wrong is a failed run, not an image."""
        if commands:
            self._debugfs(commands, write=True)
        r = subprocess.run(["e2fsck", "-fn", self.spec], capture_output=True, text=True)
        if r.returncode != 0:
            lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
            raise BuildFailed(f"e2fsck after debugfs on {self.spec}: {' / '.join(lines[-3:])}")
