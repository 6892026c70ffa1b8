"""The executor: runs nbgrader's own Execute preprocessor (nbclient) against the forked kernel, reports cells.

It runs in the supervisor process after it dropped to the slot's *executor* account, which the notebook's
account cannot signal or trace. It talks to a kernel it did not start through a stand-in for the kernel
manager, checks every 0.1 s that the kernel still lives, caps output on the way (``cap_message``), and
streams each executed cell back to the trusted side as one frame, then "done", "died" or "error".
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable

from .jobs import SandboxLimits
from .namespaces import WORK
from .output import cap_message


def execute_notebook(
    send: Callable[[dict], None],
    nb_json: bytes,
    kernel_pid: int,
    ready_r: int,
    info: dict,
    header: dict,
    lim: SandboxLimits,
) -> None:
    """As the executor account: wait for the kernel, run nbgrader's Execute, report every cell."""
    from queue import Empty

    import nbformat
    from jupyter_client.asynchronous import AsyncKernelClient
    from nbclient.exceptions import DeadKernelError
    from nbgrader.preprocessors.execute import Execute

    kernel = {"status": None}

    def exit_status() -> int | None:
        if kernel["status"] is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(kernel_pid, os.WNOHANG)
                if pid:
                    kernel["status"] = status
        return kernel["status"]

    def death_reason() -> str:
        status = exit_status()
        if status is None:
            return "the kernel stopped answering"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return "the notebook used more than its CPU time limit and was killed"
            if sig == signal.SIGXFSZ:
                return "the notebook wrote a file larger than its limit and was killed"
            return f"the kernel died (killed by signal {signal.Signals(sig).name})"
        return f"the kernel died (exit status {os.WEXITSTATUS(status)})"

    class Client(AsyncKernelClient):
        async def is_alive(self) -> bool:
            return exit_status() is None

        async def wait_for_ready(self, timeout=None) -> None:
            # jupyter_client's version sleeps 0.2 s at least twice; here one round trip suffices.
            end = time.monotonic() + (timeout or 60)
            while time.monotonic() < end:
                if exit_status() is not None:
                    raise DeadKernelError("kernel died before it was ready")
                self.kernel_info()
                try:
                    reply = await self.shell_channel.get_msg(timeout=1)
                except Empty:
                    continue
                if reply["msg_type"] != "kernel_info_reply":
                    continue
                try:  # IOPub is connected once it delivers the status of that request
                    await self.iopub_channel.get_msg(timeout=0.1)
                except Empty:
                    continue
                self._handle_kernel_info_reply(reply)
                return
            raise RuntimeError("the kernel did not become ready")

    class Manager:
        """The little of a KernelManager that nbclient uses, for a kernel we forked ourselves."""

        ipykernel = True
        has_kernel = True
        kernel_id = "sandbox"
        kc: Client | None = None

        def client(self, **kwargs) -> Client:
            self.kc = Client()
            self.kc.load_connection_info(info)
            return self.kc

        def is_alive(self) -> bool:
            return exit_status() is None

        def interrupt_kernel(self) -> None:
            # By message: the executor may not signal the kernel (another account); ipykernel signals itself.
            if self.kc is not None:
                self.kc.control_channel.send(self.kc.session.msg("interrupt_request", {}))

        def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            pass

        def cleanup_resources(self, restart: bool = False) -> None:
            pass

    class SandboxExecute(Execute):
        current = -1

        total_bytes = 0

        def preprocess_cell(self, cell, resources, index):
            self.current = index
            self.cell_bytes, self.cell_note, self.cell_stderr = 0, False, False
            cell, resources = super().preprocess_cell(cell, resources, index)
            if cell.cell_type == "code":
                send({"e": "cell", "i": index, "outputs": cell.outputs, "count": cell.get("execution_count")})
            return cell, resources

        async def _async_poll_kernel_alive(self) -> None:
            while True:  # nbclient checks every second; a dead kernel is noticed sooner here
                await asyncio.sleep(0.1)
                try:
                    await self._async_check_alive()
                except DeadKernelError:
                    assert self.task_poll_for_reply is not None
                    self.task_poll_for_reply.cancel()
                    return

        def process_message(self, msg, cell, cell_index):
            if cap_message(self, msg, lim):
                return None
            return super().process_message(msg, cell, cell_index)

    import asyncio

    nb = nbformat.reads(nb_json.decode(), as_version=4)
    del nb_json
    r, _, _ = select.select([ready_r], [], [], 120)
    first = os.read(ready_r, 4096) if r else b""
    if first[:1] != b"R":
        detail = first[1:].decode(errors="replace") if first[:1] == b"E" else death_reason()
        send({"e": "error", "reason": f"the kernel could not start: {detail}"})
        return
    ex = SandboxExecute(timeout=header["cell_timeout"], **header["execute"])
    km = Manager()

    def partial() -> list:
        """What the cell that was running had printed before it stopped."""
        if 0 <= ex.current < len(nb.cells):
            return list(nb.cells[ex.current].get("outputs", []))
        return []

    try:
        nb, _ = ex.preprocess(nb, {"metadata": {"path": WORK}}, km=km)
    except Exception as e:
        if isinstance(e, DeadKernelError) or exit_status() is not None:
            send({"e": "died", "i": ex.current, "reason": death_reason(), "outputs": partial()})
        else:
            reason = f"{e.__class__.__name__}: {e}"[:2000]
            send({"e": "error", "i": ex.current, "reason": reason, "outputs": partial()})
        return
    send({"e": "done", "language_info": nb.metadata.get("language_info")})
