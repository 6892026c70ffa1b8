"""What GPUs this machine has, read through NVML when the driver is there; a plain "none" otherwise.

A GPU with MIG mode on is not handed out whole: its MIG instances are, each with its own UUID (``MIG-...``)
and profile (``1g.10gb``). ``ATLASLAB_GPU_INVENTORY`` names a JSON file that replaces NVML's answer: a list of
``{"uuid", "name", "memory", "mig_profile"?, "parent"?}``. Tests use it on machines without GPUs, and an
operator can use it to hide devices from AtlasLab (e.g. one kept for a batch system).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

INVENTORY_ENV = "ATLASLAB_GPU_INVENTORY"
_MIG_NAME = re.compile(r"MIG\s+(\S+)")


@dataclass(frozen=True)
class GPU:
    index: int
    uuid: str
    name: str
    memory: int  # bytes
    mig_profile: str | None = None  # a MIG instance's profile, e.g. "1g.10gb"; None for a whole GPU
    parent: str | None = None  # the physical GPU's UUID, for a MIG instance

    @property
    def is_mig(self) -> bool:
        return self.mig_profile is not None


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[GPU, ...]
    reason: str  # why the list is what it is, for `atlaslab doctor`

    def __bool__(self) -> bool:
        return bool(self.gpus)


def from_records(records: list[dict], reason: str) -> Inventory:
    gpus = []
    for i, r in enumerate(records):
        gpus.append(
            GPU(
                index=int(r.get("index", i)),
                uuid=str(r["uuid"]),
                name=str(r.get("name", "GPU")),
                memory=int(r.get("memory", 0)),
                mig_profile=r.get("mig_profile"),
                parent=r.get("parent"),
            )
        )
    return Inventory(tuple(gpus), reason)


def _injected(path: str) -> Inventory:
    try:
        records = json.loads(Path(path).read_text())
        if not isinstance(records, list):
            raise ValueError("not a JSON list")
        return from_records(records, f"{len(records)} device(s) listed in {path} (${INVENTORY_ENV})")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return Inventory((), f"${INVENTORY_ENV}={path} is unreadable ({e}); fix or unset it")


def detect() -> Inventory:
    if os.environ.get(INVENTORY_ENV):
        return _injected(os.environ[INVENTORY_ENV])
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        count = len(list(Path("/proc/driver/nvidia/gpus").glob("*"))) if Path("/proc/driver/nvidia").is_dir() else 0
        if count:
            return Inventory((), f"the NVIDIA driver reports {count} GPU(s) but nvidia-ml-py is not installed")
        return Inventory((), "no NVIDIA driver on this machine")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return Inventory((), f"NVML unavailable ({e}); no usable GPU")
    try:
        gpus: list[GPU] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpu = GPU(index=i, uuid=_str(pynvml.nvmlDeviceGetUUID(h)), name=_str(pynvml.nvmlDeviceGetName(h)),
                      memory=pynvml.nvmlDeviceGetMemoryInfo(h).total)  # fmt: skip
            instances = _mig_instances(pynvml, h, gpu)
            gpus.extend(instances or [gpu])
        return Inventory(tuple(gpus), f"{len(gpus)} GPU(s) found through NVML" if gpus else "NVML found no GPU")
    finally:
        pynvml.nvmlShutdown()


def _str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mig_instances(pynvml, handle, gpu: GPU) -> list[GPU]:
    try:
        current, _ = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:  # not MIG-capable
        return []
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return []
    out = []
    for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except pynvml.NVMLError:
            continue
        name = _str(pynvml.nvmlDeviceGetName(m))
        profile = _MIG_NAME.search(name)
        out.append(
            GPU(
                index=gpu.index,
                uuid=_str(pynvml.nvmlDeviceGetUUID(m)),
                name=name,
                memory=pynvml.nvmlDeviceGetMemoryInfo(m).total,
                mig_profile=profile.group(1) if profile else name,
                parent=gpu.uuid,
            )
        )
    return out
