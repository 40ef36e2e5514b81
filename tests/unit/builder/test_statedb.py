"""The state database under many writers (issue 29 item 5): every change is one IMMEDIATE
transaction, so concurrent read-modify-writes from threads and from processes all count,
none fails with `database is locked`, a check and the change it allows are one step, and a
session inside another joins it (and goes with it when it rolls back)."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from builder import statedb
from builder.errors import BadInput
from builder.images import factory, lifecycle, volumes
from builder.images.records import LaunchSettings
from builder.images.registry import Registry
from builder.images.tables import JsonTable

WORKERS, ROUNDS = 8, 25


def _bump(n: int) -> None:
    table = JsonTable("counters", "counter")
    for i in range(ROUNDS):
        table.update("c", lambda row, tag=f"w{n}-{i}": _count(row, tag))


def _count(row: dict, tag: str) -> None:
    row["Count"] += 1
    row["Tags"].append(tag)


def _run_all(kind: str) -> None:
    if kind == "threads":
        workers = [threading.Thread(target=_bump, args=(n,)) for n in range(WORKERS)]
    else:  # processes, as several CLI commands at once
        ctx = multiprocessing.get_context("fork")
        workers = [ctx.Process(target=_bump, args=(n,)) for n in range(WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if kind == "processes":
        assert [w.exitcode for w in workers] == [0] * WORKERS  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_updates_of_one_record_are_all_kept(amilab_home: Path, kind: str) -> None:
    table = JsonTable("counters", "counter")
    table.insert("c", {"Count": 0, "Tags": []})
    _run_all(kind)
    row = table.find("c", "NotFound")
    assert row["Count"] == WORKERS * ROUNDS
    assert len(set(row["Tags"])) == WORKERS * ROUNDS


def test_a_session_inside_a_transaction_joins_it_and_rolls_back_with_it(
    amilab_home: Path,
) -> None:
    table = JsonTable("things", "thing")
    table.insert("kept", {"v": 1})
    with pytest.raises(RuntimeError), table.transaction():
        table.insert("gone", {"v": 2})
        table.update("kept", lambda r: r.update(v=3))
        assert table.get("gone") == {"v": 2}  # the nested read sees the open transaction
        raise RuntimeError("refused after the changes")
    assert table.get("gone") is None
    assert table.get("kept") == {"v": 1}


def test_a_write_session_waits_for_another_instead_of_failing(amilab_home: Path) -> None:
    """Another connection holds the write lock; an IMMEDIATE session waits for it (the busy
    timeout) rather than failing, and then sees what it committed."""
    table = JsonTable("things", "thing")
    table.insert("x", {"v": 0})
    started, release = threading.Event(), threading.Event()

    def holder() -> None:
        with statedb.session(table.path, write=True) as conn:
            conn.execute("UPDATE things SET record = ? WHERE id = 'x'", ('{"v": 1}',))
            started.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    started.wait(10)
    threading.Timer(0.5, release.set).start()
    table.update("x", lambda r: r.update(v=r["v"] + 10))
    t.join()
    assert table.get("x") == {"v": 11}


def _image(home: Path, name: str) -> str:
    disk = home / f"{name}.raw"
    home.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(name.encode() * 512)
    reg = factory.Registration(name, "hvm", "/dev/xvda", "x86_64")
    rec = factory.machine_image(reg, "ab" * 32, LaunchSettings(), {"raw": str(disk)})
    return Registry().register([rec])[0].image_id


def _race(count: int, fn: object, *args: object) -> list[object]:
    """`fn(*args)` from `count` threads at once: each one's result or BadInput."""
    out: list[object] = []
    barrier = threading.Barrier(count)

    def one() -> None:
        barrier.wait()
        try:
            out.append(fn(*args))  # type: ignore[operator]
        except BadInput as e:
            out.append(e)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_racing_deregisters_give_one_success(amilab_home: Path) -> None:
    ami = _image(amilab_home, "one")
    got = _race(4, lifecycle.deregister, ami)
    assert sum(not isinstance(g, BadInput) for g in got) == 1, got
    assert Registry().get(ami) is None


def test_racing_registrations_of_one_image_keep_one(amilab_home: Path) -> None:
    disk = amilab_home / "same.raw"
    amilab_home.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(b"x" * 4096)
    reg = factory.Registration("same", "hvm", "/dev/xvda", "x86_64")
    rec = factory.machine_image(reg, "cd" * 32, LaunchSettings(), {"raw": str(disk)})
    got = _race(4, Registry().register, [rec])
    assert not [g for g in got if isinstance(g, BadInput)]
    assert [r.image_id for r in Registry().list()] == [rec.image_id]


def test_racing_snapshot_deletes_give_one_success(amilab_home: Path) -> None:
    vol = volumes.create_volume(1)
    snap = volumes.create_snapshot(vol["VolumeId"])
    got = _race(4, volumes.delete_snapshot, snap["SnapshotId"])
    assert sum(not isinstance(g, BadInput) for g in got) == 1, got


def test_delete_tags_without_keys_takes_the_tags_there_when_it_runs(amilab_home: Path) -> None:
    ami = _image(amilab_home, "tagged")
    lifecycle.tag([ami], {"a": "1", "b": "2"})
    lifecycle.untag([ami], None)
    assert Registry().find(ami).tags == {}
