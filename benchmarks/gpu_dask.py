"""The same Dask dataframe and array workload on a LocalCUDACluster and on a CPU LocalCluster of this machine.

    python benchmarks/gpu_dask.py [--rows 20000000] [--matrix 8192] [--cpu-only]

Workload: a groupby-aggregate and a merge of two dataframes (``--rows`` rows, 1,000 keys), then a matrix product
of two ``--matrix`` square float32 arrays. Prints both times and the ratio (CPU time / GPU time). Where there is
no GPU, or dask-cuda, cuDF or CuPy is missing, prints "skipped: ..." and exits 0; ``--cpu-only`` runs the CPU
side alone (a smoke check of the workload on any machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time


def workload(rows: int, matrix: int, gpu: bool) -> dict[str, float]:
    import dask.array as da
    import dask.dataframe as dd

    times = {}
    parts = max(2, rows // 2_000_000)
    left, right = _frame(dd, rows, parts), _keys(dd)
    a = da.random.default_rng(0).random((matrix, matrix), chunks=matrix // 4, dtype="float32")
    b = da.random.default_rng(1).random((matrix, matrix), chunks=matrix // 4, dtype="float32")
    if gpu:  # the very same data, moved to cuDF and CuPy (Dask's backend switch; needs dask-cudf and cupy)
        left, right = left.to_backend("cudf"), right.to_backend("cudf")
        a, b = a.to_backend("cupy"), b.to_backend("cupy")
    a, b = a.persist(), b.persist()  # generation is not part of the timed product
    left = left.persist()
    _wait(left)
    t = time.perf_counter()
    grouped = left.groupby("key").agg({"value": ["mean", "sum", "count"]}).compute()
    merged = left.merge(right, on="key").groupby("region")["value"].sum().compute()
    times["dataframe"] = time.perf_counter() - t
    assert len(grouped) == 1000 and len(merged) == 10
    _wait([a, b])
    t = time.perf_counter()
    total = float((a @ b).sum().compute())
    times["array"] = time.perf_counter() - t
    assert total > 0
    return times


def _frame(dd, rows: int, parts: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"key": rng.integers(0, 1000, rows), "value": rng.random(rows, dtype="float32")})
    return dd.from_pandas(pdf, npartitions=parts)


def _keys(dd):
    import pandas as pd

    return dd.from_pandas(pd.DataFrame({"key": range(1000), "region": [k % 10 for k in range(1000)]}), npartitions=1)


def _wait(collection) -> None:
    from distributed import wait

    wait(collection)


def gpu_missing() -> str | None:
    for module in ("dask_cuda", "cudf", "dask_cudf", "cupy"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install atlaslab[gpu] plus RAPIDS)"
    from atlaslab.compute import gpus

    inventory = gpus.detect()
    return None if inventory else inventory.reason


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--matrix", type=int, default=8192)
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    missing = None if args.cpu_only else gpu_missing()
    if missing:
        print(f"skipped: no GPU ({missing})")
        return 0
    cores = len(os.sched_getaffinity(0))
    with LocalCluster(n_workers=min(cores, 8), threads_per_worker=max(1, cores // 8)) as cpu, Client(cpu):
        cpu_times = workload(args.rows, args.matrix, gpu=False)
    df, arr = cpu_times["dataframe"], cpu_times["array"]
    print(f"CPU LocalCluster ({cores} cores): dataframe {df:.2f} s, array {arr:.2f} s")
    if args.cpu_only:
        return 0
    from dask_cuda import LocalCUDACluster

    with LocalCUDACluster() as gpu, Client(gpu) as client:
        n = len(client.scheduler_info()["workers"])
        gpu_times = workload(args.rows, args.matrix, gpu=True)
    print(f"LocalCUDACluster ({n} GPUs): dataframe {gpu_times['dataframe']:.2f} s, array {gpu_times['array']:.2f} s")
    for part in ("dataframe", "array"):
        print(f"{part}: GPU is {cpu_times[part] / gpu_times[part]:.1f}x faster than CPU (CPU time / GPU time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
