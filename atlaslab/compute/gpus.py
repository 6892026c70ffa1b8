"""What GPUs this machine has, read through NVML when the driver is there; a plain "none" otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GPU:
    index: int
    uuid: str
    name: str
    memory: int  # bytes


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[GPU, ...]
    reason: str  # why the list is what it is, for `atlaslab doctor`

    def __bool__(self) -> bool:
        return bool(self.gpus)


def detect() -> Inventory:
    try:
        import pynvml  # nvidia-ml-py, from the [gpu] extra
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
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(
                GPU(
                    index=i,
                    uuid=pynvml.nvmlDeviceGetUUID(h),
                    name=name.decode() if isinstance(name, bytes) else name,
                    memory=pynvml.nvmlDeviceGetMemoryInfo(h).total,
                )
            )
        return Inventory(tuple(gpus), f"{len(gpus)} GPU(s) found through NVML" if gpus else "NVML found no GPU")
    finally:
        pynvml.nvmlShutdown()
