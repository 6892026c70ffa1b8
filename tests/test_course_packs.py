"""Every assignment of every course pack, tested like code: generated releases hide solutions and hidden tests;
the solution autogrades to full marks, the blank release to zero, the partly-wrong reference submission to its
exact expected score; notebooks run on CPU well under a minute; data checksums and hygiene hold."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import nbformat
import pytest
import yaml
from nbgrader.api import Gradebook
from typer.testing import CliRunner

from atlaslab.cli import app
from atlaslab.grading import packs
from atlaslab.grading.autograde import GradeOptions, autograde

REPO = Path(__file__).resolve().parent.parent

ALL = packs.packs()
CASES = [(p.id, a.id) for p in ALL for a in p.assignments]


def test_packs_are_found_and_valid() -> None:
    assert ALL, "no course pack under courses/"
    for p in ALL:
        assert p.title.fr and p.title.en and p.assignments
        assert not packs.bad_checksums(p), f"{p.id}: data differ from checksums.sha256"
        for name in ("instructor_notes.md", "DATA.md", "checksums.sha256"):
            assert (p.root / name).is_file(), f"{p.id}: {name} missing"


def test_a_malformed_course_yaml_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "course.yaml").write_text(
        "id: broken\ntitle: {fr: Cassé}\nlevel: x\nlanguage: fr\nschedule: x\nassignments: []\n"
    )
    with pytest.raises(packs.PackError) as e:
        packs.load(bad)
    lines = str(e.value).splitlines()
    assert any(line.endswith("course.yaml: title.en: Field required") for line in lines), lines
    assert all(str(bad / "course.yaml") in line for line in lines)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Each pack installed, three submissions per assignment (solution, blank, partial), all autograded."""
    results: dict[tuple[str, str], dict] = {}
    for pack in ALL:
        root = tmp_path_factory.mktemp(pack.id)
        packs.install(pack, root)
        for a in pack.assignments:
            release = root / "release" / a.id
            # partial: the solution with the pack's wrong answers put in (the rest right).
            for student, source in (
                ("solution", pack.source(a.id)),
                ("blank", release),
                ("partial", pack.source(a.id)),
            ):
                target = root / "submitted" / student / a.id
                shutil.copytree(source, target)
                if student == "partial" and a.partial:
                    _answer(target, a.partial.answers)
            outcomes = autograde(root, a.id, GradeOptions(workers=2, timeout=60))
            results[(pack.id, a.id)] = {"root": root, "outcomes": {o.student: o for o in outcomes}, "assignment": a}
    return results


def _answer(folder: Path, answers: dict[str, str]) -> None:
    for path in folder.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in answers:
                cell.source = answers[gid]
        nbformat.write(nb, path)


@pytest.mark.parametrize(("pack", "assignment"), CASES)
def test_release_hides_solutions_and_hidden_tests(graded, pack: str, assignment: str) -> None:
    r = graded[(pack, assignment)]
    for path in (r["root"] / "release" / assignment).glob("*.ipynb"):
        text = path.read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs in the release"
        first = nb.cells[0].source
        a = r["assignment"]
        assert a.title.fr in first and a.title.en in first, f"{path.name}: French and English titles"
    source = next((packs.find(pack).source(assignment)).glob("*.ipynb")).read_text()
    hidden = [line for line in _hidden_lines(source) if line.strip()]
    released = "".join(p.read_text() for p in (r["root"] / "release" / assignment).glob("*.ipynb"))
    assert hidden and not any(json.dumps(line)[1:-1] in released for line in hidden)


def _hidden_lines(notebook_text: str) -> list[str]:
    nb = nbformat.reads(notebook_text, as_version=4)
    out: list[str] = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside:
                out.append(line)
    return out


@pytest.mark.parametrize(("pack", "assignment"), CASES)
def test_solution_full_blank_zero_partial_exact(graded, pack: str, assignment: str) -> None:
    r = graded[(pack, assignment)]
    a, outcomes = r["assignment"], r["outcomes"]
    solution = outcomes["solution"]
    assert solution.status == "graded", solution
    assert (solution.score, solution.max_score) == (a.points, a.points), solution
    assert solution.seconds < 60, f"{assignment} took {solution.seconds:.1f} s on CPU"
    assert outcomes["blank"].score == 0, outcomes["blank"]
    assert a.partial is not None, f"{assignment}: course.yaml needs a `partial` submission"
    assert outcomes["partial"].score == a.partial.score, outcomes["partial"]


@pytest.mark.parametrize(("pack", "assignment"), CASES)
def test_every_autograded_cell_bites(graded, pack: str, assignment: str) -> None:
    """Cell by cell (the gradebook's): the solution passes every test cell, the blank release fails every one."""
    r = graded[(pack, assignment)]
    with Gradebook(f"sqlite:///{r['root'] / 'gradebook.db'}", pack) as gb:
        for path in (r["root"] / "release" / assignment).glob("*.ipynb"):
            for student, full in (("solution", True), ("blank", False)):
                grades = gb.find_submission_notebook(path.stem, assignment, student).grades
                tests = [g for g in grades if g.cell.max_score > 0 and g.auto_score is not None]
                assert tests, f"{path.name}: no autograded cell"
                wrong = [g.name for g in tests if (g.auto_score == g.max_score) != full or (not full and g.auto_score)]
                assert not wrong, f"{student} of {path.name}: cells {wrong} scored {'less' if full else 'more'}"


def _imports(nb: nbformat.NotebookNode) -> set[str]:
    """Top-level modules a notebook imports outside `try:` (a guarded import is an optional one, e.g. cupy)."""
    found: set[str] = set()

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            for part in (*node.handlers, *node.orelse, *node.finalbody):
                walk(part)
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            walk(child)

    for cell in nb.cells:
        if cell.cell_type == "code":
            walk(ast.parse(cell.source))
    return found


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_what_notebooks_import_is_a_dependency() -> None:
    """Every import of every notebook comes from the standard library, AtlasLab's dependencies or its `courses`
    extra (which install.sh installs and the CPU user image pins), so a fresh install can run every pack."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    courses_extra = {_name(d) for d in project["optional-dependencies"]["courses"]}
    allowed = {_name(d) for d in project["dependencies"]} | courses_extra | {"atlaslab"}
    allowed.add("ipython")  # the kernel's own package: every notebook runs on it
    dists = packages_distributions()
    missing = []
    for p in ALL:
        for path in sorted(p.root.glob("source/*/*.ipynb")):
            for module in sorted(_imports(nbformat.read(path, as_version=4)) - set(sys.stdlib_module_names)):
                names = {_name(d) for d in dists.get(module, [])}
                if not names & allowed:
                    found = ", ".join(sorted(names)) or "not installed"
                    missing.append(f"{path.relative_to(REPO)}: {module} ({found})")
    assert not missing, missing
    image = (REPO / "images" / "requirements-user-cpu.txt").read_text()
    pinned = {_name(line) for line in image.splitlines() if "==" in line and not line.startswith("#")}
    assert courses_extra <= pinned, f"the CPU user image does not pin {sorted(courses_extra - pinned)}"
    assert '[courses]"' in (REPO / "scripts" / "install.sh").read_text(), "install.sh must install the courses extra"


def test_source_notebooks_metadata() -> None:
    """nbgrader metadata of every cell: schema 3, unique grade ids, test cells locked with points summing to
    course.yaml's, solution cells marked; the first cell carries both titles."""
    for p in ALL:
        for a in p.assignments:
            total = 0.0
            for path in p.source(a.id).glob("*.ipynb"):
                nb = nbformat.read(path, as_version=4)
                nbformat.validate(nb)
                assert a.title.fr in nb.cells[0].source and a.title.en in nb.cells[0].source, path
                meta = [c.metadata["nbgrader"] for c in nb.cells if "nbgrader" in c.metadata]
                ids = [m["grade_id"] for m in meta]
                assert len(ids) == len(set(ids)), f"{path}: duplicate grade_id"
                for cell in nb.cells:
                    m = cell.metadata.get("nbgrader", {})
                    assert not m or m.get("schema_version") == 3, f"{path}: {m.get('grade_id')}: schema_version"
                    if m.get("grade"):
                        assert m["locked"] and m["points"] > 0, f"{path}: {m['grade_id']}: locked, with points"
                        total += m["points"]
                    if "BEGIN SOLUTION" in cell.source:
                        assert m.get("solution"), f"{path}: a solution region outside a solution cell"
            assert total == a.points, f"{p.id}/{a.id}: tests worth {total}, course.yaml says {a.points}"


def test_cli_lists_packs_and_refuses_an_unknown_one_in_one_line(tmp_path: Path) -> None:
    listed = CliRunner().invoke(app, ["course", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert all(p.id in listed.output for p in ALL) and len(ALL) >= 4
    bad = CliRunner().invoke(app, ["course", "install", "no-such-pack", "--course-dir", str(tmp_path)])
    assert bad.exit_code == 2
    assert "no course pack 'no-such-pack'" in bad.output and "ml-foundations" in bad.output
    assert not (tmp_path / "source").exists()


def test_cli_installs_a_pack_into_the_site_course_directory(tmp_path: Path) -> None:
    """`atlaslab course install PACK --course ID --config SITE` makes STATE_DIR/courses/ID the hub's nbgrader course
    directory (its configs, the grader's formgrader config) with every assignment generated and ready to release."""
    pack = packs.find("gpu-mlops")
    state = tmp_path / "state"
    site = {
        "site": {"state_dir": str(state)},
        "tenants": {"school": {"title": "School", "environments": ["cpu"]}},
        "environments": {"cpu": {"cpu": 1, "memory": "1G", "default": True}},
        "courses": {"mlops-cli": {"title": "MLOps", "tenant": "school", "instructors": ["teach"]}},
    }
    config = tmp_path / "atlaslab.yaml"
    config.write_text(yaml.safe_dump(site))
    r = CliRunner().invoke(app, ["course", "install", pack.id, "--course", "mlops-cli", "--config", str(config)])
    assert r.exit_code == 0, r.output
    root = state / "courses" / "mlops-cli"
    assert "c.CourseDirectory.course_id = 'mlops-cli'" in (root / "nbgrader_config.py").read_text()
    assert "formgrader" in (root / ".jupyter" / "jupyter_server_config.py").read_text()
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "mlops-cli") as gb:
        assert sorted(a.name for a in gb.assignments) == sorted(a.id for a in pack.assignments)
        for a in pack.assignments:
            released = sorted(p.name for p in (root / "release" / a.id).glob("*.ipynb"))
            assert released and released == sorted(p.name for p in pack.source(a.id).glob("*.ipynb"))
            assert gb.find_assignment(a.id).max_score == a.points
            assert not any("BEGIN SOLUTION" in (root / "release" / a.id / n).read_text() for n in released)
    # A course the site does not have: one line naming the config and the known courses; nothing created.
    r = CliRunner().invoke(app, ["course", "install", pack.id, "--course", "nope", "--config", str(config)])
    assert r.exit_code == 2 and "no course 'nope'" in r.output and "mlops-cli" in r.output, r.output
    assert not (state / "courses" / "nope").exists()
