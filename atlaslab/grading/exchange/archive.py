"""The exchange's payloads: tar.gz archives, checked strictly wherever they are unpacked.

Every archive is read as a stream, once, with bounds on everything: the bytes it expands to, the number of
members, the size of tar's own extended headers. Only regular files and directories are accepted; a member
with an absolute path, a ``..`` component, a backslash or a control character in its name, a symlink, a hard
link, a device, a FIFO, a sparse file, a duplicate, or a notebook with an odd name makes the whole archive
invalid (:class:`ArchiveError`, with a message that says which member and why). Nothing is ever written
outside a fresh destination directory, and nothing is created there but plain files and directories.

The service checks uploads with :func:`scan`; the client unpacks downloads with :func:`unpack`, which runs
the same checks again, so a bad archive in the store could still not harm a student's or a grader's files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

MiB = 1024 * 1024
# A notebook's file name: what nbgrader uses as the notebook id, shown in the formgrader and in URLs.
NOTEBOOK_NAME = re.compile(r"^\w[\w .()+,=@-]{0,200}\.ipynb$")
FEEDBACK_NAME = re.compile(r"^\w[\w .()+,=@-]{0,200}\.html$")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, *tarfile.GNU_TYPES)
_MAX_EXTENDED_HEADER = 64 * 1024
_CHUNK = 256 * 1024


class ArchiveError(ValueError):
    """The archive is not acceptable; the message says why, for the person who sent it."""


@dataclass(frozen=True)
class Limits:
    max_files: int = 1000
    max_unpacked: int = 256 * MiB
    max_path: int = 1024


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_name(name: str) -> str:
    """The member's path, relative and clean (``""`` for the archive's root directory), or ArchiveError."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveError(f"member name {name!r} is not valid UTF-8") from None
    if _BAD_CHARS.search(name):
        raise ArchiveError(f"member name {name!r} contains a backslash or a control character")
    if name.startswith("/"):
        raise ArchiveError(f"member {name!r} has an absolute path")
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name in ("", "."):
        return ""
    for part in name.split("/"):
        if part == "..":
            raise ArchiveError(f"member {name!r} leaves its directory ('..')")
        if part in ("", "."):
            raise ArchiveError(f"member {name!r} has an empty or '.' path component")
        if len(part.encode()) > 255:
            raise ArchiveError(f"member {name!r} has a path component longer than 255 bytes")
    return name


def notebooks(files: list[FileEntry] | list[dict]) -> list[str]:
    """The notebook ids: names (without .ipynb) of the notebooks at the top of the archive, sorted."""
    paths = [f.path if isinstance(f, FileEntry) else f["path"] for f in files]
    return sorted(p[: -len(".ipynb")] for p in paths if "/" not in p and p.endswith(".ipynb"))


class _TarInfo(tarfile.TarInfo):
    """Refuses oversized extended headers before tarfile reads them into memory."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED_HEADERS and self.size > _MAX_EXTENDED_HEADER:
            raise ArchiveError(f"member {self.name!r} has an extended header of {self.size} bytes")
        return super()._proc_member(tarfile_)


class _Bounded(io.RawIOBase):
    """The decompressed stream, cut off with ArchiveError once it passes ``limit`` bytes."""

    def __init__(self, raw: BinaryIO, limit: int):
        self.raw = raw
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.count += n
        if self.count > self.limit:
            raise ArchiveError(f"the archive expands to more than {self.limit} bytes")
        return n


def _members(fileobj: BinaryIO, limits: Limits, kind: str) -> Iterator[tuple[str, tarfile.TarInfo, BinaryIO | None]]:
    """Yield (clean path, member, data stream or None for a directory) for each member, checked.

    ``kind`` is "files" (assignments and submissions) or "feedback" (only NOTEBOOK.html at the top).
    The data stream of a member must be read before asking for the next one (the archive is a stream).
    """
    # Headers and padding: 512 bytes per header, up to 511 of padding, end-of-archive blocks.
    budget = limits.max_unpacked + (limits.max_files + 4) * 2048 + _MAX_EXTENDED_HEADER * 4
    stream = _Bounded(gzip.GzipFile(fileobj=fileobj, mode="rb"), budget)
    files: set[str] = set()
    dirs: set[str] = set()
    total = 0
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_TarInfo) as tar:
            for member in tar:
                count += 1
                if count > limits.max_files:
                    raise ArchiveError(f"the archive has more than {limits.max_files} members")
                path = normalize_name(member.name)
                if len(path.encode()) > limits.max_path:
                    raise ArchiveError(f"member {path[:80]!r}... has a path longer than {limits.max_path} bytes")
                _check_type(member, path)
                if member.isdir():
                    if kind == "feedback" and path:
                        raise ArchiveError(f"feedback holds only NOTEBOOK.html files, not the directory {path!r}")
                    if path in files:
                        raise ArchiveError(f"member {path!r} is both a file and a directory")
                    _add_parents(path, files, dirs, include_self=True)
                    yield path, member, None
                    continue
                if not path:
                    raise ArchiveError("a file member has an empty name")
                if path in files or path in dirs:
                    raise ArchiveError(f"member {path!r} appears twice")
                _add_parents(path, files, dirs, include_self=False)
                files.add(path)
                _check_name(path, kind)
                total += member.size
                if total > limits.max_unpacked:
                    raise ArchiveError(f"the archive's files add up to more than {limits.max_unpacked} bytes")
                data = tar.extractfile(member)
                assert data is not None
                yield path, member, data
    except ArchiveError:
        raise
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError) as e:
        raise ArchiveError(f"not a valid tar.gz archive: {e}") from None


def _check_type(member: tarfile.TarInfo, path: str) -> None:
    if member.issym() or member.islnk():
        raise ArchiveError(f"member {path!r} is a link (only files and directories are accepted)")
    if member.ischr() or member.isblk() or member.isfifo():
        raise ArchiveError(f"member {path!r} is a device or a FIFO (only files and directories are accepted)")
    if member.issparse() or not (member.isreg() or member.isdir()):
        raise ArchiveError(f"member {path!r} is not a regular file or a directory")


def _check_name(path: str, kind: str) -> None:
    base = path.rsplit("/", 1)[-1]
    if kind == "feedback":
        if "/" in path or not FEEDBACK_NAME.match(base):
            raise ArchiveError(f"feedback holds only NOTEBOOK.html files at the top, not {path!r}")
    elif base.endswith(".ipynb") and not NOTEBOOK_NAME.match(base):
        raise ArchiveError(
            f"notebook name {base!r} is not accepted: use letters, digits, spaces and . _ ( ) + , = @ -,"
            " starting with a letter or digit"
        )


def _add_parents(path: str, files: set[str], dirs: set[str], *, include_self: bool) -> None:
    parts = path.split("/") if path else []
    upto = len(parts) if include_self else len(parts) - 1
    for i in range(1, upto + 1):
        parent = "/".join(parts[:i])
        if parent in files:
            raise ArchiveError(f"member {path!r} is inside {parent!r}, which is a file")
        dirs.add(parent)


def _copy_hashing(data: BinaryIO, size: int, sink: Callable[[bytes], object] | None) -> str:
    digest = hashlib.sha256()
    seen = 0
    while chunk := data.read(_CHUNK):
        seen += len(chunk)
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
    if seen != size:
        raise ArchiveError(f"a member is truncated ({seen} of {size} bytes)")
    return digest.hexdigest()


def scan(fileobj: BinaryIO, limits: Limits = Limits(), kind: str = "files") -> list[FileEntry]:
    """Check the whole archive; return its files with their sizes and SHA-256, in archive order."""
    out: list[FileEntry] = []
    for path, member, data in _members(fileobj, limits, kind):
        if data is not None:
            out.append(FileEntry(path, member.size, _copy_hashing(data, member.size, None)))
    return out


def read_files(fileobj: BinaryIO, limits: Limits = Limits(), kind: str = "files") -> dict[str, bytes]:
    """Check the archive and return its files' contents (for small archives, such as feedback)."""
    out: dict[str, bytes] = {}
    for path, member, data in _members(fileobj, limits, kind):
        if data is not None:
            chunks: list[bytes] = []
            _copy_hashing(data, member.size, chunks.append)
            out[path] = b"".join(chunks)
    return out


def unpack(fileobj: BinaryIO, dest: Path, limits: Limits = Limits(), kind: str = "files") -> list[FileEntry]:
    """Unpack into ``dest``, which must not exist yet; on any error, what was written is left for the caller."""
    dest = Path(dest)
    dest.mkdir(mode=0o755)
    out: list[FileEntry] = []
    for path, member, data in _members(fileobj, limits, kind):
        target = dest / path
        if data is None:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            digest = _copy_hashing(data, member.size, f.write)
        if member.mtime:
            os.utime(target, (member.mtime, member.mtime))
        out.append(FileEntry(path, member.size, digest))
    return out


def pack(directory: Path, skip: Callable[[Path], bool] | None = None) -> bytes:
    """A tar.gz of the files and directories under ``directory`` (links and special files are left out)."""
    directory = Path(directory)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
        for root, dirnames, filenames in os.walk(directory):
            base = Path(root)
            wanted = [d for d in sorted(dirnames) if not (base / d).is_symlink() and not (skip and skip(base / d))]
            dirnames[:] = wanted
            for name in [*wanted, *sorted(filenames)]:
                path = base / name
                if path.is_symlink() or not (path.is_file() or path.is_dir()) or (skip and skip(path)):
                    continue
                info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o755 if info.isdir() else 0o644
                if info.isdir():
                    tar.addfile(info)
                else:
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
    return buf.getvalue()


def pack_files(files: dict[str, bytes], mtime: float = 0) -> bytes:
    """A tar.gz of the given name -> content pairs (names already checked)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(mtime)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()
