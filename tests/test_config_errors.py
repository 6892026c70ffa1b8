"""Malformed site configs: each gives clear one-line messages (file, line, field path, fix) and exit code 2.

Every file in tests/configs/invalid/ starts with one or more ``# expect: FRAGMENT`` lines; each fragment
must appear in what ``atlaslab config check --config FILE`` writes to stderr. Most files run in-process
through typer's CliRunner; a few go through the real command in a subprocess.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlaslab.cli import app
from atlaslab.config import ConfigError, load, parse

INVALID = Path(__file__).parent / "configs" / "invalid"
CORPUS = sorted(INVALID.glob("*.yaml"))
# Run through the installed command as a separate process: syntax, duplicates, secrets, several problems.
SUBPROCESS = {
    "yaml-syntax-error.yaml",
    "duplicate-yaml-key.yaml",
    "secret-file-is-directory.yaml",
    "several-problems.yaml",
}
UNSET = "ATLASLAB_TEST_NEVER_SET_SECRET"


def expectations(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.removeprefix("# expect:").strip() for line in lines if line.startswith("# expect:")]


def check_output(path: Path, code: int, stdout: str, stderr: str) -> None:
    assert code == 2, f"exit code {code}\n{stdout}\n{stderr}"
    assert "Traceback" not in stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error ")]
    assert errors, stderr
    for line in errors:
        assert path.name in line, f"error line without the file name: {line}"
    for fragment in expectations(path):
        assert fragment in stderr, f"{fragment!r} not in:\n{stderr}"
    assert stderr.rstrip().endswith("nothing was started or changed."), stderr


def test_corpus_is_large_and_annotated() -> None:
    assert len(CORPUS) >= 25
    for path in CORPUS:
        assert path.read_text().startswith("# expect:"), f"{path.name} must start with an `# expect:` line"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_invalid_config(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    if path.name in SUBPROCESS:
        env = {k: v for k, v in os.environ.items() if k != UNSET}
        proc = subprocess.run(
            [sys.executable, "-m", "atlaslab", "config", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        check_output(path, proc.returncode, proc.stdout, proc.stderr)
    else:
        result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
        assert isinstance(result.exception, SystemExit), result.exception
        check_output(path, result.exit_code, result.stdout, result.stderr)


def run_check(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["config", "check", "--config", str(config), *args])
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    code, err = run_check(tmp_path / "nope.yaml")
    assert code == 2
    assert "nope.yaml: (top level): config file not found; fix the path given with --config" in err


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    code, err = run_check(tmp_path)
    assert code == 2
    assert "is a directory; give the path of the YAML file itself" in err


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes('site:\n  name: "Écoles d\'été"\n'.encode("latin-1"))
    code, err = run_check(path)
    assert code == 2
    assert "latin1.yaml: (top level): not UTF-8 text" in err
    assert "save the file as UTF-8" in err


def test_markup_in_values_is_printed_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "markup.yaml"
    path.write_text('tenants:\n  "[bold]x": {title: t}\n')
    code, err = run_check(path)
    assert code == 2
    assert "'[bold]x' is not a valid id" in err


def test_skip_secrets_does_not_read_them() -> None:
    code, _ = run_check(INVALID / "secret-file-missing.yaml", "--skip-secrets")
    assert code == 0


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "tenants:\n  a: {title: A, environments: [nope]}\n"
        "courses:\n  c: {title: C, tenant: b}\n"
        "teams:\n  t: {tenant: z}\n"
    )
    with pytest.raises(ConfigError) as e:
        load(path)
    paths = [p.path for p in e.value.problems]
    assert paths == ["tenants.a.environments[0]", "courses.c.tenant", "teams.t.tenant"]
    assert [p.line for p in e.value.problems] == [2, 4, 6]
    assert all(p.file == str(path) for p in e.value.problems)


def test_parse_without_a_file_names_the_string() -> None:
    with pytest.raises(ConfigError) as e:
        parse("limits: {max_servers: -1}\n")
    assert str(e.value) == "<string>:1: limits.max_servers: -1 is too small; give at least 0"


def test_secret_file_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any file, so simulate the refusal an unprivileged hub would get."""
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret-value\n")
    config = tmp_path / "atlaslab.yaml"
    config.write_text(
        "login:\n  - provider: github\n    client_id: abc\n    client_secret: {file: client-secret}\n"
        "    allow_all: true\n"
    )
    real_read_text = Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        if self.name == "client-secret":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(ConfigError) as e:
        load(config)
    [problem] = e.value.problems
    assert problem.path == "login[0].client_secret.file"
    assert problem.line == 4
    assert "cannot be read (permission denied)" in problem.message
    assert "s3cret" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode 000 file")
def test_unreadable_files_as_a_plain_user(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("correct-horse-battery\n")
    secret.chmod(0)
    config = tmp_path / "atlaslab.yaml"
    config.write_text("login:\n  - provider: shared-password\n    password: {file: password}\n")
    code, err = run_check(config)
    assert code == 2
    assert "login[0].password.file: secret file" in err
    assert "cannot be read (permission denied)" in err
    config.chmod(0)
    code, err = run_check(config)
    assert code == 2
    assert "cannot be read (permission denied)" in err


def test_secret_values_never_appear_in_messages(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("short\n")
    config = tmp_path / "atlaslab.yaml"
    config.write_text("login:\n  - provider: shared-password\n    password: {file: pw}\n")
    code, err = run_check(config)
    assert code == 2
    assert "shorter than 8 characters" in err
    assert "short\n" not in err and "'short'" not in err


def test_mangled_example_configs_never_crash() -> None:
    """Random edits of the example: only ConfigError, one line per problem, each naming the file."""
    example = Path(__file__).parent.parent / "examples" / "atlaslab.yaml"
    text = example.read_text()
    rng = random.Random(1337)
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(300):
        mangled = text
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(mangled))
            if rng.random() < 0.5:
                mangled = mangled[:pos] + mangled[pos + 1 :]
            else:
                mangled = mangled[:pos] + rng.choice(" \t\n:-[]{}'\"#&*!|>%@`,?0az_/") + mangled[pos:]
        try:
            parse(mangled, source=example, check_secrets=False)
            outcomes["valid"] += 1
        except ConfigError as e:
            outcomes["invalid"] += 1
            assert e.problems
            for problem in e.problems:
                assert problem.file == str(example)
                assert problem.message and "\n" not in str(problem)
    assert outcomes["invalid"] > 100
