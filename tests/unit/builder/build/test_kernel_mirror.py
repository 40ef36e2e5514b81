"""A mirror caught mid-sync, simulated by a local HTTP copy of the machine's real mirror: the
signed Release files are the real ones, and the index (or the pool) behind them has the wrong
size, as while a mirror is being rsynced. Resolution retries a bounded number of times, then
fails with one exit-3 line naming the suite, and leaves nothing half-written in the cache."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder.build import apt_index, kernel, mirror
from builder.build.kernel import KernelDefinition
from builder.errors import EnvironmentProblem

SUITE = "bookworm-backports"  # one repository, no -updates/-security: the smallest index
DEFN = KernelDefinition(name="t", package="linux-image-cloud-amd64", suite=SUITE)


class MirrorCopy:
    """Serves the real mirror's files through a proxy that can break one part of it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        # "dists" (the index behind the Release file), "pool" (packages), "all" or None
        self.broken: str | None = "dists"
        self.hits: Counter[str] = Counter()
        self._cache: dict[str, bytes] = {}
        copy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                rest = self.path.removeprefix("/debian/")
                kind = rest.split("/", 1)[0]
                signed = rest.endswith(("/InRelease", "/Release", "/Release.gpg"))
                copy.hits["release" if signed else kind] += 1
                if copy.broken == "all" or (copy.broken == kind and not signed):
                    body = b"half-synced\n"  # any size but the Release file's
                else:
                    try:
                        body = copy.fetch(rest)
                    except OSError:
                        self.send_error(404)
                        return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/debian"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fetch(self, rest: str) -> bytes:
        if rest not in self._cache:
            with urllib.request.urlopen(f"{self.upstream}/{rest}", timeout=60) as r:
                self._cache[rest] = r.read()
        return self._cache[rest]


@pytest.fixture(scope="module")
def copy() -> Iterator[MirrorCopy]:
    served = MirrorCopy(mirror.host_mirror().debian)  # the apt sources' mirror, read here
    yield served
    served.server.shutdown()


@pytest.fixture
def cache(
    copy: MirrorCopy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    monkeypatch.setenv("AMILAB_MIRROR", copy.url)
    monkeypatch.delenv("AMILAB_SECURITY_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(apt_index, "RETRY_DELAY", 0.05)  # the pause, not the behaviour
    copy.broken, copy.hits = "dists", Counter()
    yield tmp_path / "cache/amilab"


def _nothing_cached(cache: Path) -> None:
    apt = cache / "apt" / SUITE
    assert not (apt / "state/updated").exists()
    assert not list((apt / "state/lists").glob("*_Packages*"))
    assert not (cache / "kernels").exists() or not any((cache / "kernels").iterdir())
    assert not (cache / "debs").exists() or not any((cache / "debs").iterdir())


def test_index_mid_sync_is_one_exit_3_line_naming_the_suite(
    copy: MirrorCopy, cache: Path
) -> None:
    t0 = time.monotonic()
    with pytest.raises(EnvironmentProblem) as e:
        kernel.resolve_kernel(DEFN)
    message = str(e.value)
    assert e.value.exit_code == 3 and "\n" not in message
    assert message.startswith(f"suite {SUITE}: no package index from {copy.url} after 3 tries")
    assert "File has unexpected size" in message and "Mirror sync in progress?" in message
    assert "[IP:" not in message
    assert copy.hits["dists"] == apt_index.UPDATE_ATTEMPTS  # bounded: tried again, then gave up
    assert time.monotonic() - t0 < 60
    _nothing_cached(cache)
    # the sync ends: the same cache resolves, nothing from the failed tries in the way
    copy.broken = None
    found = kernel.resolve_version(DEFN)
    assert found.suite == SUITE and "~bpo12" in found.version
    assert (cache / "apt" / SUITE / "state/updated").exists()


def test_stale_index_is_used_when_the_mirror_is_mid_sync(copy: MirrorCopy, cache: Path) -> None:
    copy.broken = None
    fresh = kernel.resolve_version(DEFN)
    stamp = cache / "apt" / SUITE / "state/updated"
    old = time.time() - 2 * apt_index.INDEX_MAX_AGE
    os.utime(stamp, (old, old))
    # a changed Release file is what makes apt fetch the index again; here it is unreadable
    copy.broken, copy.hits = "all", Counter()
    assert kernel.resolve_version(DEFN) == fresh
    assert copy.hits["release"] == 1  # one try: an index to fall back on costs no waiting


def test_pool_mid_sync_downloads_nothing_half_way(copy: MirrorCopy, cache: Path) -> None:
    copy.broken = None
    found = kernel.resolve_version(DEFN)
    copy.broken = "pool"
    with pytest.raises(EnvironmentProblem) as e:
        kernel.resolve_kernel(DEFN)
    message = str(e.value)
    assert "\n" not in message and message.startswith(
        f"suite {SUITE}: {found.package}={found.version} could not be downloaded"
    )
    assert "File has unexpected size" in message
    assert copy.hits["pool"] == apt_index.DOWNLOAD_ATTEMPTS
    assert not any((cache / "debs").iterdir())  # no .deb, no temporary download directory
    assert not (cache / "kernels").exists()
    # the pool may have moved on since the index was fetched: the next run refreshes it
    assert not (cache / "apt" / SUITE / "state/updated").exists()


def test_cli_reports_a_mid_sync_mirror_in_one_line(
    copy: MirrorCopy,
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.cli import main

    monkeypatch.setattr(apt_index, "UPDATE_ATTEMPTS", 1)  # every suite fails: one try each
    assert main(["kernels", "--json"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("amilab: suite ") and "Mirror sync in progress?" in err
    assert "Traceback" not in err


def test_apt_error_picks_the_cause() -> None:
    output = (
        "Get:1 http://m/debian sid InRelease [200 kB]\n"
        "Err:2 http://m/debian sid/main amd64 Packages\n"
        "  File has unexpected size (24 != 300424). Mirror sync in progress? [IP: 10.0.0.1 80]\n"
        "E: Failed to fetch http://m/debian/dists/sid/main/binary-amd64/Packages.xz  File has "
        "unexpected size (24 != 300424). Mirror sync in progress? [IP: 10.0.0.1 80]\n"
        "E: Some index files failed to download. They have been ignored, or old ones used "
        "instead.\n"
    )
    assert apt_index.apt_error(output) == (
        "Failed to fetch http://m/debian/dists/sid/main/binary-amd64/Packages.xz File has "
        "unexpected size (24 != 300424). Mirror sync in progress?"
    )
    assert apt_index.apt_error("E: Some index files failed to download.\n").startswith("Some")
    assert apt_index.apt_error("") == "apt failed without a message"


def test_mirror_lines_per_kind_of_suite() -> None:
    m = mirror.Mirror("http://m/debian", "http://m/debian-security")
    assert m.apt_lines("bookworm") == [
        "deb http://m/debian bookworm main",
        "deb http://m/debian bookworm-updates main",
        "deb http://m/debian-security bookworm-security main",
    ]
    assert m.apt_lines("sid") == ["deb http://m/debian sid main"]
    assert m.apt_lines("bookworm-backports") == ["deb http://m/debian bookworm-backports main"]
