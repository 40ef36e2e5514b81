"""QEMU command lines composed from the qemu-runner layers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.launch import machine
from harness.launch.accel import Accelerator
from harness.launch.machine import Disk, MachineSpec, command_line, compose, layer_texts

TCG = Accelerator("tcg", "test")


def _spec(**kw: object) -> MachineSpec:
    base: dict = dict(
        profile="paravirtual",
        accelerator=TCG,
        disk=Disk(Path("/images/disk.raw"), "raw"),
        kernel=Path("/k/vmlinuz"),
        ramdisk=Path("/k/initrd"),
        cmdline="root=LABEL=cloudimg-rootfs console=ttyS0 panic=-1",
        ssh_port=40022,
        imds_command="/usr/bin/python3 -I -S imds_cgi.py metadata.marshal",
        console_log=Path("/logs/i-1.console.log"),
        qmp_socket="qmp.sock",
    )
    base.update(kw)
    return MachineSpec(**base)


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_paravirtual() -> None:
    argv = command_line(_spec())
    assert argv[0].endswith("qemu-system-x86_64")
    assert _opt(argv, "-kernel") == ["/k/vmlinuz"]
    assert _opt(argv, "-initrd") == ["/k/initrd"]
    assert _opt(argv, "-append") == ["root=LABEL=cloudimg-rootfs console=ttyS0 panic=-1"]
    assert _opt(argv, "-bios") == ["qboot.rom"]
    assert _opt(argv, "-accel") == ["tcg,thread=multi"]
    assert "-nodefaults" in argv and "-no-reboot" in argv


def test_disk_is_never_written() -> None:
    (drive,) = _opt(command_line(_spec()), "-drive")
    assert "snapshot=on" in drive and "format=raw" in drive and "file=/images/disk.raw" in drive
    (drive,) = _opt(command_line(_spec(disk=Disk(Path("/i/d.vmdk"), "vmdk"))), "-drive")
    assert "format=vmdk" in drive and "snapshot=on" in drive


def test_commas_in_paths_are_escaped() -> None:
    (drive,) = _opt(command_line(_spec(disk=Disk(Path("/a,b/d.raw"), "raw"))), "-drive")
    assert "file=/a,,b/d.raw" in drive


def test_network() -> None:
    (netdev,) = _opt(command_line(_spec()), "-netdev")
    parts = netdev.split(",")
    assert parts[0] == "user" and "net=169.254.0.0/16" in parts and "restrict=on" in parts
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in parts
    fwd = "guestfwd=tcp:169.254.169.254:80-cmd:/usr/bin/python3 -I -S imds_cgi.py metadata.marshal"
    assert fwd in parts
    (netdev,) = _opt(command_line(_spec(open_network=True)), "-netdev")
    assert "restrict=off" in netdev.split(",") and "restrict=on" not in netdev.split(",")


def test_hvm_profiles() -> None:
    bios = command_line(_spec(profile="hvm-bios", kernel=None, ramdisk=None, cmdline=""))
    assert "-kernel" not in bios and "-initrd" not in bios and "-append" not in bios
    assert _opt(bios, "-machine") == ["pc"] and "-bios" not in bios
    uefi = command_line(_spec(profile="hvm-uefi", kernel=None, ramdisk=None))
    assert _opt(uefi, "-machine") == ["q35"] and _opt(uefi, "-bios")[0].endswith("OVMF.fd")


def test_kvm_layer() -> None:
    argv = command_line(_spec(accelerator=Accelerator("kvm", "test")))
    assert _opt(argv, "-accel") == ["kvm"] and _opt(argv, "-cpu") == ["host"]


def test_console_and_qmp() -> None:
    argv = command_line(_spec())
    assert _opt(argv, "-chardev") == ["file,id=con0,path=/logs/i-1.console.log"]
    assert _opt(argv, "-serial") == ["chardev:con0"]
    assert _opt(argv, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]
    interactive = command_line(_spec(console_socket=Path("/i/console.sock")))
    (chardev,) = _opt(interactive, "-chardev")
    assert chardev.startswith("socket,id=con0,path=/i/console.sock,server=on,wait=off")
    assert "logfile=/logs/i-1.console.log" in chardev


def test_launch_overrides_profile_values() -> None:
    argv = command_line(_spec(memory_mib=2048, smp=1))
    assert _opt(argv, "-m") == ["2048"] and _opt(argv, "-smp") == ["1"]


def test_user_layer_by_path(tmp_path: Path) -> None:
    layer = tmp_path / "mine.ini"
    layer.write_text("[cpu]\n@ = max\n")
    argv = command_line(_spec(extra_layers=[str(layer)]))
    # the model is the user's; the TCG layer's cx16=off (QEMU 7.2's cmpxchg16b) stays merged in
    assert _opt(argv, "-cpu") == ["max,cx16=off"]


def test_tcg_layer_hides_cmpxchg16b() -> None:
    argv = command_line(_spec(accelerator=TCG))
    assert _opt(argv, "-accel") == ["tcg,thread=multi"]
    assert _opt(argv, "-cpu") == ["qemu64,cx16=off"]


def test_percent_survives_configparser() -> None:
    argv = command_line(_spec(cmdline="root=LABEL=x opt=50%"))
    assert _opt(argv, "-append") == ["root=LABEL=x opt=50%"]


def test_layers_compose_with_qemu_runner() -> None:
    layer = compose(layer_texts(_spec()))
    assert layer.general.engine == "qemu-system-x86_64"
    assert layer.general.kernel == "/k/vmlinuz"


def test_unknown_bus() -> None:
    with pytest.raises(ValueError):
        command_line(_spec(disk=Disk(Path("/d.raw"), "raw", "floppy")))


def test_ec2_dmi_identity() -> None:
    """A launch's firmware tables say EC2 as a Nitro instance's do: the system UUID starts
    with "ec2" and is also the serial number (what cloud-init's identify_aws reads)."""
    uuid = machine.ec2_system_uuid("i-0123456789abcdef0")
    assert re.fullmatch(r"ec2[0-9a-f]{5}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid)
    assert uuid == machine.ec2_system_uuid("i-0123456789abcdef0")
    assert uuid != machine.ec2_system_uuid("i-0123456789abcdef1")
    spec = machine.MachineSpec(
        profile="paravirtual",
        accelerator=Accelerator("tcg", "test"),
        disk=machine.Disk(Path("/images/root.raw"), "raw"),
        instance_id="i-0123456789abcdef0",
        instance_type="t3.micro",
    )
    argv = machine.command_line(spec)
    smbios = argv[argv.index("-smbios") + 1]
    assert smbios == f"type=1,manufacturer=Amazon EC2,product=t3.micro,uuid={uuid},serial={uuid}"


def test_split_network_moves_slirp_into_its_own_qemu() -> None:
    argv = command_line(_spec())
    split = machine.split_network(argv)
    assert split is not None
    guest, network = split
    # the guest keeps everything but the user-mode network, which becomes a stream socket
    (guest_net,) = _opt(guest, "-netdev")
    assert guest_net == "stream,id=n0,server=off,addr.type=unix,addr.path=net.sock"
    assert [a for a in guest if a != guest_net] == [a for a in argv if not a.startswith("user,")]
    assert _opt(guest, "-device").count("virtio-net-pci,id=nic0,netdev=n0") == 1
    # the network's QEMU runs no machine: slirp (forwards unchanged), the socket, a hub
    assert network[0] == argv[0] and _opt(network, "-machine") == ["none"]
    (user,) = [n for n in _opt(argv, "-netdev") if n.startswith("user,")]
    assert _opt(network, "-netdev") == [
        user,
        "stream,id=guest,server=on,addr.type=unix,addr.path=net.sock",
        "hubport,id=hub-slirp,hubid=0,netdev=n0",
        "hubport,id=hub-guest,hubid=0,netdev=guest",
    ]
    assert "-kernel" not in network and "-drive" not in network
    assert machine.split_network(guest) is None  # nothing left to move


def test_this_qemu_can_split_the_network() -> None:
    # Debian 12's QEMU 7.2 has -netdev stream; without it launches keep slirp in one QEMU
    assert machine.network_split_supported(machine.find_qemu("qemu-system-x86_64"))
