"""The parallel, sandboxed autograder behind ``atlaslab grade COURSE ASSIGNMENT``.

nbgrader's ``autograde`` converter does two things per notebook: a *trusted* part that reads the course's
source and gradebook (the sanitize preprocessors ClearOutput, DeduplicateIds, OverwriteKernelspec,
OverwriteCells, CheckCellMetadata; afterwards IgnorePattern, ClearMetadata, LimitOutput, SaveAutoGrades,
AssignLatePenalties, CheckCellMetadata, which write the scores), and an *untrusted* part, Execute, which
runs the student's code. Here only Execute leaves this process: it runs in ``atlaslab.grading.sandbox``
(see there), everything else is nbgrader's own converter and preprocessors, configured from the course's
nbgrader_config.py exactly as ``nbgrader autograde`` would be, so scores and autograded notebooks match.

Pipeline, all in one process:

* The main thread does the trusted work, one submission at a time: nbgrader's ``init_assignment`` (student
  and submission rows, timestamp, copying the submission's and the source's files into autograded/), the
  sanitize pass (which writes the sanitized notebook, as stock does), then a ``NotebookJob`` per notebook.
* Up to ``workers`` jobs run at once in the sandbox pool (one thread per slot only waits on its sandbox);
  the main thread prepares the next submission while they run and finishes each as soon as its notebooks
  are back, so the single SQLite writer never waits for a kernel.
* Finishing takes only the *outputs* from the sandbox's report (sources and metadata stay the trusted
  sanitized copy), rebuilds and validates each output, writes an error output with the reason into the cell
  that was running when a notebook timed out, died or failed and into every later code cell (nbgrader then
  scores those test cells zero), puts a short note with the status and reason at the top of the notebook (so
  it reaches the feedback), and runs nbgrader's post-execution preprocessors, which write the gradebook.
* A notebook that is not valid notebook JSON is never executed: the released version of the notebook is
  sanitized in its place (so the gradebook gets every cell, all scored zero) and carries the reason.
* Resumable: after a submission is finished a small record goes to COURSE/.atlaslab/autograde/ASSIGNMENT/;
  a later run skips submissions recorded with the same submission timestamp unless ``force`` (except those
  recorded as "error", which may be the grader's fault, and are tried again). An interrupted run leaves no
  record for the submissions it was working on. If the sandbox pool itself fails, the run stops.

When started as root for a course directory owned by another account (``grader-COURSE``), the pool is
created first (it needs root) and this process then drops to that account (after handing over to it any
file root left in the course directory), so the course's Python config never runs as root and everything
written belongs to the course. nbgrader's own per-call set-up costs are cut while grading (see
``_nbgrader_speedups``); what it reads and writes is unchanged.

Elsewhere: the formgrader's "autograde" button runs stock nbgrader inside the formgrader (the course's
account, no sandbox); a root-side service should run ``atlaslab grade COURSE ASSIGNMENT --student S`` for
it instead. On Dask or Kubernetes the same ``NotebookJob`` goes to ``sandbox.run_notebook`` on a worker or
in a pod (see ``atlaslab.grading.sandbox``); only ``SandboxPool.run`` is replaced, this pipeline stays.
Feedback: ``generate_feedback`` runs nbgrader's generate_feedback on the autograded notebooks, without
hidden tests unless the course reveals them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import shutil
import stat
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .sandbox import (
    EXECUTE_TRAITS,
    NotebookJob,
    NotebookResult,
    SandboxError,
    SandboxLimits,
    SandboxPool,
    can_access,
    skip_slow_optional_imports,
)

GRADED, TIMEOUT, DIED, INVALID, ERROR = "graded", "timeout", "kernel died", "invalid notebook", "error"
_STATUS_OF = {"ok": GRADED, "timeout": TIMEOUT, "died": DIED, "error": ERROR}
_SEVERITY = [GRADED, TIMEOUT, DIED, INVALID, ERROR]
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
RECORDS = ".atlaslab/autograde"
log = logging.getLogger(__name__)


class AutogradeError(RuntimeError):
    """Grading cannot start (no such course or assignment, unsafe permissions, no sandbox)."""


@dataclass
class GradeOptions:
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    timeout: float = 300.0  # wall clock per notebook, seconds
    force: bool = False
    students: list[str] | None = None
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    hidden: list[str] = field(default_factory=list)  # more directories the sandbox must not see
    quiet_nbgrader: bool = True  # nbgrader's INFO and WARNING log lines off


@dataclass
class Outcome:
    student: str
    status: str
    reason: str = ""
    score: float | None = None
    max_score: float | None = None
    skipped: bool = False  # graded by an earlier run with the same submission
    seconds: float = 0.0


@dataclass
class _Submission:
    student: str
    notebooks: list[str]  # submitted notebook paths
    timestamp: str | None
    started: float = 0.0
    pending: int = 0
    statuses: dict[str, tuple[str, str]] = field(default_factory=dict)  # notebook id -> (status, reason)
    work: list[tuple[str, str, str]] = field(default_factory=list)  # (notebook id, sanitized json, status)


# ----------------------------------------------------------------------------------------- entry point


def autograde(
    course_root: str | os.PathLike[str],
    assignment: str,
    options: GradeOptions | None = None,
    progress: Callable[[str, Outcome | None, int], None] | None = None,
) -> list[Outcome]:
    """Grade every collected submission of ``assignment``; return one Outcome per student, sorted.

    ``progress(event, outcome, total)`` is called with ("start", None, n_to_grade) once, then ("done",
    outcome, n) as each submission finishes (skipped ones first).
    """
    options = options or GradeOptions()
    skip_slow_optional_imports()
    root = Path(course_root).resolve()
    if not (root / "submitted").is_dir() and not (root / "source").is_dir():
        raise AutogradeError(f"{root} is not an nbgrader course directory (no source/ or submitted/)")
    workers = max(1, int(options.workers))
    try:
        pool = SandboxPool(workers, options.limits)
    except SandboxError as e:
        raise AutogradeError(str(e)) from None
    try:
        _protect_course(root, pool)
        _become_course_owner(root)
        grader = _Grader(root, assignment, options, pool, workers, progress)  # while the zygote starts
        try:
            pool.wait_ready()
        except SandboxError as e:
            raise AutogradeError(f"the sandbox could not start: {e}") from None
        return grader.run()
    finally:
        pool.close()


def _protect_course(root: Path, pool: SandboxPool) -> None:
    """The sandbox accounts must not reach the course (the mount namespace hides it too: belt and braces)."""
    slot = pool.slots[0]
    if slot.uid is None:
        return
    if can_access(slot.uid, slot.gid, root):
        mode = stat.S_IMODE(os.stat(root).st_mode)
        os.chmod(root, mode & ~0o007)
        log.warning("removed other users' access to %s (was %o)", root, mode)
        if can_access(slot.uid, slot.gid, root):
            raise AutogradeError(f"{root} stays readable by the sandbox account; fix its permissions or ACLs")


def _become_course_owner(root: Path) -> None:
    """Run the trusted side as the course directory's owner (no-op unless root and owned by someone else)."""
    st = os.stat(root)
    if os.geteuid() != 0 or st.st_uid == 0:
        return
    # Hand over what root wrote there (an admin's `nbgrader generate_assignment`, an earlier root run):
    # the course's account must be able to update its gradebook and autograded files.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_uid != st.st_uid:
                    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    try:
        entry = pwd.getpwuid(st.st_uid)
        os.initgroups(entry.pw_name, entry.pw_gid)
        home = entry.pw_dir
    except KeyError:
        os.setgroups([])
        home = str(root)
    os.setresgid(st.st_gid, st.st_gid, st.st_gid)
    os.setresuid(st.st_uid, st.st_uid, st.st_uid)
    os.environ["HOME"] = home if os.path.isdir(home) else str(root)


# ------------------------------------------------------------------------------------------ the grader


class _Grader:
    def __init__(self, root, assignment, options, pool, workers, progress):
        self.root = root
        self.assignment = assignment
        self.options = options
        self.pool = pool
        self.workers = workers
        self.progress = progress or (lambda *a: None)
        self.records = root / RECORDS / assignment
        self._setup_nbgrader()

    def _setup_nbgrader(self) -> None:
        from nbconvert.preprocessors import ExecutePreprocessor
        from nbconvert.writers import FilesWriter
        from nbgrader.api import Gradebook, MissingEntry
        from nbgrader.apps.autogradeapp import AutogradeApp
        from nbgrader.converters.autograde import Autograde
        from traitlets.utils.importstring import import_item

        os.chdir(self.root)  # as `nbgrader autograde` run from the course directory
        app = AutogradeApp()
        app.initialize([], root=str(self.root))
        if self.options.quiet_nbgrader:
            # Its warnings repeat per submission (e.g. a checksum "changed" on every cell with hidden tests)
            # and would bury the progress bar; statuses and reasons say what matters.
            app.log.setLevel(logging.ERROR)
        self.coursedir = app.coursedir
        self.coursedir.assignment_id = self.assignment
        conv = Autograde(coursedir=self.coursedir, parent=app)
        conv.writer = FilesWriter(parent=conv, config=conv.config)
        conv.exporter = conv.exporter_class(parent=conv, config=conv.config)
        self.conv = conv
        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            try:
                gb.find_assignment(self.assignment)
            except MissingEntry:
                raise AutogradeError(
                    f"assignment {self.assignment!r} is not in the gradebook: run `nbgrader generate_assignment`"
                ) from None

        def resolve(pp):
            return import_item(pp) if isinstance(pp, str) else pp

        self.sanitize_pps = [resolve(p) for p in conv.sanitize_preprocessors]
        grade_pps = [resolve(p) for p in conv.autograde_preprocessors]
        executes = [p for p in grade_pps if isinstance(p, type) and issubclass(p, ExecutePreprocessor)]
        self.finish_pps = [p for p in grade_pps if p not in executes]
        # The course's Execute settings (timeouts, extra kernel arguments...) travel with each job.
        probe = (executes[0] if executes else import_item("nbgrader.preprocessors.Execute"))(parent=conv.exporter)
        self.execute_cfg = {k: _plain(getattr(probe, k)) for k in EXECUTE_TRAITS if hasattr(probe, k)}
        cell = probe.timeout
        self.cell_timeout = int(cell) if cell and 0 < cell < self.options.timeout else None

    # ----------------------------------------------------------------------------------- discovery

    def _discover(self) -> list[_Submission]:
        from nbgrader.converters.base import NbGraderException

        self.coursedir.student_id = "*"
        try:
            self.conv.init_notebooks()
        except NbGraderException:
            return []
        regexp = self.conv._format_source("(?P<assignment_id>.*)", "(?P<student_id>.*)", escape=True)
        subs = []
        wanted = set(self.options.students) if self.options.students else None
        for path, notebooks in sorted(self.conv.assignments.items()):
            m = re.match(regexp, path)
            if m is None or m.group("assignment_id") != self.assignment:
                continue
            student = m.group("student_id")
            if wanted is not None and student not in wanted:
                continue
            stamp = self.coursedir.get_existing_timestamp(path)
            subs.append(_Submission(student, sorted(notebooks), str(stamp) if stamp else None))
        return subs

    def _record_path(self, student: str) -> Path:
        return self.records / f"{student}.json"

    def _already_graded(self, sub: _Submission) -> dict | None:
        if self.options.force:
            return None
        try:
            record = json.loads(self._record_path(sub.student).read_text())
        except (OSError, ValueError):
            return None
        if record.get("status") == ERROR:  # possibly the grader's fault, not the submission's: try again
            return None
        dest = Path(self.conv._format_dest(self.assignment, sub.student))
        if record.get("timestamp") != sub.timestamp or not all(
            (dest / os.path.basename(nb)).exists() for nb in sub.notebooks
        ):
            return None
        return record

    # ------------------------------------------------------------------------------------ the loop

    def run(self) -> list[Outcome]:
        with _nbgrader_speedups(), warnings.catch_warnings():
            if self.options.quiet_nbgrader:  # stock nbgrader prints these too, on every first grading
                warnings.filterwarnings("ignore", message="Object of type .* not in session", module="nbgrader")
            return self._run()

    def _run(self) -> list[Outcome]:
        subs = self._discover()
        outcomes: dict[str, Outcome] = {}
        todo = []
        for sub in subs:
            record = self._already_graded(sub)
            if record is None:
                todo.append(sub)
            else:
                outcomes[sub.student] = Outcome(sub.student, record["status"], record.get("reason", ""), skipped=True)
        self.progress("start", None, len(todo))
        for outcome in outcomes.values():
            self.progress("skipped", outcome, len(todo))
        inflight: dict[Future, tuple[_Submission, str, str]] = {}
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as threads:
            try:
                queue = list(reversed(todo))
                while queue or inflight:
                    # Keep every slot busy and one job ready behind them; prepare in between results.
                    while queue and len(inflight) <= self.workers:
                        sub = queue.pop()
                        for job_id, job, sanitized in self._prepare(sub):
                            fut = threads.submit(self.pool.run, job)
                            inflight[fut] = (sub, job_id, sanitized)
                        if sub.pending == 0:
                            outcomes[sub.student] = self._complete(sub)
                    if not inflight:
                        continue
                    done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                    for fut in done:
                        sub, notebook_id, sanitized = inflight.pop(fut)
                        try:
                            result = fut.result()
                        except SandboxError as e:  # the pool itself failed: stop, nothing is recorded
                            raise AutogradeError(f"the sandbox failed: {e}") from None
                        except Exception as e:  # a bad job: this submission only
                            result = NotebookResult("error", f"could not run the notebook: {_short(e)}")
                        self._finish_notebook(sub, notebook_id, sanitized, result)
                        sub.pending -= 1
                        if sub.pending == 0:
                            outcomes[sub.student] = self._complete(sub)
            except BaseException:
                for fut in inflight:
                    fut.cancel()
                self.pool.close()  # stops the running notebooks now, so the threads need not wait for them
                raise
        self._fill_scores(outcomes)
        return [outcomes[k] for k in sorted(outcomes)]

    # --------------------------------------------------------------------------------- trusted: before

    def _prepare(self, sub: _Submission) -> list[tuple[str, NotebookJob, str]]:
        """nbgrader's per-submission set-up and sanitize pass; returns the jobs to run (maybe none)."""
        sub.started = time.monotonic()
        conv = self.conv
        src = Path(conv._format_source(self.assignment, sub.student))
        dest = Path(conv._format_dest(self.assignment, sub.student))
        with contextlib.suppress(FileNotFoundError):
            self._record_path(sub.student).unlink()
        if dest.exists():
            shutil.rmtree(dest)
        link = _find_symlink(src)
        if link:
            sub.statuses["*"] = (ERROR, f"the submission contains a symbolic link ({link}); it was not graded")
            return []
        jobs = []
        try:
            conv.notebooks = list(sub.notebooks)
            conv.run_pre_convert_hook()
            conv.init_assignment(self.assignment, sub.student)  # gradebook rows, files, missing notebooks
            files = _read_files(dest, self.options.limits.disk)
            for path in conv.notebooks:
                notebook_id = os.path.splitext(os.path.basename(path))[0]
                try:
                    sanitized = self._sanitize(path, sub.student, notebook_id)
                except Exception as e:
                    reason = f"the submitted notebook is not a valid notebook ({_short(e)})"
                    sub.work.append((notebook_id, self._stand_in(sub.student, notebook_id, reason), INVALID))
                    sub.statuses[notebook_id] = (INVALID, reason)
                    continue
                if files is None:
                    reason = f"the submission's files are larger than the limit ({self.options.limits.disk} bytes)"
                    sub.work.append((notebook_id, sanitized, ERROR))
                    sub.statuses[notebook_id] = (ERROR, reason)
                    continue
                job = NotebookJob(
                    notebook=sanitized,
                    files=files,
                    timeout=self.options.timeout,
                    cell_timeout=self.cell_timeout,
                    limits=self.options.limits,
                    env={"NBGRADER_EXECUTION": "autograde"},
                    hidden=[str(self.root), *self.options.hidden],
                    execute=self.execute_cfg,
                    label=f"{sub.student}/{notebook_id}",
                )
                jobs.append((notebook_id, job, sanitized))
        except Exception as e:
            log.exception("preparing %s failed", sub.student)
            sub.statuses["*"] = (ERROR, f"could not prepare the submission: {_short(e)}")
            return []
        sub.pending = len(jobs)
        # Notebooks that need no sandbox (invalid, too large) are finished right away.
        for notebook_id, sanitized, status in sub.work:
            self._finish_notebook(sub, notebook_id, sanitized, None, status)
        sub.work.clear()
        return jobs

    def _resources(self, student: str, notebook_id: str) -> dict:
        return {
            "unique_key": notebook_id,
            "output_files_dir": f"{notebook_id}_files",
            "nbgrader": {
                "student": student,
                "assignment": self.assignment,
                "notebook": notebook_id,
                "db_url": self.coursedir.db_url,
            },
        }

    def _export(self, preprocessors, nb_or_path, student: str, notebook_id: str) -> str:
        exporter = self.conv.exporter
        exporter._preprocessors = []
        for pp in preprocessors:
            exporter.register_preprocessor(pp)
        resources = self._resources(student, notebook_id)
        if isinstance(nb_or_path, str):
            if os.path.getsize(nb_or_path) > MAX_NOTEBOOK_BYTES:
                raise ValueError(f"larger than {MAX_NOTEBOOK_BYTES // (1 << 20)} MiB")
            output, resources = exporter.from_filename(nb_or_path, resources=resources)
        else:
            output, resources = exporter.from_notebook_node(nb_or_path, resources=resources)
        self.conv.write_single_notebook(output, resources)
        return output

    def _sanitize(self, path: str, student: str, notebook_id: str) -> str:
        if os.path.islink(path) or not os.path.isfile(path):
            raise ValueError("not a regular file")
        return self._export(self.sanitize_pps, path, student, notebook_id)

    def _stand_in(self, student: str, notebook_id: str, reason: str) -> str:
        """What gets graded instead of an unreadable notebook: the released version (all zero)."""
        release = self.coursedir.format_path(self.coursedir.release_directory, ".", self.assignment)
        path = os.path.join(release, f"{notebook_id}.ipynb")
        if os.path.isfile(path):
            with contextlib.suppress(Exception):
                return self._sanitize(path, student, notebook_id)
        import nbformat

        return nbformat.writes(nbformat.v4.new_notebook())

    # ---------------------------------------------------------------------------------- trusted: after

    def _finish_notebook(self, sub, notebook_id, sanitized, result: NotebookResult | None, status=None) -> None:
        import nbformat

        try:
            nb = nbformat.reads(sanitized, as_version=4)
            if result is not None:
                status, reason = _STATUS_OF.get(result.status, ERROR), result.reason
                status, reason = _merge(nb, result, status, reason)
            else:
                reason = sub.statuses[notebook_id][1]
                _mark_not_run(nb, status, reason, None)
            if status != GRADED:
                nb.cells.insert(0, nbformat.v4.new_markdown_cell(_banner(status, reason)))
            self._export(self.finish_pps, nb, sub.student, notebook_id)
            if status == INVALID and not any(c.get("metadata", {}).get("nbgrader") for c in nb.cells):
                _zero_notebook(self.coursedir, self.assignment, sub.student, notebook_id)
        except Exception as e:
            log.exception("finishing %s/%s failed", sub.student, notebook_id)
            status, reason = ERROR, f"could not record the results: {_short(e)}"
            dest = self.conv._format_dest(self.assignment, sub.student)
            with contextlib.suppress(OSError):
                os.remove(os.path.join(dest, f"{notebook_id}.ipynb"))
        sub.statuses[notebook_id] = (status, reason)

    def _complete(self, sub: _Submission) -> Outcome:
        status, reason = GRADED, ""
        for nb_status, nb_reason in sub.statuses.values():
            if _SEVERITY.index(nb_status) > _SEVERITY.index(status):
                status, reason = nb_status, nb_reason
        if "*" not in sub.statuses:
            self.conv.set_permissions(self.assignment, sub.student)
            self.conv.run_post_convert_hook()
        record = {
            "timestamp": sub.timestamp,
            "status": status,
            "reason": reason,
            "notebooks": {k: {"status": s, "reason": r} for k, (s, r) in sub.statuses.items()},
            "graded_at": time.time(),
        }
        self.records.mkdir(parents=True, exist_ok=True)
        tmp = self._record_path(sub.student).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self._record_path(sub.student))
        outcome = Outcome(sub.student, status, reason, seconds=time.monotonic() - sub.started)
        self.progress("done", outcome, 0)
        return outcome

    def _fill_scores(self, outcomes: dict[str, Outcome]) -> None:
        from nbgrader.api import Gradebook, MissingEntry

        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            for outcome in outcomes.values():
                with contextlib.suppress(MissingEntry):
                    sub = gb.find_submission(self.assignment, outcome.student)
                    outcome.score, outcome.max_score = sub.score, sub.max_score


# ------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _nbgrader_speedups():
    """Cut nbgrader's per-call set-up costs while we grade, without changing what it reads or writes.

    Profiled on the trusted side, most time went to set-up repeated for every call, not to grading:

    * nbgrader opens a Gradebook about ten times per submission, each time a new SQLAlchemy engine (so
      every statement is compiled again: compiled SQL is cached per engine), an inspection of the table
      list and a schema check of every table. Here engines are shared per database URL, and the table
      list, schema and course row are checked once per engine, and connections stay pooled; the queries
      nbgrader then runs are its own.
    * nbgrader validates cell metadata with ``jsonschema.validate``, which first validates the schema
      itself against the meta-schema, on every cell. Here the validator for nbgrader's (constant) schema
      is built once; instances are validated exactly as before.

    Everything runs in the main thread; the originals are put back on exit.
    """
    import jsonschema
    import nbgrader.api as api
    import nbgrader.nbgraderformat.common as common

    real = (api.create_engine, api.Base.metadata.create_all, api.inspect, common.jsonschema)
    real_check_course = api.Gradebook.check_course
    courses: set[tuple[int, str]] = set()
    engines: dict[str, object] = {}
    tables: dict[int, list[str]] = {}
    checked: set[int] = set()
    validators: dict[str, object] = {}

    def create_engine(url, *args, **kwargs):
        key = repr((str(url), args, sorted(kwargs.items())))
        if key not in engines:
            engine = real[0](url, *args, **kwargs)
            engine.dispose = lambda *a, **k: None  # Gradebook.close(): keep the pooled connection
            engines[key] = engine
        return engines[key]

    def check_course(self, course_id="default_course", **kwargs):
        # Only Gradebook.__init__ calls it, to create the course row the first time; the row stays.
        key = (id(self.engine), course_id)
        if kwargs or key not in courses:
            course = real_check_course(self, course_id=course_id, **kwargs)
            courses.add(key)
            return course
        return None

    def create_all(bind=None, *args, **kwargs):
        if id(bind) not in checked:
            real[1](bind, *args, **kwargs)
            checked.add(id(bind))

    class Inspector:
        def __init__(self, engine):
            self.engine = engine

        def get_table_names(self):
            if not tables.get(id(self.engine)):
                tables[id(self.engine)] = real[2](self.engine).get_table_names()
            return tables[id(self.engine)]

    class CachedJsonschema:
        ValidationError = jsonschema.ValidationError

        def __getattr__(self, name):
            return getattr(jsonschema, name)

        @staticmethod
        def validate(instance, schema):
            key = json.dumps(schema, sort_keys=True)
            if key not in validators:
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)
                validators[key] = cls(schema)
            error = jsonschema.exceptions.best_match(validators[key].iter_errors(instance))
            if error is not None:
                raise error

    api.create_engine, api.Base.metadata.create_all, api.inspect = create_engine, create_all, Inspector
    common.jsonschema = CachedJsonschema()
    api.Gradebook.check_course = check_course
    try:
        yield
    finally:
        api.create_engine, api.Base.metadata.create_all, api.inspect, common.jsonschema = real
        api.Gradebook.check_course = real_check_course
        for engine in engines.values():
            with contextlib.suppress(Exception):
                del engine.dispose  # the class's own again
                engine.dispose()


def _plain(value):
    """A trait value as JSON-able plain data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0][:300]}" if text else e.__class__.__name__


def _find_symlink(top: Path) -> str | None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                return os.path.relpath(os.path.join(dirpath, name), top)
    return None


def _read_files(dest: Path, limit: int) -> dict[str, bytes] | None:
    """Every file next to the notebooks (not the notebooks themselves); None when over ``limit`` bytes."""
    files, total = {}, 0
    for dirpath, _, filenames in os.walk(dest):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.endswith(".ipynb") or os.path.islink(path) or not os.path.isfile(path):
                continue
            total += os.path.getsize(path)
            if total > limit:
                return None
            with open(path, "rb") as f:
                files[os.path.relpath(path, dest)] = f.read()
    return files


def _banner(status: str, reason: str) -> str:
    return (
        f"**Autograder: {status}.** {reason[:1].upper()}{reason[1:]}.\n\n"
        "The cell that was running and every code cell after it were not completed; their tests score zero."
        if status in (TIMEOUT, DIED, ERROR)
        else f"**Autograder: {status}.** {reason[:1].upper()}{reason[1:]}.\n\nNo cell was run; every test scores zero."
    )


def _error_output(status: str, reason: str, running: bool):
    import nbformat

    ename = {TIMEOUT: "AutograderTimeout", DIED: "KernelDied", INVALID: "InvalidNotebook"}.get(
        status, "AutograderError"
    )
    where = "This cell was stopped: " if running else "This cell was not run: "
    return nbformat.v4.new_output("error", ename=ename, evalue=reason, traceback=[f"{ename}: {where}{reason}"])


def _mark_not_run(nb, status: str, reason: str, first: int | None) -> None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (first is None or i >= first):
            cell.outputs = [_error_output(status, reason, running=i == first)]
            cell.execution_count = None


def _merge(nb, result: NotebookResult, status: str, reason: str) -> tuple[str, str]:
    """Copy the sandbox's outputs into the trusted notebook; cells it did not complete get the reason."""
    import nbformat

    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    first_missing = next((i for i in code if i not in result.cells), None)
    stop = None
    if status != GRADED:
        stop = result.failed_cell if isinstance(result.failed_cell, int) and result.failed_cell >= 0 else first_missing
        if stop is None:  # it finished every cell but did not say so: all outputs stand, the reason too
            stop = len(nb.cells)
    for i in code:
        cell = nb.cells[i]
        if stop is not None and i >= stop:
            continue
        done = result.cells.get(i)
        if done is None:
            cell.outputs = []
            continue
        cell.outputs = [o for o in (_clean_output(o) for o in done.get("outputs", [])) if o is not None]
        count = done.get("execution_count")
        cell.execution_count = count if isinstance(count, int) and not isinstance(count, bool) else None
    if stop is not None:
        _mark_not_run(nb, status, reason, stop)
        if stop < len(nb.cells) and nb.cells[stop].cell_type == "code" and result.partial:
            printed = [o for o in (_clean_output(o) for o in result.partial) if o is not None]
            nb.cells[stop].outputs = printed + nb.cells[stop].outputs
    info = result.language_info
    if isinstance(info, dict):
        nb.metadata["language_info"] = _plain(info)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        status, reason = ERROR, f"the notebook's outputs were not valid ({_short(e)})"
        _mark_not_run(nb, status, reason, code[0] if code else None)
    return status, reason


def _strings(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return None


def _clean_output(out):
    """Rebuild one output from the sandbox with only known fields of the right types (None: dropped)."""
    import nbformat

    if not isinstance(out, dict):
        return None
    kind = out.get("output_type")
    try:
        if kind == "stream":
            text = _strings(out.get("text"))
            if out.get("name") not in ("stdout", "stderr") or text is None:
                return None
            return nbformat.v4.new_output("stream", name=out["name"], text=text)
        if kind in ("display_data", "execute_result"):
            data = out.get("data")
            meta = out.get("metadata") if isinstance(out.get("metadata"), dict) else {}
            if not isinstance(data, dict):
                return None
            clean = {}
            for mime, value in data.items():
                if not isinstance(mime, str):
                    continue
                if mime.endswith("json") and isinstance(value, dict | list):
                    clean[mime] = _plain(value)
                elif (text := _strings(value)) is not None:
                    clean[mime] = text
            kw = {"data": clean, "metadata": _plain(meta)}
            if kind == "execute_result":
                count = out.get("execution_count")
                kw["execution_count"] = count if isinstance(count, int) and not isinstance(count, bool) else None
            return nbformat.v4.new_output(kind, **kw)
        if kind == "error":
            tb = out.get("traceback")
            tb = [t for t in tb if isinstance(t, str)] if isinstance(tb, list) else []
            return nbformat.v4.new_output(
                "error", ename=str(out.get("ename", "Error")), evalue=str(out.get("evalue", "")), traceback=tb
            )
    except Exception:
        return None
    return None


def _zero_notebook(coursedir, assignment: str, student: str, notebook_id: str) -> None:
    """Zero every grade of a notebook that could not be graded at all (as nbgrader does for missing ones)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(coursedir.db_url, coursedir.course_id) as gb, contextlib.suppress(MissingEntry):
        nb = gb.find_submission_notebook(notebook_id, assignment, student)
        for grade in nb.grades:
            grade.auto_score = 0
            grade.needs_manual_grade = False
        gb.db.commit()


# ------------------------------------------------------------------------------------------- feedback


def generate_feedback(
    course_root: str | os.PathLike[str],
    assignment: str,
    students: list[str] | None = None,
    *,
    reveal_hidden_tests: bool = False,
    force: bool = True,
) -> list[Path]:
    """Run nbgrader's generate_feedback on the autograded submissions; return the feedback files written.

    Trusted side only (nothing is executed). Unless ``reveal_hidden_tests``, hidden tests are removed from
    the feedback, with their output (see :class:`atlaslab.grading.feedback.HideHiddenTests`).
    """
    from nbgrader.apps.generatefeedbackapp import GenerateFeedbackApp
    from nbgrader.converters.base import NbGraderException
    from nbgrader.converters.generate_feedback import GenerateFeedback

    from atlaslab.grading.feedback import feedback_preprocessors

    root = Path(course_root).resolve()
    here = os.getcwd()
    os.chdir(root)
    try:
        app = GenerateFeedbackApp()
        app.initialize([], root=str(root))
        app.log.setLevel(logging.WARNING)
        app.coursedir.assignment_id = assignment
        written: list[Path] = []
        for student in students or ["*"]:
            app.coursedir.student_id = student
            conv = GenerateFeedback(coursedir=app.coursedir, parent=app)
            conv.force = force
            conv.preprocessors = feedback_preprocessors(reveal_hidden_tests)
            with contextlib.suppress(NbGraderException):  # nothing autograded for this student
                conv.start()
        feedback = Path(app.coursedir.format_path(app.coursedir.feedback_directory, ".", "."))
        if not students:
            students = sorted(p.name for p in feedback.iterdir() if p.is_dir()) if feedback.is_dir() else []
        for student in students:
            written += sorted((feedback / student / assignment).glob("*.html"))
        return written
    finally:
        os.chdir(here)
