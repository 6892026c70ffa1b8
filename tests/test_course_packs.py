"""Every assignment of every course pack, tested like code: generated releases hide solutions and hidden tests;
the solution autogrades to full marks, the blank release to zero, the partly-wrong reference submission to its
exact expected score; notebooks run on CPU well under a minute; data checksums and hygiene hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from atlaslab import packs
from atlaslab.grading.autograde import GradeOptions, autograde

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
