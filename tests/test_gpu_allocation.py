"""GPU allocation with injected device lists: no double assignment under concurrency, restarts, crashes."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from atlaslab.compute import gpus
from atlaslab.compute.allocation import GpuAllocator, NoGpuFree
from atlaslab.config.schema import GPURequest as Request

GiB = 1024**3


def eight() -> list[gpus.GPU]:
    return [gpus.GPU(i, f"GPU-{i:08x}-0000", "NVIDIA H100", 80 * GiB) for i in range(8)]


def mig_layout() -> list[gpus.GPU]:
    """One A100 split 3x 1g.10gb + 1x 3g.40gb, and a whole A100 beside it."""
    parent = "GPU-aaaaaaaa-0000"
    layout = [("1g.10gb", 10), ("1g.10gb", 10), ("1g.10gb", 10), ("3g.40gb", 40)]
    slices = [gpus.GPU(0, f"MIG-{i:08x}", f"A100 MIG {p}", m * GiB, p, parent) for i, (p, m) in enumerate(layout)]
    return [*slices, gpus.GPU(1, "GPU-bbbbbbbb-0000", "A100", 80 * GiB)]


def test_whole_gpus_are_exclusive_and_run_out_with_a_message(tmp_path: Path) -> None:
    alloc = GpuAllocator(tmp_path / "gpus.sqlite", eight())
    got = [alloc.allocate(f"u{i}/", Request(count=2)) for i in range(4)]
    uuids = [d.uuid for pair in got for d in pair]
    assert len(uuids) == len(set(uuids)) == 8
    with pytest.raises(NoGpuFree, match=r"No GPU is free for 2 whole GPUs: 8 of 8 GPUs are in use"):
        alloc.allocate("u9/", Request(count=2))
    alloc.release("u1/")
    again = alloc.allocate("u9/", Request(count=2))
    assert {d.uuid for d in again} == {d.uuid for d in got[1]}


def test_fifty_concurrent_spawns_never_double_assign(tmp_path: Path) -> None:
    alloc = GpuAllocator(tmp_path / "gpus.sqlite", eight())
    results: dict[str, list[str]] = {}
    refused: list[str] = []
    start = threading.Barrier(50)

    def spawn(i: int) -> None:
        # Each thread its own allocator object (as each hub request would), on the same database.
        mine = GpuAllocator(tmp_path / "gpus.sqlite", eight())
        start.wait()
        try:
            results[f"u{i}/"] = [d.uuid for d in mine.allocate(f"u{i}/", Request(count=1 if i % 3 else 2))]
        except NoGpuFree:
            refused.append(f"u{i}/")

    threads = [threading.Thread(target=spawn, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = Counter(u for uuids in results.values() for u in uuids)
    assert held and max(held.values()) == 1 and sum(held.values()) <= 8
    assert len(results) + len(refused) == 50
    assert alloc.assignments() == {h: sorted(u) for h, u in results.items()}


def _spawn_process(db: str, i: int, out) -> None:
    try:
        got = GpuAllocator(db, eight()).allocate(f"p{i}/", Request(shared=4))
        out.put((i, got[0].uuid))
    except NoGpuFree:
        out.put((i, None))


def test_concurrent_processes_fill_shared_seats_exactly(tmp_path: Path) -> None:
    """Several hub processes on one database: 40 shared seats of 4 on 8 GPUs -> 32 placed, 8 refused."""
    db = str(tmp_path / "gpus.sqlite")
    GpuAllocator(db, eight())
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_spawn_process, args=(db, i, out)) for i in range(40)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    per_gpu = Counter(uuid for _, uuid in got if uuid)
    assert sorted(per_gpu.values()) == [4] * 8 and sum(1 for _, uuid in got if uuid is None) == 8


def test_shared_gpus_fill_before_fresh_ones_and_block_whole_requests(tmp_path: Path) -> None:
    alloc = GpuAllocator(tmp_path / "gpus.sqlite", eight()[:2])
    first = [alloc.allocate(f"s{i}/", Request(shared=3))[0].uuid for i in range(3)]
    assert len(set(first)) == 1  # packed onto one GPU
    fourth = alloc.allocate("s3/", Request(shared=3))[0].uuid
    assert fourth != first[0]
    with pytest.raises(NoGpuFree, match=r"2 of 2 GPUs are in use \(0 by single servers, 2 shared\)"):
        alloc.allocate("whole/", Request(count=1))


def test_mig_slices_by_profile(tmp_path: Path) -> None:
    alloc = GpuAllocator(tmp_path / "gpus.sqlite", mig_layout())
    small = [alloc.allocate(f"m{i}/", Request(mig="1g.10gb"))[0] for i in range(3)]
    assert {d.mig_profile for d in small} == {"1g.10gb"} and len({d.uuid for d in small}) == 3
    with pytest.raises(NoGpuFree, match="3 of 3 MIG slices are in use"):
        alloc.allocate("m3/", Request(mig="1g.10gb"))
    assert alloc.allocate("big/", Request(mig="3g.40gb"))[0].uuid == "MIG-00000003"
    with pytest.raises(NoGpuFree, match=r"has no 2g\.20gb MIG slice"):
        alloc.allocate("x/", Request(mig="2g.20gb"))
    # The MIG-enabled GPU is never handed out whole; the other one is.
    assert [d.uuid for d in alloc.allocate("w/", Request(count=1))] == ["GPU-bbbbbbbb-0000"]


def test_assignments_survive_a_restart_and_a_crashed_servers_device_returns(tmp_path: Path) -> None:
    db = tmp_path / "gpus.sqlite"
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        alloc = GpuAllocator(db, eight()[:1])
        [gpu] = alloc.allocate("alice/", Request(count=1))
        alloc.attach("alice/", server.pid)
        # A new allocator on the same file (the hub restarted): alice still holds her GPU.
        restarted = GpuAllocator(db, eight()[:1])
        assert restarted.assignments() == {"alice/": [gpu.uuid]}
        with pytest.raises(NoGpuFree):
            restarted.allocate("bob/", Request(count=1))
        server.kill()
        server.wait()
        # alice's server crashed: the next allocation finds the device free.
        assert restarted.allocate("bob/", Request(count=1)) == [gpu]
        assert restarted.assignments() == {"bob/": [gpu.uuid]}
    finally:
        server.kill()


def test_injected_inventory_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{"uuid": "GPU-1", "name": "Test GPU", "memory": GiB},
                                {"uuid": "MIG-2", "mig_profile": "1g.5gb", "parent": "GPU-9"}]))  # fmt: skip
    monkeypatch.setenv(gpus.INVENTORY_ENV, str(path))
    inv = gpus.detect()
    assert [g.uuid for g in inv.gpus] == ["GPU-1", "MIG-2"] and inv.gpus[1].is_mig and "gpus.json" in inv.reason
    path.write_text("{broken")
    inv = gpus.detect()
    assert not inv and "unreadable" in inv.reason


def test_no_gpu_machine_answers_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gpus.INVENTORY_ENV, raising=False)
    inv = gpus.detect()
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    assert not inv and (inv.reason == "no NVIDIA driver on this machine" or inv.reason.startswith("NVML unavailable"))
