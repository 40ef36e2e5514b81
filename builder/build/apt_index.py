"""A private apt configuration per suite and architecture under the cache — never the
host's apt state — and the .debs downloaded through it, each fetched once.

A mirror caught mid-sync serves an index whose size or hash disagrees with its Release file
until the sync ends: updates and downloads are tried again after a pause, and a stale but
present index is used when the mirror cannot be reached.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder import paths
from builder.build.arch import of as arch_of
from builder.build.deb_control import parse_control
from builder.build.mirror import host_mirror
from builder.errors import BuildFailed, EnvironmentProblem

INDEX_MAX_AGE = 24 * 3600  # seconds; a fresher index is reused without asking the mirror
UPDATE_ATTEMPTS = 3  # apt-get update tries before a mirror problem is reported
DOWNLOAD_ATTEMPTS = 2
RETRY_DELAY = 5.0  # seconds before the second try, doubled for each further one
NO_SECURITY = "state/no-security"  # the index was last fetched without its security suite


@dataclass(frozen=True)
class PrivateApt:
    """An apt configuration of its own under the cache: sources, lists, archives, status."""

    base: Path
    release: str  # the suite, e.g. bookworm-backports
    deb_arch: str = "amd64"  # Debian's architecture the index is fetched for

    @property
    def lists(self) -> Path:
        return self.base / "state/lists"

    def prepare(self) -> None:
        for d in ("state/lists/partial", "cache/archives/partial", "etc/empty.d"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        sources = "\n".join(host_mirror().apt_lines(self.release)) + "\n"
        src = self.base / "etc/sources.list"
        if not src.exists() or src.read_text() != sources:
            src.write_text(sources)
            self.mark_stale()  # a changed mirror makes the old index meaningless
        if not any(self.lists.glob("*_Packages")) and any(self.lists.glob("*_Packages.*")):
            # kept compressed by an older configuration; apt would keep them so while the
            # mirror's Release is unchanged
            for f in self.lists.glob("*_*"):
                f.unlink()
            self.mark_stale()
        status = self.base / "state/status"
        if not status.exists():
            status.write_text("")  # no installed packages: the host's dpkg state stays out

    def options(self) -> list[str]:
        b = self.base
        opts = {
            "Dir::State": b / "state",
            "Dir::State::Lists": b / "state/lists",
            "Dir::State::status": b / "state/status",
            "Dir::Cache": b / "cache",
            "Dir::Cache::Archives": b / "cache/archives",
            "Dir::Etc::SourceList": b / "etc/sources.list",
            "Dir::Etc::SourceParts": b / "etc/empty.d",
            "Dir::Etc::Preferences": b / "etc/preferences",
            "Dir::Etc::PreferencesParts": b / "etc/empty.d",
            # the host's apt.conf.d is kept (proxies, validity checks) but may disable the
            # binary caches; without them every apt-cache call re-parses the whole index
            "Dir::Cache::pkgcache": "pkgcache.bin",
            "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
            "APT::Architecture": self.deb_arch,
            "APT::Architectures": self.deb_arch,
            # the cache sits under root's home, which the _apt sandbox user cannot enter
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::Retries": "2",
            # sid's and backports' Release files expire within a week, and a mirror that is a
            # snapshot outlives that; the signature is still checked
            "Acquire::Check-Valid-Until": "false",
            # lists kept compressed (a host setting for small Docker layers) make every
            # apt-cache show decompress the whole index: ~1.5 s against ~0.05 s
            "Acquire::GzipIndexes": "false",
        }
        out = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def index_age(self) -> float | None:
        stamp = self.base / "state/updated"
        # compressed lists (fetched before GzipIndexes was turned off) count as none
        if not stamp.exists() or not any(self.lists.glob("*_Packages")):
            return None
        return time.time() - stamp.stat().st_mtime

    def mark_stale(self) -> None:
        (self.base / "state/updated").unlink(missing_ok=True)

    def update(self, log: Path | None, attempts: int = UPDATE_ATTEMPTS) -> None:
        """apt-get update, tried again after a pause: a mirror caught mid-sync serves an index
        whose size or hash disagrees with its Release file until the sync ends. apt commits
        each repository's new files only when all of them arrived, so a failed try leaves the
        previous index (or none) in place."""
        argv = ["apt-get", *self.options(), "-q", "update"]
        reason = _retried(argv, log, attempts)
        if reason is not None and self._without_security(reason, log):
            (self.base / NO_SECURITY).touch()
            reason = None
        elif reason is None:
            (self.base / NO_SECURITY).unlink(missing_ok=True)
        if reason is not None:
            raise EnvironmentProblem(
                f"suite {self.release}: no package index from {host_mirror().debian} after "
                f"{attempts} {'try' if attempts == 1 else 'tries'}: {reason}"
            )
        if not any(self.lists.glob("*_Packages")):
            raise EnvironmentProblem(f"apt-get update fetched no package index for {self.release}")
        (self.base / "state/updated").touch()

    def _without_security(self, reason: str, log: Path | None) -> bool:
        """True when only the security suite's index could not be had and the release's own
        is here: then the index goes on without security updates, said in the log. (This
        machine's mirror has served a bookworm-security i386 Packages.xz of another size than
        its Release names for hours; every i386 lookup failed with it.)"""
        security = host_mirror().security
        main = list(self.lists.glob(f"*_dists_{self.release}_main_binary-{self.deb_arch}_Packages"))
        if not security or security.split("://", 1)[-1] not in reason or not main:
            return False
        if log:
            with open(log, "a") as f:
                f.write(f"amilab: {self.release}-security ({self.deb_arch}) index unavailable, "
                        f"resolving without it: {reason}\n")  # fmt: skip
        return True

    @property
    def without_security(self) -> bool:
        """The last update went on without the security suite (see _without_security): the
        base tree of this release and architecture is made from the same sources."""
        return (self.base / NO_SECURITY).exists()

    def apt_lines(self) -> list[str]:
        lines = host_mirror().apt_lines(self.release)
        if self.without_security:
            lines = [ln for ln in lines if not ln.endswith(f" {self.release}-security main")]
        return lines

    def show(self, package: str) -> dict[str, str] | None:
        """The candidate version's control fields, or None when the index lacks the package."""
        # the candidate from `policy`, then that version's record: `show --no-all-versions`
        # builds apt's whole dependency cache for it (~0.8 s per call against ~0.05 s)
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        argv = ["apt-cache", *self.options(), "policy", package]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        m = re.search(r"^\s*Candidate:\s*(\S+)", res.stdout, re.MULTILINE)
        if res.returncode != 0 or not m or m.group(1) == "(none)":
            return None
        argv = ["apt-cache", *self.options(), "show", f"{package}={m.group(1)}"]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if res.returncode != 0 or not res.stdout.strip():
            return None
        return parse_control(res.stdout)

    def download(self, package: str, version: str, dest: Path, log: Path | None) -> Path:
        argv = ["apt-get", *self.options(), "-q", "download", f"{package}={version}"]
        if not shutil.which("apt-get"):
            raise EnvironmentProblem("apt-get is missing (install apt)")
        reason = _retried(argv, log, DOWNLOAD_ATTEMPTS, cwd=dest)
        if reason is not None:
            # the pool may have moved on since the index was fetched: refresh it next time
            self.mark_stale()
            raise EnvironmentProblem(
                f"suite {self.release}: {package}={version} could not be downloaded from "
                f"{host_mirror().debian} after {DOWNLOAD_ATTEMPTS} tries: {reason}"
            )
        found = sorted(dest.glob(f"{package}_*.deb"))
        want = [p for p in found if deb_version(p) == version]
        if not want:
            raise BuildFailed(f"apt-get download {package}={version} produced no .deb in {dest}")
        return want[0]


def private_apt(suite: str, architecture: str = "x86_64") -> PrivateApt:
    """The index of `suite` for one architecture (amd64's keeps its old place in the cache)."""
    deb = arch_of(architecture).deb
    return PrivateApt(paths.cache_dir() / "apt" / (suite if deb == "amd64" else f"{suite}-{deb}"),
                      suite, deb)  # fmt: skip


def _retried(
    argv: list[str], log: Path | None, attempts: int, cwd: Path | None = None
) -> str | None:
    """Run an apt command up to `attempts` times; None once it succeeds, else why it failed."""
    if not shutil.which(argv[0]):
        raise EnvironmentProblem(f"{argv[0]} is missing (install apt)")
    reason = "no output"
    for attempt in range(attempts):
        if attempt:
            time.sleep(RETRY_DELAY * 2 ** (attempt - 1))
        res = subprocess.run(
            argv, capture_output=True, text=True, check=False, cwd=cwd, stdin=subprocess.DEVNULL
        )
        if log:
            with open(log, "a") as f:
                f.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        if res.returncode == 0:
            return None
        reason = apt_error(res.stdout + res.stderr)
    return reason


def apt_error(output: str) -> str:
    """The line of apt's output that says what went wrong, shortened to one line.

    apt ends a failed update with "Some index files failed to download", which says nothing;
    the line before it names the file and the cause ("File has unexpected size (… != …).
    Mirror sync in progress?", "Hash Sum mismatch", "404 Not Found")."""
    errors = [ln[3:].strip() for ln in output.splitlines() if ln.startswith(("E: ", "W: "))]
    useful = [e for e in errors if not e.startswith("Some index files failed to download")]
    chosen = (useful or errors or [ln for ln in output.splitlines() if ln.strip()][-1:] or [""])[0]
    chosen = re.sub(r"\s*\[IP: [^\]]*\]", "", chosen)  # the mirror's address and port
    chosen = " ".join(chosen.split())
    return chosen or "apt failed without a message"


def try_update(apt: PrivateApt, log: Path | None, must: bool) -> bool:
    """Refresh the index; a stale but present index is still usable when offline."""
    try:
        # with an index to fall back on, one try: a mirror mid-sync costs no waiting
        apt.update(log, attempts=UPDATE_ATTEMPTS if must else 1)
        return True
    except EnvironmentProblem:
        if must:
            raise
        if log:
            with open(log, "a") as f:
                f.write("amilab: mirror unreachable; using the cached package index\n")
        return False


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise concurrent builds on the same cache (one apt/unpack at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def prepared(suite: str, architecture: str = "x86_64") -> Iterator[PrivateApt]:
    """The index of `suite` for one architecture, ready for apt and held under its lock for
    the block (builds sharing the cache take turns at apt and unpacking)."""
    apt = private_apt(suite, architecture)
    with locked(apt.base / "lock"):
        apt.prepare()
        yield apt


def refresh_when_old(apt: PrivateApt, log: Path | None) -> bool:
    """Fetch the index when it is missing or older than INDEX_MAX_AGE; True when fetched now."""
    age = apt.index_age()
    if age is None or age > INDEX_MAX_AGE:
        return try_update(apt, log, must=age is None)
    return False


def debs_dir() -> Path:
    return paths.cache_dir() / "debs"


def deb_version(path: Path) -> str:
    # apt-get download names files package_version_arch.deb with ':' encoded as %3a
    parts = path.name[: -len(".deb")].split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else ""


def cached_deb(package: str, version: str) -> Path | None:
    for p in sorted(debs_dir().glob(f"{package}_*.deb")):
        if deb_version(p) == version:
            return p
    return None


def download_deb(apt: PrivateApt, package: str, version: str, log: Path | None) -> Path:
    debs_dir().mkdir(parents=True, exist_ok=True)
    # download beside the cache, then rename: an interrupted download never looks cached
    with tempfile.TemporaryDirectory(dir=debs_dir(), prefix=".dl-") as tmp:
        got = apt.download(package, version, Path(tmp), log)
        final = debs_dir() / got.name
        os.replace(got, final)
    return final
