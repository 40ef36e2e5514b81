"""Debian version order (deb-version(7)), for ordering kernels by their release or package
version: `5.10.0-32-cloud-amd64` < `6.1.0-25-cloud-amd64` < `6.12.9+bpo-cloud-amd64`.

Same algorithm as dpkg's verrevcmp: alternate non-digit and digit runs; letters sort before
non-letters, `~` before everything, even the end of the string."""

from __future__ import annotations

import re
from functools import cmp_to_key

_PARTS = re.compile(r"^(?:(\d+):)?(.*?)(?:-([^-]*))?$")


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def compare(a: str, b: str) -> int:
    """<0, 0, >0 as version `a` sorts before, with or after `b`."""
    ma, mb = _PARTS.match(a), _PARTS.match(b)
    assert ma and mb  # the pattern matches any text
    ea, eb = int(ma.group(1) or 0), int(mb.group(1) or 0)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ma.group(2), mb.group(2)) or _verrevcmp(ma.group(3) or "", mb.group(3) or "")


def sort_key(version: str):  # noqa: ANN201 - functools' key object
    return cmp_to_key(compare)(version)
