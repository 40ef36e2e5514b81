"""Issue #29, items 3 and 4: a full disk is an error, not a corruption; df and prune.

Full disk: a 2 GiB ext4 loop-mounted as AMILAB_HOME holds a built image and a running
instance, then a filler file takes the rest. `build`, `import`, `create-image`,
`create-snapshot` and `restore` each exit 3 with one line naming the mount point, nothing is
registered, describe output is unchanged and `amilab fsck --json` is clean.
A write the estimates let through (`convert` onto the full filesystem) exits 3 too.

df and prune (the filler gone): after a build, a copy, a snapshot of a volume that was
written to, and a terminated instance, plus planted leftovers, `df` totals what `du`
measures (the home alone and with the cache); `prune` removes nothing; `prune --yes` removes
the leftovers and the caches, and the image still passes smoke.

Both share one build and one instance on the loop home (running while the disk is full,
terminated for df): two boots in all, with the smoke after prune. The cache is a private one
of hard links to the shared cache, so that the build is warm and pruning it is safe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.paths import cache_dir
from tests.conftest import ROOT, run_amilab
from tests.integration.builds import SMOKE_TIMEOUT
from tests.integration.instances_helpers import wait_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop device needs root")

DESCRIBE = (
    ("images", "--type", "machine"),
    ("images", "--type", "kernel"),
    ("describe-snapshots",),
    ("describe-volumes",),
    ("describe-instances",),
)


def amilab(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    res = run_amilab(*args, env=env, timeout=SMOKE_TIMEOUT)
    if ok:
        assert res.returncode == 0, f"amilab {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return res


def as_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(amilab(env, *args, "--json").stdout)


def described(env: dict[str, str]) -> list[Any]:
    return [as_json(env, *args) for args in DESCRIBE]


def fsck_clean(env: dict[str, str]) -> None:
    """`amilab fsck --json` finds nothing."""
    res = amilab(env, "fsck", "--json", ok=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["Findings"] == []


@pytest.fixture(scope="module")
def loop_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2 GiB ext4 filesystem mounted on a loop device; unmounted and detached after."""
    base = tmp_path_factory.mktemp("full")
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "2G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        found = subprocess.run(["losetup", "-j", str(image), "-O", "NAME", "-n"],
                               capture_output=True, text=True, check=False)  # fmt: skip
        for dev in found.stdout.split():
            subprocess.run(["losetup", "-d", dev], check=False)
        image.unlink(missing_ok=True)


def private_cache(base: Path) -> Path:
    """XDG_CACHE_HOME of hard links to the shared cache: pruning it unlinks names here, never
    the shared files, and a build in it is as warm as one in the shared cache."""
    shared = cache_dir()
    (base / "amilab").mkdir(parents=True)
    for sub in ("rootfs", "apt", "debs", "kernels", "headers", "archpkg"):
        if (shared / sub).is_dir():
            subprocess.run(["cp", "-al", str(shared / sub), str(base / "amilab" / sub)],
                           check=True)  # fmt: skip
    return base


@pytest.fixture(scope="module")
def state(loop_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """On the loop home: a built AMI, its stored object (outside the home) and a running
    instance. One build and one boot for the whole module."""
    cache = private_cache(tmp_path_factory.mktemp("cache"))
    env = {"AMILAB_HOME": str(loop_home / "home"), "XDG_CACHE_HOME": str(cache)}
    ami = next(i for i in as_json(env, "build", str(ROOT / "build.yaml"), "--image",
                                  "debian-pv")["Images"]
               if i["ImageType"] == "machine")  # fmt: skip
    bucket = tmp_path_factory.mktemp("bucket")
    stored = as_json(env, "store", ami["ImageId"], "--bucket", str(bucket))
    (inst,) = as_json(env, "run-instances", ami["ImageId"])["Instances"]
    iid = inst["InstanceId"]
    try:
        running = wait_state({"env": env}, iid, "running")
        yield {"env": env, "ami": ami, "iid": iid, "instance": running, "bucket": bucket,
               "stored": stored, "mount": str(loop_home), "home": loop_home / "home",
               "cache": cache / "amilab"}  # fmt: skip
    finally:
        amilab(env, "terminate-instances", iid, "--wait", ok=False)
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def full(state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The loop home's filesystem filled up to its last 8 MiB."""
    filler = Path(state["mount"]) / "filler"
    st = os.statvfs(state["mount"])
    filler.touch()
    subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize - (8 << 20)),
                    str(filler)], check=True)  # fmt: skip
    try:
        yield state
    finally:
        filler.unlink(missing_ok=True)


def _object_key(stored: dict[str, Any]) -> str:
    for key in ("ObjectKey", "Key"):
        if key in stored:
            return str(stored[key])
    found = [v for v in json.dumps(stored).split('"') if v.endswith(".bin")]
    assert found, stored
    return found[0]


def test_full_disk_refuses_each_writer_with_one_line(full: dict[str, Any]) -> None:
    env = full["env"]
    before = described(env)
    root_volume = full["instance"]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    commands = {
        "build": ("build", str(ROOT / "build.yaml"), "--image", "debian-hvm"),
        "import": ("import", str(ROOT / "tests/data/vmware/ubuntu.2.0-disk1.vmdk")),
        "create-image": ("create-image", full["iid"], "--name", "from-a-full-disk"),
        "create-snapshot": ("create-snapshot", "--volume-id", root_volume),
        "restore": ("restore", "--bucket", str(full["bucket"]), "--object-key",
                    _object_key(full["stored"]), "--name", "restored-on-a-full-disk"),
    }  # fmt: skip
    for what, args in commands.items():
        res = amilab(env, *args, ok=False)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 3, f"{what}: exit {res.returncode}\n{res.stderr}"
        assert len(lines) == 1 and lines[0].startswith(f"amilab: {full['mount']}: "), (
            what,
            res.stderr,
        )
        assert "Traceback" not in res.stderr
        print(f"{what}: {lines[0]}")
        assert described(env) == before, f"{what} changed the registry"
    # the instance was refused before create-image could stop it
    assert (
        as_json(env, "describe-instances", full["iid"])["Reservations"][0]["Instances"][0]["State"][
            "Name"
        ]
        == "running"
    )
    fsck_clean(env)


def test_a_write_that_hits_enospc_exits_3(full: dict[str, Any]) -> None:
    """No estimate guards `convert`: qemu-img's ENOSPC reaches the CLI's last net."""
    env = full["env"]
    dest = Path(full["mount"]) / "converted.qcow2"
    res = amilab(env, "convert", full["ami"]["ImageLocation"], str(dest), "--format", "qcow2",
                 ok=False)  # fmt: skip
    dest.unlink(missing_ok=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 3, res.stderr
    assert lines[-1].startswith(f"amilab: {full['mount']}: no space left"), res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------------ df and prune


def tree_listing(*roots: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out[p] = (st.st_size, st.st_mtime_ns)
    return out


def du(*roots: Path) -> int:
    res = subprocess.run(["du", "-s", "-c", "-B1", *map(str, roots)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(res.stdout.splitlines()[-1].split()[0])


@pytest.fixture(scope="module")
def used(state: dict[str, Any]) -> dict[str, Any]:
    """The loop home after the full-disk tests (the filler gone): the build, a copy, a
    snapshot of a volume, the instance terminated, and leftovers planted."""
    (Path(state["mount"]) / "filler").unlink(missing_ok=True)
    env, home, ami = state["env"], state["home"], state["ami"]
    amilab(env, "terminate-instances", state["iid"], "--wait")
    inst = {"InstanceId": state["iid"]}
    copy = as_json(env, "copy-image", ami["ImageId"], "--name", "the-copy")
    root_snap = ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    vol = as_json(env, "create-volume", "--snapshot-id", root_snap)
    # a write of its own, so that the volume's snapshot is bytes of its own too
    volume_file = home / "volumes" / f"{vol['VolumeId']}.qcow2"
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 1M", str(volume_file)],
                   check=True, capture_output=True)  # fmt: skip
    snap = as_json(env, "create-snapshot", "--volume-id", vol["VolumeId"])
    # leftovers: an artifact no record names, an instance folder without a record, a dead
    # process's work entry, old logs of the terminated instance, an older base tree
    orphan = home / "artifacts" / "ab" / ("ab" + "0" * 62 + ".raw")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(os.urandom(4 << 20))
    stray = home / "instances" / "i-0000000000000dead"
    stray.mkdir(parents=True)
    (stray / "metadata.marshal").write_bytes(os.urandom(1 << 20))
    month_ago = time.time() - 30 * 86400
    os.utime(stray, (month_ago, month_ago))  # not a launch a moment before its record
    dead = _dead_pid()
    work = home / "work" / f"raw-{dead}-0badf00d"
    work.mkdir(parents=True)
    (work / "disk.raw").write_bytes(os.urandom(2 << 20))
    logs = sorted((home / "logs" / "instances").glob(f"{inst['InstanceId']}.*"))
    assert logs, "the terminated instance left no logs"
    for log in logs:
        os.utime(log, (month_ago, month_ago))
    old_tree = state["cache"] / "rootfs" / "bookworm-000000000000000000000000.tar"
    old_tree.write_bytes(os.urandom(3 << 20))
    os.utime(old_tree, (month_ago, month_ago))
    planted = [orphan, stray, work, *logs, old_tree]
    return {"env": env, "home": home, "cache": state["cache"], "ami": ami, "copy": copy,
            "volume": vol, "snapshot": snap, "planted": planted,
            "empty_cache": Path(state["mount"]) / "no-cache"}  # fmt: skip


def _dead_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def test_df_totals_what_du_measures(used: dict[str, Any]) -> None:
    env = used["env"]
    usage = as_json(env, "df")
    measured = du(used["home"], used["cache"].parent)
    total = usage["TotalBytes"]
    print(f"df {total} B, du {measured} B, ratio {total / measured:.4f}")
    assert abs(total - measured) <= measured / 100
    kinds = {row["Type"]: row for row in usage["Space"]}
    # the AMI's disk (also its copy's and its root snapshot's: one file), the AKI, the ARI
    assert kinds["Images"]["Count"] == 3
    assert kinds["Snapshots"]["Count"] == 1 and kinds["Snapshots"]["SizeBytes"] > 1 << 20
    assert kinds["Volumes"]["Count"] == 1
    assert kinds["Unreferenced"]["ReclaimableBytes"] >= 4 << 20  # the planted artifact
    assert kinds["Instances"]["ReclaimableBytes"] >= 1 << 20
    # the home alone: the sparse disks by their blocks, the shared disk once
    home_only = as_json({**env, "XDG_CACHE_HOME": str(used["empty_cache"])}, "df")
    home_du = du(used["home"])
    print(f"home: df {home_only['TotalBytes']} B, du {home_du} B")
    assert abs(home_only["TotalBytes"] - home_du) <= home_du / 100


def test_prune_without_yes_removes_nothing(used: dict[str, Any]) -> None:
    env = used["env"]
    before = tree_listing(used["home"], used["cache"])
    shown = as_json(env, "prune", "--keep-cache", "0")
    assert shown["DryRun"] is True
    listed = {Path(i["Path"]) for i in shown["Items"]}
    assert set(used["planted"]) <= listed, sorted(map(str, set(used["planted"]) - listed))
    # the same files (the cache's are links to the shared cache's, whose times other runs
    # may change meanwhile), and the home's unchanged
    after = tree_listing(used["home"], used["cache"])
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k.startswith(str(used["home"]))} == {
        k: v for k, v in before.items() if k.startswith(str(used["home"]))
    }


def test_prune_yes_reclaims_and_images_still_pass_smoke(used: dict[str, Any]) -> None:
    env = used["env"]
    before = described(env)
    done = as_json(env, "prune", "--yes", "--keep-cache", "0")
    assert done["DryRun"] is False and done["SpaceReclaimed"] > 0
    for planted in used["planted"]:
        assert not planted.exists(), planted
    assert not any(used["cache"].glob("*/*")), "--keep-cache 0 left cache entries"
    assert described(env) == before
    for image in as_json(env, "images")["Images"]:
        assert Path(image["ImageLocation"]).is_file(), image["ImageId"]
    after = as_json(env, "prune", "--keep-cache", "0")
    assert after["Items"] == [], after
    res = amilab(env, "smoke", used["copy"]["ImageId"] if "ImageId" in used["copy"]
                 else used["ami"]["ImageId"], "--json")  # fmt: skip
    report = json.loads(res.stdout)
    reports = report if isinstance(report, list) else [report]
    assert all(r["Passed"] for r in reports), res.stdout[-3000:]
    fsck_clean(env)
