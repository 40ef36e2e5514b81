"""What `amilab smoke` verifies inside a guest: built-in checks plus the recipe's.

All checks of an instance run as one shell script over one SSH session (each session costs
sshd a fork and a shell, hundreds of milliseconds under TCG); markers with a random token
split the output back into one result per check.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder.modules.check import modules_for
from harness.imds.protocol import TOKEN_HEADER, TTL_HEADER

IMDS = "http://169.254.169.254"


@dataclass
class CheckResult:
    name: str
    passed: bool
    expected: str
    actual: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Passed": self.passed,
            "Expected": self.expected,
            "Actual": self.actual,
            "Detail": self.detail,
        }


@dataclass
class Check:
    name: str
    command: str  # shell, run as root in the guest
    evaluate: Callable[[int, str], CheckResult]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def kernel_release(expected: str) -> Check:
    def evaluate(status: int, out: str) -> CheckResult:
        actual = _first_line(out)
        ok = status == 0 and actual == expected
        detail = "" if ok else f"the guest booted {actual or '(nothing)'}, expected {expected}"
        return CheckResult("kernel-release", ok, expected, actual, detail)

    return Check("kernel-release", "uname -r", evaluate)


def modules_tree() -> Check:
    command = (
        'r=$(uname -r); echo "release $r"; '
        'if [ -d "/lib/modules/$r" ]; then echo present; else echo missing; fi; '
        "echo trees $(ls -1 /lib/modules 2>/dev/null)"
    )

    def evaluate(status: int, out: str) -> CheckResult:
        fields = {
            line.split(" ", 1)[0]: (line.split(" ", 1) + [""])[1]
            for line in out.strip().splitlines()
            if line
        }
        release = fields.get("release", "?").strip()
        trees = fields.get("trees", "").split()
        return modules_tree_result(release, "present" in fields, trees)

    return Check("modules-tree", command, evaluate)


def modules_tree_result(
    release: str, present: bool, trees: list[str], how: str = "", why_outside: str = ""
) -> CheckResult:
    """The `modules-tree` verdict: does the image hold /lib/modules/<booted release>?
    `how` notes where the facts came from; `why_outside` why they were read that way."""
    expected = f"/lib/modules/{release}"
    if present:
        return CheckResult("modules-tree", True, expected, expected, how)
    have = ", ".join(trees) if trees else "none"
    detail = f"booted {release} but the image has no /lib/modules/{release}; "
    detail += f"module trees in the image: {have}"
    if how:
        detail += f" ({how}: {why_outside})" if why_outside else f" ({how})"
    return CheckResult("modules-tree", False, expected, "missing", detail)


def modprobe(module: str) -> Check:
    name = f"modprobe-{module}"
    sysname = module.replace("-", "_")
    command = (
        f"modprobe {shlex.quote(module)} && "
        f"if [ -d /sys/module/{shlex.quote(sysname)} ]; then echo loaded; "
        "else echo 'modprobe succeeded but the module is not in /sys/module'; fi"
    )

    def evaluate(status: int, out: str) -> CheckResult:
        ok = status == 0 and "loaded" in out.split()
        actual = "loaded" if ok else (_first_line(out) or f"modprobe exited {status}")
        detail = "" if ok else out.strip()
        return CheckResult(name, ok, "loaded", actual, detail)

    return Check(name, command, evaluate)


# dmesg lines that mean the kernel refused a module, or loaded it with what it could not check
# ("module verification failed" alone is the taint (E) of any unsigned module on a kernel
# that does not enforce signatures, Debian's without Secure Boot: recorded, not a failure)
MODULE_ERRORS = ("disagrees about version of symbol", "Unknown symbol", "BTF",
                 "module verification failed", "Key was rejected")  # fmt: skip
FATAL_MODULE_ERRORS = ("disagrees about version of symbol", "Unknown symbol",
                       "failed to validate module", "Key was rejected")  # fmt: skip
# /proc/sys/kernel/tainted bits (Documentation/admin-guide/tainted-kernels.rst)
TAINT_LETTERS = dict(enumerate("PFSRMBUDAWCIOELKXT"))


def taint_letters(value: int) -> str:
    return "".join(TAINT_LETTERS.get(bit, "?") for bit in range(32) if value >> bit & 1)


def out_of_tree_module(module: dict[str, Any], probe: str | None = None) -> Check:
    """An out-of-tree module the image declares (dkms, extra-modules): modprobe loads it, the
    file it loaded is the out-of-tree copy (updates/ or extra/, not an in-tree module of the
    same name), dmesg has no symbol, CRC or BTF complaint about it, the recipe's probe passes;
    the kernel's taint is recorded."""
    name = module["Name"]
    check = f"out-of-tree-{name}"
    q, sysname = shlex.quote(name), shlex.quote(name.replace("-", "_"))
    command = (
        f"if out=$(modprobe {q} 2>&1); then echo 'modprobe ok'; "
        f'else echo "modprobe failed: $(echo $out | head -c 300)"; fi; '
        f'echo "file $(modinfo -n {q} 2>/dev/null)"; '
        f"[ -d /sys/module/{sysname} ] && echo loaded; "
        'echo "taint $(cat /proc/sys/kernel/tainted)"; '
        f"dmesg 2>/dev/null | grep -F -e {sysname} -e {q} | grep -E "
        + shlex.quote("|".join(MODULE_ERRORS))
        + " | sed 's/^/dmesg /' | head -20"
    )
    if probe:
        command += (f"; if ( {probe} ) >/dev/null 2>&1; then echo 'probe ok'; "
                    "else echo 'probe failed'; fi")  # fmt: skip
    expected = f"loaded from {module.get('Path') or 'updates/ or extra/'}"

    def evaluate(status: int, out: str) -> CheckResult:
        lines = out.strip().splitlines()
        fields = {ln.split(" ", 1)[0]: (ln.split(" ", 1) + [""])[1] for ln in lines}
        path = fields.get("file", "").strip()
        dmesg = [ln[len("dmesg "):] for ln in lines if ln.startswith("dmesg ")]
        taint = fields.get("taint", "0").strip()
        letters = taint_letters(int(taint)) if taint.isdigit() else taint
        why = []
        if "modprobe ok" not in lines:
            why.append(next((ln for ln in lines if ln.startswith("modprobe failed")),
                            "modprobe did not run"))  # fmt: skip
        elif "loaded" not in lines:
            why.append(f"modprobe succeeded but /sys/module/{name} is missing")
        out_of_tree = "/updates/" in path or "/extra/" in path
        if path and not out_of_tree:
            why.append(f"modprobe resolves {name} to {path}, not the out-of-tree copy")
        fatal = [d for d in dmesg if any(e in d for e in FATAL_MODULE_ERRORS)]
        why += [f"dmesg: {d}" for d in fatal]
        if probe and "probe ok" not in lines:
            why.append(f"probe failed: {probe}")
        built_for = module.get("KernelRelease", "")
        actual = why[0] if why else f"loaded from {path}"
        detail = "; ".join(why[1:])
        notes = [f"taint {taint} ({letters or 'none'})", f"built for {built_for}"]
        notes += [f"dmesg: {d}" for d in dmesg if d not in fatal]
        if probe and not why:
            notes.append(f"probe ok: {probe}")
        detail = "; ".join([*([detail] if detail else []), *notes])
        return CheckResult(check, not why, expected, actual, detail)

    return Check(check, command, evaluate)


def metadata_value(key: str, expected: str | None) -> Check:
    """`curl` from inside the guest; `expected` None means the path must be 404. IMDSv2 as
    EC2's own tools do it (a token first, IMDSv1 only if no token is issued), so the check
    holds for `--http-tokens required` launches too."""
    name = f"metadata-{key}"
    url = f"{IMDS}/latest/meta-data/{key}"
    command = (
        f"h=; t=$(curl -sf -m 10 -X PUT -H '{TTL_HEADER}: 60' {IMDS}/latest/api/token) "
        f'&& h="{TOKEN_HEADER}: $t"; '
        f"curl -s -m 10 ${{h:+-H \"$h\"}} -w '\\n%{{http_code}}' {url}"
    )
    want = expected if expected is not None else "404"

    def evaluate(status: int, out: str) -> CheckResult:
        lines = out.rstrip("\n").split("\n")
        code = lines[-1].strip() if lines else ""
        body = "\n".join(lines[:-1]).strip()
        if status != 0:
            return CheckResult(name, False, want, f"curl exited {status}", out.strip())
        if expected is None:
            ok = code == "404"
            return CheckResult(name, ok, want, code, "" if ok else f"body: {body[:200]}")
        ok = code == "200" and body == expected
        actual = body if code == "200" else f"HTTP {code}"
        return CheckResult(name, ok, want, actual, "" if ok else f"GET {url}")

    return Check(name, command, evaluate)


def command(name: str, run: str, expect: str) -> Check:
    """A recipe's own check: passes when the command exits 0 and its output matches."""
    try:
        pattern = re.compile(expect, re.MULTILINE)
    except re.error as e:
        pattern = None
        bad = str(e)

    def evaluate(status: int, out: str) -> CheckResult:
        actual = out.strip()
        if pattern is None:
            return CheckResult(name, False, expect, actual, f"bad regular expression: {bad}")
        matched = pattern.search(actual) is not None
        ok = status == 0 and matched
        why = []
        if status != 0:
            why.append(f"exited {status}")
        if not matched:
            why.append("output does not match")
        return CheckResult(name, ok, expect, actual[:500], "; ".join(why))

    return Check(name, run, evaluate)


def builtin_checks(
    release: str,
    kernel_id: str | None,
    ramdisk_id: str | None,
    recipe_checks: dict[str, Any],
    out_of_tree: list[dict[str, Any]] | None = None,
) -> list[Check]:
    """The checks for one instance: built-ins, then the recipe's `checks`; `out_of_tree`: the
    image's out-of-tree modules (its record's), each checked with the recipe's probe."""
    out = [kernel_release(release), modules_tree()]
    out += [modprobe(m) for m in recipe_checks.get("modules", ())]
    probes = recipe_checks.get("probes") or {}
    out += [
        out_of_tree_module(m, probes.get(m["Name"]))
        for m in modules_for(out_of_tree or [], release)
    ]
    if recipe_checks.get("metadata", True):
        out += [metadata_value("kernel-id", kernel_id), metadata_value("ramdisk-id", ramdisk_id)]
    for c in recipe_checks.get("commands", ()):
        out.append(command(c["name"], c["run"], c.get("expect", ".*")))
    return out


def script(checks: list[Check], token: str) -> str:
    parts = []
    for i, c in enumerate(checks):
        parts.append(
            f"printf '%s\\n' '{token} {i} begin'\n"
            f"( {c.command}\n) </dev/null 2>&1\n"
            f"printf '\\n%s %s\\n' '{token} {i} end' \"$?\"\n"
        )
    return "".join(parts)


def parse(checks: list[Check], output: str, token: str) -> list[CheckResult]:
    results = []
    for i, c in enumerate(checks):
        m = re.search(
            rf"^{token} {i} begin\n(.*?)\n{token} {i} end (\d+)$", output, re.DOTALL | re.MULTILINE
        )
        if m is None:
            results.append(CheckResult(c.name, False, "", "", "no result (the script stopped)"))
            continue
        results.append(c.evaluate(int(m.group(2)), m.group(1)))
    return results


def new_token() -> str:
    return "@@amilab-" + secrets.token_hex(6)
