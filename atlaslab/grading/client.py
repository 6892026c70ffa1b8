"""nbgrader's exchange, talking to AtlasLab's exchange service instead of a shared world-writable directory.

Configured through nbgrader's ``ExchangeFactory`` (AtlasLab writes a site-wide nbgrader_config.py that does it),
so nbgrader's own commands (release_assignment, fetch_assignment, submit, list, collect, release_feedback,
fetch_feedback) and its assignment list in JupyterLab work unchanged. Each class behaves like nbgrader's default
one: same options, same messages, same return values (``ExchangeList.start()`` returns the same dicts).

Who the caller is comes from the token (``JUPYTERHUB_API_TOKEN``: in a user's server, the server's own token),
never from the command line: the service records the token's user as the submitter and decides what they may
see. Differences from the filesystem exchange, all on the side of safety:

* submissions are never removed or overwritten (``nbgrader list --inbound --remove`` is refused);
* the student's submissions and feedback are listed from the service, not from a local cache, so they are
  the same from every machine;
* feedback belongs to one submission, found by its timestamp, not to a hash of a secret kept by the student.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
from dateutil.tz import gettz
from nbgrader.exchange import abc
from nbgrader.utils import find_all_notebooks, ignore_patterns, parse_utc
from traitlets import Bool, Float, Unicode, default

from atlaslab.grading.exchange import API_PATH
from atlaslab.grading.exchange.archive import ArchiveError, pack, pack_files, read_files, unpack

SAFE_NAME = re.compile(r"^[^/\x00]+$")


def _q(value: str) -> str:
    return quote(value, safe="")


def _utc(value: str) -> datetime:
    """A timestamp from the service (ISO 8601, UTC) as nbgrader compares them: naive UTC."""
    return datetime.fromisoformat(value).astimezone(UTC).replace(tzinfo=None)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Exchange(abc.Exchange):
    """Base of AtlasLab's exchange classes: where the service is, the token, HTTP and payload helpers."""

    url = Unicode(help="URL of AtlasLab's exchange service. Default: $ATLASLAB_EXCHANGE_URL.").tag(config=True)
    token = Unicode(help="JupyterHub API token identifying the caller. Default: $JUPYTERHUB_API_TOKEN.")
    timeout = Float(300.0, help="Seconds to wait for the exchange service.").tag(config=True)
    path_includes_course = Bool(
        False,
        help="Whether fetched and submitted assignments live in ./COURSE/ASSIGNMENT rather than ./ASSIGNMENT.",
    ).tag(config=True)

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get("ATLASLAB_EXCHANGE_URL", "")

    @default("token")
    def _default_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def start(self):
        if sys.platform == "win32":
            self.fail("Sorry, the exchange is not available on Windows.")
        if not self.url:
            self.fail("AtlasLab's exchange is not configured here: ATLASLAB_EXCHANGE_URL is not set.")
        if not self.token:
            self.fail("No JupyterHub token: JUPYTERHUB_API_TOKEN is not set (run this in your AtlasLab server).")
        return super().start()

    # ---- HTTP ------------------------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        content: bytes | None = None,
        on: dict | None = None,
    ) -> httpx.Response:
        """Call the service; an error becomes ExchangeError with the service's message (or ``on[status]``)."""
        base = self.url.rstrip("/") + "/" + API_PATH
        headers = {"Authorization": f"token {self.token}"}
        if content is not None:
            headers["Content-Type"] = "application/gzip"
            self.check_upload_size(len(content))
        try:
            with httpx.Client(timeout=self.timeout) as http:
                r = http.request(method, base + path, params=params, content=content, headers=headers)
        except httpx.HTTPError as e:
            self.fail(f"Cannot reach the exchange at {self.url}: {e}")
        if r.status_code >= 400:
            try:
                message = r.json().get("error") or r.reason_phrase
            except ValueError:
                message = r.text[:200] or r.reason_phrase
            if on and r.status_code in on:
                self.fail(on[r.status_code])
            self.fail(f"The exchange refused ({r.status_code}): {message}")
        return r

    def check_upload_size(self, size: int) -> None:
        """Fail with a clear message before sending more than the service accepts (it would cut us off)."""
        if size <= 1024 * 1024:
            return
        try:
            limit = httpx.get(self.url, timeout=self.timeout).json()["max_upload"]
        except (httpx.HTTPError, ValueError, KeyError):
            return
        if size > limit:
            self.fail(f"Too large for the exchange: {size} bytes compressed, the limit is {limit} bytes.")

    def api_json(self, method: str, path: str, **kwargs) -> dict:
        return self.api(method, path, **kwargs).json()

    def whoami(self) -> dict:
        if not hasattr(self, "_whoami"):
            self._whoami = self.api_json("GET", "whoami")
        return self._whoami

    def web_url(self, path: str) -> str:
        return self.url.rstrip("/") + "/" + API_PATH + path

    # ---- paths and payloads ----------------------------------------------------------------------------------

    def local_assignment_dir(self, course: str, assignment: str) -> str:
        if self.path_includes_course:
            return os.path.join(self.assignment_dir, course, assignment)
        return os.path.join(self.assignment_dir, assignment)

    def format_timestamp(self, value: str) -> str:
        """The service's timestamp as nbgrader writes timestamps (Exchange.timezone, Exchange.timestamp_format)."""
        tz = gettz(self.timezone)
        if tz is None:
            self.fail(f"Invalid timezone: {self.timezone}")
        return datetime.fromisoformat(value).astimezone(tz).strftime(self.timestamp_format)

    def pack_for_upload(self, src: str) -> bytes:
        """A tar.gz of ``src`` as nbgrader's default exchange would copy it (ignore, include, size limits)."""
        size = sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(src)
            for f in files
            if not os.path.islink(os.path.join(d, f))
        )
        if size > 1000 * self.coursedir.max_dir_size:
            limit = 1000 * self.coursedir.max_dir_size
            self.fail(f"Directory size is too big. Size is {size}, maximum size is {limit}")
        ignore = ignore_patterns(
            exclude=self.coursedir.ignore,
            include=self.coursedir.include,
            max_file_size=self.coursedir.max_file_size,
            log=self.log,
        )
        with tempfile.TemporaryDirectory(prefix="atlaslab-exchange-") as tmp:
            copy = os.path.join(tmp, "payload")
            shutil.copytree(src, copy, ignore=ignore)
            return pack(Path(copy))

    def unpack_beside(self, data: bytes, dest: str, kind: str = "files") -> str:
        """Unpack ``data`` (checked again here) into a new directory next to ``dest``; return its path."""
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".atlaslab-exchange-", dir=parent)
        try:
            unpack(io.BytesIO(data), Path(tmp) / "payload", kind=kind)
        except ArchiveError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            self.fail(f"The exchange sent an archive that is not acceptable: {e}")
        return tmp

    def download(self, path: str, sha256: str | None = None) -> bytes:
        data = self.api("GET", path).content
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            self.fail(f"Download of {path} is corrupt (SHA-256 differs from the exchange's record)")
        return data


class ExchangeReleaseAssignment(Exchange, abc.ExchangeReleaseAssignment):
    def init_src(self):
        cd = self.coursedir
        self.src_path = cd.format_path(cd.release_directory, ".", cd.assignment_id)
        if not os.path.isdir(self.src_path):
            source = cd.format_path(cd.source_directory, ".", cd.assignment_id)
            if os.path.isdir(source):
                self.fail(
                    f"Assignment found in '{source}' but not '{self.src_path}',"
                    " run `nbgrader generate_assignment` first."
                )
            self.fail(f"Assignment not found at: {self.src_path}")

    def init_dest(self):
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")

    def gradebook_duedate(self) -> datetime | None:
        """The assignment's due date in the course's gradebook (aware UTC), None when it has none."""
        from nbgrader.api import Gradebook, MissingEntry

        cd = self.coursedir
        with Gradebook(cd.db_url, cd.course_id) as gb:
            try:
                due = gb.find_assignment(cd.assignment_id).duedate
            except MissingEntry:
                return None
        # The gradebook keeps naive UTC.
        return due.replace(tzinfo=UTC) if due is not None and due.tzinfo is None else due

    def copy_files(self):
        course, assignment = self.coursedir.course_id, self.coursedir.assignment_id
        self.log.info(f"Source: {self.src_path}")
        self.log.info(f"Destination: {self.web_url(f'courses/{_q(course)}/assignments/{_q(assignment)}')}")
        params = {"force": "1"} if self.force else {}
        # Students' servers cannot read the gradebook: the release carries the due date for their lists.
        due = self.gradebook_duedate()
        if due is not None:
            params["due"] = due.astimezone(UTC).isoformat()
        record = self.api_json(
            "PUT",
            f"courses/{_q(course)}/assignments/{_q(assignment)}",
            params=params or None,
            content=self.pack_for_upload(self.src_path),
            on={409: f"Destination already exists, add --force to overwrite: {course} {assignment}"},
        )
        if self.force:
            self.log.info(f"Overwriting files: {course} {assignment}")
        self.log.info(f"Released as: {course} {assignment} (sha256 {record['sha256'][:12]})")
        if record.get("due"):
            self.log.info(f"Due: {self.format_timestamp(record['due'])}")


class ExchangeFetchAssignment(Exchange, abc.ExchangeFetchAssignment):
    def init_src(self):
        course, assignment = self.coursedir.course_id, self.coursedir.assignment_id
        if course == "":
            self.fail("No course id specified. Re-run with --course flag.")
        self.src_path = f"courses/{_q(course)}/assignments/{_q(assignment)}"
        self.record = self.api_json(
            "GET",
            self.src_path,
            on={
                403: "You do not have access to this course.",
                404: f"Assignment not found: {course} {assignment}",
            },
        )

    def init_dest(self):
        root = (
            os.path.join(self.coursedir.course_id, self.coursedir.assignment_id)
            if self.path_includes_course
            else self.coursedir.assignment_id
        )
        self.dest_path = os.path.abspath(os.path.join(self.assignment_dir, root))
        if os.path.isdir(self.dest_path) and not self.replace_missing_files:
            self.fail(f"You already have a copy of the assignment in this directory: {root}")

    def copy_files(self):
        self.log.info(f"Source: {self.web_url(self.src_path)}")
        self.log.info(f"Destination: {self.dest_path}")
        data = self.download(self.src_path + "/archive", self.record["sha256"])
        tmp = self.unpack_beside(data, self.dest_path)
        try:
            payload = os.path.join(tmp, "payload")
            if os.path.isdir(self.dest_path):
                self.copy_if_missing(payload, self.dest_path, shutil.ignore_patterns(*self.coursedir.ignore))
            else:
                os.rename(payload, self.dest_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.log.info(f"Fetched as: {self.coursedir.course_id} {self.coursedir.assignment_id}")

    def copy_if_missing(self, src: str, dest: str, ignore=None) -> None:
        names = sorted(os.listdir(src))
        if ignore:
            names = sorted(set(names) - set(ignore(src, names)))
        for name in names:
            srcpath, destpath = os.path.join(src, name), os.path.join(dest, name)
            if not os.path.lexists(destpath):
                if os.path.isdir(srcpath):
                    self.log.warning("Creating missing directory '%s'", os.path.relpath(destpath, os.getcwd()))
                    os.mkdir(destpath)
                else:
                    self.log.warning("Replacing missing file '%s'", os.path.relpath(destpath, os.getcwd()))
                    shutil.copy(srcpath, destpath)
            if os.path.isdir(srcpath) and os.path.isdir(destpath) and not os.path.islink(destpath):
                self.copy_if_missing(srcpath, destpath, ignore=ignore)


class ExchangeSubmit(Exchange, abc.ExchangeSubmit):
    def init_src(self):
        if self.path_includes_course:
            root = os.path.join(self.coursedir.course_id, self.coursedir.assignment_id)
        else:
            root = self.coursedir.assignment_id
        self.src_path = os.path.abspath(os.path.join(self.assignment_dir, root))
        self.coursedir.assignment_id = os.path.split(self.src_path)[-1]
        if not os.path.isdir(self.src_path):
            self.fail(f"Assignment not found at: {self.src_path}")

    def init_dest(self):
        course, assignment = self.coursedir.course_id, self.coursedir.assignment_id
        if course == "":
            self.fail("No course id specified. Re-run with --course flag.")
        student = self.coursedir.student_id
        if student not in ("", "*") and student != self.whoami()["name"]:
            self.fail(
                f"Submissions are recorded under your own hub identity ({self.whoami()['name']}),"
                f" not under --student={student}."
            )
        self.release = self.api_json(
            "GET",
            f"courses/{_q(course)}/assignments/{_q(assignment)}",
            on={403: "You do not have access to this course.", 404: f"Assignment not found: {course} {assignment}"},
        )

    def check_filename_diff(self):
        released = sorted(f["path"] for f in self.release["files"] if f["path"].endswith(".ipynb"))
        ignored = self.coursedir.ignore
        submitted = [
            nb
            for nb in find_all_notebooks(self.src_path)
            if not any(fnmatch.fnmatch(part, pat) for part in nb.split(os.sep) for pat in ignored)
        ]
        release_diff = [f"{nb}: {'FOUND' if nb in submitted else 'MISSING'}" for nb in released]
        submitted_diff = [f"{nb}: {'OK' if nb in released else 'EXTRA'}" for nb in submitted]
        missing = any(nb not in submitted for nb in released)
        extra = any(nb not in released for nb in submitted)
        if missing or extra:
            diff = "Expected:\n\t{}\nSubmitted:\n\t{}".format("\n\t".join(release_diff), "\n\t".join(submitted_diff))
            if missing and self.strict:
                self.fail(
                    f"Assignment {self.coursedir.assignment_id} not submitted. "
                    f"There are missing notebooks for the submission:\n{diff}"
                )
            self.log.warning(
                f"Possible missing notebooks and/or extra notebooks submitted for assignment "
                f"{self.coursedir.assignment_id}:\n{diff}"
            )

    def copy_files(self):
        course, assignment = self.coursedir.course_id, self.coursedir.assignment_id
        path = f"courses/{_q(course)}/assignments/{_q(assignment)}/submissions"
        self.log.info(f"Source: {self.src_path}")
        self.log.info(f"Destination: {self.web_url(path)}")
        self.check_filename_diff()
        record = self.api_json("POST", path, content=self.pack_for_upload(self.src_path))
        self.timestamp = self.format_timestamp(record["timestamp"])
        self.log.info(f"Submitted as: {course} {assignment} {self.timestamp}")


class ExchangeList(abc.ExchangeList, Exchange):
    def init_src(self):
        pass

    def init_dest(self):
        cd = self.coursedir
        course = cd.course_id or None
        assignment = cd.assignment_id or None
        student = cd.student_id if cd.student_id not in ("", "*") else None
        if self.inbound:
            courses = [course] if course else [c for c, role in self.whoami()["courses"].items() if role == "staff"]
            self.records = []
            for c in courses:
                params = {k: v for k, v in (("assignment", assignment), ("student", student)) if v}
                self.records += self.api_json("GET", f"courses/{_q(c)}/submissions", params=params)["submissions"]
        elif self.cached:
            params = {k: v for k, v in (("course", course), ("assignment", assignment)) if v}
            self.records = self.api_json("GET", "submissions", params=params)["submissions"]
        else:
            params = {k: v for k, v in (("course", course), ("assignment", assignment)) if v}
            self.records = self.api_json("GET", "assignments", params=params)["assignments"]

    def copy_files(self):
        pass

    def format_inbound_assignment(self, info: dict) -> str:
        msg = "{course_id} {student_id} {assignment_id} {timestamp}".format(**info)
        if info["status"] == "submitted":
            if info["has_local_feedback"] and not info["feedback_updated"]:
                msg += " (feedback already fetched)"
            elif info["has_exchange_feedback"]:
                msg += " (feedback ready to be fetched)"
            else:
                msg += " (no feedback available)"
        return msg

    def format_outbound_assignment(self, info: dict) -> str:
        msg = "{course_id} {assignment_id}".format(**info)
        if info.get("due"):
            msg += f" (due {self.format_timestamp(info['due'])})"
        if os.path.exists(info["assignment_id"]):
            msg += " (already downloaded)"
        return msg

    def _released_info(self, record: dict) -> dict:
        course, assignment = record["course"], record["assignment"]
        # "due" is AtlasLab's own key (nbgrader's lab extension ignores keys it does not know).
        info = {"course_id": course, "assignment_id": assignment, "due": record.get("due")}
        local = self.local_assignment_dir(course, assignment)
        if os.path.exists(local):
            info["status"] = "fetched"
            info["path"] = os.path.abspath(local)
            nbs = sorted(glob.glob(os.path.join(info["path"], "*.ipynb")))
            info["notebooks"] = [
                {"notebook_id": os.path.splitext(os.path.basename(nb))[0], "path": os.path.abspath(nb)} for nb in nbs
            ]
        else:
            info["status"] = "released"
            info["path"] = self.web_url(f"courses/{_q(course)}/assignments/{_q(assignment)}")
            info["notebooks"] = [
                {"notebook_id": nb, "path": f"{info['path']}/{_q(nb)}.ipynb"} for nb in record["notebooks"]
            ]
        if self.remove:
            info["status"] = "removed"
        if not info["notebooks"]:
            self.log.warning(f"No notebooks found in {info['path']}")
        return info

    def _submitted_info(self, record: dict) -> dict:
        course, assignment = record["course"], record["assignment"]
        timestamp = self.format_timestamp(record["timestamp"])
        info = {
            "course_id": course,
            "student_id": record["student"],
            "assignment_id": assignment,
            "timestamp": timestamp,
            "status": "removed" if self.remove else "submitted",
            "path": self.web_url(f"courses/{_q(course)}/submissions/{record['id']}"),
            "sha256": record["sha256"],
            "notebooks": [],
        }
        feedback = {fb["notebook"]: fb for fb in record["feedback"]}
        local_dir = os.path.join(self.local_assignment_dir(course, assignment), "feedback", timestamp)
        for nb in record["notebooks"]:
            local = os.path.join(local_dir, f"{nb}.html")
            has_local = os.path.isfile(local)
            remote = feedback.get(nb)
            info["notebooks"].append(
                {
                    "notebook_id": nb,
                    "path": f"{info['path']}/{_q(nb)}.ipynb",
                    "has_local_feedback": has_local,
                    "has_exchange_feedback": remote is not None,
                    "local_feedback_path": local if has_local else None,
                    "feedback_updated": bool(has_local and remote and _sha256(local) != remote["sha256"]),
                }
            )
        nbs = info["notebooks"]
        info["has_local_feedback"] = bool(nbs) and all(nb["has_local_feedback"] for nb in nbs)
        info["has_exchange_feedback"] = bool(nbs) and all(nb["has_exchange_feedback"] for nb in nbs)
        info["feedback_updated"] = any(nb["feedback_updated"] for nb in nbs)
        if info["has_local_feedback"]:
            full = os.path.abspath(self.local_assignment_dir(course, assignment))
            base = full if os.path.exists(full) else self.local_assignment_dir(course, assignment)
            info["local_feedback_path"] = os.path.join(base, "feedback", timestamp)
        else:
            info["local_feedback_path"] = None
        return info

    def parse_assignments(self) -> list[dict]:
        if not (self.inbound or self.cached):
            return [self._released_info(r) for r in self.records]
        groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for record in sorted(self.records, key=lambda r: (r["timestamp"], r["id"])):
            groups[(record["course"], record["student"], record["assignment"])].append(self._submitted_info(record))
        return [
            {
                "course_id": key[0],
                "student_id": key[1],
                "assignment_id": key[2],
                "status": submissions[0]["status"],
                "submissions": submissions,
            }
            for key, submissions in sorted(groups.items())
        ]

    def list_files(self):
        assignments = self.parse_assignments()
        if self.inbound or self.cached:
            self.log.info("Submitted assignments:")
            for assignment in assignments:
                for info in assignment["submissions"]:
                    self.log.info(self.format_inbound_assignment(info))
        else:
            self.log.info("Released assignments:")
            for info in assignments:
                self.log.info(self.format_outbound_assignment(info))
        return assignments

    def remove_files(self):
        if self.inbound or self.cached:
            self.fail("The exchange keeps every submission: submissions cannot be removed.")
        assignments = self.parse_assignments()
        self.log.info("Removing released assignments:")
        for info in assignments:
            self.log.info(self.format_outbound_assignment(info))
            self.api("DELETE", f"courses/{_q(info['course_id'])}/assignments/{_q(info['assignment_id'])}")
        return assignments


class ExchangeCollect(Exchange, abc.ExchangeCollect):
    def init_src(self):
        from nbgrader.api import Gradebook, MissingEntry

        cd = self.coursedir
        if cd.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")
        if self.whoami()["courses"].get(cd.course_id) != "staff":
            self.fail(f"You are not an instructor or TA of {cd.course_id}: you cannot collect its submissions.")
        params = {"assignment": cd.assignment_id}
        if cd.student_id not in ("", "*"):
            params["student"] = cd.student_id
        records = self.api_json(
            "GET",
            f"courses/{_q(cd.course_id)}/submissions",
            params=params,
            on={403: f"You are not an instructor or TA of {cd.course_id}: you cannot collect its submissions."},
        )["submissions"]
        by_student: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            record["utc"] = _utc(record["timestamp"])
            by_student[record["student"]].append(record)
        with Gradebook(cd.db_url, cd.course_id) as gb:
            try:
                self.duedate = gb.find_assignment(cd.assignment_id).duedate
            except MissingEntry:
                self.duedate = None
        self.src_records = []
        for student_records in by_student.values():
            newest_first = sorted(student_records, key=lambda r: (r["utc"], r["id"]), reverse=True)
            chosen = newest_first[0]
            if self.duedate is not None and self.before_duedate:
                on_time = [r for r in newest_first if r["utc"] <= self.duedate]
                chosen = on_time[0] if on_time else chosen
            self.src_records.append(chosen)

    def init_dest(self):
        pass

    def copy_files(self):
        cd = self.coursedir
        if not self.src_records:
            self.log.warning(f"No submissions of '{cd.assignment_id}' for course '{cd.course_id}' to collect")
        else:
            self.log.info(
                f"Processing {len(self.src_records)} submissions of '{cd.assignment_id}' for course '{cd.course_id}'"
            )
        for rec in sorted(self.src_records, key=lambda r: r["student"]):
            student = rec["student"]
            if not SAFE_NAME.match(student) or student in (".", ".."):
                self.log.error(f"Skipping a submission by a student id that is not a safe directory name: {student!r}")
                continue
            dest_path = cd.format_path(cd.submitted_directory, student, cd.assignment_id)
            os.makedirs(os.path.dirname(dest_path), exist_ok=True)
            copy = updating = False
            if os.path.isdir(dest_path):
                existing = cd.get_existing_timestamp(dest_path)
                newer = existing is None or rec["utc"] > existing
                if (self.update and newer) or (self.before_duedate and existing != rec["utc"]):
                    copy = updating = True
            else:
                copy = True
            if not copy:
                if self.update:
                    self.log.info(f"No newer submission to collect: {student} {cd.assignment_id}")
                else:
                    self.log.info(f"Submission already exists, use --update to update: {student} {cd.assignment_id}")
                continue
            if updating:
                self.log.info(f"Updating submission: {student} {cd.assignment_id}")
            else:
                self.log.info(f"Collecting submission: {student} {cd.assignment_id}")
            data = self.download(f"courses/{_q(cd.course_id)}/submissions/{rec['id']}/archive", rec["sha256"])
            tmp = self.unpack_beside(data, dest_path)
            try:
                payload = os.path.join(tmp, "payload")
                # The service's timestamp, not one the student may have put in the archive.
                with open(os.path.join(payload, "timestamp.txt"), "w") as f:
                    f.write(self.format_timestamp(rec["timestamp"]))
                if updating:
                    shutil.rmtree(dest_path)
                os.rename(payload, dest_path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)


class ExchangeReleaseFeedback(Exchange, abc.ExchangeReleaseFeedback):
    def init_src(self):
        cd = self.coursedir
        self.src_path = cd.format_path(cd.feedback_directory, cd.student_id or "*", cd.assignment_id)

    def init_dest(self):
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")

    def copy_files(self):
        cd = self.coursedir
        exclude = set(cd.student_id_exclude.split(",")) if cd.student_id_exclude else set()
        student_dir = cd.format_path(cd.feedback_directory, "(?P<student_id>.*)", cd.assignment_id, escape=True)
        regexp = re.escape(os.path.sep).join([student_dir, r"(?P<nb>.*)\.html"])
        pages: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
        for html_file in sorted(glob.glob(os.path.join(self.src_path, "*.html"))):
            m = re.match(regexp, html_file)
            if m is None:
                self.log.error(f"Could not match '{html_file}' with regexp '{regexp}'")
                continue
            if m["student_id"] in exclude:
                self.log.debug(f"Skipping student '{m['student_id']}'")
                continue
            with open(html_file, "rb") as f:
                pages[(m["student_id"], os.path.dirname(html_file))][f"{m['nb']}.html"] = f.read()
        failed = []
        for (student, feedback_dir), files in sorted(pages.items()):
            with open(os.path.join(feedback_dir, "timestamp.txt")) as f:
                stamp = f.read().strip()
            when = parse_utc(stamp)
            records = self.api_json(
                "GET",
                f"courses/{_q(cd.course_id)}/submissions",
                params={"assignment": cd.assignment_id, "student": student},
            )["submissions"]
            record = self._match(records, when)
            if record is None:
                self.log.error(f"No submission of {student} for {cd.course_id}/{cd.assignment_id} at {stamp}")
                failed.append(student)
                continue
            for name in sorted(files):
                self.log.info(
                    f"Releasing feedback for student '{student}' on assignment "
                    f"'{cd.course_id}/{cd.assignment_id}/{name[:-5]}' ({stamp})"
                )
            path = f"courses/{_q(cd.course_id)}/submissions/{record['id']}/feedback"
            self.api("PUT", path, content=pack_files(files))
            self.log.info(f"Feedback released to: {self.web_url(path)}")
        if failed:
            self.fail(f"Feedback not released for: {', '.join(failed)} (no submission matches their timestamp.txt)")

    @staticmethod
    def _match(records: list[dict], when: datetime) -> dict | None:
        """The submission made at ``when``: exactly, or to the second when timestamps were written without µs."""
        exact = [r for r in records if _utc(r["timestamp"]) == when]
        if exact:
            return exact[-1]
        if when.microsecond == 0:
            same_second = [r for r in records if _utc(r["timestamp"]).replace(microsecond=0) == when]
            if len(same_second) == 1:
                return same_second[0]
        return None


class ExchangeFetchFeedback(Exchange, abc.ExchangeFetchFeedback):
    def init_src(self):
        cd = self.coursedir
        if cd.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")
        if cd.student_id not in ("", "*") and cd.student_id != self.whoami()["name"]:
            me = self.whoami()["name"]
            self.log.warning(f"Fetching the feedback of {me} (the token's user), not {cd.student_id}")
        params = {"course": cd.course_id}
        if cd.assignment_id:
            params["assignment"] = cd.assignment_id
        self.src_path = self.web_url("submissions")
        self.records = [r for r in self.api_json("GET", "submissions", params=params)["submissions"] if r["feedback"]]
        for record in self.records:
            for fb in record["feedback"]:
                self.log.info(
                    f"Found feedback for '{cd.course_id}/{record['assignment']}/{fb['notebook']}'"
                    f" submitted at {self.format_timestamp(record['timestamp'])}"
                )

    def init_dest(self):
        self.dest_path = os.path.abspath(
            os.path.join(self.local_assignment_dir(self.coursedir.course_id, self.coursedir.assignment_id), "feedback")
        )

    def copy_files(self):
        self.log.info(f"Source: {self.src_path}")
        self.log.info(f"Destination: {self.dest_path}")
        for record in self.records:
            course = record["course"]
            base = os.path.join(self.local_assignment_dir(course, record["assignment"]), "feedback")
            dest = os.path.join(os.path.abspath(base), self.format_timestamp(record["timestamp"]))
            data = self.download(f"courses/{_q(course)}/submissions/{record['id']}/feedback")
            try:
                pages = read_files(io.BytesIO(data), kind="feedback")
            except ArchiveError as e:
                self.fail(f"The exchange sent feedback that is not acceptable: {e}")
            os.makedirs(dest, exist_ok=True)
            for name, content in sorted(pages.items()):
                path = os.path.join(dest, name)
                if os.path.lexists(path):
                    self.log.debug(f"Overwriting existing feedback: {path}")
                    os.unlink(path)
                with open(path, "wb") as f:
                    f.write(content)
                self.log.info(f"Fetched feedback: {path}")


__all__ = [
    "Exchange",
    "ExchangeCollect",
    "ExchangeFetchAssignment",
    "ExchangeFetchFeedback",
    "ExchangeList",
    "ExchangeReleaseAssignment",
    "ExchangeReleaseFeedback",
    "ExchangeSubmit",
]
