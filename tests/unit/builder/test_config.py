"""The one reader of small configuration files: data from YAML or JSON, and every mistake
named as `file:line: message` (exit code 2), including through its three users."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import config
from builder.errors import BadInput
from harness.api import accounts
from harness.matrix import baseline, known


def _file(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_data_and_the_line_of_a_nested_key(tmp_path: Path) -> None:
    cfg = config.load(_file(tmp_path, "# top\nitems:\n  - a: 1\n  - b: 2\n    c: 3\n"))
    assert cfg.data == {"items": [{"a": 1}, {"b": 2, "c": 3}]}
    assert cfg.line("items") == 2
    assert cfg.line("items", 1) == 4
    assert cfg.line("items", 1, "c") == 5
    # a key that is not there: the line of as much of the path as exists
    assert cfg.line("items", 1, "missing") == 4
    assert str(cfg.error("wrong", "items", 0, "a")) == f"{tmp_path / 'c.yaml'}:3: wrong"


def test_syntax_errors_and_unreadable_files_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"c\.yaml:2: not YAML") as e:
        config.load(_file(tmp_path, "a: 1\n b: 2\n"))
    assert isinstance(e.value, BadInput) and e.value.exit_code == 2
    with pytest.raises(BadInput, match=r"x\.json:3: not JSON"):
        config.load(_file(tmp_path, '{\n"a": 1,\n}', "x.json"), as_json=True)
    with pytest.raises(BadInput, match="--flag .*: cannot read the thing: No such file"):
        config.load(tmp_path / "none", f"--flag {tmp_path / 'none'}", what="thing")


def test_json_keeps_its_numbers_and_still_has_lines(tmp_path: Path) -> None:
    cfg = config.load(_file(tmp_path, '{\n "S": 1e-05,\n "L": [\n  {"x": 1}\n ]\n}'), as_json=True)
    assert cfg.data == {"S": 1e-05, "L": [{"x": 1}]}  # YAML 1.1 would read 1e-05 as text
    assert cfg.line("L", 0) == 4


def test_section(tmp_path: Path) -> None:
    cfg = config.load(_file(tmp_path, "a: 1\nlist: []\n"))
    assert cfg.section("list", "need list") == []
    with pytest.raises(BadInput, match=r":2: need items"):
        cfg.section("list", "need items", non_empty=True)
    with pytest.raises(BadInput, match=r":1: need other"):
        cfg.section("other", "need other")


def test_accounts_mistakes_name_the_line(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "accounts:\n"
        "  - AccountId: '111122223333'\n"
        "    AccessKeyId: AKIA1\n"
        "    SecretAccessKey: s\n"
        "  - AccountId: 12345\n"
        "    AccessKeyId: AKIA2\n"
        "    SecretAccessKey: s\n",
    )
    with pytest.raises(BadInput, match=rf"^--accounts {path}:5: entry 2: AccountId '12345'"):
        accounts.load(path)
    good = path.read_text().replace("12345", "'444455556666'")
    assert set(accounts.load(_file(tmp_path, good))) == {"AKIA1", "AKIA2"}
    with pytest.raises(BadInput, match=r":6: entry 2: AccessKeyId AKIA1 appears twice"):
        accounts.load(_file(tmp_path, good.replace("AKIA2", "AKIA1")))
    with pytest.raises(BadInput, match=r":1: expected `accounts:` with a list"):
        accounts.load(_file(tmp_path, "accounts: []\n"))


def test_known_issues_and_baseline_mistakes_name_the_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "known_issues:\n  - id: a\n    pattern: '('\n    class: c\n")
    with pytest.raises(BadInput, match=r"yaml:3: known_issues\[1\]: pattern: not a regular"):
        known.load(path)
    report = _file(tmp_path, '{\n "Cells": [\n  {"Cell": "a"}\n ]\n}', "old.json")
    with pytest.raises(BadInput, match=rf"^--baseline {report}:3: Cells\[1\]: expected a cell"):
        baseline.load(report)
