"""Write heads/: the first 64 KiB of every host file the registry's records name, and
heads/index.json mapping each absolute path to {"head": file name, "size": real size}.

    /work/main/.venv/bin/python /work/legacy-data/make_heads.py \
        /work/legacy-data/registry.sqlite /work/legacy-data/heads

The paths taken from each record: image_location, extra.locations.*, and extra.source's
file, path and vmdk.path (imported images). Left out on purpose: extra.logs (a build's log
directory, not a file) and the guest-side paths of imported images (extra.kernels[].kernel,
extra.bootloader.config, extra.os.*, extra.filesystems[].device: paths inside the disk, some
of which happen to exist on the host too).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

HEAD = 64 * 1024


def record_paths(rec: dict[str, Any]) -> list[str]:
    extra = rec.get("extra") or {}
    out = [rec.get("image_location") or ""]
    out += list((extra.get("locations") or {}).values())
    source = extra.get("source") or {}
    out += [source.get("file") or "", source.get("path") or ""]
    out += [(source.get("vmdk") or {}).get("path") or ""]
    return [p for p in out if p.startswith("/")]


def main() -> None:
    registry, dest = Path(sys.argv[1]), Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(f"file:{registry}?mode=ro", uri=True)
    paths: set[str] = set()
    for (text,) in conn.execute("SELECT record FROM images ORDER BY rowid"):
        paths.update(record_paths(json.loads(text)))
    conn.close()
    index: dict[str, dict[str, Any]] = {}
    for p in sorted(paths):
        if not os.path.isfile(p):
            raise SystemExit(f"{p}: named by the registry but not a file")
        name = hashlib.sha256(p.encode()).hexdigest() + ".bin"
        with open(p, "rb") as f:
            head = f.read(HEAD)
        (dest / name).write_bytes(head)
        index[p] = {"head": name, "size": os.path.getsize(p)}
    (dest / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    print(f"{dest}: {len(index)} files")


if __name__ == "__main__":
    main()
