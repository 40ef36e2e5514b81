"""How cells share the machine: the order they start in, and the cores each one holds.

Cores: a cell holds as many of its host's cores as its instance type has vCPUs (a `CPU`
resource beside the `VM` slot). Guests are not overcommitted: measured here under TCG, the
12-cell bench matrix cost 37.7 CPU seconds a cell with two guests at once (m1.small's one
vCPU beside m1.large's two), 44.3 when two 2-vCPU guests ran together (four vCPU threads on
two cores: a descheduled vCPU holding a guest lock leaves the other spinning) and 53.3 with
three guests at once, against 34.3 one at a time.

Order: the longest first (longest-processing-time-first scheduling), so a run does not end
with one slow guest alone on an otherwise idle machine, and cells that fit in the cores
left over are not stuck behind one that does not. A cell's length comes from an earlier
run of it when there is one (`--baseline`: its `Seconds`); otherwise it is estimated from
what decides it under emulation, measured on this project's images under TCG (README, boot
figures: seconds to SSH): the guest architecture (x86_64 PV on 1 vCPU 30.4, i386 PV 55.8,
arm64 HVM on t4g.micro's 2 vCPUs 82.9) and its vCPUs (x86_64 on 1 vCPU ~30 s, on 2 ~18-22 s).

Only the start order changes; reports keep the matrix's own order.
"""

from __future__ import annotations

from harness.instances.types import TYPES, default_type
from harness.matrix.cells import Cell

# per vCPU-limited guest, relative to x86_64; arm64's was measured on 2 vCPUs (82.9 / 30.4
# x the 2-vCPU speedup below)
ARCH_COST = {"x86_64": 1.0, "i386": 1.84, "arm64": 4.1}
SECOND_VCPU_SPEEDUP = 1.5  # the wall time a 2-vCPU guest saves over 1 vCPU (x)


def vcpus(options: dict[str, str], architecture: str) -> int:
    """The vCPUs a cell's instance type gives its guest (its named type, else the default
    type for the architecture)."""
    t = TYPES.get(options.get("instance_type") or default_type(architecture))
    return t.vcpus if t else 1


def cores_held(cell: Cell, capacity: int) -> int:
    """The cores a cell holds on a host that has `capacity` of them (never more)."""
    return max(1, min(cell.vcpus, capacity))


def estimate(cell: Cell, cores: int) -> float:
    """Relative wall time of a cell's boot and checks (1.0: an x86_64 guest on 1 vCPU)."""
    arch = cell.architecture or "x86_64"
    speedup = SECOND_VCPU_SPEEDUP if cores_held(cell, cores) > 1 else 1.0
    return ARCH_COST.get(arch, 1.0) / speedup


def longest_first(
    cells: list[Cell], cores: int, earlier: dict[str, float] | None = None
) -> list[Cell]:
    """`cells` in start order. Earlier runs' seconds, where a cell has one, rank it; the
    others rank by estimate, scaled to seconds by the cells that have a time."""
    earlier = earlier or {}
    est = {c.key: estimate(c, cores) for c in cells}
    timed = [(earlier[c.key], est[c.key]) for c in cells if c.key in earlier]
    scale = sum(s for s, _ in timed) / sum(e for _, e in timed) if timed else 1.0

    def length(c: Cell) -> float:
        return earlier[c.key] if c.key in earlier else est[c.key] * scale

    # sorted() is stable: cells of equal length keep the matrix's order
    return sorted(cells, key=length, reverse=True)
