"""``nbgrader release_feedback``: each student's feedback pages go to the submission they were made for, found by
the timestamp in the feedback directory's timestamp.txt.
"""

from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from datetime import datetime

from nbgrader.exchange import abc
from nbgrader.utils import parse_utc

from atlaslab.grading.client.base import Exchange, naive_utc, url_part
from atlaslab.grading.exchange.archive import pack_files


class ExchangeReleaseFeedback(Exchange, abc.ExchangeReleaseFeedback):
    def init_src(self) -> None:
        cd = self.coursedir
        self.src_path = cd.format_path(cd.feedback_directory, cd.student_id or "*", cd.assignment_id)

    def init_dest(self) -> None:
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")

    def copy_files(self) -> None:
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
                f"courses/{url_part(cd.course_id)}/submissions",
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
            path = f"courses/{url_part(cd.course_id)}/submissions/{record['id']}/feedback"
            self.api("PUT", path, content=pack_files(files))
            self.log.info(f"Feedback released to: {self.web_url(path)}")
        if failed:
            self.fail(f"Feedback not released for: {', '.join(failed)} (no submission matches their timestamp.txt)")

    @staticmethod
    def _match(records: list[dict], when: datetime) -> dict | None:
        """The submission made at ``when``: exactly, or to the second when timestamps were written without µs."""
        exact = [r for r in records if naive_utc(r["timestamp"]) == when]
        if exact:
            return exact[-1]
        if when.microsecond == 0:
            same_second = [r for r in records if naive_utc(r["timestamp"]).replace(microsecond=0) == when]
            if len(same_second) == 1:
                return same_second[0]
        return None
