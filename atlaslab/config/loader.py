"""Read, validate and cross-check a site config file, reporting every problem as one clear line."""

from __future__ import annotations

import csv
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .schema import OAUTH_PROVIDERS, OAuthBase, SecretRef, SiteConfig

ENV_VAR = "ATLASLAB_CONFIG"
SECRET_FIELDS = ("client_secret", "password", "admin_password")
SYSTEM_CONFIG = Path("/etc/atlaslab/atlaslab.yaml")


@dataclass(frozen=True)
class Problem:
    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """The site config cannot be used; ``problems`` holds one entry per mistake."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class LoadedConfig:
    """A validated site config plus what was read alongside it."""

    site: SiteConfig
    source: Path | None
    rosters: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    @property
    def label(self) -> str:
        return str(self.source) if self.source else "(embedded defaults)"

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def state_dir(self) -> Path:
        if self.site.site.state_dir is not None:
            return self.resolve(self.site.site.state_dir).absolute()
        if os.geteuid() == 0:
            return Path("/var/lib/atlaslab")
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "atlaslab"

    def students(self, course: str) -> tuple[str, ...]:
        listed = tuple(self.site.courses[course].students)
        return listed + tuple(u for u in self.rosters.get(course, ()) if u not in listed)

    def read_secret(self, ref: SecretRef) -> str:
        """The secret's value; raises ConfigError naming the variable or file when it cannot be read."""
        value = _read_secret(ref, self.resolve)
        if isinstance(value, str):
            return value
        raise ConfigError([Problem(self.label, "", value[0])])


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """--config, then $ATLASLAB_CONFIG, then /etc/atlaslab/atlaslab.yaml, then ./atlaslab.yaml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    for candidate in (SYSTEM_CONFIG, Path("atlaslab.yaml")):
        if candidate.is_file():
            return candidate
    return None


def load(path: str | os.PathLike[str] | None = None, *, check_secrets: bool = True) -> LoadedConfig:
    """Load the site config at ``path`` (or the default location); raise ConfigError listing all problems."""
    source = find_config_path(path)
    if source is None:
        return LoadedConfig(site=SiteConfig(), source=None)
    label = str(source)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(label, "", "file not found; pass --config PATH or set ATLASLAB_CONFIG")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(label, "", f"cannot read the file ({e.__class__.__name__}: {e})")]) from None
    return parse(text, source=source, check_secrets=check_secrets)


def parse(text: str, *, source: Path | None = None, check_secrets: bool = True) -> LoadedConfig:
    label = str(source) if source else "<string>"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError([Problem(label, "", f"not valid YAML: {reason}", line)]) from None
    lines = _line_index(node)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(label, "", "the file must be a mapping of sections (site:, login:, tenants:, ...)")])
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            sorted(
                {_problem_from_pydantic(err, label, lines) for err in e.errors()},
                key=lambda p: (p.line or 0, p.path),
            )
        ) from None
    loaded = LoadedConfig(site=site, source=source)
    problems, rosters = _cross_check(loaded, check_secrets)
    if problems:
        for i, p in enumerate(problems):
            problems[i] = Problem(label, p.path, p.message, p.line or _line_for(lines, p.path))
        raise ConfigError(problems)
    return LoadedConfig(site=site, source=source, rosters=rosters)


def _line_index(node: yaml.Node | None) -> dict[tuple[str, ...], int]:
    """Map each key path of the YAML document to its line number (1-based)."""
    index: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        index.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = path + (str(k.value),)
                index[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, path + (str(i),))

    if node is not None:
        walk(node, ())
    return index


def _line_for(lines: dict[tuple[str, ...], int], dotted: str) -> int | None:
    parts = tuple(dotted.split(".")) if dotted else ()
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model a location points into, for 'did you mean' hints."""
    current: Any = SiteConfig
    for part in loc:
        current = _unwrap(current, part)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if isinstance(part, str) and part in current.model_fields:
                current = current.model_fields[part].annotation
            elif isinstance(part, str) and "provider" in current.model_fields:
                continue  # the tag of a tagged union: stay on the chosen model
            else:
                return None
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
    current = _unwrap(current, None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, tag: Any) -> Any:
    """Strip Annotated/Optional and pick the union member named by ``tag`` (a provider kind)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        for m in members:
            if isinstance(m, type) and issubclass(m, BaseModel) and "provider" in m.model_fields:
                if tag in get_args(m.model_fields["provider"].annotation):
                    return m
        return members[0] if len(members) == 1 else annotation
    return annotation


def _problem_from_pydantic(err: dict[str, Any], label: str, lines: dict[tuple[str, ...], int]) -> Problem:
    loc = tuple(str(p) for p in err["loc"])
    # Tagged unions add the tag (e.g. 'oidc') to the location; the user never wrote it.
    clean = tuple(p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1].isdigit() and loc[0] == "login" and i == 2))
    path = ".".join(clean)
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "extra_forbidden":
        key = clean[-1]
        parent = _model_at(tuple(p for p in err["loc"][:-1]))
        allowed = sorted(parent.model_fields) if parent else []
        guess = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"allowed keys: {', '.join(allowed)}" if allowed else ""
        message = f"unknown key '{key}'" + (f"; {hint}" if hint else "")
    elif kind == "missing":
        message = "required but missing; add it"
    elif kind == "union_tag_invalid":
        tags = err.get("ctx", {}).get("expected_tags", "")
        message = f"unknown provider {value.get('provider')!r}; use one of {tags}" if isinstance(value, dict) else msg
    elif kind == "union_tag_not_found":
        message = "each login entry needs `provider:` (native, shared-password, oidc, github, google, azuread, intra42)"
    elif kind == "url_parsing" or kind.startswith("url_"):
        message = f"{value!r} is not a valid URL ({msg.lower()}); write it like https://sso.example.ma/realms/atlas"
    elif kind == "string_pattern_mismatch":
        message = f"{value!r} is not allowed here: {_pattern_hint(clean)}"
    elif kind == "value_error":
        message = msg.removeprefix("Value error, ")
    elif clean and clean[-1] in SECRET_FIELDS and isinstance(value, str):
        message = "secrets never go in the site config; write `env: VARIABLE` or `file: PATH` under this key"
    else:
        message = f"{msg.lower()}; got {value!r}" if not isinstance(value, dict | list) else msg.lower()
    return Problem(label, path, message, _line_for(lines, path))


def _pattern_hint(loc: tuple[str, ...]) -> str:
    last = loc[-1] if loc else ""
    if last == "bind":
        return "write HOST:PORT, e.g. 0.0.0.0:8000"
    if last == "mig":
        return "write a MIG profile like 1g.10gb"
    if last in ("base_url", "default_url"):
        return "it must start with '/'"
    if last == "env":
        return "use a valid environment variable name (letters, digits, _)"
    if loc and loc[0] in ("tenants", "courses", "teams", "environments") and len(loc) == 2:
        return "ids use lower-case letters, digits, '-' and '_'"
    return "use lower-case letters, digits, '-' and '_' for ids; usernames are letters, digits and . _ @ : + -"


def _cross_check(loaded: LoadedConfig, check_secrets: bool) -> tuple[list[Problem], dict[str, tuple[str, ...]]]:
    """References between sections, roster files and secrets: what the schema alone cannot see."""
    site = loaded.site
    problems: list[Problem] = []
    tenants, envs = set(site.tenants), set(site.environments)

    def ref(path: str, value: str, known: set[str], section: str) -> None:
        if value not in known:
            options = ", ".join(sorted(known)) or "none defined yet"
            problems.append(
                Problem("", path, f"unknown {section[:-1]} '{value}'; define it under {section}: ({options})")
            )

    for tid, tenant in site.tenants.items():
        for i, env in enumerate(tenant.environments):
            ref(f"tenants.{tid}.environments.{i}", env, envs, "environments")
    for kind, items in (("courses", site.courses), ("teams", site.teams)):
        for cid, item in items.items():
            ref(f"{kind}.{cid}.tenant", item.tenant, tenants, "tenants")
            for i, env in enumerate(item.environments):
                ref(f"{kind}.{cid}.environments.{i}", env, envs, "environments")
    defaults = [k for k, e in site.environments.items() if e.default]
    if len(defaults) > 1:
        problems.append(
            Problem(
                "",
                "environments",
                f"{len(defaults)} environments set default: true ({', '.join(defaults)}); keep it on one",
            )
        )

    for i, provider in enumerate(site.login):
        base = f"login.{i}"
        if provider.tenant is not None:
            ref(f"{base}.tenant", provider.tenant, tenants, "tenants")
        for claim, tenant in getattr(provider, "group_to_tenant", {}).items():
            ref(f"{base}.group_to_tenant.{claim}", tenant, tenants, "tenants")
        for campus, tenant in getattr(provider, "campus_to_tenant", {}).items():
            ref(f"{base}.campus_to_tenant.{campus}", tenant, tenants, "tenants")
        if isinstance(provider, OAuthBase) and provider.allows_nobody():
            problems.append(
                Problem(
                    "",
                    base,
                    f"provider '{provider.key}' lets nobody log in; set allow_all: true, "
                    "allowed_users, or a group/organisation/campus restriction",
                )
            )
        if check_secrets:
            for name in SECRET_FIELDS:
                secret = getattr(provider, name, None)
                if secret is not None:
                    value = _read_secret(secret, loaded.resolve)
                    if not isinstance(value, str):
                        problems.append(Problem("", f"{base}.{name}", value[0]))
                    elif name != "client_secret" and len(value) < 8:
                        problems.append(Problem("", f"{base}.{name}", "the password is shorter than 8 characters"))
    kinds = [p.provider for p in site.login]
    if kinds.count("native") + kinds.count("shared-password") > 1:
        problems.append(
            Problem("", "login", "native and shared-password logins both use the password form; list only one of them")
        )
    oauth_callbacks = [p.key for p in site.login if p.provider in OAUTH_PROVIDERS]
    if len(site.login) > 1 and len(oauth_callbacks) != len(set(oauth_callbacks)):
        problems.append(Problem("", "login", "give each OAuth provider a distinct id"))

    rosters: dict[str, tuple[str, ...]] = {}
    for cid, course in site.courses.items():
        if course.roster is None:
            continue
        names, error = read_roster(loaded.resolve(course.roster))
        if error:
            problems.append(Problem("", f"courses.{cid}.roster", error))
        else:
            rosters[cid] = names

    roles: dict[str, set[str]] = {}
    for cid, course in site.courses.items():
        for role, users in (
            ("instructor", course.instructors),
            ("ta", course.tas),
            ("student", course.students + list(rosters.get(cid, ()))),
        ):
            for u in users:
                roles.setdefault(u, set()).add(role)
        for u, r in roles.items():
            if "student" in r and r & {"instructor", "ta"}:
                problems.append(
                    Problem("", f"courses.{cid}", f"'{u}' is both a student and staff of this course; keep one role")
                )
        roles.clear()
    return problems, rosters


def read_roster(path: Path) -> tuple[tuple[str, ...], str | None]:
    """Usernames from a roster CSV with a `username` column, or an error message."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            if "username" not in header:
                return (), f"{path}: no 'username' column in the header (found: {', '.join(header) or 'nothing'})"
            column = reader.fieldnames[header.index("username")]  # type: ignore[index]
            names: list[str] = []
            for n, row in enumerate(reader, start=2):
                name = (row.get(column) or "").strip()
                if not name:
                    continue
                if not _valid_username(name):
                    return (), f"{path}:{n}: {name!r} is not a valid username"
                if name not in names:
                    names.append(name)
            return tuple(names), None
    except FileNotFoundError:
        return (), f"roster file {path} not found; the path is relative to the config file"
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return (), f"cannot read roster {path} ({e.__class__.__name__}: {e})"


def _valid_username(name: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}", name) is not None


def _read_secret(ref: SecretRef, resolve: Any) -> str | tuple[str]:
    if ref.env is not None:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            return (f"environment variable {ref.env} is not set or empty; export it before starting",)
        return value
    path = resolve(ref.file)
    try:
        value = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
    except FileNotFoundError:
        return (f"secret file {path} not found",)
    except (OSError, UnicodeDecodeError) as e:
        return (f"cannot read secret file {path} ({e.__class__.__name__}); check its owner and mode",)
    if not value:
        return (f"secret file {path} is empty",)
    return value
