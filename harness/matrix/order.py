"""How cells share the machine: the order they start in, and the vCPUs each one holds.

vCPUs: a cell holds as many of its host's vCPU budget (a `CPU` resource beside the `VM`
slot) as its instance type has vCPUs. Under KVM the budget is the host's cores. Under TCG it
is one and a half vCPUs per core, because a TCG guest keeps fewer cores busy than it has
vCPUs (its vCPU threads sleep in HLT and wait on I/O): alone on this 2-core host, m1.large's
two vCPUs kept 1.4 cores busy, m1.small's one about 1.1. Measured on the 12-cell bench
matrix (6 cells on m1.small, 6 on m1.large), in one interleaved run, cells per minute with
the budget at 2 / 3 / unlimited vCPUs: 4.03 / 4.17 / 4.32, then (the host slower)
2.80 / 3.88 / 3.79. At 2 every m1.large cell ran alone on a core it did not use; at 3 an
m1.small cell runs beside it and two m1.large guests never share the two cores (four vCPU
threads on two cores cost 44.3 CPU seconds a cell against 34.3 one at a time: a descheduled
vCPU holding a guest lock leaves the other spinning). Those figures were taken with a host
thread per vCPU; a host that runs several TCG guests at once now emulates each on one thread
(`tcg_thread`), and there a guest holds one core whatever its vCPUs (`counts_vcpus`).

Order: the longest first (longest-processing-time-first scheduling), so a run does not end
with one slow guest alone on an otherwise idle machine, and cells that fit in the vCPUs
left over are not stuck behind one that does not. A cell's length comes from an earlier
run of it when there is one (`--baseline`: its `Seconds`); otherwise it is estimated from
what decides it under emulation, measured on this project's images under TCG (README, boot
figures: seconds to SSH): the guest architecture (x86_64 PV on 1 vCPU 30.4, i386 PV 55.8,
arm64 HVM on t4g.micro's 2 vCPUs 82.9) and its vCPUs (x86_64 on 1 vCPU ~30 s, on 2 ~18-22 s).

Only the start order changes; reports keep the matrix's own order.
"""

from __future__ import annotations

from harness.launch.types import TYPES, default_type
from harness.matrix.cells import Cell

# per vCPU-limited guest, relative to x86_64; arm64's was measured on 2 vCPUs (82.9 / 30.4
# x the 2-vCPU speedup below)
ARCH_COST = {"x86_64": 1.0, "i386": 1.84, "arm64": 4.1}
SECOND_VCPU_SPEEDUP = 1.5  # the wall time a 2-vCPU guest saves over 1 vCPU (x)
TCG_VCPUS_PER_CORE = 1.5


def vcpu_budget(cores: int, accelerator: str, jobs: int = 1) -> int:
    """The vCPUs the guests of one host may have at once (never fewer than `jobs`, the
    guests the user asked for at once: their number wins)."""
    per_core = TCG_VCPUS_PER_CORE if accelerator == "tcg" else 1.0
    return max(1, int(cores * per_core), jobs)


def tcg_thread(slots: int) -> str:
    """How a TCG guest is emulated on a host with `slots` guests at once: one host thread per
    vCPU ("multi") only where a guest can have the host to itself.

    A guest's second vCPU thread only helps while a core is idle; on a host its other
    guests keep busy, its vCPU threads are preempted in turn and the other one waits for
    the preempted one (spinlocks, TLB shootdowns, IPIs), so the guest costs more CPU for
    the same boot. Measured here (2 cores, an m1.large guest of 2 vCPUs beside an m1.small
    one, interleaved rounds): the pair took 16.7-20.2 s and 14.9-17.9 CPU s per guest with a
    thread per vCPU, 15.0-17.0 s and 14.1-16.3 CPU s with one thread per guest; alone, the
    m1.large guest gets to SSH in 8.5 s with two threads and 11-13 s with one."""
    return "single" if slots > 1 else "multi"


def counts_vcpus(accelerator: str, slots: int) -> bool:
    """Whether a host's cells hold its vCPU budget by their vCPUs: not where each guest runs
    on one thread (TCG, several guests at once), as each then takes one core whatever its
    vCPUs, and the VM slots are the whole budget. Holding two of three for an m1.large kept
    a slot idle whenever the next cell in line was another m1.large (11 s of 108 in one run
    of the bench's matrix)."""
    return not (accelerator == "tcg" and tcg_thread(slots) == "single")


def vcpus(options: dict[str, str], architecture: str) -> int:
    """The vCPUs a cell's instance type gives its guest (its named type, else the default
    type for the architecture)."""
    t = TYPES.get(options.get("instance_type") or default_type(architecture))
    return t.vcpus if t else 1


def cores_held(cell: Cell, capacity: int) -> int:
    """The vCPUs a cell holds of a host's budget of `capacity` (never more)."""
    return max(1, min(cell.vcpus, capacity))


def estimate(cell: Cell, cores: int) -> float:
    """Relative wall time of a cell's boot and checks (1.0: an x86_64 guest on 1 vCPU)."""
    arch = cell.architecture or "x86_64"
    speedup = SECOND_VCPU_SPEEDUP if cores_held(cell, cores) > 1 else 1.0
    return ARCH_COST.get(arch, 1.0) / speedup


def lengths(
    cells: list[Cell], cores: int, earlier: dict[str, float] | None = None
) -> dict[str, float]:
    """Each cell's expected length: an earlier run's seconds where it has one, else its
    estimate scaled to seconds by the cells that have a time."""
    earlier = earlier or {}
    est = {c.key: estimate(c, cores) for c in cells}
    timed = [(earlier[c.key], est[c.key]) for c in cells if c.key in earlier]
    scale = sum(s for s, _ in timed) / sum(e for _, e in timed) if timed else 1.0
    return {c.key: earlier[c.key] if c.key in earlier else est[c.key] * scale for c in cells}


def longest_first(
    cells: list[Cell], cores: int, earlier: dict[str, float] | None = None
) -> list[Cell]:
    """`cells`, longest first (the start order where every cell holds the same vCPUs)."""
    length = lengths(cells, cores, earlier)
    # sorted() is stable: cells of equal length keep the matrix's order
    return sorted(cells, key=lambda c: length[c.key], reverse=True)


def start_order(
    cells: list[Cell], length: dict[str, float], jobs: int, budget: int
) -> list[Cell]:
    """The order to start `cells` in on one host with `jobs` VM slots and `budget` vCPUs.

    A Dask worker starts its tasks strictly by priority: when the first does not fit the
    resources left, none behind it starts. So the order is made here, by simulating the run
    on the expected lengths: whenever a slot is free, the cell that fills most of the
    vCPUs left starts, the longest of those. On the bench's 12 cells (half m1.small, half
    m1.large, budget 3) that pairs each m1.large with an m1.small; longest first alone ran
    the m1.small pairs first and then every m1.large alone."""
    pending = list(cells)  # longest first: max() keeps the first of equals
    running: list[tuple[float, Cell]] = []  # (expected end, cell)
    now, out = 0.0, []
    while pending:
        free = budget - sum(cores_held(c, budget) for _, c in running)
        fits = [c for c in pending if cores_held(c, budget) <= free]
        if len(running) < jobs and fits:
            pick = max(fits, key=lambda c: (cores_held(c, budget), length.get(c.key, 0.0)))
            pending.remove(pick)
            out.append(pick)
            running.append((now + length.get(pick.key, 0.0), pick))
            continue
        if not running:  # cannot happen (a cell never holds more than the budget): be safe
            return out + pending
        running.sort(key=lambda r: r[0])
        now = running.pop(0)[0]
    return out
