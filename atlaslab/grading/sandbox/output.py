"""Output budgets per cell and per notebook, enforced twice: in the kernel, and again in the executor.

The kernel drops a flood of print() before it is buffered and serialised (``cap_streams``); the executor,
which the notebook cannot touch, truncates whatever still comes over the budget (``cap_message``). Both
sides sit here together so that they keep the same rules and the same note, and so that neither weakens
nbgrader's scoring: a cell's stderr, errors and results always survive, shortened.
"""

from __future__ import annotations

from typing import Any

from .jobs import SandboxLimits, human


def truncation_note(lim: SandboxLimits) -> str:
    return (
        f"\n[output truncated by the autograder: over {human(lim.output_per_cell)} per cell"
        f" or {human(lim.output_total)} per notebook]\n"
    )


def cap_streams(app: Any, lim: SandboxLimits) -> None:
    """Stop a flood of print() in the kernel itself: past the per-cell budget of a stream, writes are dropped.

    Otherwise the kernel buffers and serialises it all, and the executor decodes it all, only for the
    executor to drop it (a 200 MB print loop then ends in the memory limit rather than in a truncated
    output). stdout and stderr have a budget each, so a cell's first stderr output always gets through:
    nbgrader fails a test cell that wrote to stderr, and that must not change. The executor enforces the
    same limits again, whatever the notebook does to this.
    """
    from ipykernel.iostream import OutStream

    left: dict[str, int] = {}
    note = truncation_note(lim)
    original = OutStream.write

    def write(self: OutStream, string: Any) -> int | None:
        name = getattr(self, "name", "stdout")
        budget = left.setdefault(name, lim.output_per_cell)
        if budget <= 0 or not isinstance(string, str):
            return original(self, string) if not isinstance(string, str) else len(string)
        if len(string) > budget:
            left[name] = 0
            original(self, string[:budget] + note)
            return len(string)
        left[name] = budget - len(string)
        return original(self, string)

    OutStream.write = write
    app.shell.events.register("pre_execute", left.clear)


def _size(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    return 16


def cap_message(ex: Any, msg: dict, lim: SandboxLimits) -> bool:
    """Keep output within the per-cell and per-notebook budgets; True: drop this message.

    Over budget: stdout and rich display output are dropped (one note says so); stderr keeps a short first
    piece (nbgrader scores a test cell with stderr as failed, so its presence must survive); errors and the
    execute_result always stay, shortened. Truncation never turns a failing cell into a passing one.
    """
    kind = msg["msg_type"]
    content = msg["content"]
    if kind not in ("stream", "display_data", "update_display_data", "execute_result", "error"):
        return False
    size = _size(content.get("text") or content.get("data") or content.get("traceback") or "")
    ex.cell_bytes += size
    ex.total_bytes += size
    if ex.cell_bytes <= lim.output_per_cell and ex.total_bytes <= lim.output_total:
        return False
    note = truncation_note(lim)
    if kind == "error":
        tb = [str(line)[:2000] for line in content.get("traceback", [])]
        content["traceback"] = [*tb[:20], "...", *tb[-20:]] if len(tb) > 41 else tb
        content["evalue"] = str(content.get("evalue", ""))[:2000]
        return False
    if kind == "execute_result":
        data = {k: (v[:10000] if isinstance(v, str) else v) for k, v in content.get("data", {}).items()}
        content["data"] = data if _size(data) <= 100000 else {"text/plain": "[result truncated by the autograder]"}
        return False
    if kind == "stream" and content.get("name") == "stderr" and not ex.cell_stderr:
        ex.cell_stderr = True
        content["text"] = str(content.get("text", ""))[:1000] + note
        return False
    if ex.cell_note:
        return True
    ex.cell_note = True
    msg["msg_type"] = "stream"
    msg["header"] = {**msg["header"], "msg_type": "stream"}
    content.clear()
    content.update({"name": "stdout", "text": note})
    return False
