"""``nbgrader list`` and JupyterLab's assignment list: released assignments, the caller's own submissions
(``--cached``) or a course's submissions (``--inbound``), all as the exchange has them.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections import defaultdict

from nbgrader.exchange import abc

from atlaslab.grading.client.base import Exchange, url_part


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ExchangeList(abc.ExchangeList, Exchange):
    def init_src(self) -> None:
        pass

    def init_dest(self) -> None:
        cd = self.coursedir
        course = cd.course_id or None
        assignment = cd.assignment_id or None
        student = cd.student_id if cd.student_id not in ("", "*") else None
        if self.inbound:
            courses = [course] if course else [c for c, role in self.whoami()["courses"].items() if role == "staff"]
            self.records = []
            for c in courses:
                params = {k: v for k, v in (("assignment", assignment), ("student", student)) if v}
                self.records += self.api_json("GET", f"courses/{url_part(c)}/submissions", params=params)["submissions"]
        elif self.cached:
            params = {k: v for k, v in (("course", course), ("assignment", assignment)) if v}
            self.records = self.api_json("GET", "submissions", params=params)["submissions"]
        else:
            params = {k: v for k, v in (("course", course), ("assignment", assignment)) if v}
            self.records = self.api_json("GET", "assignments", params=params)["assignments"]

    def copy_files(self) -> None:
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
            info["path"] = self.web_url(f"courses/{url_part(course)}/assignments/{url_part(assignment)}")
            info["notebooks"] = [
                {"notebook_id": nb, "path": f"{info['path']}/{url_part(nb)}.ipynb"} for nb in record["notebooks"]
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
            "path": self.web_url(f"courses/{url_part(course)}/submissions/{record['id']}"),
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
                    "path": f"{info['path']}/{url_part(nb)}.ipynb",
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

    def list_files(self) -> list[dict]:
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

    def remove_files(self) -> list[dict]:
        if self.inbound or self.cached:
            self.fail("The exchange keeps every submission: submissions cannot be removed.")
        assignments = self.parse_assignments()
        self.log.info("Removing released assignments:")
        for info in assignments:
            self.log.info(self.format_outbound_assignment(info))
            self.api("DELETE", f"courses/{url_part(info['course_id'])}/assignments/{url_part(info['assignment_id'])}")
        return assignments
