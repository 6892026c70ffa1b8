"""``nbgrader submit``: the student's copy of an assignment goes to the exchange, which records the token's user as
the submitter and the time of the submission.
"""

from __future__ import annotations

import fnmatch
import os

from nbgrader.exchange import abc
from nbgrader.utils import find_all_notebooks

from atlaslab.grading.client.base import Exchange, url_part


class ExchangeSubmit(Exchange, abc.ExchangeSubmit):
    def init_src(self) -> None:
        if self.path_includes_course:
            root = os.path.join(self.coursedir.course_id, self.coursedir.assignment_id)
        else:
            root = self.coursedir.assignment_id
        self.src_path = os.path.abspath(os.path.join(self.assignment_dir, root))
        self.coursedir.assignment_id = os.path.split(self.src_path)[-1]
        if not os.path.isdir(self.src_path):
            self.fail(f"Assignment not found at: {self.src_path}")

    def init_dest(self) -> None:
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
            f"courses/{url_part(course)}/assignments/{url_part(assignment)}",
            on={403: "You do not have access to this course.", 404: f"Assignment not found: {course} {assignment}"},
        )

    def check_filename_diff(self) -> None:
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

    def copy_files(self) -> None:
        course, assignment = self.coursedir.course_id, self.coursedir.assignment_id
        path = f"courses/{url_part(course)}/assignments/{url_part(assignment)}/submissions"
        self.log.info(f"Source: {self.src_path}")
        self.log.info(f"Destination: {self.web_url(path)}")
        self.check_filename_diff()
        record = self.api_json("POST", path, content=self.pack_for_upload(self.src_path))
        self.timestamp = self.format_timestamp(record["timestamp"])
        self.log.info(f"Submitted as: {course} {assignment} {self.timestamp}")
