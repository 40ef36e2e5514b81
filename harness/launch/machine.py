"""QEMU's command line for a launch, composed from qemu-runner layers.

The machine profiles (paravirtual, hvm-bios, hvm-uefi), the accelerators and the network
are layer files in `harness/launch/layers/`; each launch adds one layer of its own (disk, kernel,
console, QMP, ports), written as the same INI text so that `amilab boot --runner` can embed
exactly what the harness runs. qemu-runner merges arguments that share a name and id, so the
launch layer extends e.g. the profile's `[netdev:n0]` with its forwards.

qemu-runner quirks this module works around (see also `runner.py`):
- `Layer.apply` resets `kernel` to None when a later layer has none, so the kernel is only
  ever set by the last (launch) layer;
- layers are parsed by a ConfigParser with `%` interpolation, so `%` is written as `%%`;
- values go into QEMU's comma-separated option syntax unescaped, so `,` is written as `,,`.
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import io
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from qemu_runner.layer import Layer, build_command_line, parse_layer

from builder.errors import BadInput, EnvironmentProblem
from harness.launch.accel import Accelerator

ENGINE = "qemu-system-x86_64"
GUEST_IP = "169.254.0.15"  # slirp's first DHCP lease with dhcpstart in layers/net-user.ini
IMDS_ADDR = "169.254.169.254"


@dataclass(frozen=True)
class Disk:
    path: Path
    format: str  # raw | qcow2 | vmdk
    bus: str = "virtio"  # virtio | nvme | ide | scsi
    # True: the guest writes the file itself (an instance's EBS volume, kept across stops);
    # False: writes go to a throwaway overlay (snapshot=on), the file is only read
    persistent: bool = False
    serial: str | None = None  # what the guest reads as the disk's serial (NVMe: the volume ID)


@dataclass
class MachineSpec:
    """Everything that decides one launch's command line."""

    profile: str  # paravirtual | hvm-bios | hvm-uefi
    accelerator: Accelerator
    disk: Disk
    kernel: Path | None = None
    ramdisk: Path | None = None
    cmdline: str = ""
    ssh_port: int | None = None
    ssh_address: str = "127.0.0.1"  # a long-lived instance has a loopback address of its own
    imds_command: str | None = None
    console_log: Path | None = None
    console_socket: Path | None = None  # interactive: a socket the harness attaches to
    qmp_socket: str | None = None  # relative to QEMU's working directory (short paths)
    open_network: bool = False
    memory_mib: int | None = None
    smp: int | None = None
    extra_layers: list[str] = field(default_factory=list)
    extra_disks: list[Disk] = field(default_factory=list)  # EBS volumes, instance store
    spare_ports: int = 0  # q35: empty PCIe root ports to hot-plug volumes into (instances)
    # the instance as its firmware tables describe it (EC2's DMI identity); None: QEMU's own
    instance_id: str | None = None
    instance_type: str = "m1.small"
    # the machine QEMU emulates (EC2's name): x86_64 and i386 share qemu-system-x86_64's PC,
    # arm64 has profiles of its own (layers/*-arm64.ini) on qemu-system-aarch64's virt board
    architecture: str = "x86_64"

    def layer_names(self) -> list[str]:
        if self.architecture == "arm64":
            names = ["base.ini", f"{self.profile}-arm64.ini", "accel-tcg-arm64.ini"]
        else:
            names = ["base.ini", f"{self.profile}.ini", f"accel-{self.accelerator.name}.ini"]
            if self.architecture == "i386":
                names.append("arch-i386.ini")
        names.append("net-user.ini")
        if self.open_network:
            names.append("net-open.ini")
        return names + list(self.extra_layers)


def layer_text(name: str) -> str:
    """A layer shipped in harness/launch/layers/, or a user's layer file given by path."""
    if "/" in name:
        try:
            return Path(name).read_text(encoding="utf-8")
        except OSError as e:
            raise BadInput(f"layer {name}: {e.strerror}") from None
    try:
        layers = resources.files("harness.launch").joinpath("layers")
        return layers.joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnvironmentProblem(f"harness layer {name} is missing from the installation") from None


def _qemu_value(value: str) -> str:
    """A value as QEMU's option parser and ConfigParser both need it."""
    return str(value).replace(",", ",,").replace("%", "%%")


class _Ini:
    """Builds a layer's INI text, one section per QEMU argument."""

    def __init__(self) -> None:
        self.parser = configparser.ConfigParser()

    def arg(self, section: str, value: str | None = None, **attrs: str | int | None) -> None:
        self.parser.add_section(section)
        if value is not None:
            self.parser.set(section, "@", _qemu_value(str(value)))
        for k, v in attrs.items():
            key = k.replace("__", ".").replace("_", "-")  # file__node_name: file.node-name
            self.parser.set(section, key, None if v is None else _qemu_value(str(v)))

    def general(self, **values: str | int) -> None:
        self.parser.add_section("general")
        for k, v in values.items():
            # cmdline and kernel are not QEMU option lists: only % needs escaping
            self.parser.set("general", k, str(v).replace("%", "%%"))

    def text(self) -> str:
        buf = io.StringIO()
        self.parser.write(buf)
        return buf.getvalue()


def node_names(name: str) -> tuple[str, str]:
    """The block nodes of a persistent disk called `name` (its drive's ID): the raw filter
    the device reads through, and the image format's node under it (see `_disk_args`)."""
    return f"{name}-raw", f"{name}-fmt"


def _disk_args(
    ini: _Ini, disk: Disk, name: str = "root", boot: bool = True, port: str | None = None
) -> None:
    if disk.persistent:
        # an EBS volume: the guest's writes are the volume's; QEMU's cache is flushed when
        # the guest asks (writeback), so a stop loses nothing the guest synced. A raw filter
        # over the image, both nodes named, so a forced detach (harness.instances.devices)
        # can swap the volume out from under a device the guest will not let go of
        top, fmt = node_names(name)
        ini.arg(f"drive:{name}", driver="raw", node_name=top, file__driver=disk.format,
                file__node_name=fmt, file__file__driver="file",
                file__file__filename=str(disk.path), cache="writeback",
                **{"if": "none"})  # fmt: skip
    else:
        # snapshot=on: writes go to a temporary overlay, the image file is opened read-only;
        # cache=unsafe: that overlay is thrown away, so flushes would only cost time.
        ini.arg(f"drive:{name}", file=str(disk.path), format=disk.format, snapshot="on",
                cache="unsafe", **{"if": "none"})  # fmt: skip
    order: dict[str, str | int] = {"bootindex": 1} if boot else {}
    if port is not None:
        order["bus"] = port
    serial = disk.serial or f"amilab-{name}"
    dev = f"device:{name}disk" if name != "root" else "device:rootdisk"
    if disk.bus == "virtio":
        ids = {"serial": disk.serial} if disk.serial else {}
        ini.arg(dev, "virtio-blk-pci", drive=name, **ids, **order)
    elif disk.bus == "nvme":
        ini.arg(dev, "nvme", drive=name, serial=serial, **order)
    elif disk.bus == "ide":
        ini.arg(dev, "ide-hd", drive=name, bus="ide.0", **order)
    elif disk.bus == "scsi":
        ini.arg("device:scsi0", "virtio-scsi-pci")
        ini.arg(dev, "scsi-hd", drive=name, bus="scsi0.0", **order)
    else:
        raise ValueError(f"unknown disk bus {disk.bus}")


def ec2_system_uuid(instance_id: str) -> str:
    """The DMI system UUID of an EC2 instance: it starts with "ec2", and the serial number
    is the same string. cloud-init (`identify_aws`), the AWS SDKs and amazon-ec2-utils tell
    EC2 from other machines by exactly this; cloud-init uses IMDSv2 tokens only where it
    sees it. Derived from the instance ID, so one instance always has the same."""
    digest = hashlib.sha256(instance_id.encode()).hexdigest()
    h = ("ec2" + instance_id.removeprefix("i-") + digest)[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


HOTPLUG_PORT = "hp"  # pcie-root-port IDs: hp1, hp2, ...


def hotplug_ports(spec: MachineSpec) -> list[str]:
    """The PCIe root ports a q35 launch gets for hot-plug: q35's root bus (pcie.0) takes no
    hot-plugged devices, a root port takes one. Only launches that ask (`spare_ports`, long-
    lived instances) get them: one per extra disk and the spares. The `pc` machine (PV,
    HVM-BIOS) hot-plugs into its root bus through ACPI and needs none."""
    if not spec.spare_ports or spec.profile != "hvm-uefi" or spec.architecture == "arm64":
        return []
    count = len(spec.extra_disks) + spec.spare_ports
    return [f"{HOTPLUG_PORT}{i}" for i in range(1, count + 1)]


def launch_layer(spec: MachineSpec) -> str:
    """The launch's own layer (INI text) on top of the profile layers."""
    ini = _Ini()
    general: dict[str, str | int] = {}
    if spec.memory_mib:
        general["memory"] = f"{spec.memory_mib}"
    if spec.kernel is not None:
        general["kernel"] = str(spec.kernel)
        if spec.cmdline:
            general["cmdline"] = spec.cmdline
    if general:
        ini.general(**general)
    if spec.smp:
        ini.arg("smp", str(spec.smp))
    emulated = spec.accelerator.name == "tcg" or spec.architecture == "arm64"  # see layer_names
    if emulated and spec.accelerator.tcg_thread != "multi":
        ini.arg("accel", thread=spec.accelerator.tcg_thread)
    if spec.kernel is not None and spec.ramdisk is not None:
        ini.arg("initrd", str(spec.ramdisk))
    if spec.instance_id:
        # as a Nitro instance reports itself (/sys/class/dmi/id/sys_vendor, product_name)
        uuid = ec2_system_uuid(spec.instance_id)
        ini.arg("smbios", type=1, manufacturer="Amazon EC2", product=spec.instance_type,
                uuid=uuid, serial=uuid)  # fmt: skip
    _disk_args(ini, spec.disk)
    ports = hotplug_ports(spec)
    for i, port in enumerate(ports, 1):  # before the devices that name them as their bus
        ini.arg(f"device:{port}", "pcie-root-port", chassis=i, io_reserve=0)
    for i, extra in enumerate(spec.extra_disks, 1):
        # on q35 each volume gets a port of its own, so that it can be unplugged too
        _disk_args(ini, extra, name=f"disk{i}", boot=False, port=ports.pop(0) if ports else None)
    net: dict[str, str] = {}
    if spec.ssh_port is not None:
        net["hostfwd"] = f"tcp:{spec.ssh_address}:{spec.ssh_port}-:22"
    if spec.imds_command:
        # slirp splits the command on spaces itself (no shell): keep paths free of spaces
        net["guestfwd"] = f"tcp:{IMDS_ADDR}:80-cmd:{spec.imds_command}"
    if net:
        ini.arg("netdev:n0", **net)
    if spec.console_socket is not None:
        attrs = {"path": str(spec.console_socket), "server": "on", "wait": "off"}
        if spec.console_log is not None:
            attrs |= {"logfile": str(spec.console_log), "logappend": "off"}
        ini.arg("chardev:con0", "socket", **attrs)
        ini.arg("serial", "chardev:con0")
    elif spec.console_log is not None:
        ini.arg("chardev:con0", "file", path=str(spec.console_log))
        ini.arg("serial", "chardev:con0")
    if spec.qmp_socket:
        ini.arg("qmp", f"unix:{spec.qmp_socket}", server="on", wait="off")
    return ini.text()


def layer_texts(spec: MachineSpec) -> list[str]:
    return [layer_text(n) for n in spec.layer_names()] + [launch_layer(spec)]


def compose(texts: list[str]) -> Layer:
    combined = Layer()
    for text in texts:
        parser = configparser.ConfigParser()
        parser.read_string(text)
        combined = combined.apply(parse_layer(parser))
    return combined


def find_qemu(engine: str) -> Path:
    found = shutil.which(engine)
    if not found:
        package = "qemu-system-arm" if "aarch64" in engine else "qemu-system-x86"
        raise EnvironmentProblem(f"{engine} not found (Debian package {package})")
    return Path(found)


def command_line(spec: MachineSpec) -> list[str]:
    return list(build_command_line(compose(layer_texts(spec)), find_qemu_func=find_qemu))


NET_SOCKET = "net.sock"  # relative to QEMU's working directory, the instance's


@functools.cache
def network_split_supported(engine: str) -> bool:
    """QEMU 7.2 added `-netdev stream`, which the split network below needs."""
    try:
        out = subprocess.run(
            [engine, "-netdev", "help"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "stream" in out.stdout.split()


def split_network(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """Move the guest's user-mode network (slirp) into a QEMU process of its own, joined to
    the guest's NIC by `-netdev stream` over a Unix socket; None when there is no user-mode
    network to move. Why: slirp starts the metadata service's per-connection process with
    glib, which forks the QEMU it runs in twice before the exec. The guest's QEMU under TCG
    holds ~1 GB of private memory (the translation cache, its TLBs) whose page tables every
    fork copies; that was ~30 ms before each guest connection to 169.254.169.254 was even
    accepted. A QEMU with `-machine none` holds a few MB and forks in well under 1 ms.
    Returns (the guest's argv, the network process's argv)."""
    at = next(
        (i for i, a in enumerate(argv[:-1]) if a == "-netdev" and argv[i + 1].startswith("user,")),
        None,
    )
    if at is None:
        return None
    user = argv[at + 1]
    nid = next(p[3:] for p in user.split(",") if p.startswith("id="))
    stream = f"addr.type=unix,addr.path={NET_SOCKET}"
    guest = argv[:at] + ["-netdev", f"stream,id={nid},server=off,{stream}"] + argv[at + 2 :]
    network = [
        argv[0], "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none",
        "-netdev", user,
        "-netdev", f"stream,id=guest,server=on,{stream}",
        # a hub joins the two backends; it has no NIC of its own (QEMU warns, harmlessly)
        "-netdev", f"hubport,id=hub-slirp,hubid=0,netdev={nid}",
        "-netdev", "hubport,id=hub-guest,hubid=0,netdev=guest",
    ]  # fmt: skip
    return guest, network
