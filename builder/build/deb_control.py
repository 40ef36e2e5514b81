"""What a kernel package's control fields say: deb822 stanzas, the exact linux-image
package a metapackage depends on, the release a package name carries, and the further
packages a split kernel (sid's linux-binary-, linux-modules-, linux-base-<release>) pins.
"""

from __future__ import annotations

import re

EXACT_IMAGE = re.compile(r"linux-image-\d+\.\d+[^\s]*")  # not 686-pae, a flavour


def parse_control(text: str) -> dict[str, str]:
    """The first stanza of deb822 control text; continuation lines are joined."""
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and last:
            fields[last] += "\n" + line.strip()
            continue
        k, _, v = line.partition(":")
        last = k.strip()
        fields[last] = v.strip()
    return fields


def _relations(fields: dict[str, str], name: str = "Depends") -> list[tuple[str, str | None]]:
    """(package, exact version or None) for every alternative of a relationship field."""
    out = []
    for alternative in re.split(r"[,|]", fields.get(name, "")):
        m = re.match(r"\s*([^\s(:]+)(?::\S+)?\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", alternative)
        if m and m.group(1):
            out.append((m.group(1), m.group(2)))
    return out


def exact_dependency(fields: dict[str, str]) -> str | None:
    """The exact linux-image-<version>-<flavour> package a metapackage depends on."""
    for name, _ in _relations(fields):
        if EXACT_IMAGE.fullmatch(name):
            return name
    return None


def release_of_package(package: str) -> str:
    """The kernel release an exact package name carries: linux-image-<release>[-unsigned]."""
    release = package.removeprefix("linux-image-")
    return release.removesuffix("-unsigned")


def split_parts(fields: dict[str, str], package: str) -> list[tuple[str, str]]:
    """The packages a split kernel package pins to its own release (sid: linux-binary-,
    linux-modules-, linux-base-<release>), with their exact versions; [] for one-.deb kernels."""
    release = release_of_package(package)
    own = re.compile(rf"linux-[a-z]+-{re.escape(release)}")
    return [
        (name, version)
        for name, version in _relations(fields)
        if version and name != package and own.fullmatch(name)
    ]
