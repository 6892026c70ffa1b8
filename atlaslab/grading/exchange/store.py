"""Where the exchange keeps things: metadata in SQL, file contents in a content-addressed blob store.

Metadata (SQLAlchemy 2, SQLite by default, PostgreSQL through its URL): released assignments (with their due
date, from the instructor's gradebook at release time), every submission
(never overwritten: who, when, SHA-256 and size of the archive, and of each file in it) and the feedback
released for a submission. Contents: blobs named by their SHA-256, written to a temporary file and renamed
into place, so a reader never sees half a blob and two writers of the same content write the same file.

Several service processes may share one database and one blob directory: every write is one short
transaction (``BEGIN IMMEDIATE`` on SQLite, so two writers queue instead of failing), uniqueness is enforced
by the database (one release per course and name, one submission per student and microsecond, one feedback
file per submission and notebook), and a write that loses a race is retried against the new state.

The blob store is an interface (:class:`BlobStore`) with two implementations: a directory (one machine, or a
shared volume on Kubernetes) and an S3-compatible object store (``s3://BUCKET/PREFIX``, needs boto3).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .archive import notebooks

log = logging.getLogger("atlaslab.exchange")
T = TypeVar("T")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Conflict(Exception):
    """The request conflicts with what the exchange holds (e.g. releasing over a release without force)."""


class NotFound(Exception):
    """No such assignment, submission or feedback."""


# ---- blobs ---------------------------------------------------------------------------------------------------


class Upload:
    """An incoming payload, spooled to a local temporary file and hashed as it arrives."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "xb")  # noqa: SIM115 (closed in close())
        os.chmod(path, 0o600)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class BlobStore(ABC):
    """Content-addressed storage: a blob is named by the SHA-256 of its bytes and never changes."""

    @abstractmethod
    def new_upload(self) -> Upload:
        """A local temporary file to receive a payload (checked before it is committed)."""

    @abstractmethod
    def commit(self, upload: Upload) -> str:
        """Store the upload's content under its SHA-256 (atomically: all or nothing); return the SHA-256."""

    @abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """Read a blob; NotFound if the store has no such blob."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    def put(self, data: bytes) -> str:
        upload = self.new_upload()
        try:
            upload.write(data)
            upload.close()
            return self.commit(upload)
        finally:
            upload.discard()


class DirectoryBlobStore(BlobStore):
    """Blobs as files ROOT/objects/ab/cd/abcd…, written via ROOT/tmp (same file system) and an atomic rename."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sweep_tmp()

    def _sweep_tmp(self, older_than: float = 24 * 3600) -> None:
        """Remove uploads abandoned by a crash (old ones only: another instance may be writing right now)."""
        now = time.time()
        for path in self.tmp.iterdir():
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
            except FileNotFoundError:
                pass

    def path_for(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise NotFound(f"bad blob name {sha256!r}")
        return self.objects / sha256[:2] / sha256[2:4] / sha256

    def new_upload(self) -> Upload:
        return Upload(self.tmp / f"{uuid.uuid4().hex}.part")

    def commit(self, upload: Upload) -> str:
        upload.close()
        sha = upload.sha256
        final = self.path_for(sha)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if final.exists() and final.stat().st_size == upload.size:
            upload.discard()  # same content already stored (by us or by another instance)
            return sha
        os.replace(upload.path, final)
        _fsync_dir(final.parent)
        return sha

    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self.path_for(sha256), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is missing from the store") from None

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3BlobStore(BlobStore):
    """Blobs as objects BUCKET/PREFIX/ab/cd/abcd… in an S3-compatible object store (S3, MinIO, Ceph, …).

    An object appears whole or not at all when its PUT completes, and its key is its content's hash, so
    several instances may store the same blob at once. Uploads are spooled to a local directory first (they
    are checked before anything is stored). Endpoint, region and credentials come from boto3's usual
    environment: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or a role).
    """

    def __init__(self, bucket: str, prefix: str = "", spool: Path | None = None, client: Any = None):
        if client is None:
            import boto3  # only sites that keep blobs in object storage need boto3

            client = boto3.client("s3")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.spool = Path(spool) if spool else Path(tempfile.mkdtemp(prefix="atlaslab-exchange-"))
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)

    def key(self, sha256: str) -> str:
        if not SHA256.match(sha256):
            raise NotFound(f"bad blob name {sha256!r}")
        return "/".join(p for p in (self.prefix, sha256[:2], sha256[2:4], sha256) if p)

    def new_upload(self) -> Upload:
        return Upload(self.spool / f"{uuid.uuid4().hex}.part")

    def commit(self, upload: Upload) -> str:
        upload.close()
        sha = upload.sha256
        try:
            if not self.exists(sha):
                self.client.upload_file(str(upload.path), self.bucket, self.key(sha))
        finally:
            upload.discard()
        return sha

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise NotFound(f"blob {sha256} is missing from the store") from None

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise


def open_blob_store(location: str, spool: Path | None = None) -> BlobStore:
    """The blob store at ``location``: a directory (or file:// URL), or s3://BUCKET/PREFIX (``spool``: local
    directory for uploads on their way to object storage)."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        return S3BlobStore(bucket, prefix, spool)
    if location.startswith("file://"):
        location = location[len("file://") :]
    return DirectoryBlobStore(Path(location))


# ---- metadata ------------------------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out; stored naive UTC (microseconds kept on SQLite and PG)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the exchange's database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


class Assignment(Base):
    """A released assignment: the archive students fetch. Releasing again (force) replaces it."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("course", "name", name="uq_assignment"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    course: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[list] = mapped_column(JSON)
    released_by: Mapped[str] = mapped_column(String(255))
    released_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Added after the first releases: create_schema adds it to databases made before it (NULL: no due date).
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# Columns added to existing tables since their creation: (table, column) in the order they were added.
ADDED_COLUMNS = [("assignments", "due_at")]


class Submission(Base):
    """One submission of one student; every one is kept."""

    __tablename__ = "submissions"
    __table_args__ = (
        UniqueConstraint("course", "assignment", "student", "timestamp", name="uq_submission"),
        Index("ix_submission_lookup", "course", "assignment", "student"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    course: Mapped[str] = mapped_column(String(128))
    assignment: Mapped[str] = mapped_column(String(128))
    student: Mapped[str] = mapped_column(String(255))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[list] = mapped_column(JSON)


class Feedback(Base):
    """The feedback page of one notebook of one submission; releasing it again replaces it."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("submission_id", "notebook", name="uq_feedback"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    notebook: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    released_by: Mapped[str] = mapped_column(String(255))
    released_at: Mapped[datetime] = mapped_column(UTCDateTime)


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        # Transactions are begun explicitly below (pysqlite's own BEGIN would always be DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        # A writer takes the write lock up front: two writers queue (busy_timeout) rather than one failing
        # when it upgrades a read lock that another writer's commit made stale.
        writing = connection.get_execution_options().get("atlaslab_write")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


class ExchangeStore:
    """The exchange's records and files. Methods take plain values and return JSON-ready dicts."""

    def __init__(self, db_url: str, blobs: BlobStore):
        self.engine = make_engine(db_url)
        self.blobs = blobs
        self._reader = sessionmaker(self.engine)
        self._writer = sessionmaker(self.engine.execution_options(atlaslab_write=True))

    def create_schema(self) -> None:
        """Create missing tables and add missing columns; safe when several instances start at once."""
        for attempt in range(5):
            try:
                with self.engine.execution_options(atlaslab_write=True).begin() as conn:
                    Base.metadata.create_all(conn)
                    _add_missing_columns(conn)
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                # Another instance created the same table or added the same column first: look again.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _write(self, fn: Callable[[Session], T], attempts: int = 8) -> T:
        """Run ``fn`` in one write transaction; on losing a race (unique constraint, lock), run it again."""
        for attempt in range(attempts):
            try:
                with self._writer() as session, session.begin():
                    return fn(session)
            except IntegrityError as e:
                if attempt == attempts - 1:
                    raise Conflict(f"conflicting write: {e.orig}") from None
            except OperationalError as e:
                if "locked" not in str(e).lower() or attempt == attempts - 1:
                    raise
            time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    # ---- assignments -----------------------------------------------------------------------------------------

    def release(
        self,
        course: str,
        name: str,
        *,
        sha256: str,
        size: int,
        files: list[dict],
        by: str,
        force: bool,
        due: datetime | None = None,
    ) -> dict:
        """Record a release; ``due`` (aware) is the assignment's due date, None when its gradebook has none."""

        def write(session: Session) -> dict:
            row = _find_assignment(session, course, name)
            if row is not None and not force:
                raise Conflict(f"{course}/{name} is already released; release again with force to replace it")
            if row is None:
                row = Assignment(course=course, name=name)
                session.add(row)
            row.sha256, row.size, row.files = sha256, size, files
            row.released_by, row.released_at, row.due_at = by, utcnow(), due
            session.flush()
            return _assignment(row)

        return self._write(write)

    def unrelease(self, course: str, name: str) -> dict:
        def write(session: Session) -> dict:
            row = _find_assignment(session, course, name)
            if row is None:
                raise NotFound(f"{course}/{name} is not released")
            model = _assignment(row)
            session.delete(row)
            return model

        return self._write(write)

    def assignment(self, course: str, name: str) -> dict:
        with self._reader() as session:
            row = _find_assignment(session, course, name)
            if row is None:
                raise NotFound(f"{course}/{name} is not released")
            return _assignment(row)

    def assignments(self, courses: set[str] | None, name: str | None = None) -> list[dict]:
        """Released assignments in ``courses`` (None: all), optionally only those called ``name``."""
        query = select(Assignment).order_by(Assignment.course, Assignment.name)
        if courses is not None:
            if not courses:
                return []
            query = query.where(Assignment.course.in_(sorted(courses)))
        if name:
            query = query.where(Assignment.name == name)
        with self._reader() as session:
            return [_assignment(row) for row in session.scalars(query)]

    # ---- submissions -----------------------------------------------------------------------------------------

    def submit(self, course: str, assignment: str, student: str, *, sha256: str, size: int, files: list[dict]) -> dict:
        stamp = [utcnow()]

        def write(session: Session) -> dict:
            released = session.scalars(
                select(Assignment.id).where(Assignment.course == course, Assignment.name == assignment)
            ).first()
            if released is None:
                raise NotFound(f"{course}/{assignment} is not released: there is nothing to submit to")
            row = Submission(
                course=course,
                assignment=assignment,
                student=student,
                timestamp=stamp[0],
                sha256=sha256,
                size=size,
                files=files,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                # Two submissions of one student in one microsecond (two instances): the next one is later.
                stamp[0] = max(utcnow(), stamp[0] + timedelta(microseconds=1))
                raise
            return _submission(row, latest=True, feedback=[])

        return self._write(write)

    def submissions(
        self,
        courses: set[str] | None,
        *,
        assignment: str | None = None,
        student: str | None = None,
        latest_only: bool = False,
    ) -> list[dict]:
        """Submissions in ``courses`` (None: all), oldest first, each marked latest or not for its student."""
        query = select(Submission).order_by(Submission.timestamp, Submission.id)
        if courses is not None:
            if not courses:
                return []
            query = query.where(Submission.course.in_(sorted(courses)))
        if assignment:
            query = query.where(Submission.assignment == assignment)
        if student:
            query = query.where(Submission.student == student)
        with self._reader() as session:
            rows = list(session.scalars(query))
            feedback = self._feedback_for(session, [r.id for r in rows])
        latest: dict[tuple[str, str, str], int] = {}
        for row in rows:  # oldest first: the last one seen per key is the latest
            latest[(row.course, row.assignment, row.student)] = row.id
        newest = set(latest.values())
        out = [_submission(r, latest=r.id in newest, feedback=feedback.get(r.id, [])) for r in rows]
        return [s for s in out if s["latest"]] if latest_only else out

    def submission(self, course: str, submission_id: int) -> dict:
        with self._reader() as session:
            row = session.get(Submission, submission_id)
            if row is None or row.course != course:
                raise NotFound(f"no submission {submission_id} in {course}")
            newest = session.scalars(
                select(Submission.id)
                .where(
                    Submission.course == row.course,
                    Submission.assignment == row.assignment,
                    Submission.student == row.student,
                )
                .order_by(Submission.timestamp.desc(), Submission.id.desc())
            ).first()
            feedback = self._feedback_for(session, [row.id]).get(row.id, [])
            return _submission(row, latest=newest == row.id, feedback=feedback)

    @staticmethod
    def _feedback_for(session: Session, ids: list[int]) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(Feedback).where(Feedback.submission_id.in_(chunk)).order_by(Feedback.notebook)
            for fb in session.scalars(query):
                out.setdefault(fb.submission_id, []).append(_feedback(fb))
        return out

    # ---- feedback --------------------------------------------------------------------------------------------

    def release_feedback(self, course: str, submission_id: int, pages: dict[str, tuple[str, int]], by: str) -> dict:
        """Record feedback pages (notebook -> (sha256, size)) for a submission, replacing earlier ones."""

        def write(session: Session) -> dict:
            row = session.get(Submission, submission_id)
            if row is None or row.course != course:
                raise NotFound(f"no submission {submission_id} in {course}")
            existing = {
                fb.notebook: fb for fb in session.scalars(select(Feedback).where(Feedback.submission_id == row.id))
            }
            now = utcnow()
            for notebook, (sha, size) in sorted(pages.items()):
                fb = existing.get(notebook)
                if fb is None:
                    fb = Feedback(submission_id=row.id, notebook=notebook)
                    session.add(fb)
                fb.sha256, fb.size, fb.released_by, fb.released_at = sha, size, by, now
            session.flush()
            return {"submission": row.id, "feedback": self._feedback_for(session, [row.id]).get(row.id, [])}

        return self._write(write)


def _add_missing_columns(conn: Any) -> None:
    """Add the columns of ADDED_COLUMNS that a database made by an older exchange lacks (nullable, so every
    stored row keeps its values and reads as "not set" in the new column)."""
    inspector = inspect(conn)
    for table_name, column_name in ADDED_COLUMNS:
        present = {c["name"] for c in inspector.get_columns(table_name)}
        if column_name in present:
            continue
        column = Base.metadata.tables[table_name].columns[column_name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {column_name} {kind}")
        log.info("added column %s.%s to the exchange's database", table_name, column_name)


def _find_assignment(session: Session, course: str, name: str) -> Assignment | None:
    return session.scalars(select(Assignment).where(Assignment.course == course, Assignment.name == name)).first()


def _assignment(row: Assignment) -> dict:
    return {
        "course": row.course,
        "assignment": row.name,
        "sha256": row.sha256,
        "size": row.size,
        "notebooks": notebooks(row.files),
        "files": row.files,
        "released_by": row.released_by,
        "released_at": iso(row.released_at),
        "due": iso(row.due_at) if row.due_at is not None else None,
    }


def _submission(row: Submission, *, latest: bool, feedback: list[dict]) -> dict:
    return {
        "id": row.id,
        "course": row.course,
        "assignment": row.assignment,
        "student": row.student,
        "timestamp": iso(row.timestamp),
        "sha256": row.sha256,
        "size": row.size,
        "notebooks": notebooks(row.files),
        "files": row.files,
        "latest": latest,
        "feedback": feedback,
    }


def _feedback(fb: Feedback) -> dict:
    return {
        "notebook": fb.notebook,
        "sha256": fb.sha256,
        "size": fb.size,
        "released_by": fb.released_by,
        "released_at": iso(fb.released_at),
    }
