"""The interface every root engine offers the build pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from builder.build.pipeline import BuildState

# (element phase directory, runs inside the chroot), as in builder.build.elements.PHASES
Phases = tuple[tuple[str, bool], ...]


class RootEngine:
    """Makes a recipe's root tree, and runs the element phases it takes on.

    The pipeline calls `make_root` (its rootfs step), then `run_elements` (before the kernel's
    modules and the ramdisk go in), `finalise` (after them) and, on every way out, `cleanup`.
    An engine that runs every element phase itself inside `make_root` (diskimage-builder)
    leaves `install_phases` and `finalise_phases` empty and the other calls do nothing.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # for `amilab build --help`
    # the element phases run by run_elements (up to post-install.d) and by finalise
    install_phases: ClassVar[Phases] = ()
    finalise_phases: ClassVar[Phases] = ()

    @classmethod
    def runs_elements_itself(cls) -> bool:
        """True when make_root already ran every phase of the recipe's elements."""
        return not (cls.install_phases or cls.finalise_phases)

    def make_root(self, s: BuildState) -> None:
        """Make the root tree at `s.root`."""
        raise NotImplementedError

    def run_elements(self, s: BuildState) -> None:
        """The element phases up to post-install.d, in the tree `make_root` made."""

    def finalise(self, s: BuildState) -> None:
        """finalise.d and cleanup.d, once modules and ramdisk are in the tree."""

    def cleanup(self, s: BuildState) -> None:
        """Remove what run_elements left in the tree that is not part of the image."""
