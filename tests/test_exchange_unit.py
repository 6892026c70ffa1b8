"""The exchange without a hub: archive checks, the store under concurrent writers, the hub settings it adds."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from harness import free_port
from sqlalchemy import Column, MetaData, Table, UniqueConstraint, create_engine, text
from traitlets.config import Config

from atlaslab.config import parse
from atlaslab.core.state import StateDir
from atlaslab.grading import hubpart as grading
from atlaslab.grading.exchange.archive import ArchiveError, Limits, pack, pack_files, read_files, scan, unpack
from atlaslab.grading.exchange.store import (
    Base,
    Conflict,
    DirectoryBlobStore,
    ExchangeStore,
    NotFound,
    S3BlobStore,
    open_blob_store,
)
from atlaslab.hub import apply as apply_mod


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def m(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


# ---- archives ------------------------------------------------------------------------------------------------

BAD = {
    "dotdot": [(m("../evil"), b"x")],
    "inner-dotdot": [(m("a/../../evil"), b"x")],
    "absolute": [(m("/tmp/evil"), b"x")],
    "dot-component": [(m("a/./b"), b"x")],
    "symlink": [(m("l", tarfile.SYMTYPE, linkname="/etc/shadow"), None)],
    "hardlink": [(m("f"), b"x"), (m("h", tarfile.LNKTYPE, linkname="/etc/shadow"), None)],
    "chardev": [(m("c", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
    "blockdev": [(m("b", tarfile.BLKTYPE, devmajor=8), None)],
    "fifo": [(m("p", tarfile.FIFOTYPE), None)],
    "control-char": [(m("a\nb"), b"x")],
    "backslash": [(m("..\\evil"), b"x")],
    "bad-notebook-name": [(m(".hidden.ipynb"), b"{}")],
    "duplicate": [(m("f"), b"1"), (m("f"), b"2")],
    "file-then-dir": [(m("f"), b"1"), (m("f/g"), b"2")],
    "dir-over-file": [(m("f"), b"1"), (m("f", tarfile.DIRTYPE), None)],
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_members_are_refused_by_scan_and_unpack(name: str, tmp_path: Path) -> None:
    data = tar_of(*BAD[name])
    with pytest.raises(ArchiveError):
        scan(io.BytesIO(data))
    with pytest.raises(ArchiveError):
        unpack(io.BytesIO(data), tmp_path / "out")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_symlink() or not (p.is_file() or p.is_dir())]
    assert leftovers == []


def test_limits_on_size_members_and_extended_headers() -> None:
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        scan(io.BytesIO(tar_of((m("big"), bytes(5000)))), Limits(max_unpacked=1000))
    with pytest.raises(ArchiveError, match="more than 3 members"):
        scan(io.BytesIO(tar_of(*[(m(f"f{i}"), b"") for i in range(4)])), Limits(max_files=3))
    huge_pax = m("x", pax_headers={"comment": "a" * 200_000})
    with pytest.raises(ArchiveError, match="extended header"):
        scan(io.BytesIO(tar_of((huge_pax, b"x"), fmt=tarfile.PAX_FORMAT)))
    for junk in (b"", b"not gzip", tar_of((m("f"), b"x"))[:40]):
        with pytest.raises(ArchiveError, match="not a valid"):
            scan(io.BytesIO(junk))


def test_feedback_archives_hold_only_top_level_html() -> None:
    assert read_files(io.BytesIO(pack_files({"ps1.html": b"<p>ok</p>"})), kind="feedback") == {"ps1.html": b"<p>ok</p>"}
    for bad in ({"sub/ps1.html": b""}, {"ps1.js": b""}, {".x.html": b""}):
        with pytest.raises(ArchiveError):
            read_files(io.BytesIO(pack_files(bad)), kind="feedback")


def test_pack_and_unpack_round_trip_without_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "ps1.ipynb").write_text("{}")
    (src / "data" / "x.csv").write_bytes(b"1,2\n")
    (src / "link").symlink_to("/etc/passwd")
    os.mkfifo(src / "pipe")
    data = pack(src)
    files = scan(io.BytesIO(data))
    assert [f.path for f in files] == ["ps1.ipynb", "data/x.csv"]
    assert files[0].sha256 == hashlib.sha256(b"{}").hexdigest()
    out = tmp_path / "out"
    assert unpack(io.BytesIO(data), out) == files
    assert (out / "data" / "x.csv").read_bytes() == b"1,2\n"
    assert not (out / "link").exists() and not (out / "pipe").exists()
    with pytest.raises(FileExistsError):
        unpack(io.BytesIO(data), out)  # never into an existing directory


# ---- the store -----------------------------------------------------------------------------------------------


def _files(data: bytes) -> list[dict]:
    return [f.to_dict() for f in scan(io.BytesIO(data))]


def test_blobs_are_content_addressed_private_and_atomic(tmp_path: Path) -> None:
    blobs = DirectoryBlobStore(tmp_path / "blobs")
    sha = blobs.put(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest() and blobs.put(b"hello") == sha
    path = blobs.path_for(sha)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and blobs.open(sha).read() == b"hello"
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    with pytest.raises(NotFound):
        blobs.open("../../etc/passwd")


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (the machine's own binaries), as the postgres account when root."""
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    bindir = next((Path(p).parent for p in [shutil.which("pg_ctl")] if p), None)
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl) on this machine")
    as_user = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
    root = Path(tempfile.mkdtemp(prefix="atlaslab-pg-"))
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=root, **as_user)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "atlaslab", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://atlaslab@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_stores_on_one_database_keep_every_concurrent_submission(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'exchange.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    stores = [ExchangeStore(url, DirectoryBlobStore(tmp_path / "blobs")) for _ in range(2)]
    for s in stores:
        s.create_schema()
    release = pack_files({"ps1.ipynb": b"{}"})
    sha = stores[0].blobs.put(release)
    stores[0].release("c", "ps1", sha256=sha, size=len(release), files=_files(release), by="t", force=False)
    with pytest.raises(Conflict):
        stores[1].release("c", "ps1", sha256=sha, size=len(release), files=_files(release), by="t", force=False)
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            store = stores[i % 2]
            data = pack_files({"ps1.ipynb": json.dumps({"i": i}).encode()})
            digest = store.blobs.put(data)
            store.submit("c", "ps1", f"s{i % 3}", sha256=digest, size=len(data), files=_files(data))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    subs = stores[1].submissions({"c"})
    assert len(subs) == 40 and len({(s["student"], s["timestamp"]) for s in subs}) == 40
    assert sorted(s["student"] for s in subs if s["latest"]) == ["s0", "s1", "s2"]
    for s in subs:
        with stores[0].blobs.open(s["sha256"]) as f:
            assert hashlib.sha256(f.read()).hexdigest() == s["sha256"]
    assert stores[0].unrelease("c", "ps1")["assignment"] == "ps1"
    with pytest.raises(NotFound):
        stores[1].submit("c", "ps1", "s0", sha256=sha, size=1, files=[])


def _db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'exchange.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    # The module's PostgreSQL server is shared: each test starts from an empty database.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS feedback, submissions, assignments CASCADE"))
    engine.dispose()
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_release_keeps_its_due_date(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = ExchangeStore(_db_url(backend, tmp_path, request), DirectoryBlobStore(tmp_path / "blobs"))
    store.create_schema()
    data = pack_files({"ps1.ipynb": b"{}"})
    sha = store.blobs.put(data)
    # Given in Casablanca's summer time: stored and returned in UTC, to the microsecond.
    due = datetime(2031, 3, 4, 23, 59, 30, 123456, tzinfo=timezone(timedelta(hours=1)))
    record = store.release("c", "ps1", sha256=sha, size=len(data), files=_files(data), by="t", force=False, due=due)
    assert record["due"] == "2031-03-04T22:59:30.123456+00:00"
    store.release("c", "ps2", sha256=sha, size=len(data), files=_files(data), by="t", force=False)
    listed = {a["assignment"]: a["due"] for a in store.assignments({"c"})}
    assert listed == {"ps1": "2031-03-04T22:59:30.123456+00:00", "ps2": None}
    assert datetime.fromisoformat(store.assignment("c", "ps1")["due"]) == due
    # Releasing again replaces the due date with the gradebook's current one, none included.
    store.release("c", "ps1", sha256=sha, size=len(data), files=_files(data), by="t", force=True)
    assert store.assignment("c", "ps1")["due"] is None
    later = datetime(2031, 4, 1, tzinfo=UTC)
    store.release("c", "ps1", sha256=sha, size=len(data), files=_files(data), by="t", force=True, due=later)
    assert store.assignment("c", "ps1")["due"] == "2031-04-01T00:00:00.000000+00:00"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_from_before_due_dates_opens_and_keeps_its_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _db_url(backend, tmp_path, request)
    # The assignments table as the exchange created it before due dates existed, with a release in it.
    old = MetaData()
    columns = [
        Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in Base.metadata.tables["assignments"].columns
        if c.name != "due_at"
    ]
    Table("assignments", old, *columns, UniqueConstraint("course", "name", name="uq_assignment"))
    engine = create_engine(url)
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(
            text(
                "INSERT INTO assignments (course, name, sha256, size, files, released_by, released_at)"
                " VALUES ('c', 'old', :sha, 3, :files, 'teach', :at)"
            ),
            {"sha": "a" * 64, "files": json.dumps([{"path": "old.ipynb", "size": 3, "sha256": "b" * 64}]),
             "at": datetime(2024, 9, 1, 8, 0)},
        )  # fmt: skip
    engine.dispose()

    stores = [ExchangeStore(url, DirectoryBlobStore(tmp_path / "blobs")) for _ in range(2)]
    errors: list[BaseException] = []

    def open_schema(store: ExchangeStore) -> None:
        try:
            store.create_schema()
        except BaseException as e:
            errors.append(e)

    # Two instances upgrading the same database at once: one adds the column, the other finds it there.
    threads = [threading.Thread(target=open_schema, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [kept] = stores[0].assignments(None)
    assert (kept["course"], kept["assignment"], kept["released_by"]) == ("c", "old", "teach")
    assert kept["notebooks"] == ["old"]
    assert kept["released_at"] == "2024-09-01T08:00:00.000000+00:00" and kept["due"] is None
    data = pack_files({"ps1.ipynb": b"{}"})
    sha = stores[1].blobs.put(data)
    due = datetime(2031, 1, 2, 3, 4, tzinfo=UTC)
    stores[1].release("c", "new", sha256=sha, size=len(data), files=_files(data), by="t", force=False, due=due)
    assert {a["assignment"]: a["due"] for a in stores[0].assignments({"c"})} == {
        "new": "2031-01-02T03:04:00.000000+00:00",
        "old": None,
    }
    # Opening it again changes nothing.
    stores[0].create_schema()
    assert len(stores[1].assignments(None)) == 2


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server on 127.0.0.1 (moto in server mode), with one bucket."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **_creds(env)).create_bucket(Bucket="exchange")
    yield endpoint, env
    server.stop()


def _creds(env: dict) -> dict:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_REGION"],
    }


def test_s3_blob_store_against_an_s3_compatible_server(s3_endpoint, tmp_path: Path, monkeypatch) -> None:
    endpoint, env = s3_endpoint
    for key, value in {**env, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    blobs = open_blob_store("s3://exchange/site-a", tmp_path / "spool")
    assert isinstance(blobs, S3BlobStore)
    data = pack_files({"ps1.ipynb": b"{}"})
    sha = blobs.put(data)
    assert sha == hashlib.sha256(data).hexdigest() and blobs.exists(sha) and blobs.put(data) == sha
    assert blobs.client.head_object(Bucket="exchange", Key=f"site-a/{sha[:2]}/{sha[2:4]}/{sha}")
    with blobs.open(sha) as f:
        assert f.read() == data
    assert list((tmp_path / "spool").iterdir()) == []
    assert not blobs.exists("0" * 64)
    with pytest.raises(NotFound):
        blobs.open("0" * 64)
    # The exchange's records with their blobs in object storage, two instances at once.
    url = f"sqlite:///{tmp_path / 'exchange.sqlite'}"
    stores = [ExchangeStore(url, open_blob_store("s3://exchange/site-a", tmp_path / f"spool{i}")) for i in range(2)]
    stores[0].create_schema()
    stores[0].release("c", "ps1", sha256=sha, size=len(data), files=_files(data), by="t", force=False)
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            payload = pack_files({"ps1.ipynb": json.dumps({"i": i}).encode()})
            upload = stores[i % 2].blobs.new_upload()
            upload.write(payload)
            digest = stores[i % 2].blobs.commit(upload)
            stores[i % 2].submit("c", "ps1", "s", sha256=digest, size=len(payload), files=_files(payload))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    subs = stores[1].submissions({"c"})
    assert len(subs) == 10
    for s in subs:
        with stores[0].blobs.open(s["sha256"]) as f:
            assert hashlib.sha256(f.read()).hexdigest() == s["sha256"]


# ---- hub settings --------------------------------------------------------------------------------------------

SITE = """
site: {state_dir: STATE, admins: [admin]}
tenants: {school: {title: School}}
courses:
  algebra: {title: Algebra, tenant: school, instructors: [teach], students: [stud]}
"""


def test_configure_grading_adds_the_exchange_once_and_only_with_courses(tmp_path: Path) -> None:
    loaded = parse(SITE.replace("STATE", str(tmp_path / "state")))
    c = apply_mod.apply(Config(), loaded)
    services = {s["name"]: s for s in c.JupyterHub.services}
    exchange = services["exchange"]
    assert exchange["url"] == f"http://127.0.0.1:{loaded.site.site.service_ports}"
    assert exchange["command"][1:] == ["-m", "atlaslab.grading.exchange"]
    assert json.loads(exchange["environment"]["ATLASLAB_EXCHANGE_STAFF_SERVICES"]) == {"algebra": "algebra"}
    assert stat.S_IMODE((tmp_path / "state" / "exchange").stat().st_mode) == 0o700
    assert grading.ACCESS_SCOPE in c.JupyterHub.extra_user_scopes
    assert grading.ACCESS_SCOPE in c.Spawner.server_token_scopes
    assert "users:activity!user" in c.Spawner.server_token_scopes
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == grading.EXCHANGE_ROLE)
    assert role["services"] == ["algebra"] and role["scopes"] == [grading.ACCESS_SCOPE]
    env = c.AtlasLabSpawner.environment
    assert env["ATLASLAB_EXCHANGE_URL"].endswith(f":{loaded.site.site.service_ports}/services/exchange/")
    assert services["algebra"]["environment"]["JUPYTER_CONFIG_PATH"] == env["JUPYTER_CONFIG_PATH"]
    config = Path(env["JUPYTER_CONFIG_PATH"]) / "nbgrader_config.py"
    assert stat.S_IMODE(config.stat().st_mode) == 0o644 and stat.S_IMODE(config.parent.stat().st_mode) == 0o755
    assert 'c.ExchangeFactory.submit = "atlaslab.grading.client.ExchangeSubmit"' in config.read_text()
    # The grading part is a value: made again, it is the same.
    state = StateDir(tmp_path / "state")
    assert grading.hub_part(loaded, state) == grading.hub_part(loaded, state)
    # No course, no exchange.
    bare = parse(f"site: {{state_dir: {tmp_path / 'bare'}}}\n")
    c = apply_mod.apply(Config(), bare)
    assert "exchange" not in {s["name"] for s in c.JupyterHub.services}
    assert grading.ACCESS_SCOPE not in c.JupyterHub.get("extra_user_scopes", [])


def test_site_config_puts_the_exchange_on_s3_and_another_database(s3_endpoint, tmp_path: Path, monkeypatch) -> None:
    """grading.exchange_s3 / exchange_database in the site config reach the exchange service, which uses them."""
    from atlaslab.grading.exchange.__main__ import context_from_env

    endpoint, env = s3_endpoint
    db_url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    monkeypatch.setenv("ATLASLAB_TEST_EXCHANGE_DB", db_url)
    monkeypatch.setenv("ATLASLAB_TEST_S3_KEY", env["AWS_ACCESS_KEY_ID"])
    (tmp_path / "s3-secret").write_text(env["AWS_SECRET_ACCESS_KEY"] + "\n")
    os.chmod(tmp_path / "s3-secret", 0o600)
    site = SITE.replace("STATE", str(tmp_path / "state")) + (
        "grading:\n"
        "  exchange_database: {env: ATLASLAB_TEST_EXCHANGE_DB}\n"
        f"  exchange_s3: {{bucket: exchange, prefix: /site-b/, endpoint_url: '{endpoint}', region: us-east-1,"
        f" access_key_id: {{env: ATLASLAB_TEST_S3_KEY}}, secret_access_key: {{file: {tmp_path / 's3-secret'}}}}}\n"
        "  max_upload: 2M\n"
    )
    loaded = parse(site, check_secrets=True)
    c = apply_mod.apply(Config(), loaded)
    service_env = next(s for s in c.JupyterHub.services if s["name"] == "exchange")["environment"]
    assert service_env["ATLASLAB_EXCHANGE_DB"] == db_url
    assert service_env["ATLASLAB_EXCHANGE_BLOBS"] == "s3://exchange/site-b"
    assert service_env["AWS_ENDPOINT_URL"] == endpoint and service_env["AWS_SECRET_ACCESS_KEY"] == "test"
    assert service_env["ATLASLAB_EXCHANGE_MAX_UPLOAD"] == str(2 * 1024**2)
    # The exchange, started from exactly that environment, keeps its records and files there.
    for key, value in service_env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    ctx, _ = context_from_env({**service_env, "ATLASLAB_EXCHANGE_DIR": str(tmp_path / "exchange")})
    assert isinstance(ctx.store.blobs, S3BlobStore) and ctx.max_upload == 2 * 1024**2
    data = pack_files({"ps1.ipynb": b"{}"})
    sha = ctx.store.blobs.put(data)
    ctx.store.release("algebra", "ps1", sha256=sha, size=len(data), files=_files(data), by="teach", force=False)
    assert ctx.store.blobs.client.head_object(Bucket="exchange", Key=f"site-b/{sha[:2]}/{sha[2:4]}/{sha}")
    assert (tmp_path / "elsewhere.sqlite").exists() and not (tmp_path / "exchange" / "exchange.sqlite").exists()
