"""Autograding throughput: stock ``nbgrader autograde`` against ``atlaslab grade`` on the same submissions.

One nbgrader course is generated in a temporary directory (one notebook: two answer cells, four test
cells, one of them with hidden tests, 7 points), with N submissions of mixed kinds, by submission number
modulo 20:

* 8 in 20 correct (7 points), 9 in 20 partly wrong (3 points),
* 1 in 20 with a syntax error in an answer (0),
* 1 in 20 looping forever in an answer cell (times out: 0),
* 1 in 20 not valid notebook JSON (stock nbgrader fails it and records no score; atlaslab: 0, "invalid").

The course directory is copied once per run so every run grades identical files. Stock nbgrader runs
first, as ``nbgrader autograde ASSIGNMENT --Execute.timeout=T`` (serial, as it is); then ``atlaslab grade``
with the sandbox on, for each ``--workers`` value, with ``--timeout T`` (a wall-clock limit per notebook;
stock's per-cell timeout stops the same looping cell after the same T). Scores of every submission that is
not hostile (all but the looping and invalid ones) must be identical between stock and every atlaslab run,
and are compared from the gradebooks; the script exits 1 if any differs.

Reported per run: wall time (process start to exit, imports included), submissions per second, the ratio
to stock, the CPU time of the whole process tree when cgroup v1's cpuacct is available (each run in its own
cpuacct group), and "foreign cpu": CPU time the machine spent on other processes during the run (others'
load on the shared cores; a run with much of it is slower than it should be). Before each run the script
waits, up to 60 s, for 2 s of a nearly idle CPU (``--no-settle`` to skip).

    sudo python benchmarks/autograde.py                     # 200 submissions, workers 1, 2, 4
    sudo python benchmarks/autograde.py --submissions 40 --workers 2
    sudo python benchmarks/autograde.py --json out.json --keep

A run that saw more than ``--max-foreign`` seconds of other processes' CPU is measured again on a fresh copy
(``--retries`` times at most); the cleanest attempt is reported, the others are listed as discarded.

Needs root (the sandbox). Others' load on the machine changes absolute times: check ``load`` in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ASSIGNMENT = "ps1"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def _meta(grade_id: str, **kw) -> dict:
    meta = {"grade": False, "solution": False, "locked": False, "grade_id": grade_id, "schema_version": 3}
    meta.update(kw)
    return {"nbgrader": meta}


SOURCE = [
    new_markdown_cell("# Problem set 1\n\nImplement `mean` and `word_counts`."),
    new_code_cell(
        "def mean(xs):\n    ### BEGIN SOLUTION\n    return sum(xs) / len(xs)\n    ### END SOLUTION",
        metadata=_meta("mean", solution=True),
    ),
    new_code_cell(
        "assert mean([1, 2, 3]) == 2\nprint('mean ok')", metadata=_meta("t1", grade=True, locked=True, points=1)
    ),
    new_code_cell(
        "assert mean([2.5]) == 2.5\n### BEGIN HIDDEN TESTS\nassert abs(mean([-1, 1, 0.5]) - 1 / 6) < 1e-9\n"
        "### END HIDDEN TESTS",
        metadata=_meta("t2", grade=True, locked=True, points=2),
    ),
    new_markdown_cell("Now count words."),
    new_code_cell(
        "def word_counts(text):\n    ### BEGIN SOLUTION\n    counts = {}\n    for w in text.lower().split():\n"
        "        counts[w] = counts.get(w, 0) + 1\n    return counts\n    ### END SOLUTION",
        metadata=_meta("words", solution=True),
    ),
    new_code_cell(
        "assert word_counts('a b a') == {'a': 2, 'b': 1}", metadata=_meta("t3", grade=True, locked=True, points=2)
    ),
    new_code_cell(
        "assert word_counts('A a') == {'a': 2}\nprint(sorted(word_counts('to be or not to be').items()))",
        metadata=_meta("t4", grade=True, locked=True, points=2),
    ),
]
MEAN_OK = "def mean(xs):\n    return sum(xs) / len(xs)"
MEAN_PARTLY = "def mean(xs):\n    return sum(xs) / len(xs) if min(xs) >= 0 else 0"  # fails the hidden test
WORDS_OK = "def word_counts(text):\n    from collections import Counter\n    return dict(Counter(text.lower().split()))"
WORDS_PARTLY = "def word_counts(text):\n    from collections import Counter\n    return dict(Counter(text.split()))"
KINDS = ["timeout", "invalid", "syntax"] + ["partly"] * 9 + ["correct"] * 8
HOSTILE = {"timeout", "invalid"}


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


def make_course(root: Path, n: int) -> dict[str, str]:
    """The course with ``n`` submissions; returns student -> kind."""
    (root / "source" / ASSIGNMENT).mkdir(parents=True)
    (root / "nbgrader_config.py").write_text("c = get_config()\nc.CourseDirectory.course_id = 'bench'\n")
    nb = new_notebook(cells=SOURCE)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    subprocess.run(
        [sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT, "--create", "--force"],
        cwd=root,
        env=env(),
        check=True,
        capture_output=True,
    )
    release = nbformat.read(root / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    kinds = {}
    for i in range(n):
        student, kind = f"s{i:04d}", KINDS[i % len(KINDS)]
        kinds[student] = kind
        dest = root / "submitted" / student / ASSIGNMENT
        dest.mkdir(parents=True)
        (dest / "timestamp.txt").write_text("2025-01-01 10:00:00.000000 UTC")
        if kind == "invalid":
            (dest / f"{ASSIGNMENT}.ipynb").write_text('{"cells": [{"cell_type": "code", "source": ')
            continue
        sub = nbformat.from_dict(json.loads(json.dumps(release)))
        mean, words = {
            "correct": (MEAN_OK, WORDS_OK),
            "partly": (MEAN_PARTLY, WORDS_PARTLY),
            "syntax": ("def mean(xs)\n    return 0", WORDS_OK),
            "timeout": ("while True:\n    pass\n" + MEAN_OK, WORDS_OK),
        }[kind]
        sub.cells[1].source, sub.cells[5].source = mean, words
        nbformat.write(sub, dest / f"{ASSIGNMENT}.ipynb")
    return kinds


def scores(root: Path) -> dict[str, float]:
    with sqlite3.connect(root / "gradebook.db") as db:
        rows = db.execute(
            "select submitted_assignment.student_id, sum(coalesce(grade.manual_score, grade.auto_score, 0))"
            " from grade join submitted_notebook on grade.notebook_id = submitted_notebook.id"
            " join submitted_assignment on submitted_notebook.assignment_id = submitted_assignment.id"
            " group by submitted_assignment.student_id"
        ).fetchall()
    return {student: float(score) for student, score in rows}


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def settle(limit: float = 60.0) -> float:
    """Wait (up to ``limit`` s) until the machine has been nearly idle for 2 s; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = busy_seconds()
        time.sleep(2)
        if busy_seconds() - before < 0.3:  # under 0.15 of a core on average
            break
    return time.monotonic() - start


def timed(name: str, cmd: list[str], cwd: Path, *, wait_idle: bool) -> dict:
    """Run ``cmd``: wall time, the CPU time of its process tree (cgroup v1 cpuacct, when there) and the CPU
    time the machine spent on other processes meanwhile ("foreign": others' load on the shared cores)."""
    group = CPUACCT / f"atlaslab-bench-{uuid.uuid4().hex[:8]}" if (CPUACCT / "cgroup.procs").exists() else None
    if group is not None:
        group.mkdir()

    def enter():
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    waited = settle() if wait_idle else 0.0
    load = os.getloadavg()[0]
    busy = busy_seconds()
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=cwd, env={**env(), "COLUMNS": "160"}, capture_output=True, text=True, preexec_fn=enter
    )
    wall = time.monotonic() - start
    busy = busy_seconds() - busy
    cpu = foreign = None
    if group is not None:
        cpu = int((group / "cpuacct.usage").read_text()) / 1e9
        foreign = max(0.0, busy - cpu)
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return {
        "name": name,
        "wall": wall,
        "cpu": cpu,
        "foreign_cpu": foreign,
        "load": load,
        "settled": waited,
        "rc": proc.returncode,
        "out": proc.stdout[-3000:],
        "err": proc.stderr[-3000:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--submissions", type=int, default=200)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts for atlaslab grade")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds: stock's cell timeout, our notebook limit")
    ap.add_argument("--skip-stock", action="store_true", help="only atlaslab (no ratio, no score check)")
    ap.add_argument(
        "--no-settle", dest="settle", action="store_false", help="do not wait for an idle CPU before each run"
    )
    ap.add_argument("--max-foreign", type=float, default=15.0, help="seconds of others' CPU a run may see")
    ap.add_argument("--retries", type=int, default=2, help="runs again (fresh copy) past --max-foreign")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the course directories")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: atlaslab grade's sandbox creates accounts, namespaces and cgroups", file=sys.stderr)
        return 2
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    base = Path(tempfile.mkdtemp(prefix="atlaslab-bench-autograde-"))
    template = base / "template"
    kinds = make_course(template, args.submissions)
    counts = {k: list(kinds.values()).count(k) for k in sorted(set(kinds.values()))}
    print(f"{args.submissions} submissions {counts}, timeout {args.timeout:g} s, {os.cpu_count()} cores")
    # Warm the page cache for both (imports), so neither pays the first cold start.
    subprocess.run([sys.executable, "-c", "import nbgrader.apps, nbconvert, ipykernel.kernelapp, atlaslab.cli"])

    runs: list[dict] = []
    discarded: list[dict] = []

    def measure(name: str, cmd: list[str], label: str) -> dict:
        """Run on fresh copies until one has little foreign CPU (or attempts run out): keep the cleanest."""
        attempts = []
        for attempt in range(1 + args.retries):
            root = base / f"{label}-{attempt}"
            shutil.copytree(template, root)
            r = timed(name, cmd, root, wait_idle=args.settle)
            r["scores"] = scores(root)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
            attempts.append(r)
            if r["foreign_cpu"] is None or r["foreign_cpu"] <= args.max_foreign:
                break
            print(f"  ({name}: {r['wall']:.1f} s with {r['foreign_cpu']:.1f} s of foreign CPU: measuring again)")
        best = min(attempts, key=lambda r: r["foreign_cpu"] or 0.0)
        discarded.extend(r for r in attempts if r is not best)
        return best

    reference = None
    if not args.skip_stock:
        cmd = [sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT, f"--Execute.timeout={int(args.timeout)}"]
        r = measure("stock nbgrader autograde", cmd, "stock")
        reference = r["scores"]
        runs.append(r)
        print(_line(r, args.submissions, None), flush=True)
    for w in workers:
        cmd = [sys.executable, "-m", "atlaslab.cli", "grade", "bench", ASSIGNMENT, "--course-dir", "."]
        cmd += ["--workers", str(w), "--timeout", f"{args.timeout:g}"]
        r = measure(f"atlaslab grade -j {w}", cmd, f"atlaslab-{w}")
        runs.append(r)
        if r["rc"] != 0:
            print(r["out"], r["err"], file=sys.stderr)
        print(_line(r, args.submissions, runs[0] if reference is not None else None), flush=True)
    for r in discarded:
        print(f"discarded: {_line(r, args.submissions, None)}")

    failures = 0
    if reference is not None:
        fair = [s for s, k in kinds.items() if k not in HOSTILE]
        for r in runs[1:]:
            diff = {s: (reference.get(s), r["scores"].get(s)) for s in fair if reference.get(s) != r["scores"].get(s)}
            r["score_mismatches"] = diff
            if diff:
                failures += 1
                print(f"{r['name']}: {len(diff)} non-hostile scores differ from stock, e.g. {list(diff.items())[:5]}")
        if not failures:
            print(f"non-hostile scores identical to stock in every run ({len(fair)} submissions each)")
        print(
            "stock nbgrader exits 1 here: it fails the invalid notebooks ('There was an error processing"
            " assignment') and records no score for them; atlaslab records 0 with the status 'invalid notebook'"
        )
    if args.json:
        for r in runs + discarded:
            r.pop("scores", None)
        figures = {"submissions": args.submissions, "kinds": counts, "runs": runs, "discarded": discarded}
        args.json.write_text(json.dumps(figures, indent=1))
    if args.keep:
        print(f"course directories kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures or any(r["rc"] != 0 for r in runs if r["name"].startswith("atlaslab")) else 0


def _line(r: dict, n: int, stock: dict | None) -> str:
    rate = n / r["wall"]
    text = f"{r['name']:<28} {r['wall']:7.1f} s  {rate:6.2f} subm/s"
    if stock is not None and r is not stock:
        text += f"  {stock['wall'] / r['wall']:5.2f}x stock"
    if r["cpu"] is not None:
        text += f"  cpu {r['cpu']:6.1f} s ({r['cpu'] / n * 1000:4.0f} ms/subm)"
    if r["foreign_cpu"] is not None:
        text += f"  foreign cpu {r['foreign_cpu']:5.1f} s"
    text += f"  load {r['load']:.1f}"
    if r["rc"] != 0:
        text += f"  (exit {r['rc']})"
    return text


if __name__ == "__main__":
    sys.exit(main())
