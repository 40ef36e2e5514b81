"""Known issues: a console pattern turns a failure into a known one (or a retry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from harness.matrix import known
from harness.matrix.results import ERROR, FAIL, PASS, SKIP, Evidence, Verdict

ISSUES = """
known_issues:
  - id: deb-1
    pattern: 'xen_blkfront: probe .* failed'
    class: xen probe noise
    verdict: skip
  - id: flake-2
    pattern: 'rcu_sched self-detected stall'
    class: TCG stall
    retry: true
"""


def test_match_replaces_class_and_verdict(tmp_path: Path) -> None:
    path = tmp_path / "known.yaml"
    path.write_text(ISSUES)
    issues = known.load(path)
    failed = Verdict(FAIL, "kernel panic", [Evidence(3, "panic")])
    console = "a\nb\nxen_blkfront: probe of vbd-1 failed\n"
    v = known.apply(issues, failed, console)
    assert (v.status, v.klass, v.known_issue) == (SKIP, "xen probe noise", "deb-1")
    assert v.evidence == [Evidence(3, "xen_blkfront: probe of vbd-1 failed")]
    v = known.apply(issues, failed, "x\nrcu: INFO: rcu_sched self-detected stall on CPU\n")
    assert (v.status, v.known_issue) == (ERROR, "flake-2")  # retried like an ERROR
    assert known.apply(issues, failed, "nothing known") is failed
    passed = Verdict(PASS)
    assert known.apply(issues, passed, console) is passed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("known_issues: [{id: a, pattern: '(', class: c}]", "pattern: not a regular expression"),
        ("known_issues: [{id: a, pattern: x, class: c, verdict: maybe}]", "verdict: 'maybe'"),
        ("known_issues: [{id: a, pattern: x}]", "class: required text"),
        ("known_issues: [{id: a, pattern: x, class: c, colour: red}]", "unknown key 'colour'"),
        ("issues: []", "expected a mapping with a known_issues: list"),
    ],
)
def test_mistakes(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "known.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=message.replace("(", r"\(")):
        known.load(path)
