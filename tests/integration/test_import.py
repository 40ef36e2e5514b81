"""Round trip of the default HVM image through VMware's format: build it, export it with
`amilab convert --subformat streamOptimized`, re-import it with `amilab import`, prepare a
copy-on-write overlay as VM Import does, boot it under QEMU and log in with the key."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from builder.ids import sparse_sha256
from tests.conftest import AMILAB, ROOT, run_amilab
from tests.integration.builds import build, debugfs, exists
from tests.integration.test_build import recipe_file

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 600
IMDS = """#!/usr/bin/python3
import sys
request = sys.stdin.buffer.readline()
while sys.stdin.buffer.readline() not in (b"", b"\\r\\n", b"\\n"):
    pass
ok = request.startswith(b"GET") and b"openssh-key" in request
body = b"KEY\\n" if ok else b""
head = b"HTTP/1.0 200 OK" if ok else b"HTTP/1.0 404 Not Found"
sys.stdout.buffer.write(head + b"\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("import")
    build_home = tmp / "build-home"
    recipe = recipe_file(
        tmp,
        "hvm-export",
        virtualization="hvm",
        boot="hybrid",
        disk={"formats": ["raw"], "partitioning": "auto"},
    )
    ami = build(recipe, build_home)["Images"][0]
    raw = Path(ami["Locations"]["raw"])
    vmdk = tmp / "exported.vmdk"
    result = run_amilab(
        "convert",
        str(raw),
        str(vmdk),
        "--format",
        "vmdk",
        "--subformat",
        "streamOptimized",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    home = tmp / "home"
    env = {"AMILAB_HOME": str(home)}
    result = run_amilab("import", str(vmdk), "--name", "reimported", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {
        "tmp": tmp,
        "raw": raw,
        "vmdk": vmdk,
        "home": home,
        "built": ami,
        "imported": json.loads(result.stdout)["Images"][0],
    }


def test_export_is_valid_stream_optimized(exported: dict) -> None:
    check = subprocess.run(["qemu-img", "check", str(exported["vmdk"])], capture_output=True)
    assert check.returncode == 0, check.stdout
    cmp = subprocess.run(
        [
            "qemu-img",
            "compare",
            "-f",
            "raw",
            "-F",
            "vmdk",
            str(exported["raw"]),
            str(exported["vmdk"]),
        ],
        capture_output=True,
    )
    assert cmp.returncode == 0, cmp.stdout


def test_import_registers_an_hvm_ami_with_the_same_disk(exported: dict) -> None:
    ami = exported["imported"]
    assert ami["ImageId"].startswith("ami-")
    assert ami["VirtualizationType"] == "hvm"
    assert ami["KernelId"] is None and ami["RamdiskId"] is None
    assert ami["RootDeviceName"] == "/dev/xvda"
    stored = Path(ami["ImageLocation"])
    assert sparse_sha256(stored) == sparse_sha256(exported["raw"])  # bit-exact round trip
    from builder.images.registry import Registry

    record = Registry(exported["home"]).get(ami["ImageId"])
    assert record is not None
    x, launch = record.extra, record.launch
    assert launch.imported is True and x["bootable"] is True, x["problems"]
    assert x["source"]["vmdk"]["layout"].endswith("as VMware writes)")
    assert launch.root_label == "cloudimg-rootfs" and launch.root_uuid
    assert x["partitioning"]["table"] == "gpt" and launch.partitioning == "gpt"
    assert launch.boot == "hybrid"
    (kernel,) = x["kernels"]
    assert kernel["virtio"] and kernel["drivers"]["virtio_blk"]


def test_inspect_reports_the_kernel(exported: dict) -> None:
    result = run_amilab("inspect", str(exported["vmdk"]), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["os"]["distro"] == "debian"
    assert [k["release"] for k in report["kernels"]] and report["problems"] == []
    assert report["bootloader"]["mbr"] == "grub2" and report["bootloader"]["efi"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_smoke_of_the_imported_ami(exported: dict) -> None:
    """The harness prepares a copy-on-write overlay as VM Import would (DHCP, fstab by UUID,
    the instance's key), boots it, and runs the same checks; the original is never written."""
    from builder.images.registry import Registry

    record = Registry(exported["home"]).get(exported["imported"]["ImageId"])
    before = sparse_sha256(Path(record.image_location))
    env = {"AMILAB_HOME": str(exported["home"])}
    result = run_amilab("smoke", exported["imported"]["ImageId"], "--json", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads(result.stdout)
    runs = runs if isinstance(runs, list) else [runs]
    assert all(r["Passed"] for r in runs)
    checks = {c["Name"]: c for c in runs[0]["Checks"]}
    assert checks["kernel-release"]["Actual"] == record.launch.kernel_releases[0]
    assert sparse_sha256(Path(record.image_location)) == before


def test_add_modules_on_the_imported_disk_goes_through_libguestfs(
    exported: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add-modules' fallback for real: an imported disk is described by what inspection
    found (its mountpoints), so libguestfs writes the copy, not e2fsprogs. With
    `--default-kernel` the kernel, an initrd made for it and a first GRUB entry go in too."""
    from builder.images.kernel_refs import register_catalogue_kernel
    from builder.images.registry import Registry

    home = exported["home"]
    monkeypatch.setenv("AMILAB_HOME", str(home))
    aki, _ = register_catalogue_kernel("debian-cloud-sid")  # cached: about a second
    imported = exported["imported"]
    before = sparse_sha256(Path(imported["ImageLocation"]))
    result = run_amilab("add-modules", imported["ImageId"], "--kernel", aki.image_id,
                        "--default-kernel", "--json", env={"AMILAB_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    new = json.loads(result.stdout)["Images"][0]
    record = Registry(home).get(new["ImageId"])
    assert record is not None and record.launch.expected_release == aki.kernel_release
    notes = record.extra["add_modules_notes"]
    assert not any("e2fsprogs" in n for n in notes), notes
    built = Registry(exported["tmp"] / "build-home").get(exported["built"]["ImageId"])
    assert built is not None  # the disk it was exported from: the same layout
    raw, offset = new["Locations"]["raw"], built.launch.partitions["root"].offset
    release = aki.kernel_release
    assert exists(raw, f"/usr/lib/modules/{release}/modules.dep.bin", offset), notes
    assert exists(raw, f"/boot/initrd.img-{release}", offset), notes
    grub = debugfs(raw, "cat /boot/grub/grub.cfg", offset)
    assert grub.index(f"vmlinuz-{release}") < grub.index("vmlinuz-6.1."), grub
    fsck = subprocess.run(["e2fsck", "-fn", f"{raw}?offset={offset}"], capture_output=True,
                          text=True)  # fmt: skip
    assert fsck.returncode == 0, fsck.stdout
    assert sparse_sha256(Path(imported["ImageLocation"])) == before


def test_convert_leaves_nothing_when_interrupted(exported: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [
            *AMILAB,
            "convert",
            str(exported["raw"]),
            str(out / "x.vmdk"),
            "--format",
            "vmdk",
            "--subformat",
            "streamOptimized",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a test run started in the background inherits SIGINT ignored: Ctrl-C must reach it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # interrupt once the conversion is under way (its work directory exists), not after a
    # fixed sleep that a loaded machine may spend still importing
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".x.vmdk.") for p in out.iterdir()):
        assert proc.poll() is None, "convert ended before it could be interrupted"
        assert time.monotonic() < deadline, "convert never started its work directory"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert list(out.iterdir()) == []


def test_import_of_a_disk_with_no_operating_system_registers_nothing(tmp_path: Path) -> None:
    """EC2's image import fails a disk with no OS; so does amilab's, before storing it."""
    home = tmp_path / "home"
    env = {"AMILAB_HOME": str(home)}
    blank = ROOT / "tests/data/vmware/blank.vmdk"
    result = run_amilab("import", str(blank), "--json", env=env)
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert err == (
        "amilab: blank.vmdk: no operating system found (libguestfs inspection); "
        "import takes a bootable disk"
    )
    images = run_amilab("images", "--json", env=env)
    assert json.loads(images.stdout) == {"Images": []}
    assert not (home / "artifacts").exists() or not any((home / "artifacts").rglob("*"))
    assert not (home / "work").exists() or list((home / "work").iterdir()) == []
