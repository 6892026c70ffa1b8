"""Valid site configs: the example, the embedded defaults, where the file is found, derived values."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlaslab.cli import app
from atlaslab.config import LoadedConfig, find_config_path, load, loading, parse
from atlaslab.config.rosters import read_roster
from atlaslab.config.schema import NativeLogin, SiteConfig

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE = EXAMPLES / "atlaslab.yaml"
GiB = 1024**3


@pytest.fixture
def no_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without atlaslab.yaml, no $ATLASLAB_CONFIG and no /etc/atlaslab/atlaslab.yaml."""
    monkeypatch.delenv("ATLASLAB_CONFIG", raising=False)
    monkeypatch.setattr(loading, "SYSTEM_CONFIG", tmp_path / "etc" / "atlaslab.yaml")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_example_loads_with_its_derived_values() -> None:
    loaded = load(EXAMPLE)
    site = loaded.site
    assert loaded.source == EXAMPLE
    assert loaded.label == str(EXAMPLE)
    assert list(site.tenants) == ["school-1337-bg", "school-1337-kh", "aljazari-gon", "rd-atlas", "startup-argan"]
    assert site.site.languages == ["fr", "ar", "en"]
    assert isinstance(site.login[0], NativeLogin)
    assert site.login[0].tenant == "aljazari-gon"
    # Students come from the roster (ml-foundations) or inline (agri-ai).
    assert loaded.rosters == {"ml-foundations": ("amina", "youssef", "salim")}
    assert loaded.students("ml-foundations") == ("amina", "youssef", "salim")
    assert loaded.students("agri-ai") == ("aitbrahim", "elidrissi")
    # Sizes and durations are parsed into bytes and seconds.
    envs = site.environments
    assert envs["cpu-small"].memory == 2 * GiB
    assert envs["gpu-2x"].memory == 128 * GiB
    assert envs["gpu-slice"].gpu is not None and envs["gpu-slice"].gpu.mig == "1g.10gb"
    assert envs["gpu-shared"].gpu is not None and envs["gpu-shared"].gpu.shared == 4
    assert envs["cpu-large"].cpu == 4.0
    assert envs["cpu-large"].processes == 512
    assert site.limits.idle_cull_after == 3600
    assert site.limits.start_timeout == 120
    assert site.limits.max_servers == 200


def test_example_state_dir_is_relative_to_the_file() -> None:
    loaded = load(EXAMPLE)
    assert loaded.state_dir.is_absolute()
    assert loaded.state_dir.resolve() == (ROOT / ".atlaslab-state").resolve()
    assert loaded.base_dir == EXAMPLES
    assert loaded.resolve(Path("roster/ml-foundations.csv")) == EXAMPLES / "roster" / "ml-foundations.csv"
    assert loaded.resolve(Path("/etc/passwd")) == Path("/etc/passwd")


def test_every_example_config_is_valid() -> None:
    files = sorted(EXAMPLES.rglob("*.yaml")) + sorted(EXAMPLES.rglob("*.yml"))
    assert EXAMPLE in files
    for path in files:
        # Secrets of other examples live in the operator's environment, not in the repository.
        load(path, check_secrets=path == EXAMPLE)


def test_config_check_accepts_the_example() -> None:
    result = CliRunner().invoke(app, ["config", "check", "--config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "OK - 5 tenants, 6 environments, 2 courses, 1 teams, login: native" in result.stdout
    assert result.stderr == ""


def test_embedded_defaults_without_any_file(no_default_config: Path) -> None:
    assert find_config_path() is None
    loaded = load()
    assert loaded.source is None
    assert loaded.label == "(embedded defaults)"
    assert loaded.site == SiteConfig()
    assert list(loaded.site.environments) == ["cpu-small"]
    assert loaded.site.environments["cpu-small"].default is True
    assert [p.provider for p in loaded.site.login] == ["native"]
    assert loaded.base_dir == no_default_config
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "(embedded defaults): OK" in result.stdout


def test_an_empty_mapping_means_every_default(tmp_path: Path) -> None:
    loaded = load(write(tmp_path / "atlaslab.yaml", "# all defaults\n{}\n"))
    assert loaded.site == SiteConfig()


def test_file_in_the_working_directory_is_found(no_default_config: Path) -> None:
    write(no_default_config / "atlaslab.yaml", "site: {name: Here}\n")
    assert find_config_path() == Path("atlaslab.yaml")
    assert load().site.site.name == "Here"


def test_system_config_comes_before_the_working_directory(
    no_default_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = write(tmp_path / "etc" / "atlaslab.yaml", "site: {name: System}\n")
    write(no_default_config / "atlaslab.yaml", "site: {name: Here}\n")
    assert find_config_path() == system
    assert load().site.site.name == "System"


def test_env_var_then_explicit_path_take_precedence(no_default_config: Path, tmp_path: Path, monkeypatch) -> None:
    from_env = write(tmp_path / "env.yaml", "site: {name: FromEnv}\n")
    explicit = write(tmp_path / "explicit.yaml", "site: {name: Explicit}\n")
    write(no_default_config / "atlaslab.yaml", "site: {name: Here}\n")
    monkeypatch.setenv("ATLASLAB_CONFIG", str(from_env))
    assert load().site.site.name == "FromEnv"
    assert load(explicit).site.site.name == "Explicit"


def test_cli_config_option_beats_the_env_var(no_default_config: Path, tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.yaml", "tenant: {}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["config", "check"], env={"ATLASLAB_CONFIG": str(broken)})
    assert result.exit_code == 2
    assert "broken.yaml:1: tenant: unknown key 'tenant'" in result.stderr
    result = runner.invoke(app, ["config", "check", "--config", str(EXAMPLE)], env={"ATLASLAB_CONFIG": str(broken)})
    assert result.exit_code == 0, result.output
    assert str(EXAMPLE) in result.stdout


def test_relative_paths_without_a_source_start_in_the_working_directory(no_default_config: Path) -> None:
    loaded = parse("site: {state_dir: state}\n")
    assert loaded.source is None
    assert loaded.state_dir == no_default_config / "state"


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loaded = LoadedConfig(site=SiteConfig(), source=None)
    monkeypatch.setattr(loading.os, "geteuid", lambda: 0)
    assert loaded.state_dir == Path("/var/lib/atlaslab")
    monkeypatch.setattr(loading.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert loaded.state_dir == tmp_path / "xdg" / "atlaslab"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert loaded.state_dir == tmp_path / "home" / ".local" / "share" / "atlaslab"


def test_sizes_durations_and_normalised_values(tmp_path: Path) -> None:
    config = write(
        tmp_path / "atlaslab.yaml",
        """
site: {base_url: /lab, bind: "[::1]:8443"}
environments:
  small: {memory: 512M, default: true}
  big: {memory: 1.5GiB, cpu: 0.5}
  bytes: {memory: 268435456}
limits: {idle_cull_after: 1h30m, max_server_age: 2d, start_timeout: 90}
""",
    )
    site = load(config).site
    assert site.site.base_url == "/lab/"
    assert (site.site.bind_host, site.site.bind_port) == ("::1", 8443)
    assert site.environments["small"].memory == 512 * 1024**2
    assert site.environments["big"].memory == int(1.5 * GiB)
    assert site.environments["bytes"].memory == 256 * 1024**2
    assert (site.limits.idle_cull_after, site.limits.max_server_age, site.limits.start_timeout) == (5400, 172800, 90)


def test_public_url() -> None:
    assert parse("site: {bind: '0.0.0.0:8000'}").site.site.public_url == "http://127.0.0.1:8000"
    assert parse("site: {bind: '10.0.0.5:80', base_url: /lab}").site.site.public_url == "http://10.0.0.5:80/lab"
    assert parse("site: {url: 'https://lab.example.ma/'}").site.site.public_url == "https://lab.example.ma"


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "secrets" / "github", "  gh-secret-value  \nsecond line ignored\n")
    monkeypatch.setenv("WORKSHOP_PASSWORD", "correct-horse-battery")
    config = write(
        tmp_path / "atlaslab.yaml",
        """
login:
  - provider: shared-password
    password: {env: WORKSHOP_PASSWORD}
  - provider: github
    client_id: abc
    client_secret: {file: secrets/github}
    allowed_organizations: [atlas-lab]
""",
    )
    loaded = load(config)
    assert loaded.read_secret(loaded.site.login[0].password) == "correct-horse-battery"
    assert loaded.read_secret(loaded.site.login[1].client_secret) == "gh-secret-value"
    # Without reading secrets (linting elsewhere), a missing variable is no problem.
    monkeypatch.delenv("WORKSHOP_PASSWORD")
    load(config, check_secrets=False)


def test_roster_with_bom_spaces_blank_rows_and_duplicates(tmp_path: Path) -> None:
    roster = tmp_path / "r.csv"
    roster.write_bytes("\ufeff Username ,name\namina,A\n\n  youssef ,Y\namina,A again\n,no name\n".encode())
    assert read_roster(roster) == (("amina", "youssef"), None)


def test_roster_students_are_merged_with_inline_ones(tmp_path: Path) -> None:
    write(tmp_path / "r.csv", "username\nsalma\namina\n")
    config = write(
        tmp_path / "atlaslab.yaml",
        "tenants: {s: {title: S}}\ncourses: {c: {title: C, tenant: s, students: [amina, omar], roster: r.csv}}\n",
    )
    assert load(config).students("c") == ("amina", "omar", "salma")


def test_staff_of_one_course_may_study_in_another(tmp_path: Path) -> None:
    config = write(
        tmp_path / "atlaslab.yaml",
        """
tenants: {s: {title: S}}
courses:
  ml: {title: ML, tenant: s, tas: [amina]}
  dl: {title: DL, tenant: s, students: [amina]}
""",
    )
    assert load(config).students("dl") == ("amina",)


def test_oauth_provider_with_a_restriction_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTRA_SECRET", "s")
    config = write(
        tmp_path / "atlaslab.yaml",
        """
tenants: {school-1337-bg: {title: "1337"}}
login:
  - provider: intra42
    client_id: u-s4t2ud
    client_secret: {env: INTRA_SECRET}
    campus_to_tenant: {benguerir: school-1337-bg}
""",
    )
    assert load(config).site.login[0].key == "intra42"
