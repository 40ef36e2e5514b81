"""The launch settings table: every command that launches takes the same options, declared
once (harness.launch.request.LaunchRequest), and they come back as the same request fields."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from harness.cli import make_parser
from harness.cli.flags import launch_request
from harness.launch.accel import Accelerator
from harness.launch.boot import BootRequest
from harness.launch.request import LaunchRequest, launch_settings
from harness.smoke.run import SmokeRequest


def _sub(name: str) -> argparse.ArgumentParser:
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in p._actions if a.option_strings}


@pytest.mark.parametrize("command", ["boot", "smoke"])
def test_every_setting_is_an_option_of_every_launching_command(command: str) -> None:
    options = _options(_sub(command))
    for name, flag, _default in launch_settings():
        assert flag.option in options, flag.option
        action = options[flag.option]
        assert action.dest == name
        assert tuple(action.choices or ()) == tuple(flag.choices or ())
        assert action.help in (flag.help, flag.single_help)


def test_boot_takes_one_kernel_and_smoke_one_instance_per_kernel() -> None:
    boot, smoke = _options(_sub("boot")), _options(_sub("smoke"))
    assert boot["--kernel"].help == "boot with this kernel (aki- ID or name)"
    assert smoke["--kernel"].help == (
        "boot with this kernel instead (repeat: one instance per kernel)"
    )
    args = make_parser().parse_args(["boot", "ami-1", "--kernel", "aki-a", "--kernel", "aki-b"])
    req = launch_request(BootRequest, args, image=args.image)
    assert req.kernels == ["aki-b"] and req.kernel == "aki-b"  # argparse: the last one given
    args = make_parser().parse_args(["smoke", "ami-1", "--kernel", "aki-a", "--kernel", "aki-b"])
    assert launch_request(SmokeRequest, args).kernels == ["aki-a", "aki-b"]
    args = make_parser().parse_args(["boot", "ami-1"])
    assert launch_request(BootRequest, args, image="ami-1").kernel is None


def test_defaults_are_the_requests(tmp_path: Path) -> None:
    for argv, cls in ((["boot", "ami-1"], BootRequest), (["smoke"], SmokeRequest)):
        args = make_parser().parse_args(argv)
        got = launch_request(cls, args, **({"image": "ami-1"} if cls is BootRequest else {}))
        want = cls(**({"image": "ami-1"} if cls is BootRequest else {}))
        assert got == want
    assert LaunchRequest().accel == "auto" and LaunchRequest().disk_bus == "virtio"
    assert LaunchRequest().ssh_timeout == 300.0 and LaunchRequest().metadata == {}


def test_settings_reach_the_plan_and_the_launch_options(tmp_path: Path) -> None:
    layer = tmp_path / "x.ini"
    argv = ["smoke", "ami-1", "--keep", "--open-network", "--ssh-timeout", "12.5",
            "--layer", str(layer), "--accel", "tcg", "--format", "qcow2", "--disk-bus", "nvme",
            "--firmware", "uefi", "--append", "quiet", "--ramdisk", "none",
            "--http-tokens", "required", "--hop-limit", "3"]  # fmt: skip
    req = launch_request(SmokeRequest, make_parser().parse_args(argv), target="ami-1")
    assert (req.accel, req.disk_format, req.disk_bus) == ("tcg", "qcow2", "nvme")
    assert req.firmware == "uefi"
    assert (req.append, req.ramdisk) == ("quiet", "none")
    said: list[str] = []
    opts = req.options(Accelerator("tcg", "test"), said.append, interactive=True)
    assert opts.keep and opts.open_network and opts.interactive and opts.ssh_timeout == 12.5
    assert opts.extra_layers == [str(layer.resolve())]
    assert opts.metadata == {"http_tokens": "required", "http_put_response_hop_limit": 3}
    assert opts.metadata is not req.metadata  # the launch may change its copy
    opts.say("x")
    assert said == ["x"]


def test_a_launch_gets_its_instance_types_vcpus() -> None:
    """As run-instances does: m1.small (the default type) has one vCPU, m1.large two (at
    most the host's cores); a type the table does not know keeps the base layer's."""
    tcg = Accelerator("tcg", "test")

    def smp(itype: str | None) -> int | None:
        return LaunchRequest(instance_type=itype).options(tcg, lambda _: None).smp

    assert smp(None) == 1 and smp("m1.small") == 1
    assert smp("m1.large") == min(2, os.cpu_count() or 1)
    assert smp("zz9.plural") is None
