"""``nbgrader fetch_assignment``: a released assignment from the exchange into the student's directory, or only its
missing files into an existing copy (``--replace``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable

from nbgrader.exchange import abc

from atlaslab.grading.client.base import Exchange, url_part


class ExchangeFetchAssignment(Exchange, abc.ExchangeFetchAssignment):
    def init_src(self) -> None:
        course, assignment = self.coursedir.course_id, self.coursedir.assignment_id
        if course == "":
            self.fail("No course id specified. Re-run with --course flag.")
        self.src_path = f"courses/{url_part(course)}/assignments/{url_part(assignment)}"
        self.record = self.api_json(
            "GET",
            self.src_path,
            on={
                403: "You do not have access to this course.",
                404: f"Assignment not found: {course} {assignment}",
            },
        )

    def init_dest(self) -> None:
        root = (
            os.path.join(self.coursedir.course_id, self.coursedir.assignment_id)
            if self.path_includes_course
            else self.coursedir.assignment_id
        )
        self.dest_path = os.path.abspath(os.path.join(self.assignment_dir, root))
        if os.path.isdir(self.dest_path) and not self.replace_missing_files:
            self.fail(f"You already have a copy of the assignment in this directory: {root}")

    def copy_files(self) -> None:
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

    def copy_if_missing(
        self, src: str, dest: str, ignore: Callable[[str, list[str]], Iterable[str]] | None = None
    ) -> None:
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
