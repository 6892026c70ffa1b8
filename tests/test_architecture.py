"""The layers of docs/architecture.md, checked from the code's own imports (every import, inside functions too).

config -> core -> features (grading, tracking, compute, workbench) -> hub wiring -> cli: a module imports only
from its own package or from the layers below it, a feature never imports another feature, and no two modules
import each other, directly or round a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "atlaslab"
LAYERS = {"config": 0, "core": 1, "grading": 2, "tracking": 2, "compute": 2, "workbench": 2, "hub": 3, "cli": 4}
# The features a feature may use, besides the layers below: the workbench panel starts the user's Dask cluster.
FEATURE_USES = {"workbench": {"compute"}}
TOP = 5  # atlaslab/__init__.py, atlaslab/__main__.py


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "labextension" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """AtlasLab modules ``name`` imports, anywhere in the file (a ``from X import y`` names X.y when that is a
    module, else X)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith("atlaslab") and target != name:
                found.add(target)
    return found


def layer(name: str) -> tuple[int, str]:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] not in LAYERS:
        return TOP, parts[-1]
    return LAYERS[parts[1]], parts[1]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_module_sits_in_a_layer() -> None:
    stray = [name for name in modules() if name.count(".") >= 1 and name.split(".")[1] not in LAYERS]
    stray = [n for n in stray if n not in ("atlaslab.__main__",)]
    assert not stray, f"modules outside the layers of docs/architecture.md: {stray}"


def test_imports_go_down_the_layers_only() -> None:
    wrong = []
    for name, targets in graph().items():
        mine, package = layer(name)
        for target in targets:
            theirs, other = layer(target)
            if other == package or other in FEATURE_USES.get(package, ()):
                continue
            if theirs > mine or (theirs == mine and mine != TOP):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_circles_between_modules() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, f"modules that import each other: {circles}"


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The rule would be worthless if an import hidden in a function escaped it."""
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from atlaslab.hub import apply\n    from ..core import state\n")
    known = {"atlaslab.hub.apply", "atlaslab.core.state", "atlaslab.grading.x"}
    assert imports_of("atlaslab.grading.x", path, known) == {"atlaslab.hub.apply", "atlaslab.core.state"}
