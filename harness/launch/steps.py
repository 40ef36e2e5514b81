"""The launch pipeline: instance directory, key pair, metadata, QEMU, SSH.

`boot` and `smoke` run these steps (smoke adds its checks after `WaitForSsh`); each step
undoes its own work in `cleanup`, so QEMU is stopped and the instance directory removed on
every way out (see `pipeline.py` and, for SIGKILL, `process.py`).
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from builder.errors import EnvironmentProblem
from builder.steps import Step
from harness.imds import PROTOCOL_SCRIPT, SCRIPT_NAME
from harness.imds.document import InstanceMetadata, block_device_mapping, document, write_document
from harness.imds.server import MetadataServer
from harness.launch import instance as instances
from harness.launch import keys, pvgrub
from harness.launch.accel import Accelerator
from harness.launch.console import ConsoleWatcher
from harness.launch.machine import (
    GUEST_IP,
    NET_SOCKET,
    Disk,
    MachineSpec,
    command_line,
    network_split_supported,
    split_network,
)
from harness.launch.plan import HARNESS_CMDLINE, X86_CMDLINE, LaunchPlan
from harness.launch.process import QemuProcess
from harness.launch.ssh import BootFailed, SshLogin, wait_for_ssh
from harness.launch.types import default_type

IMDS_SOCKET = "imds.sock"
RELAY = "nc.openbsd"  # Debian's netcat-openbsd
PORT_RETRIES = 3


@dataclass
class LaunchOptions:
    accelerator: Accelerator
    keep: bool = False
    open_network: bool = False
    ssh_timeout: float = 300.0
    interactive: bool = False  # console on a socket the harness attaches the terminal to
    memory_mib: int | None = None
    smp: int | None = None
    extra_layers: list[str] = field(default_factory=list)  # user layers, applied last
    # a long-lived instance's own loopback address: its SSH on port 22 there, not a free port
    ssh_address: str | None = None
    ssh_port: int | None = None  # with ssh_address: 22 unless the host's own sshd holds it
    extra_disks: list[Disk] = field(default_factory=list)  # its other volumes
    spare_ports: int = 0  # q35: empty PCIe root ports for volumes attached while it runs
    # InstanceMetadata fields the launch sets beyond what the AMI gives (user_data, tags,
    # iam_role, http_tokens, http_endpoint, ...), as EC2's RunInstances parameters do
    metadata: dict[str, Any] = field(default_factory=dict)
    # False: serve guest connections with the per-connection imds_cgi.py even where the
    # relay is installed (bench/imds.py compares the two in one run)
    imds_relay: bool = True
    # False: slirp inside the guest's QEMU (one process) instead of a QEMU of its own
    # (harness.launch.machine.split_network; bench/imds.py measures both)
    split_network: bool = True
    say: Any = None  # callable(str) for progress lines; None: quiet


@dataclass
class Instance:
    """The state one launch's steps share."""

    plan: LaunchPlan
    options: LaunchOptions
    dir: instances.InstanceDir | None = None
    key_path: Path | None = None
    public_key: str = ""
    metadata: InstanceMetadata | None = None
    imds_command: str | None = None  # what slirp runs per guest connection to port 80
    spec: MachineSpec | None = None
    argv: list[str] = field(default_factory=list)
    net_argv: list[str] = field(default_factory=list)  # the network's QEMU, when split off
    net: QemuProcess | None = None
    qemu: QemuProcess | None = None
    watcher: ConsoleWatcher | None = None
    login: SshLogin | None = None
    started_at: float = field(default_factory=time.monotonic)
    qemu_started_at: float | None = None
    seconds_to_ssh: float | None = None
    cpu_seconds_to_ssh: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    cpu_phases: dict[str, float] = field(default_factory=dict)  # QEMU CPU seconds per phase

    @property
    def instance_id(self) -> str:
        return self.dir.instance_id if self.dir else ""

    @property
    def ssh(self) -> paramiko.SSHClient:
        assert self.login is not None
        return self.login.client

    def say(self, text: str) -> None:
        if self.options.say:
            self.options.say(text)


class CreateInstance(Step[Instance]):
    name = "instance"

    def run(self, s: Instance) -> None:
        s.dir = instances.create()
        s.say(f"instance {s.dir.instance_id} ({s.dir.path})")

    def cleanup(self, s: Instance) -> None:
        if s.dir is None:
            return
        if s.options.keep:
            s.say(f"kept {s.dir.path}")
        else:
            s.dir.remove()


class MakeKeyPair(Step[Instance]):
    name = "key pair"

    def run(self, s: Instance) -> None:
        assert s.dir is not None
        s.key_path, s.public_key = keys.make_key_pair(s.dir.path, f"amilab-{s.dir.instance_id}")


class PrepareDisk(Step[Instance]):
    """What the plan can only settle with the instance's own directory: an imported disk's
    prepared overlay (the original is never written), or PV-GRUB's kernel and initrd."""

    name = "disk"

    def run(self, s: Instance) -> None:
        assert s.dir is not None
        p = s.plan
        if p.imported:
            from harness.launch.overlay import prepare_overlay

            overlay = s.dir.path / "overlay.qcow2"
            s.say("preparing a copy-on-write overlay as VM Import would (libguestfs)")
            prepare_overlay(p.image, overlay, s.public_key, s.dir.path / "prepare.log")
            p.disk = Disk(overlay, "qcow2", p.disk.bus)
        if p.pv_grub:
            s.say("PV-GRUB: reading the image's menu (libguestfs, read-only)")
            menu = pvgrub.load(p.disk.path, p.disk.format, s.dir.path, p.image.image_id)
            p.kernel_path, p.ramdisk_path = menu.kernel, menu.initrd
            # PV-GRUB is x86's; its kernel meets the same late timer ticks as a direct boot's
            args = (menu.entry.args, HARNESS_CMDLINE, X86_CMDLINE, p.cmdline)
            p.cmdline = " ".join(a for a in args if a)
            p.expected_release = menu.release or ""
            p.notes.append(f"PV-GRUB loaded {menu.entry.title!r} from {menu.menu}")
            s.say(p.notes[-1])


class WriteMetadata(Step[Instance]):
    name = "metadata"

    def run(self, s: Instance) -> None:
        assert s.dir is not None
        image = s.plan.image
        instance_store = image.root_device_type == "instance-store"
        s.metadata = InstanceMetadata(
            **{
                "ami_id": image.image_id,
                "instance_id": s.dir.instance_id,
                "public_key": s.public_key,
                "key_name": f"amilab-{s.dir.instance_id}",
                "kernel_id": s.plan.kernel_id,
                "ramdisk_id": s.plan.ramdisk_id,
                "local_ipv4": GUEST_IP,
                "block_device_mapping": block_device_mapping(
                    image.root_device_name, image.block_device_mappings
                ),
                # EC2 names the bundle's manifest for instance-store AMIs only
                "ami_manifest_path": image.image_location if instance_store else "(unknown)",
                "architecture": image.architecture,
                # the smallest type that runs the image's architecture, unless one was named
                "instance_type": default_type(image.architecture),
                **s.options.metadata,
            }
        )
        write_document(s.metadata, s.dir.metadata_doc)


class StartMetadataService(Step[Instance]):
    """The guest's metadata service. Slirp's `guestfwd ...-cmd:` starts one process per
    guest connection; with OpenBSD's netcat that process is only a relay to a server thread
    of this harness on a Unix socket (in the instance's private directory), so a guest
    request costs an exec of `nc.openbsd -U` (~1.4 ms here; socat ~3.3 ms, measured with
    bench/imds.py's harness) instead of a Python start-up (~17 ms for `imds_cgi.py`). The
    guest's request is already waiting when the relay starts, so its start-up is on every
    request's critical path. Without netcat-openbsd, the per-connection `imds_cgi.py`
    serves the same document (as runners do)."""

    name = "metadata service"

    def __init__(self) -> None:
        self.server: MetadataServer | None = None
        self.thread: threading.Thread | None = None

    @staticmethod
    def relay_command() -> str | None:
        """The relay slirp runs per connection; None where netcat-openbsd is missing. It
        exits once the server has answered and closed, which closes the guest's socket
        (clients that read to EOF finish at once), and a client's half-close still gets
        its answer (tests/unit/test_imds_launch.py checks both)."""
        nc = shutil.which(RELAY)
        if nc is None:
            return None
        return f"{nc if ' ' not in nc else RELAY} -U {IMDS_SOCKET}"

    def run(self, s: Instance) -> None:
        assert s.dir is not None and s.metadata is not None
        # slirp's command line runs in QEMU's working directory (the instance's) and is
        # split at spaces: relative names keep it safe whatever $AMILAB_HOME is
        relay = self.relay_command() if s.options.imds_relay else None
        if relay is not None:
            self.server = MetadataServer.unix(document(s.metadata), s.dir.path / IMDS_SOCKET)
            self.thread = threading.Thread(
                target=self.server.serve_forever, name="imds", daemon=True
            )
            self.thread.start()
            s.imds_command = relay
        else:
            shutil.copy(PROTOCOL_SCRIPT, s.dir.path / SCRIPT_NAME)
            s.imds_command = imds_command(s.dir.metadata_doc)
            if s.options.imds_relay:
                s.say(f"{RELAY} not found: one Python process per metadata request (slower)")

    def cleanup(self, s: Instance) -> None:
        if self.server is not None:
            self.server.stop()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if s.dir is not None:
            (s.dir.path / IMDS_SOCKET).unlink(missing_ok=True)


def free_port() -> int:
    """An ephemeral loopback port; QEMU binds it a moment later (a clash is retried)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def imds_command(doc: Path) -> str:
    python = sys.executable if " " not in sys.executable else "python3"
    # -I -S: no site-packages scan and no user/env paths; each guest request pays start-up
    return f"{python} -I -S {SCRIPT_NAME} {doc.name}"


class ComposeCommand(Step[Instance]):
    name = "command"

    def run(self, s: Instance) -> None:
        assert s.dir is not None
        p, o = s.plan, s.options
        s.spec = MachineSpec(
            profile=p.profile,
            accelerator=o.accelerator,
            disk=p.disk,
            kernel=p.kernel_path or (Path(p.kernel.image_location) if p.kernel else None),
            ramdisk=p.ramdisk_path or (Path(p.ramdisk.image_location) if p.ramdisk else None),
            cmdline=p.cmdline,
            ssh_port=(o.ssh_port or 22) if o.ssh_address else free_port(),
            ssh_address=o.ssh_address or "127.0.0.1",
            extra_disks=list(o.extra_disks),
            spare_ports=o.spare_ports,
            imds_command=s.imds_command,
            console_log=s.dir.console_log,
            console_socket=s.dir.console_socket if o.interactive else None,
            qmp_socket=s.dir.qmp_socket.name,
            open_network=o.open_network,
            memory_mib=o.memory_mib,
            smp=o.smp,
            extra_layers=list(o.extra_layers),
            instance_id=s.instance_id,
            instance_type=s.metadata.instance_type if s.metadata else "m1.small",
            architecture=p.machine_architecture,
        )
        compose_commands(s)


def compose_commands(s: Instance) -> None:
    """The guest's QEMU command and, where QEMU can run it apart, its network's."""
    assert s.spec is not None
    argv = command_line(s.spec)
    wanted = s.options.split_network and network_split_supported(argv[0])
    split = split_network(argv) if wanted else None
    s.argv, s.net_argv = split if split else (argv, [])


def _port_taken(err: str) -> bool:
    return "hostfwd" in err or "host forwarding" in err


class StartNetwork(Step[Instance]):
    """The user-mode network in a QEMU of its own (see `harness.launch.machine.split_network`):
    slirp, the SSH port forward and the metadata service's guestfwd live there, and the
    guest's NIC reaches it through a Unix socket."""

    name = "network"

    def run(self, s: Instance) -> None:
        assert s.dir is not None and s.spec is not None
        for attempt in range(PORT_RETRIES):
            if not s.net_argv:
                return
            sock = s.dir.path / NET_SOCKET
            sock.unlink(missing_ok=True)
            s.net = QemuProcess(s.net_argv, s.dir.path, s.dir.path / "network.log")
            s.net.start()
            deadline = time.monotonic() + 10
            while s.net.alive() and not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if sock.exists() and s.net.alive():
                (s.dir.path / "network.pid").write_text(f"{s.net.pid}\n")
                return
            s.net.kill()
            err = s.net.stderr_tail()
            if _port_taken(err) and attempt + 1 < PORT_RETRIES and not s.options.ssh_address:
                s.spec.ssh_port = free_port()  # taken since we picked it
                compose_commands(s)
                continue
            raise EnvironmentProblem(f"QEMU's network process did not start: {err or 'no message'}")

    def cleanup(self, s: Instance) -> None:
        if s.net is not None:
            s.net.kill()  # nothing in it to save; the guest's QEMU is gone by now


class StartQemu(Step[Instance]):
    name = "qemu"

    def run(self, s: Instance) -> None:
        assert s.dir is not None and s.spec is not None
        for attempt in range(PORT_RETRIES):
            s.dir.console_log.unlink(missing_ok=True)
            s.qemu = QemuProcess(s.argv, s.dir.path, s.dir.qemu_log)
            s.qemu.start()
            s.qemu_started_at = s.qemu.started_at
            (s.dir.path / "qemu.pid").write_text(f"{s.qemu.pid}\n")
            try:
                # the greeting comes once QEMU's devices (and port forwards) are set up
                s.qemu.qmp(s.dir.qmp_socket)
                break
            except Exception as e:  # noqa: BLE001 - QEMU gone or silent: its stderr says why
                alive = s.qemu.alive()
                s.qemu.kill()
                err = s.qemu.stderr_tail()
                retry = not s.net_argv and not s.options.ssh_address
                if _port_taken(err) and attempt + 1 < PORT_RETRIES and retry:
                    s.spec.ssh_port = free_port()  # taken since we picked it
                    compose_commands(s)
                    continue
                # no stderr: say what failed (seen once in a matrix, 0.15 s after the start)
                why = err or (f"QMP: {type(e).__name__}: {e}" if alive
                              else f"exit status {s.qemu.exit_status()}, no message")  # fmt: skip
                raise EnvironmentProblem(f"QEMU did not start: {why}") from None
        s.watcher = ConsoleWatcher(s.dir.console_log, s.qemu.started_at, s.qemu.cpu_seconds)
        s.say(f"QEMU {s.qemu.pid} started ({s.options.accelerator.describe()})")

    def cleanup(self, s: Instance) -> None:
        if s.qemu is not None and s.dir is not None:
            s.qemu.stop(s.dir.qmp_socket)


class WaitForSsh(Step[Instance]):
    name = "ssh"

    def run(self, s: Instance) -> None:
        assert s.qemu is not None and s.watcher is not None and s.spec is not None
        assert s.key_path is not None and s.spec.ssh_port is not None
        qemu, watcher = s.qemu, s.watcher

        def check() -> None:
            failure = watcher.poll()
            if failure is not None:
                raise BootFailed(failure.describe(), watcher.tail())
            if s.net is not None and not s.net.alive():
                err = s.net.stderr_tail(3)
                raise BootFailed(
                    "QEMU's network process exited" + (f": {err}" if err else ""), watcher.tail()
                )
            if not qemu.alive():
                watcher.poll()
                failure = watcher.failure()
                why = failure.describe() if failure else "QEMU exited before SSH came up"
                err = qemu.stderr_tail(3)
                detail = f" (exit status {qemu.exit_status()}{': ' + err if err else ''})"
                raise BootFailed(why + detail, watcher.tail())

        pkey = keys.load_private_key(s.key_path)
        s.login = wait_for_ssh(
            s.spec.ssh_port, pkey, s.options.ssh_timeout, check, host=s.spec.ssh_address,
            ready=watcher.sshd_started, reported=watcher.reports_units,
        )  # fmt: skip
        assert s.qemu_started_at is not None
        now = time.monotonic()
        s.seconds_to_ssh = round(now - s.qemu_started_at, 2)
        s.cpu_seconds_to_ssh = qemu.cpu_seconds()
        watcher.poll()
        s.phases = boot_phases(
            watcher.milestones, s.login.banner_at - s.qemu_started_at, s.seconds_to_ssh
        )
        if s.cpu_seconds_to_ssh is not None:
            # the banner's CPU time is not known exactly: init and login share one number
            cpu_marks = dict(watcher.cpu_milestones)
            s.cpu_phases = boot_phases(cpu_marks, s.cpu_seconds_to_ssh, s.cpu_seconds_to_ssh)
            s.cpu_phases.pop("login", None)
        s.say(f"SSH after {s.seconds_to_ssh:.1f} s")

    def cleanup(self, s: Instance) -> None:
        if s.login is not None:
            s.login.client.close()


def boot_phases(milestones: dict[str, float], banner: float, login: float) -> dict[str, float]:
    """Seconds spent in each part of the boot, from the host times of console milestones:
    firmware (QEMU start to the kernel's first line), kernel (to the ramdisk's /init),
    ramdisk (to init's first line), init (to sshd's banner), login (key exchange and auth).
    A milestone that never showed (e.g. `quiet`) folds its phase into the next one."""
    marks = [("firmware", milestones.get("kernel")), ("kernel", milestones.get("ramdisk")),
             ("ramdisk", milestones.get("init")), ("init", banner), ("login", login)]  # fmt: skip
    out: dict[str, float] = {}
    previous = 0.0
    for name, at in marks:
        if at is None or at < previous:
            continue
        out[name] = round(at - previous, 2)
        previous = at
    return out


LAUNCH_STEPS: tuple[type[Step[Instance]], ...] = (
    CreateInstance,
    MakeKeyPair,
    PrepareDisk,
    WriteMetadata,
    StartMetadataService,
    ComposeCommand,
    StartNetwork,
    StartQemu,
)
