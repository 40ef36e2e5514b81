"""Checks: one script, results split back per check; the failure details people need."""

from __future__ import annotations

import subprocess

from harness.smoke import checks


def _run_locally(todo: list[checks.Check]) -> list[checks.CheckResult]:
    token = checks.new_token()
    out = subprocess.run(["sh", "-c", checks.script(todo, token)], capture_output=True, text=True)
    return checks.parse(todo, out.stdout, token)


def test_script_round_trip_keeps_output_and_status() -> None:
    todo = [
        checks.command("no-newline", "printf abc", "^abc$"),
        checks.command("fails", "echo out; echo err >&2; exit 3", "out"),
        checks.command("multi", "printf 'a\\n\\nb\\n'", "^b$"),
        checks.command("reads-stdin", "cat", ".*"),  # must not hang: stdin is /dev/null
    ]
    r = _run_locally(todo)
    assert [x.passed for x in r] == [True, False, True, True]
    assert r[0].actual == "abc"
    assert r[1].actual == "out\nerr" and "exited 3" in r[1].detail


def test_kernel_release_mismatch_says_what_booted() -> None:
    c = checks.kernel_release("6.1.0-56-cloud-amd64")
    ok = c.evaluate(0, "6.1.0-56-cloud-amd64\n")
    assert ok.passed and ok.actual == "6.1.0-56-cloud-amd64"
    bad = c.evaluate(0, "6.1.0-55-cloud-amd64\n")
    assert not bad.passed and "6.1.0-55-cloud-amd64" in bad.detail


def test_modules_tree_mismatch_names_release_and_trees() -> None:
    c = checks.modules_tree()
    assert c.evaluate(0, "release 6.1.0-56\npresent\ntrees 6.1.0-56\n").passed
    bad = c.evaluate(0, "release 6.1.0-56-cloud-amd64\nmissing\ntrees 6.1.0-55-amd64 6.1.0-9\n")
    assert not bad.passed
    assert "booted 6.1.0-56-cloud-amd64" in bad.detail
    assert "6.1.0-55-amd64, 6.1.0-9" in bad.detail
    none = c.evaluate(0, "release 6.1.0-56\nmissing\ntrees\n")
    assert "module trees in the image: none" in none.detail


def test_modprobe() -> None:
    c = checks.modprobe("xen-blkfront")
    assert "/sys/module/xen_blkfront" in c.command
    assert c.evaluate(0, "loaded\n").passed
    bad = c.evaluate(1, "modprobe: FATAL: Module isofs not found in directory /lib/modules/x\n")
    assert not bad.passed and "not found" in bad.actual


def test_metadata_values() -> None:
    kernel = checks.metadata_value("kernel-id", "aki-0123456789abcdef0")
    assert kernel.evaluate(0, "aki-0123456789abcdef0\n200").passed
    wrong = kernel.evaluate(0, "aki-fffffffffffffffff\n200")
    assert not wrong.passed and wrong.actual == "aki-fffffffffffffffff"
    assert kernel.evaluate(0, "<html>\n404").actual == "HTTP 404"
    absent = checks.metadata_value("ramdisk-id", None)
    assert absent.evaluate(0, "<html>404</html>\n404").passed
    assert not absent.evaluate(0, "ari-0123456789abcdef0\n200").passed
    assert not absent.evaluate(7, "").passed  # curl could not connect


def test_builtin_set_follows_the_recipe() -> None:
    names = [c.name for c in checks.builtin_checks("r", "aki-1", None, {})]
    assert names == ["kernel-release", "modules-tree", "metadata-kernel-id", "metadata-ramdisk-id"]
    recipe = {
        "modules": ["isofs"],
        "metadata": False,
        "commands": [{"name": "x", "run": "true", "expect": ".*"}],
    }
    names = [c.name for c in checks.builtin_checks("r", "aki-1", None, recipe)]
    assert names == ["kernel-release", "modules-tree", "modprobe-isofs", "x"]


def test_bad_regex_fails_the_check_not_the_run() -> None:
    r = checks.command("x", "true", "(").evaluate(0, "")
    assert not r.passed and "regular expression" in r.detail


def test_a_script_that_stops_early() -> None:
    todo = [checks.command("a", "true", ".*"), checks.command("b", "true", ".*")]
    token = checks.new_token()
    results = checks.parse(todo, f"{token} 0 begin\n\n{token} 0 end 0\n", token)
    assert results[0].passed and not results[1].passed
