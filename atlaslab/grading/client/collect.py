"""``nbgrader collect``: each student's latest submission (or, with ``--before-duedate``, the latest one made on
time) from the exchange into the course's submitted directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict

from nbgrader.exchange import abc

from atlaslab.grading.client.base import Exchange, naive_utc, url_part

SAFE_NAME = re.compile(r"^[^/\x00]+$")


class ExchangeCollect(Exchange, abc.ExchangeCollect):
    def init_src(self) -> None:
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
            f"courses/{url_part(cd.course_id)}/submissions",
            params=params,
            on={403: f"You are not an instructor or TA of {cd.course_id}: you cannot collect its submissions."},
        )["submissions"]
        by_student: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            record["utc"] = naive_utc(record["timestamp"])
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

    def init_dest(self) -> None:
        pass

    def copy_files(self) -> None:
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
            data = self.download(f"courses/{url_part(cd.course_id)}/submissions/{rec['id']}/archive", rec["sha256"])
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
