"""The one place amilab runs qemu-img: convert, info, check and create.

Every failure is one line: a missing tool is an EnvironmentProblem (exit 3), a missing input
is BadInput (exit 2), and qemu-img's own refusal is QemuImgFailed (a BuildFailed, exit 1)
carrying qemu-img's last stderr line, which a caller may rephrase as bad input when the
file it handed over came from the user. A convert that fails leaves no partial output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.errors import BadInput, BuildFailed, EnvironmentProblem


class QemuImgFailed(BuildFailed):
    """qemu-img ran and exited non-zero; `detail` is its own message."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"qemu-img {what} failed: {detail}")


def tool() -> str:
    """The qemu-img executable, or EnvironmentProblem saying which package provides it."""
    path = shutil.which("qemu-img")
    if not path:
        raise EnvironmentProblem("qemu-img is missing (qemu-utils)")
    return path


def _run(args: Sequence[str], what: str, ok: Sequence[int] = (0,)) -> str:
    result = subprocess.run(
        [tool(), *args], capture_output=True, text=True, errors="replace", check=False
    )
    if result.returncode not in ok:
        lines = result.stderr.strip().splitlines() or result.stdout.strip().splitlines()
        raise QemuImgFailed(what, lines[-1].strip() if lines else f"exit {result.returncode}")
    return result.stdout


def _existing(path: Path) -> Path:
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    return path


def convert(
    src: Path,
    dst: Path,
    *,
    src_format: str,
    out_format: str,
    options: Sequence[str] = (),
    sparse: bool = True,
    label: str | None = None,
    force_share: bool = False,
    coroutines: int | None = None,
) -> None:
    """`qemu-img convert -f SRC_FORMAT -O OUT_FORMAT [-o OPT]...`; `sparse=False` writes
    zeros too (-S 0). `label` names the output format in the error (default OUT_FORMAT).
    `force_share` (-U) reads a source a running QEMU holds open (a --no-reboot snapshot).
    `coroutines` (-m) bounds the parallel requests (1: one after the other)."""
    tool()
    _existing(src)
    args = ["convert", "-q", *(["-U"] if force_share else []), "-f", src_format, "-O", out_format]
    for opt in options:
        args += ["-o", opt]
    if not sparse:
        args += ["-S", "0"]
    if coroutines:
        args += ["-m", str(coroutines)]
    try:
        _run([*args, str(src), str(dst)], f"convert to {label or out_format}")
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img info --output=json`, parsed (format, virtual-size, format-specific, ...)."""
    _existing(path)
    args = ["info", "--output=json", *(["-f", fmt] if fmt else []), str(path)]
    data: dict[str, Any] = json.loads(_run(args, f"info of {path.name}"))
    return data


def check(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img check --output=json`; QemuImgFailed when the image has errors or leaks."""
    _existing(path)
    args = ["check", "--output=json", *(["-f", fmt] if fmt else []), str(path)]
    # 2 (corruptions) and 3 (leaks) still print the report: say what it found.
    out = _run(args, f"check of {path.name}", ok=(0, 2, 3))
    report: dict[str, Any] = json.loads(out) if out.strip() else {}
    found = [f"{k} {report[k]}" for k in ("corruptions", "leaks", "check-errors") if report.get(k)]
    if found:
        raise QemuImgFailed(f"check of {path.name}", ", ".join(found))
    return report


def create(
    path: Path,
    fmt: str,
    *,
    size: int | None = None,
    backing: Path | None = None,
    backing_format: str | None = None,
    options: Sequence[str] = (),
) -> None:
    """`qemu-img create`: a blank image of `size` bytes, or an overlay over `backing` (whose
    format is named, so qemu never guesses it from the backing file's content)."""
    tool()
    args = ["create", "-q", "-f", fmt]
    if backing is not None:
        if backing_format is None:
            raise ValueError("an overlay names its backing file's format")
        _existing(backing)
        args += ["-F", backing_format, "-b", str(backing)]
    for opt in options:
        args += ["-o", opt]
    args.append(str(path))
    if size is not None:
        args.append(str(size))
    try:
        _run(args, f"create {fmt}" + (" overlay" if backing is not None else ""))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
