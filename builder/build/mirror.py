"""The Debian mirror this machine's apt sources name (never a host name written into code).

`AMILAB_MIRROR` (and `AMILAB_SECURITY_MIRROR`) name another mirror instead, e.g. a local copy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from builder.errors import EnvironmentProblem

SOURCES = Path("/etc/apt/sources.list")
SOURCES_D = Path("/etc/apt/sources.list.d")
ROLLING = ("sid", "unstable", "experimental")  # suites without -updates/-security


@dataclass(frozen=True)
class Mirror:
    debian: str  # e.g. http://<mirror>/debian
    security: str | None  # e.g. http://<mirror>/debian-security

    def apt_lines(self, release: str) -> list[str]:
        """One-line sources for a suite: a release gets main, updates and security (when
        known); sid and the backports suites have no -updates or -security of their own."""
        if release in ROLLING or release.endswith("-backports"):
            return [f"deb {self.debian} {release} main"]
        lines = [
            f"deb {self.debian} {release} main",
            f"deb {self.debian} {release}-updates main",
        ]
        if self.security:
            lines.append(f"deb {self.security} {release}-security main")
        return lines


def _entries() -> list[tuple[str, list[str]]]:
    """(uri, suites) for every enabled deb entry in one-line and deb822 sources."""
    out: list[tuple[str, list[str]]] = []
    if SOURCES.exists():
        for line in SOURCES.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                out.append((m.group(2), [m.group(3)]))
    if SOURCES_D.is_dir():
        for path in sorted(SOURCES_D.glob("*.sources")):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    out.append((uri, fields.get("suites", "").split()))
        for path in sorted(SOURCES_D.glob("*.list")):
            for line in path.read_text().splitlines():
                m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if m:
                    out.append((m.group(2), [m.group(3)]))
    return out


def host_mirror() -> Mirror:
    if url := os.environ.get("AMILAB_MIRROR"):
        security = os.environ.get("AMILAB_SECURITY_MIRROR")
        return Mirror(debian=url.rstrip("/"), security=security.rstrip("/") if security else None)
    return _sources_mirror()


@cache
def _sources_mirror() -> Mirror:
    debian = security = None
    for uri, suites in _entries():
        uri = uri.rstrip("/")
        if any(s.endswith("-security") or s.endswith("/updates") for s in suites):
            security = security or uri
        elif any(re.fullmatch(r"[a-z]+(-updates|-backports)?", s) for s in suites):
            debian = debian or uri
    if debian is None:
        raise EnvironmentProblem(
            "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d"
        )
    return Mirror(debian=debian, security=security)
