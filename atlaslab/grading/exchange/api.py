"""The exchange's HTTP API (tornado), under the service's prefix (``/services/exchange/`` behind the hub).

Every request carries a JupyterHub token (``Authorization: token …``). The hub says whose it is and whether it
holds ``access:services!service=exchange``; the caller's rights come from their hub groups, never from the
request: staff of course C (members of ``course:C:instructors`` or ``course:C:tas``, hub admins, and C's own
formgrader service) release, unrelease, list, download and give feedback in C; students of C
(``course:C:students``) fetch C's released assignments, submit, and see only their own submissions and feedback.

A released assignment's record has ``due``: its due date (ISO 8601, UTC) as the instructor's gradebook had it
when they released it, or null.

JSON everywhere, except payloads: assignments, submissions and feedback travel as tar.gz bodies.

=======  ==================================================================  =========================================
GET      api/v1/whoami                                                       who the token is, and their courses
GET      api/v1/assignments[?course=C][&assignment=A]                        released assignments the caller may fetch
PUT      api/v1/courses/C/assignments/A[?force=1][&due=ISO8601]              release (staff; body: tar.gz; due: the
                                                                             due date, UTC when it names no offset)
DELETE   api/v1/courses/C/assignments/A                                      unrelease (staff)
GET      api/v1/courses/C/assignments/A                                      a released assignment's record
GET      api/v1/courses/C/assignments/A/archive                              its files (tar.gz)
POST     api/v1/courses/C/assignments/A/submissions                          submit (students of C; body: tar.gz)
GET      api/v1/submissions[?course=C][&assignment=A]                        the caller's own submissions, everywhere
GET      api/v1/courses/C/submissions[?assignment=A][&student=S][&latest=1]  staff: all; a student: their own
GET      api/v1/courses/C/submissions/ID                                     one submission's record (staff, owner)
GET      api/v1/courses/C/submissions/ID/archive                             its files (tar.gz) (staff, owner)
PUT      api/v1/courses/C/submissions/ID/feedback                            release feedback (staff; body: tar.gz of
                                                                             NOTEBOOK.html files)
GET      api/v1/courses/C/submissions/ID/feedback                            the feedback (tar.gz) (staff, owner)
=======  ==================================================================  =========================================

Uploads are streamed to a temporary file, refused with 413 as soon as they pass the size limit (at once when
Content-Length says so, before reading any of the body), and checked member by member (:mod:`.archive`)
before anything is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jupyterhub.services.auth import HubAuth
from tornado import web

from atlaslab.core.membership import Membership
from atlaslab.core.serviceauth import HealthHandler, ServiceError, ServiceHandler

from .archive import ArchiveError, Limits, pack_files, read_files, scan
from .store import Conflict, ExchangeStore, NotFound, Upload

log = logging.getLogger("atlaslab.exchange")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TRUE = ("1", "true", "yes")
FORGED_IDENTITY_ARGS = ("student", "student_id", "user", "username")


@dataclass(frozen=True)
class Caller:
    """Who is calling, and in which courses they are staff or student, as the hub says."""

    name: str
    kind: str
    admin: bool = False
    staff_of: frozenset[str] = frozenset()
    student_of: frozenset[str] = frozenset()

    @classmethod
    def from_model(cls, model: dict, staff_services: dict[str, str]) -> Caller:
        if model.get("kind") == "service":
            course = staff_services.get(model["name"])
            return cls(model["name"], "service", staff_of=frozenset([course] if course else []))
        m = Membership.of(model.get("groups") or [])
        return cls(model["name"], "user", bool(model.get("admin")), m.staff_of, m.student_of)

    def is_staff(self, course: str) -> bool:
        return self.admin or course in self.staff_of

    def is_student(self, course: str) -> bool:
        return self.kind == "user" and course in self.student_of

    def courses(self) -> set[str] | None:
        """Courses whose released assignments this caller sees; None: all of them (admins)."""
        return None if self.admin else set(self.staff_of | self.student_of)


@dataclass
class Context:
    store: ExchangeStore
    hub_auth: HubAuth
    max_upload: int = 50 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    staff_services: dict[str, str] = field(default_factory=dict)


class ApiHandler(ServiceHandler):
    """The exchange's handlers: the caller's courses, from their hub groups, as :class:`Caller`."""

    caller: Caller

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    async def prepare(self) -> None:
        await super().prepare()
        self.caller = Caller.from_model(self.model, self.ctx.staff_services)

    # ---- arguments and rights --------------------------------------------------------------------------------

    def ident(self, value: str, what: str) -> str:
        if not ID.match(value) or ".." in value:
            raise ServiceError(400, f"bad {what} id {value!r}: letters, digits, '.', '_' and '-' only")
        return value

    def opt_ident(self, name: str, what: str) -> str | None:
        value = self.get_query_argument(name, "")
        return self.ident(value, what) if value else None

    def require_staff(self, course: str, action: str) -> None:
        if not self.caller.is_staff(course):
            raise ServiceError(403, f"only instructors and TAs of {course} may {action}")

    def require_member(self, course: str) -> None:
        if not (self.caller.is_staff(course) or self.caller.is_student(course)):
            raise ServiceError(403, f"{self.caller.name} is not in course {course}")

    def refuse_identity_args(self) -> None:
        for name in FORGED_IDENTITY_ARGS:
            if self.get_query_argument(name, None) is not None:
                raise ServiceError(
                    400, f"'{name}' is not accepted here: the exchange records who you are from your token"
                )

    async def run(self, fn, *args, **kwargs) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except NotFound as e:
            raise ServiceError(404, str(e)) from None
        except Conflict as e:
            raise ServiceError(409, str(e)) from None

    async def send_blob(self, sha256: str, filename: str) -> None:
        f = await self.run(self.ctx.store.blobs.open, sha256)
        try:
            self.set_header("Content-Type", "application/gzip")
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
            self.set_header("X-Exchange-Sha256", sha256)
            while chunk := await asyncio.to_thread(f.read, 256 * 1024):
                self.write(chunk)
                await self.flush()
        finally:
            f.close()
        self.finish()


@web.stream_request_body
class UploadHandler(ApiHandler):
    """A handler whose PUT/POST body is an archive: rights first, then the size limit, then the body."""

    upload: Upload | None = None
    _too_large = False
    _refused: ServiceError | None = None

    def authorize_upload(self) -> None:
        raise NotImplementedError

    async def prepare(self) -> None:
        if self.request.method not in ("PUT", "POST"):
            await super().prepare()
            return
        limit = self.ctx.max_upload
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise ServiceError(413, f"upload of {length} bytes refused: the limit is {limit} bytes")
        self.request.connection.set_max_body_size(limit)
        try:
            await super().prepare()
            self.authorize_upload()
        except ServiceError as e:
            # Answered once the (size-limited) body is read and dropped: a client still sending it would see
            # the connection reset instead of the answer if it were closed now.
            self._refused = e
            return
        self.upload = self.ctx.store.blobs.new_upload()

    def data_received(self, chunk: bytes) -> None:
        if self.upload is None or self._too_large:
            return
        if self.upload.size + len(chunk) > self.ctx.max_upload:
            self._too_large = True
            return
        self.upload.write(chunk)

    async def checked_upload(self, kind: str = "files") -> tuple[Upload, list[dict]]:
        """The upload, checked; every PUT/POST method starts here (it also raises a refusal made earlier)."""
        if self._refused is not None:
            raise self._refused
        assert self.upload is not None
        if self._too_large:
            raise ServiceError(413, f"upload refused: the limit is {self.ctx.max_upload} bytes")
        upload = self.upload
        await asyncio.to_thread(upload.close)
        try:
            with upload.open() as f:
                files = await asyncio.to_thread(scan, f, self.ctx.limits, kind)
        except ArchiveError as e:
            raise ServiceError(400, f"archive refused: {e}") from None
        return upload, [entry.to_dict() for entry in files]

    def on_finish(self) -> None:
        if self.upload is not None:
            self.upload.discard()

    def on_connection_close(self) -> None:
        if self.upload is not None:
            self.upload.discard()
        super().on_connection_close()


# ---- handlers --------------------------------------------------------------------------------------------------


class WhoAmIHandler(ApiHandler):
    def get(self) -> None:
        c = self.caller
        courses = {course: "student" for course in c.student_of} | {course: "staff" for course in c.staff_of}
        self.reply({"name": c.name, "kind": c.kind, "admin": c.admin, "courses": dict(sorted(courses.items()))})


class AssignmentsHandler(ApiHandler):
    async def get(self) -> None:
        course = self.opt_ident("course", "course")
        visible = self.caller.courses()
        if course:
            self.require_member(course)
            visible = {course}
        name = self.opt_ident("assignment", "assignment")
        self.reply({"assignments": await self.run(self.ctx.store.assignments, visible, name)})


class AssignmentHandler(UploadHandler):
    def authorize_upload(self) -> None:
        course = self.ident(self.path_kwargs["course"], "course")
        self.ident(self.path_kwargs["assignment"], "assignment")
        self.require_staff(course, "release assignments")

    async def get(self, course: str, assignment: str) -> None:
        self.require_member(self.ident(course, "course"))
        self.reply(await self.run(self.ctx.store.assignment, course, self.ident(assignment, "assignment")))

    def due_argument(self) -> datetime | None:
        value = self.get_query_argument("due", "")
        if not value:
            return None
        try:
            due = datetime.fromisoformat(value)
        except ValueError:
            raise ServiceError(400, f"bad due date {value[:64]!r}: give an ISO 8601 date and time") from None
        # nbgrader's gradebook keeps naive UTC: a date without an offset is read the same way.
        return due if due.tzinfo else due.replace(tzinfo=UTC)

    async def put(self, course: str, assignment: str) -> None:
        upload, files = await self.checked_upload()
        due = self.due_argument()
        sha = await self.run(self.ctx.store.blobs.commit, upload)
        force = self.get_query_argument("force", "").lower() in TRUE
        record = await self.run(
            self.ctx.store.release,
            course,
            assignment,
            sha256=sha,
            size=upload.size,
            files=files,
            by=self.caller.name,
            force=force,
            due=due,
        )
        log.info("%s released %s/%s (%s, %d bytes)", self.caller.name, course, assignment, sha[:12], upload.size)
        self.reply(record, 201)

    async def delete(self, course: str, assignment: str) -> None:
        self.require_staff(self.ident(course, "course"), "unrelease assignments")
        record = await self.run(self.ctx.store.unrelease, course, self.ident(assignment, "assignment"))
        log.info("%s unreleased %s/%s", self.caller.name, course, assignment)
        self.reply({"unreleased": record})


class AssignmentArchiveHandler(ApiHandler):
    async def get(self, course: str, assignment: str) -> None:
        self.require_member(self.ident(course, "course"))
        record = await self.run(self.ctx.store.assignment, course, self.ident(assignment, "assignment"))
        await self.send_blob(record["sha256"], f"{assignment}.tar.gz")


class SubmitHandler(UploadHandler):
    def authorize_upload(self) -> None:
        course = self.ident(self.path_kwargs["course"], "course")
        self.ident(self.path_kwargs["assignment"], "assignment")
        self.refuse_identity_args()
        if not self.caller.is_student(course):
            raise ServiceError(403, f"only students of {course} submit assignments")

    async def post(self, course: str, assignment: str) -> None:
        upload, files = await self.checked_upload()
        sha = await self.run(self.ctx.store.blobs.commit, upload)
        record = await self.run(
            self.ctx.store.submit, course, assignment, self.caller.name, sha256=sha, size=upload.size, files=files
        )
        log.info(
            "%s submitted %s/%s at %s (%s, %d bytes)",
            self.caller.name,
            course,
            assignment,
            record["timestamp"],
            sha[:12],
            upload.size,
        )
        self.reply(record, 201)


class MySubmissionsHandler(ApiHandler):
    async def get(self) -> None:
        self.refuse_identity_args()
        course = self.opt_ident("course", "course")
        records = await self.run(
            self.ctx.store.submissions,
            {course} if course else None,
            assignment=self.opt_ident("assignment", "assignment"),
            student=self.caller.name,
        )
        self.reply({"submissions": records if self.caller.kind == "user" else []})


class CourseSubmissionsHandler(ApiHandler):
    async def get(self, course: str) -> None:
        self.ident(course, "course")
        student = self.get_query_argument("student", "") or None
        if not self.caller.is_staff(course):
            if not self.caller.is_student(course):
                raise ServiceError(403, f"{self.caller.name} is not in course {course}")
            if student is not None and student != self.caller.name:
                raise ServiceError(403, "students see only their own submissions")
            student = self.caller.name
        records = await self.run(
            self.ctx.store.submissions,
            {course},
            assignment=self.opt_ident("assignment", "assignment"),
            student=student,
            latest_only=self.get_query_argument("latest", "").lower() in TRUE,
        )
        self.reply({"submissions": records})


class SubmissionBase(ApiHandler):
    async def visible_submission(self, course: str, submission_id: str) -> dict:
        """The submission, if the caller is staff of its course or the student who made it (else 404)."""
        self.ident(course, "course")
        if not (self.caller.is_staff(course) or self.caller.is_student(course)):
            raise ServiceError(403, f"{self.caller.name} is not in course {course}")
        record = await self.run(self.ctx.store.submission, course, int(submission_id))
        if not self.caller.is_staff(course) and record["student"] != self.caller.name:
            raise ServiceError(404, f"no submission {submission_id} of yours in {course}")
        return record


class SubmissionHandler(SubmissionBase):
    async def get(self, course: str, submission_id: str) -> None:
        self.reply(await self.visible_submission(course, submission_id))


class SubmissionArchiveHandler(SubmissionBase):
    async def get(self, course: str, submission_id: str) -> None:
        record = await self.visible_submission(course, submission_id)
        await self.send_blob(record["sha256"], f"{record['assignment']}-{record['student']}.tar.gz")


class FeedbackHandler(UploadHandler, SubmissionBase):
    def authorize_upload(self) -> None:
        course = self.ident(self.path_kwargs["course"], "course")
        self.require_staff(course, "release feedback")

    async def get(self, course: str, submission_id: str) -> None:
        record = await self.visible_submission(course, submission_id)
        if not record["feedback"]:
            raise ServiceError(404, f"no feedback released for submission {submission_id}")
        pages = await self.run(self._read_pages, record["feedback"])
        self.set_header("Content-Type", "application/gzip")
        self.finish(pack_files(pages))

    def _read_pages(self, feedback: list[dict]) -> dict[str, bytes]:
        pages = {}
        for fb in feedback:
            with self.ctx.store.blobs.open(fb["sha256"]) as f:
                pages[f"{fb['notebook']}.html"] = f.read()
        return pages

    async def put(self, course: str, submission_id: str) -> None:
        upload, _ = await self.checked_upload(kind="feedback")
        await self.run(self.ctx.store.submission, course, int(submission_id))
        with upload.open() as f:
            contents = await asyncio.to_thread(read_files, f, self.ctx.limits, "feedback")
        pages = {}
        for name, content in contents.items():
            sha = await self.run(self.ctx.store.blobs.put, content)
            pages[name[: -len(".html")]] = (sha, len(content))
        record = await self.run(self.ctx.store.release_feedback, course, int(submission_id), pages, self.caller.name)
        log.info("%s released feedback for submission %s in %s", self.caller.name, submission_id, course)
        self.reply(record)


def make_app(ctx: Context, prefix: str) -> web.Application:
    if not prefix.endswith("/"):
        prefix += "/"
    api = prefix + "api/v1"
    course = r"/courses/(?P<course>[^/]+)"
    assignment = course + r"/assignments/(?P<assignment>[^/]+)"
    submission = course + r"/submissions/(?P<submission_id>[0-9]{1,18})"
    kw = {"ctx": ctx}
    routes = [
        (prefix.rstrip("/") + r"/?", HealthHandler, {"name": "atlaslab-exchange"}),
        (api + r"/whoami", WhoAmIHandler, kw),
        (api + r"/assignments", AssignmentsHandler, kw),
        (api + r"/submissions", MySubmissionsHandler, kw),
        (api + assignment, AssignmentHandler, kw),
        (api + assignment + r"/archive", AssignmentArchiveHandler, kw),
        (api + assignment + r"/submissions", SubmitHandler, kw),
        (api + course + r"/submissions", CourseSubmissionsHandler, kw),
        (api + submission, SubmissionHandler, kw),
        (api + submission + r"/archive", SubmissionArchiveHandler, kw),
        (api + submission + r"/feedback", FeedbackHandler, kw),
    ]
    return web.Application(routes, log_function=_log_request, hub_auth=ctx.hub_auth, service_title="the exchange")


def _log_request(handler: web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    who = getattr(getattr(handler, "caller", None), "name", "-")
    log.log(
        level,
        "%d %s %s (%s) %.1fms",
        status,
        handler.request.method,
        handler.request.path,
        who,
        1000 * handler.request.request_time(),
    )


__all__ = ["Caller", "Context", "make_app"]
