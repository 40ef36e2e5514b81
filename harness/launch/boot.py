"""`amilab boot IMAGE`: one instance for a person, not a test.

Without `--console` it boots, waits for SSH, prints how to log in and keeps the instance up
until Ctrl-C or the guest powers off. With `--console` the terminal is attached to the serial
console from the first line on (Ctrl-] detaches, which also stops the instance). With
`--runner FILE.pyz` nothing boots: the runner for the image is written instead.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from builder.images.registry import Registry
from builder.signals import sigterm_as_interrupt
from builder.steps import Step, run_steps
from harness.launch import accel, terminal
from harness.launch.request import LaunchRequest, progress_printer
from harness.launch.runner import write_runner
from harness.launch.steps import LAUNCH_STEPS, Instance, WaitForSsh


@dataclass(kw_only=True)
class BootRequest(LaunchRequest):
    """One instance: the launch settings (at most one kernel) and how a person uses it."""

    image: str
    console: bool = False
    runner: Path | None = None

    @property
    def kernel(self) -> str | None:
        return self.kernels[0] if self.kernels else None


class ShowLogin(Step[Instance]):
    name = "login"

    def run(self, s: Instance) -> None:
        assert s.spec is not None and s.key_path is not None
        s.say(
            "log in with: "
            + shlex.join(
                [
                    "ssh",
                    "-i",
                    str(s.key_path),
                    "-p",
                    str(s.spec.ssh_port),
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "root@127.0.0.1",
                ]  # fmt: skip
            )
        )


class WaitForExit(Step[Instance]):
    """Keep the instance until the guest powers off or the user presses Ctrl-C."""

    name = "wait"

    def run(self, s: Instance) -> None:
        assert s.qemu is not None
        s.say("instance running; Ctrl-C stops it")
        try:
            while s.qemu.alive():
                time.sleep(0.5)
            s.say("the guest powered off")
        except KeyboardInterrupt:
            s.say("stopping the instance")


class AttachConsole(Step[Instance]):
    name = "console"

    def run(self, s: Instance) -> None:
        assert s.qemu is not None and s.dir is not None
        qemu = s.qemu
        sock = terminal.connect(s.dir.console_socket, qemu.alive)
        s.say("console attached; Ctrl-] detaches and stops the instance")
        try:
            why = terminal.relay(sock, qemu.alive)
        finally:
            sock.close()
        s.say(why)


def boot(req: BootRequest) -> int:
    say = progress_printer()
    with sigterm_as_interrupt():
        chosen = accel.choose(req.accel)
        image = Registry().find(req.image, "machine")
        plan = req.plan(image, req.kernel)
        for note in plan.notes:
            say(f"note: {note}")
        if req.runner is not None:
            for line in write_runner(plan, chosen, req.runner, metadata=req.metadata):
                print(line)
            return 0
        say(f"accelerator: {chosen.describe()}")
        inst = Instance(plan, req.options(chosen, say, interactive=req.console))
        steps: list[Step[Instance]] = [cls() for cls in LAUNCH_STEPS]
        if req.console:
            steps += [ShowLogin(), AttachConsole()]
        else:
            steps += [WaitForSsh(), ShowLogin(), WaitForExit()]
        run_steps(steps, inst)
    return 0
