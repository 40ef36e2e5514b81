"""The diskimage-builder engine: a recipe's root tree built by `disk-image-create`.

disk-image-create runs the recipe's elements on top of DIB's stock `debian-minimal` (which
brings debootstrap/mmdebstrap, dpkg, package-installs and DIB's `base`), with the recipe's
packages given by `-p`. What amilab changes in a stock run, and why:

- The kernel comes from outside the image (the recipe's AKI). debian-minimal would install
  linux-image-amd64 and generate its initramfs twice (~45 s here, 450 MB more tree). A helper
  element maps that package to nothing through pkg-map, DIB's own per-distro renaming
  mechanism, so no kernel, initramfs-tools or /boot contents get in.
- amilab makes the disk itself (`mkfs.ext4 -d`) from a tree. The helper element answers DIB's
  legacy `block-device.d` hook with a plain directory, so DIB creates no image file, loop
  device, partition or device-mapper node, and skips mkfs and the copy into the loop mount.
  `-t tar` then archives the finished tree (after finalise.d and cleanup.d), which we unpack;
  a last cleanup.d hook detaches the build's /proc, /sys, /dev and /dev/pts first, because
  DIB's tar would otherwise capture the host's device nodes from its bind-mounted /dev.
- disk-image-create runs in its own mount and PID namespace: every mount it makes (its tmpfs
  build directories, /proc, /dev, bind mounts) and every process it starts disappear when it
  ends or is killed, so a failed or interrupted build leaves nothing mounted or running.
- Its temporary directories (TMP_DIR, TMPDIR) are under the work directory we are given; its
  cache of .deb files (DIB_IMAGE_CACHE) and lock files under amilab's cache directory instead
  of ~/.cache.
- The stock debootstrap element's ifupdown files for eth0/eth1 are off
  (DIB_APT_MINIMAL_CREATE_INTERFACES=0): the recipe's elements configure networking, as with
  the native engine. DIB's other defaults stay, e.g. `base` installs open-iscsi and
  software-properties-common; a recipe may set DIB_SKIP_BASE_PACKAGE_INSTALL=1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder import paths
from builder.build.chroot import remove_tree
from builder.build.engines.base import RootEngine
from builder.build.mirror import host_mirror
from builder.build.rootfs import BASE_PACKAGES
from builder.errors import BuildFailed, EnvironmentProblem

if TYPE_CHECKING:  # the recipe module derives its engine choices from builder.build.engines
    from builder.build.pipeline import BuildState
    from builder.build.recipe import Recipe

HELPER = "amilab-dib-tree"
# package-installs is named because recipe elements use package-installs.yaml without
# declaring it in element-deps (amilab's own runner reads those files itself).
STOCK_ELEMENTS = ("debian-minimal", "package-installs", HELPER)
DEB_ARCH = {"x86_64": "amd64"}
KERNEL_PACKAGES = ("linux-image-amd64", "linux-image-arm64")
TAIL_LINES = 30
# Host variables a build may see; everything else comes from the recipe, so that what is
# exported in the calling shell (say a stray DIB_* variable) cannot change the image.
PASSED_THROUGH = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)

_NO_DISK_HOOK = r"""#!/bin/bash
# amilab: the root tree is the result, so DIB gets a plain directory instead of a loop device.
# DIB's later block-device calls (getval image-path, umount, cleanup) read the state files it
# would have written after creating one; we write their empty equivalents.
set -eu
set -o pipefail
sudo install -d -m 0755 -o root -g root "$TMP_BUILD_DIR/mnt"
state="$TMP_BUILD_DIR/states/block-device"
mkdir -p "$state"
"$DIB_PYTHON_EXEC" - "$state" "$TMP_IMAGE_DIR" <<'PY'
import json, os, pickle, sys
state, image_dir = sys.argv[1:]
image = {"image": os.path.join(image_dir, "none.raw"), "device": "none"}
with open(os.path.join(state, "state.json"), "w") as f:
    json.dump({"blockdev": {"image0": image}}, f)
with open(os.path.join(state, "nodes.pickle"), "wb") as f:
    pickle.dump([], f)
PY
echo "IMAGE_BLOCK_DEVICE=none"
"""

_NO_KERNEL_HOOK = r"""#!/bin/bash
# amilab: the kernel is the recipe's AKI, kept outside the image. Map debian-minimal's kernel
# package to nothing (an empty pkg-map entry means "skip"), merged into any map it has.
set -eu
set -o pipefail
sudo "$DIB_PYTHON_EXEC" - "$TMP_MOUNT_PATH/usr/share/pkg-map/debian-minimal" @KERNELS@ <<'PY'
import json, os, sys
path, kernels = sys.argv[1], sys.argv[2:]
data = {}
if os.path.exists(path):
    with open(path) as f:
        data = json.load(f)
skip = dict.fromkeys(kernels, "")
data.setdefault("default", {}).update(skip)
for section in ("family", "distro"):
    for names in data.get(section, {}).values():
        names.update(skip)
for releases in data.get("release", {}).values():
    for names in releases.values():
        names.update(skip)
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(data, f)
PY
"""


_UNMOUNT_HOOK = r"""#!/bin/bash
# amilab: `-t tar` archives the tree while the build's /proc, /sys, /dev and /dev/pts are still
# mounted in it, leaving out only proc and sys, so the host's device nodes would end up in the
# image's /dev. Nothing needs them after cleanup.d: detach them before the tar is written.
set -eu
set -o pipefail
root=$(readlink -e "$TARGET_ROOT")
awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    sudo umount -l "$m"
done
"""


@dataclass(frozen=True)
class Tools:
    dib: str
    unshare: str
    setpriv: str


class DibEngine(RootEngine):
    """disk-image-create makes the tree and runs every phase of the recipe's elements itself,
    up to cleanup.d, so nothing is left for amilab's element runner."""

    name = "diskimage-builder"
    summary = "disk-image-create"

    def make_root(self, s: BuildState) -> None:
        s.stages.detail("disk-image-create")
        build_root_dib(
            s.recipe,
            list(s.recipe.elements),
            paths.elements_path(),
            s.workdir / "dib",
            s.root,
            s.logs / "rootfs.log",
        )


def build_root_dib(
    recipe: Recipe,
    element_names: list[str],
    elements_path: list[Path],
    workdir: Path,
    target: Path,
    log: Path,
) -> None:
    """Build the recipe's root tree with disk-image-create and unpack it at `target`.

    `element_names` are the recipe's elements (DIB resolves their element-deps); the stock
    elements are added here. DIB's output is appended to `log`. Everything made under
    `workdir` is removed before returning, whether the build succeeded, failed or was
    interrupted.
    """
    tools = find_tools()
    made_workdir = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="dib-", dir=workdir))
    try:
        helper_parent = write_helper_element(run_dir / "elements")
        out_dir = run_dir / "out"
        (run_dir / "tmp").mkdir()
        out_dir.mkdir()
        env = dib_environment(recipe, [helper_parent, *elements_path], run_dir)
        argv = dib_argv(tools, recipe, element_names)
        log.parent.mkdir(parents=True, exist_ok=True)
        start = log.stat().st_size if log.exists() else 0
        rc = run_in_namespace(argv, env, out_dir, log)
        if rc != 0:
            raise failure(log, start, rc)
        unpack(out_dir / f"{recipe.name}.tar", target)
    finally:
        remove_tree(run_dir)
        if made_workdir:
            with contextlib.suppress(OSError):
                workdir.rmdir()


def find_tools() -> Tools:
    """disk-image-create from amilab's own environment first (where setup.sh installs it)."""
    beside = Path(sys.executable).parent / "disk-image-create"
    dib = str(beside) if beside.exists() else shutil.which("disk-image-create")
    if not dib:
        raise EnvironmentProblem(
            "disk-image-create is missing: install the `diskimage-builder` Python package "
            "(pip install 'amilab[dib]')"
        )
    # DIB calls sudo for every privileged step, and its debootstrap element asks
    # `debootstrap --version` even when it then uses mmdebstrap.
    needed = ("sudo", "debootstrap", "unshare", "setpriv", "tar")
    found = {tool: shutil.which(tool) for tool in needed}
    for tool, path in found.items():
        if not path:
            raise EnvironmentProblem(f"{tool} is missing; the diskimage-builder engine needs it")
    return Tools(dib=dib, unshare=str(found["unshare"]), setpriv=str(found["setpriv"]))


def write_helper_element(parent: Path) -> Path:
    """Write the helper element (see the module docstring) and return its parent directory."""
    element = parent / HELPER
    hooks = {
        "block-device.d/10-amilab-no-disk": _NO_DISK_HOOK,
        "cleanup.d/99-zz-amilab-unmount": _UNMOUNT_HOOK,
        "extra-data.d/20-amilab-no-kernel": _NO_KERNEL_HOOK.replace(
            "@KERNELS@", " ".join(KERNEL_PACKAGES)
        ),
    }
    for name, text in hooks.items():
        path = element / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    (element / "README.rst").write_text(
        f"{HELPER}: written by amilab for one build; see builder/build/engines/dib.py\n"
    )
    return parent


def dib_environment(recipe: Recipe, elements_dirs: list[Path], run_dir: Path) -> dict[str, str]:
    """The environment disk-image-create runs with.

    The recipe's `environment` is exported to DIB and its elements, so a recipe can tune DIB
    (e.g. DIB_DEBIAN_COMPONENTS, DIB_SKIP_BASE_PACKAGE_INSTALL); the variables that decide
    where files go, which mirror and which release are amilab's and win.
    """
    mirror = host_mirror()
    cache = paths.cache_dir() / "dib"
    tmp = run_dir / "tmp"
    env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    # DIB's stock debootstrap element writes ifupdown DHCP files for eth0/eth1; the recipe's
    # elements configure networking, as they do with the native engine.
    env["DIB_APT_MINIMAL_CREATE_INTERFACES"] = "0"
    env.update(recipe.environment)
    env.update(
        {
            "ELEMENTS_PATH": ":".join(str(d) for d in elements_dirs),
            "DIB_RELEASE": recipe.release,
            "DIB_DISTRIBUTION_MIRROR": mirror.debian,
            "TMP_DIR": str(tmp),
            "TMPDIR": str(tmp),
            "DIB_IMAGE_CACHE": str(cache / "image-cache"),
            "DIB_LOCKFILES": str(cache / "lockfiles"),
        }
    )
    env.pop("DIB_DEBIAN_DISTRIBUTION_MIRROR", None)  # it would override the one above
    if mirror.security:
        env["DIB_DEBIAN_SECURITY_MIRROR"] = mirror.security
    else:
        # without this DIB adds security.debian.org, which this machine may not reach
        components = env.get("DIB_DEBIAN_COMPONENTS", "main").replace(",", " ")
        env["DIB_APT_SOURCES_CONF"] = (
            f"default:deb {mirror.debian} {recipe.release} {components}\n"
            f"updates:deb {mirror.debian} {recipe.release}-updates {components}\n"
        )
    return env


def dib_argv(tools: Tools, recipe: Recipe, element_names: list[str]) -> list[str]:
    """The command line; run in the output directory so that IMAGE_NAME, which elements see
    (ec2-base writes it to /etc/hostname), is the recipe's name as with the native engine."""
    argv = [tools.dib, "-a", DEB_ARCH[recipe.architecture], "-t", "tar", "-o", recipe.name]
    argv += ["-p", ",".join(image_packages(recipe))]
    names = list(STOCK_ELEMENTS) + [e for e in element_names if e not in STOCK_ELEMENTS]
    return [*namespace_prefix(tools), *argv, *names]


def image_packages(recipe: Recipe) -> list[str]:
    """The recipe's packages plus those every amilab image gets with either engine: with the
    kernel outside the image, nothing else brings kmod (modprobe) and udev, which DIB's
    kernel package did; `ramdisk: distro` runs the image's own mkinitramfs afterwards."""
    extra = ["initramfs-tools"] if recipe.ramdisk == "distro" else []
    return list(dict.fromkeys([*BASE_PACKAGES, *recipe.packages, *extra]))


def namespace_prefix(tools: Tools) -> list[str]:
    """If amilab itself is killed, take DIB down with it (setpriv's parent-death signal, kept
    across the exec of unshare); then a private mount namespace and a PID namespace with its
    own /proc (DIB's cleanup runs `ps` to find processes left in the chroot, which needs a
    /proc matching the namespace)."""
    return [
        tools.setpriv, "--pdeathsig", "KILL",
        tools.unshare, "--mount", "--propagation", "private",
        "--pid", "--fork", "--kill-child", "--mount-proc",
    ]  # fmt: skip


def run_in_namespace(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> int:
    """Run argv with output appended to `log`; on any interruption kill its whole process
    group (the namespace's processes go with it) before re-raising."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches amilab only; we stop DIB
        )
        try:
            return proc.wait()
        except BaseException:
            kill_group(proc)
            raise


def kill_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGKILL the process group and wait until none of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def unpack(tar: Path, target: Path) -> None:
    """Unpack DIB's tar as the root tree, keeping numeric owners, modes and xattrs."""
    if not tar.exists():
        raise BuildFailed(f"disk-image-create succeeded but wrote no {tar.name}")
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise BuildFailed(f"{target} is not empty; refusing to unpack a root tree over it")
    result = subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tar),
         "-C", str(target)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise BuildFailed(f"unpacking {tar}: {result.stderr.decode(errors='replace').strip()}")
    tar.unlink()
    # DIB's tar leaves out proc and sys; the guest mounts them there
    for name in ("proc", "sys"):
        (target / name).mkdir(exist_ok=True)
        (target / name).chmod(0o555)


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| ")
_COPYING = re.compile(r"^Copying hooks (?P<path>\S+/(?P<phase>[\w-]+)\.d/(?P<script>\S+))$")
_RUNNING = re.compile(r"^dib-run-parts Running \S+/(?P<phase>[\w-]+)\.d/(?P<script>\S+)$")
_COMPLETED = re.compile(r"^dib-run-parts (?P<script>\S+) completed$")


@dataclass(frozen=True)
class FailedHook:
    element: str
    phase: str
    script: str
    line: int  # index of its "Running" line in the log lines


def failed_hook(lines: list[str]) -> FailedHook | None:
    """The hook that was running when DIB stopped: started, never completed."""
    owner: dict[tuple[str, str], str] = {}
    running: FailedHook | None = None
    for i, line in enumerate(lines):
        if m := _COPYING.match(line):
            owner[(m["phase"], m["script"])] = Path(m["path"]).parent.parent.name
        elif m := _RUNNING.match(line):
            element = owner.get((m["phase"], m["script"]), "?")
            running = FailedHook(element, f"{m['phase']}.d", m["script"], i)
        elif (m := _COMPLETED.match(line)) and running and m["script"] == running.script:
            running = None
    return running


def failure(log: Path, start: int, rc: int) -> BuildFailed:
    """BuildFailed naming the element, phase and script that failed, with its output's tail."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [_TIMESTAMP.sub("", line) for line in text.splitlines()]
    hook = failed_hook(lines)
    if hook is None:
        head = f"disk-image-create exited with {rc}"
        if reason := last_error(lines):
            head += f": {reason}"
        tail = lines[-TAIL_LINES:]
    else:
        head = (
            f"diskimage-builder: element {hook.element!r}, phase {hook.phase}, "
            f"script {hook.script} failed (disk-image-create exited with {rc})"
        )
        tail = hook_output(lines[hook.line + 1 :])[-TAIL_LINES:]
    return BuildFailed(f"{head} (log: {log})\n" + "\n".join(tail))


_ERROR = re.compile(r"^(?:ERROR:?\s+(?P<msg>.+)|\S*(?:Exception|Error): (?P<exc>.+))$")


def last_error(lines: list[str]) -> str | None:
    """DIB's own last error line (e.g. a missing element), when no hook was running."""
    for line in reversed(lines):
        if m := _ERROR.match(line):
            return m["msg"] or m["exc"]
    return None


def hook_output(lines: list[str]) -> list[str]:
    """A failed hook's own output: what follows its "Running" line up to DIB's error report
    and cleanup (which start with its trap's "+ ..." trace or unmount messages)."""
    out = []
    for line in lines:
        if line.startswith(("INFO diskimage_builder", "Unmount ", "dib-run-parts ")):
            break
        out.append(line)
    return out
