"""``nbgrader fetch_feedback``: the feedback on the caller's own submissions, from the exchange into
``feedback/TIMESTAMP`` next to their copy of each assignment.
"""

from __future__ import annotations

import io
import os

from nbgrader.exchange import abc

from atlaslab.grading.client.base import Exchange, url_part
from atlaslab.grading.exchange.archive import ArchiveError, read_files


class ExchangeFetchFeedback(Exchange, abc.ExchangeFetchFeedback):
    def init_src(self) -> None:
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

    def init_dest(self) -> None:
        self.dest_path = os.path.abspath(
            os.path.join(self.local_assignment_dir(self.coursedir.course_id, self.coursedir.assignment_id), "feedback")
        )

    def copy_files(self) -> None:
        self.log.info(f"Source: {self.src_path}")
        self.log.info(f"Destination: {self.dest_path}")
        for record in self.records:
            course = record["course"]
            base = os.path.join(self.local_assignment_dir(course, record["assignment"]), "feedback")
            dest = os.path.join(os.path.abspath(base), self.format_timestamp(record["timestamp"]))
            data = self.download(f"courses/{url_part(course)}/submissions/{record['id']}/feedback")
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
