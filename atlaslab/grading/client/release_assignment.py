"""``nbgrader release_assignment``: the course's release directory goes to the exchange as one archive, with the
assignment's due date from the gradebook.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from nbgrader.exchange import abc

from atlaslab.grading.client.base import Exchange, url_part


class ExchangeReleaseAssignment(Exchange, abc.ExchangeReleaseAssignment):
    def init_src(self) -> None:
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

    def init_dest(self) -> None:
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

    def copy_files(self) -> None:
        course, assignment = self.coursedir.course_id, self.coursedir.assignment_id
        self.log.info(f"Source: {self.src_path}")
        self.log.info(f"Destination: {self.web_url(f'courses/{url_part(course)}/assignments/{url_part(assignment)}')}")
        params = {"force": "1"} if self.force else {}
        # Students' servers cannot read the gradebook: the release carries the due date for their lists.
        due = self.gradebook_duedate()
        if due is not None:
            params["due"] = due.astimezone(UTC).isoformat()
        record = self.api_json(
            "PUT",
            f"courses/{url_part(course)}/assignments/{url_part(assignment)}",
            params=params or None,
            content=self.pack_for_upload(self.src_path),
            on={409: f"Destination already exists, add --force to overwrite: {course} {assignment}"},
        )
        if self.force:
            self.log.info(f"Overwriting files: {course} {assignment}")
        self.log.info(f"Released as: {course} {assignment} (sha256 {record['sha256'][:12]})")
        if record.get("due"):
            self.log.info(f"Due: {self.format_timestamp(record['due'])}")
