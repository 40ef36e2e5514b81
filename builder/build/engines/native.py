"""The native engine: an mmdebstrap base tarball (cached, builder.build.rootfs) unpacked as the
root tree, and the elements' phases run by amilab's own runner (builder.build.elements)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from builder.build import chroot, elements, rootfs
from builder.build.engines.base import RootEngine
from builder.errors import BadInput

if TYPE_CHECKING:
    from builder.build.pipeline import BuildState

_FINALISE = [phase for phase, _ in elements.PHASES].index("finalise.d")


class NativeEngine(RootEngine):
    name = "native"
    summary = "mmdebstrap + amilab's element runner"
    # split at finalise.d: the kernel's modules and the ramdisk go in between, so that
    # finalise.d sees the image as it will boot
    install_phases = elements.PHASES[:_FINALISE]
    finalise_phases = elements.PHASES[_FINALISE:]

    def __init__(self) -> None:
        self._runner: elements.PhaseRunner | None = None

    def make_root(self, s: BuildState) -> None:
        s.stages.detail("mmdebstrap base (cached when unchanged)")
        log = s.logs / "rootfs.log"
        index = s.inputs.package_index if s.inputs else ""
        tar, s.base_cached = rootfs.base_tarball(
            s.recipe.release, s.packages, log, index, s.recipe.architecture
        )
        s.stages.detail("unpacking " + ("cached base" if s.base_cached else "new base"))
        rootfs.unpack(tar, s.root)
        s.stages.detail("waiting for the kernel")
        _ = s.kernel

    def run_elements(self, s: BuildState) -> None:
        self._runner = phase_runner(s)
        self._runner.stage_in_target()
        with chroot.prepared(s.root):
            for phase, inside in self.install_phases:
                self._runner.run_phase(phase, inside)
            if s.uninstall:
                s.stages.detail("removing build-only packages")
                chroot_checked(
                    s, ["apt-get", "-y", "purge", "--autoremove", *s.uninstall], "uninstall"
                )

    def finalise(self, s: BuildState) -> None:
        runner = phase_runner(s)
        runner.stage_in_target()
        try:
            with chroot.prepared(s.root):
                for phase, inside in self.finalise_phases:
                    if inside:
                        runner.run_phase(phase, True)
            # outside phases (cleanup.d) once the chroot's mounts are gone, as DIB does
            for phase, inside in self.finalise_phases:
                if not inside:
                    runner.run_phase(phase, False)
        finally:
            runner.remove_in_target()

    def cleanup(self, s: BuildState) -> None:
        if self._runner and s.root.exists():
            self._runner.remove_in_target()


def phase_runner(s: BuildState) -> elements.PhaseRunner:
    return elements.PhaseRunner(
        s.elements,
        s.root,
        s.logs / "elements",
        s.hook_env(),
        on_hook=lambda h: s.stages.detail(f"{h.element}: {h.phase}/{h.name}"),
    )


def chroot_checked(s: BuildState, argv: list[str], what: str) -> None:
    log = s.logs / f"{what}.log"
    result = chroot.run(s.root, argv, log=log)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        raise BadInput(f"{what}: {' '.join(argv)} failed (log: {log})\n{tail}")
