"""Start slots: a burst of server starts runs a few at a time, first come first served.

Starting a server is a burst of CPU (imports, extensions). When 30 start at once on 2 cores, they share the CPU
and all become ready at about the same late moment, while the hub, starved too, answers everyone slowly. A few
at a time, each is ready in about a second and the queue moves.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import ClassVar


class StartSlot:
    """One start's place in the queue; :meth:`release` is safe to call more than once."""

    _queues: ClassVar[weakref.WeakKeyDictionary] = weakref.WeakKeyDictionary()  # event loop -> semaphore

    def __init__(self) -> None:
        self._held: asyncio.Semaphore | None = None

    async def acquire(self, size: int) -> None:
        """Wait for one of ``size`` slots (0: one per CPU core); the asyncio semaphore serves waiters in order."""
        loop = asyncio.get_running_loop()
        if loop not in StartSlot._queues:
            StartSlot._queues[loop] = asyncio.Semaphore(size or len(os.sched_getaffinity(0)))
        queue = StartSlot._queues[loop]
        await queue.acquire()
        self._held = queue

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held.release()
