"""The GPUs of one server: assigned by UUID when it starts, tied to its process, given back when it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from tornado import web

from atlaslab.compute import gpus as gpus_mod
from atlaslab.compute import metrics
from atlaslab.compute.allocation import GpuAllocator, NoGpuFree
from atlaslab.config.schema import Environment

DB_NAME = "gpus.sqlite"


class ServerGpus:
    def __init__(self, directory: Path, holder: str):
        self.db = directory / DB_NAME
        self.holder = holder

    async def take(self, key: str, env: Environment, others: Mapping[str, Environment]) -> list[gpus_mod.GPU]:
        """Devices for ``env``; 503 saying what is busy and which of ``others`` (the user's other environments)
        could start now."""
        assert env.gpu is not None
        inventory = await asyncio.to_thread(gpus_mod.detect)
        title = env.display_title(key)
        if not inventory:
            raise web.HTTPError(
                503,
                f"'{title}' needs a GPU but {inventory.reason}. Start a CPU environment instead, "
                "or ask the administrator which machine has GPUs.",
            )
        allocator = GpuAllocator(self.db, inventory.gpus)
        try:
            return await asyncio.to_thread(allocator.allocate, self.holder, env.gpu)
        except NoGpuFree as e:
            startable = [
                other.display_title(k)
                for k, other in others.items()
                if k != key and (other.gpu is None or allocator.can_allocate(other.gpu))
            ]
            hint = f" You can start {' or '.join(repr(t) for t in startable)} now," if startable else ""
            raise web.HTTPError(503, f"{e}{hint} or try again when a GPU is free.") from None

    def _known(self) -> GpuAllocator | None:
        return GpuAllocator(self.db, []) if self.db.exists() else None

    def attach(self, pid: int) -> None:
        """Tie the assignment to the running server's process, so that its death frees the devices."""
        allocator = self._known()
        if allocator is not None:
            allocator.attach(self.holder, pid)
            metrics.record_assignments(allocator.assignments())

    def release(self) -> None:
        allocator = self._known()
        if allocator is not None:
            allocator.release(self.holder)
            metrics.record_assignments(allocator.assignments())
