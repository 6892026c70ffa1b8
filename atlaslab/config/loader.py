"""Read, validate and cross-check a site config file, reporting every problem as one clear line.

Each problem names the file, the line, the field path as the user wrote it (``courses.agri-ai.tenant``,
``login[0].client_secret``), what is wrong and how to fix it. Three passes find them:

1. YAML: syntax errors, duplicate keys (PyYAML would silently keep the last one) and a top level that
   is not a mapping. An empty file (or one with only comments) is an error too: it is more often a
   truncated file than a wish for the defaults; ``{}`` asks for every default explicitly.
2. The schema (``schema.SiteConfig``): unknown keys (with a "did you mean"), types, formats, ranges.
3. Cross-checks the schema cannot see: references between sections, port clashes, duplicate names,
   roster files and secrets (variables and files, read but never shown).
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from . import schema
from .schema import OAuthBase, SecretRef, SiteConfig
from .units import format_size, parse_size

ENV_VAR = "ATLASLAB_CONFIG"
SECRET_FIELDS = ("client_secret", "password", "admin_password")
PASSWORD_FIELDS = ("password", "admin_password")
SYSTEM_CONFIG = Path("/etc/atlaslab/atlaslab.yaml")
# Names the hub's own services use (atlaslab.hub.services); an extra service may not take them.
RESERVED_SERVICES = ("atlaslab-cli", "idle-culler", "prometheus", "exchange", "autograder", "mlflow", "credits")
# Hosts whose ports the hub and proxy API (both on 127.0.0.1) would share.
_LOCAL_HOSTS = ("0.0.0.0", "::", "127.0.0.1", "localhost", "")

Loc = tuple[str | int, ...]


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
        value, error = _read_secret(ref, self.resolve)
        if error is None:
            return value
        raise ConfigError([Problem(self.label, "", error)])


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
    """Load the site config at ``path`` (or the default location); raise ConfigError listing all problems.

    With no file anywhere the embedded defaults apply (one CPU environment, local accounts).
    """
    source = find_config_path(path)
    if source is None:
        return LoadedConfig(site=SiteConfig(), source=None)
    label = str(source)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        fix = "fix the path given with --config or $ATLASLAB_CONFIG, or create the file"
        raise ConfigError([Problem(label, "", f"config file not found; {fix}")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(label, "", "is a directory; give the path of the YAML file itself")]) from None
    except PermissionError:
        fix = "run as a user who may read it, or make it readable (it holds no secrets)"
        raise ConfigError([Problem(label, "", f"the config file cannot be read (permission denied); {fix}")]) from None
    except UnicodeDecodeError as e:
        fix = "save the file as UTF-8 text"
        raise ConfigError([Problem(label, "", f"not UTF-8 text (byte {e.start} cannot be decoded); {fix}")]) from None
    except OSError as e:
        raise ConfigError([Problem(label, "", f"cannot read the file ({e.strerror or e}); check the path")]) from None
    return parse(text, source=source, check_secrets=check_secrets)


def parse(text: str, *, source: Path | None = None, check_secrets: bool = True) -> LoadedConfig:
    """Validate the YAML ``text`` of a site config read from ``source`` (relative paths start there)."""
    label = str(source) if source else "<string>"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(e, label)]) from None
    doc = _Document(node)
    problems = [doc.problem(label, loc, message) for loc, message in _duplicate_keys(node)]
    if data is None:
        message = "the file has no settings; write `{}` to use every default, or start from examples/atlaslab.yaml"
        raise ConfigError([*problems, Problem(label, "", message, doc.line(()))])
    if not isinstance(data, dict):
        message = f"expected a mapping of sections (site:, login:, tenants:, ...), got {_describe_value(data)}" + (
            "; remove the leading '- '" if isinstance(data, list) else ""
        )
        raise ConfigError([*problems, Problem(label, "", message, doc.line(()))])
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as e:
        seen = {(p.path, p.message) for p in problems}
        for err in e.errors():
            loc, message = _pydantic_message(err)
            problem = doc.problem(label, loc, message)
            if (problem.path, problem.message) not in seen:
                seen.add((problem.path, problem.message))
                problems.append(problem)
        raise ConfigError(_ordered(problems)) from None
    loaded = LoadedConfig(site=site, source=source)
    found, rosters = _cross_check(loaded, check_secrets)
    problems += [doc.problem(label, loc, message) for loc, message in found]
    if problems:
        raise ConfigError(_ordered(problems))
    return LoadedConfig(site=site, source=source, rosters=rosters)


def _ordered(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.path))


# ---------------------------------------------------------------------------------------------------------
# YAML: syntax errors, duplicate keys, locations


def _yaml_problem(e: yaml.YAMLError, label: str) -> Problem:
    mark = getattr(e, "problem_mark", None)
    context_mark = getattr(e, "context_mark", None)
    problem = " ".join(str(getattr(e, "problem", None) or e).splitlines())
    context = " ".join(str(getattr(e, "context", None) or "").splitlines())
    line = mark.line + 1 if mark else None
    if "\t" in problem or "'\\t'" in problem:
        return Problem(label, "", "not valid YAML: tab characters cannot indent YAML; use spaces", line)
    where = f"{problem} (line {line}, column {mark.column + 1})" if mark else problem
    if context and context_mark is not None and context_mark.line + 1 != line:
        where += f" {context} started on line {context_mark.line + 1}"
        near = context_mark.line + 1
    else:
        near = line
    fix = f"fix the indentation or quoting near line {near}" if near else "fix the YAML syntax"
    if isinstance(e, yaml.constructor.ConstructorError):
        fix = "plain values only: tags such as !!python/... are not allowed in a site config"
    return Problem(label, "", f"not valid YAML: {where}; {fix}", near)


def _duplicate_keys(node: yaml.Node | None) -> list[tuple[Loc, str]]:
    """Keys written twice in one mapping: PyYAML keeps the last silently, so the first would be ignored."""
    found: list[tuple[Loc, str]] = []

    def walk(n: yaml.Node, loc: Loc) -> None:
        if isinstance(n, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                    continue
                line = k.start_mark.line + 1
                if (k.tag, k.value) in first:
                    found.append(
                        (
                            (*loc, k.value),
                            f"duplicate key '{k.value}' (first on line {first[k.tag, k.value]}, again on line {line});"
                            " YAML would keep only the last one, so merge or rename them",
                        )
                    )
                else:
                    first[k.tag, k.value] = line
                walk(v, (*loc, k.value))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*loc, i))

    if node is not None:
        walk(node, ())
    return found


class _Document:
    """The YAML node tree, to find the line of a location and spell its path as the user wrote it."""

    def __init__(self, root: yaml.Node | None):
        self.root = root

    def _steps(self, loc: Loc) -> list[tuple[str | int, yaml.Node | None, int | None]]:
        """For each part of ``loc``: the part, its value node (None past what the file holds) and its line."""
        node, steps = self.root, []
        for part in loc:
            child, line = None, None
            if isinstance(node, yaml.MappingNode):
                for k, v in reversed(node.value):  # the last of duplicate keys is the one that counts
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        child, line = v, k.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                child = node.value[part]
                line = child.start_mark.line + 1
            steps.append((part, child, line))
            node = child
        return steps

    def line(self, loc: Loc) -> int | None:
        best = self.root.start_mark.line + 1 if self.root is not None else None
        for _, _, line in self._steps(loc):
            if line is None:
                break
            best = line
        return best

    def path(self, loc: Loc) -> str:
        out, parent = "", self.root
        for part, child, _ in self._steps(loc):
            in_list = isinstance(parent, yaml.SequenceNode) or (parent is None and isinstance(part, int))
            if in_list:
                out += f"[{part}]"
            elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
                out += f".{part}" if out else str(part)
            else:
                out += f"[{json.dumps(str(part))}]"
            parent = child
        return out

    def problem(self, label: str, loc: Loc, message: str) -> Problem:
        # One problem, one line: a value quoted in the message must not break it.
        message = " ".join(message.splitlines())
        return Problem(label, self.path(loc), message, self.line(loc))


# ---------------------------------------------------------------------------------------------------------
# Schema errors: pydantic's messages turned into what is wrong and how to fix it


def _provider_models() -> dict[str, type[BaseModel]]:
    union = get_args(get_args(schema.LoginProvider)[0])
    return {get_args(m.model_fields["provider"].annotation)[0]: m for m in union}


def _strip(annotation: Any) -> Any:
    """Drop Annotated and Optional wrappers."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _resolve(raw: Loc) -> tuple[Any, FieldInfo | None, type[BaseModel] | None]:
    """What the schema expects at a pydantic location: (annotation, field info, model holding the field).

    ``raw`` may hold the tag pydantic adds after a login entry's index (``login, 0, oidc, client_id``).
    """
    annotation: Any = SiteConfig
    info: FieldInfo | None = None
    owner: type[BaseModel] | None = None
    for part in raw:
        annotation = _strip(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not (isinstance(part, str) and part in annotation.model_fields):
                return None, None, annotation
            owner, info = annotation, annotation.model_fields[part]
            annotation = info.annotation
        elif get_origin(annotation) in (Union, UnionType):
            model = _provider_models().get(str(part))
            if model is None:
                return None, None, None
            annotation, info, owner = model, None, None
        elif get_origin(annotation) is list:
            annotation, info = get_args(annotation)[0], None
        elif get_origin(annotation) is dict:
            annotation, info = get_args(annotation)[1], None
        else:
            return None, None, None
    return annotation, info, owner


def _clean_loc(raw: Loc) -> Loc:
    """The location as the user wrote it: without the login tag pydantic inserts, nor the '[key]' marker."""
    loc = [p for p in raw if p != "[key]"]
    if len(loc) > 2 and loc[0] == "login" and isinstance(loc[1], int) and loc[2] in _provider_models():
        del loc[2]
    return tuple(loc)


def _describe_value(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_name(annotation: Any) -> str | None:
    """The model expected (or expected as the values of a map), by name; None for plain values."""
    annotation = _strip(annotation)
    if get_origin(annotation) is dict:
        annotation = _strip(get_args(annotation)[1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    if get_origin(annotation) in (Union, UnionType):
        return "login provider"
    return None


def _is_size(info: FieldInfo | None) -> bool:
    return info is not None and any(getattr(m, "func", None) is parse_size for m in info.metadata)


_PATTERN_HINTS = {
    schema.ID_PATTERN: (
        "is not a valid id",
        "ids use lower-case letters, digits, '-' and '_', starting with a letter or digit",
    ),
    schema.USERNAME_PATTERN: ("is not a valid username", "usernames are letters, digits and . _ @ : + - (no spaces)"),
    schema.BIND_PATTERN: ("is not allowed here", "write HOST:PORT, e.g. 0.0.0.0:8000"),
    schema.ENV_NAME: (
        "is not allowed here",
        "use a valid environment variable name (letters, digits and _, not starting with a digit),"
        " e.g. WORKSHOP_PASSWORD",
    ),
}


def _pattern_message(value: Any, pattern: str, loc: Loc) -> str:
    what, hint = _PATTERN_HINTS.get(pattern, ("is not allowed here", ""))
    if not hint:
        last = str(loc[-1]) if loc else ""
        hint = {
            "mig": "write a MIG profile like 1g.10gb or 3g.40gb",
            "base_url": "it must start with '/', e.g. /lab/",
            "default_url": "it must start with '/', e.g. /lab",
            "username_prefix": "use at most 16 lower-case letters, digits and . _ : -, e.g. 'oidc:'",
        }.get(last, f"it must match {pattern}")
    return f"{_describe_value(value)} {what}: {hint}"


def _url_example(loc: Loc) -> str:
    last = str(loc[-1]) if loc else ""
    if last == "issuer":
        return "https://sso.example.ma/realms/atlas"
    if last.endswith("_url") and last != "url":
        return "https://sso.example.ma/oauth/" + last.removesuffix("_url")
    return "https://lab.example.ma"


def _pydantic_message(err: dict[str, Any]) -> tuple[Loc, str]:
    """The user-facing location and message for one pydantic error."""
    raw: Loc = tuple(err["loc"])
    loc = _clean_loc(raw)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    is_key = bool(raw) and raw[-1] == "[key]"
    annotation, info, owner = _resolve(tuple(p for p in raw if p != "[key]"))
    last = str(loc[-1]) if loc else ""

    if kind == "extra_forbidden":
        allowed = sorted(owner.model_fields) if owner else []
        guess = difflib.get_close_matches(str(raw[-1]), allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{guess[0]}'?" if guess else f"allowed keys: {', '.join(allowed)}"
        return loc, f"unknown key '{raw[-1]}'; {hint}"
    if kind == "missing":
        description = f" ({info.description})" if info is not None and info.description else ""
        return loc, f"required key missing; add `{last}:`{description}"
    if kind == "union_tag_invalid":
        kinds = ", ".join(_provider_models())
        return (*loc, "provider"), f"unknown login provider {ctx.get('tag', value)!r}; use one of {kinds}"
    if kind == "union_tag_not_found":
        kinds = ", ".join(_provider_models())
        return loc, f"each login entry needs `provider:` ({kinds})"
    if kind == "duplicate_provider":
        second = ctx["second"]
        entry = value[second] if isinstance(value, list) and second < len(value) else {}
        where: Loc = (*loc, second, "id") if isinstance(entry, dict) and "id" in entry else (*loc, second)
        return where, err["msg"]
    if last in SECRET_FIELDS and kind in ("model_type", "model_attributes_type") and loc and loc[0] == "login":
        if value is None:
            return loc, "is empty; write `env: VARIABLE` or `file: PATH` under this key"
        return loc, "secrets never go in the site config; write `env: VARIABLE` or `file: PATH` under this key"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if value is None:
            return loc, "is empty; add settings under it or remove the line"
        name = _model_name(annotation)
        if kind == "dict_type" and name is None:
            what, fix = "a mapping", "write each entry as `KEY: VALUE` on its own line, indented under this key"
        elif kind == "dict_type":
            what = f"a mapping of id -> {name}"
            fix = "write each entry as `ID:` with its settings indented under it (no '- ')"
        else:
            what = f"a mapping of {name or 'its'} settings"
            fix = "write its settings as `key: value` lines indented under it" + (
                " (no '- ')" if isinstance(value, list) else ""
            )
        return loc, f"expected {what}, got {_describe_value(value)}; {fix}"
    if kind == "list_type":
        if value is None:
            return loc, "is empty; write [] or remove the line"
        if isinstance(value, dict):
            example = " (e.g. `- provider: native`)" if loc == ("login",) else ""
            return loc, f"expected a list, got a mapping; start each entry with '- '{example}"
        example = f"[{value}]" if isinstance(value, str) and re.fullmatch(r"[\w.@:+-]{1,40}", value) else "[a, b]"
        return loc, f"expected a list, got {_describe_value(value)}; write it as {example} or one '- ' item per line"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"expected a whole number, got {_describe_value(value)}"
    if kind in ("float_type", "float_parsing"):
        return loc, f"expected a number, got {_describe_value(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"expected true or false, got {_describe_value(value)}"
    if kind == "string_type":
        if isinstance(value, bool):
            fix = "; YAML reads unquoted yes/no/on/off/true/false as a boolean, so put the text in quotes"
        elif isinstance(value, int | float):
            fix = f"; put it in quotes: '{value}'"
        else:
            fix = ""
        return loc, f"expected text, got {_describe_value(value)}{fix}"
    if kind == "literal_error" and value is None:
        return loc, f"is empty; use one of {ctx.get('expected', '')}"
    if kind == "path_type":
        return loc, f"expected a file path, got {_describe_value(value)}"
    if kind == "literal_error":
        return loc, f"{_describe_value(value)} is not allowed; use one of {ctx.get('expected', '')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()))
        shown, limit = (format_size(value), format_size(bound)) if _is_size(info) else (value, bound)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        phrase = {
            "greater_than_equal": ("too small", "at least"),
            "greater_than": ("too small", "more than"),
            "less_than_equal": ("too large", "at most"),
            "less_than": ("too large", "less than"),
        }[kind]
        return loc, f"{shown} is {phrase[0]}; give {phrase[1]} {limit}"
    if kind == "too_short":
        if loc == ("login",):
            return loc, "list at least one login provider, or remove `login:` to use local accounts (native)"
        return loc, f"needs at least {ctx.get('min_length', 1)} item(s); got none"
    if kind == "string_too_short":
        return loc, "must not be empty"
    if kind == "string_pattern_mismatch":
        if is_key:
            return loc, f"{_describe_value(value)} is not a valid id: {_PATTERN_HINTS[schema.ID_PATTERN][1]}"
        return loc, _pattern_message(value, ctx.get("pattern", ""), loc)
    if kind.startswith("url_"):
        reason = str(ctx.get("error") or err["msg"]).lower()
        return (
            loc,
            f"{_describe_value(value)} is not a valid URL ({reason}); write it in full, like {_url_example(loc)}",
        )
    if kind == "value_error":
        return loc, str(err["msg"]).removeprefix("Value error, ")
    msg = str(err["msg"])
    return loc, f"{msg[:1].lower()}{msg[1:]}; got {_describe_value(value)}"


# ---------------------------------------------------------------------------------------------------------
# Cross-checks: what the schema alone cannot see


def _cross_check(loaded: LoadedConfig, check_secrets: bool) -> tuple[list[tuple[Loc, str]], dict[str, tuple[str, ...]]]:
    """References between sections, ports, names, roster files and secrets."""
    site = loaded.site
    problems: list[tuple[Loc, str]] = []
    tenants, envs = list(site.tenants), list(site.environments)

    def ref(loc: Loc, value: str, known: list[str], section: Literal["tenants", "environments", "teams"]) -> None:
        if value in known:
            return
        where = f"or use one of: {', '.join(known)}" if known else "(none defined yet)"
        problems.append((loc, f"unknown {section[:-1]} '{value}'; define it under {section}: {where}"))

    _check_ports(site, problems)
    for tid, tenant in site.tenants.items():
        for i, env in enumerate(tenant.environments):
            ref(("tenants", tid, "environments", i), env, envs, "environments")
        if tenant.language and tenant.language not in site.site.languages:
            offered = ", ".join(site.site.languages) or "none"
            problems.append(
                (
                    ("tenants", tid, "language"),
                    f"language '{tenant.language}' is not offered by the site (site.languages: {offered});"
                    f" add it to site.languages or use one of them",
                )
            )
    for section, items in (("courses", site.courses), ("teams", site.teams)):
        for cid, item in items.items():
            ref((section, cid, "tenant"), item.tenant, tenants, "tenants")
            for i, env in enumerate(item.environments):
                ref((section, cid, "environments", i), env, envs, "environments")
    for tid in site.credits.tenants:
        ref(("credits", "tenants", tid), tid, tenants, "tenants")
    for team in site.credits.teams:
        ref(("credits", "teams", team), team, list(site.teams), "teams")
    for section, quotas in (("tenants", site.credits.tenants), ("teams", site.credits.teams)):
        for key, quota in quotas.items():
            if quota.starts and quota.expires and quota.expires < quota.starts:
                problems.append((("credits", section, key, "expires"), "expires is before starts; swap them"))
    defaults = [k for k, e in site.environments.items() if e.default]
    if len(defaults) > 1:
        message = f"{len(defaults)} environments set default: true ({', '.join(defaults)}); keep it on one"
        problems.append((("environments", defaults[-1], "default"), message))

    password_form: int | None = None
    for i, provider in enumerate(site.login):
        if provider.tenant is not None:
            ref(("login", i, "tenant"), provider.tenant, tenants, "tenants")
        for claim, tenant in getattr(provider, "group_to_tenant", {}).items():
            ref(("login", i, "group_to_tenant", claim), tenant, tenants, "tenants")
        for campus, tenant in getattr(provider, "campus_to_tenant", {}).items():
            ref(("login", i, "campus_to_tenant", campus), tenant, tenants, "tenants")
        if isinstance(provider, OAuthBase) and provider.allows_nobody():
            problems.append((("login", i), _nobody_message(provider)))
        if provider.provider in ("native", "shared-password"):
            if password_form is not None:
                message = (
                    "native and shared-password logins both use the password form; keep only one of them"
                    if site.login[password_form].provider != provider.provider
                    else f"a second {provider.provider} login; the password form can be offered only once"
                )
                problems.append((("login", i), message))
            password_form = i
        if provider.provider == "native" and provider.username_prefix:
            problems.append(
                (("login", i, "username_prefix"), "local accounts take no prefix; remove username_prefix here")
            )
        if check_secrets:
            problems += _check_secrets(loaded, i, provider)
    if check_secrets:
        problems += _check_grading_secrets(loaded)
        problems += _check_tracking_secrets(loaded)

    names: dict[str, int] = {}
    for i, extra in enumerate(site.services.extra):
        loc: Loc = ("services", "extra", i, "name")
        if extra.name in RESERVED_SERVICES:
            problems.append((loc, f"'{extra.name}' is the name of a built-in service; choose another name"))
        elif extra.name in names:
            problems.append((loc, f"two extra services are both called '{extra.name}'; give each a distinct name"))
        names.setdefault(extra.name, i)
    for cid in site.courses:
        # A course's formgrader is a hub service named after the course (nbgrader's convention).
        if cid in RESERVED_SERVICES or cid in names:
            problems.append((("courses", cid), f"course id '{cid}' is also the name of a service; rename the course"))

    rosters: dict[str, tuple[str, ...]] = {}
    for cid, course in site.courses.items():
        if course.roster is None:
            continue
        roster_names, error = read_roster(loaded.resolve(course.roster))
        if error:
            problems.append((("courses", cid, "roster"), error))
        else:
            rosters[cid] = roster_names
    for cid, course in site.courses.items():
        problems += _check_roles(cid, course, rosters.get(cid, ()))
    return problems, rosters


def _check_ports(site: SiteConfig, problems: list[tuple[Loc, str]]) -> None:
    s = site.site
    if s.hub_port == s.proxy_api_port:
        message = f"port {s.hub_port} is also the hub's port (hub_port); give the proxy API a port of its own"
        problems.append((("site", "proxy_api_port"), message))
    if s.bind_host in _LOCAL_HOSTS:
        for key, owner in (("hub_port", "the hub"), ("proxy_api_port", "the proxy API")):
            port = getattr(s, key)
            if port == s.bind_port:
                message = f"port {port} is also used by `bind` ({s.bind}); give {owner} a port of its own"
                problems.append((("site", key), message))


def _nobody_message(provider: OAuthBase) -> str:
    restrictions = {
        "github": "allowed_organizations",
        "google": "hosted_domain",
        "oidc": "allowed_groups",
        "azuread": "allowed_groups",
        "intra42": "campus_to_tenant",
    }
    extra = restrictions.get(provider.provider, "a group restriction")
    return f"the {provider.key} login lets nobody in; set allow_all: true, allowed_users, or {extra}"


def _check_secrets(loaded: LoadedConfig, index: int, provider: Any) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for name in SECRET_FIELDS:
        secret = getattr(provider, name, None)
        if not isinstance(secret, SecretRef):
            continue
        source = "env" if secret.env is not None else "file"
        loc: Loc = ("login", index, name, source)
        value, error = _read_secret(secret, loaded.resolve)
        if error is not None:
            problems.append((loc, error))
        elif name in PASSWORD_FIELDS:
            # JupyterHub's SharedPasswordAuthenticator refuses an admin password under 32 characters.
            shortest = 32 if name == "admin_password" else 8
            if len(value) < shortest:
                where = f"${secret.env}" if secret.env is not None else str(loaded.resolve(secret.file))  # type: ignore[arg-type]
                problems.append(
                    (loc, f"the password in {where} is shorter than {shortest} characters; write a longer one")
                )
    return problems


def _check_grading_secrets(loaded: LoadedConfig) -> list[tuple[Loc, str]]:
    grading = loaded.site.grading
    refs: list[tuple[Loc, SecretRef | None]] = [(("grading", "exchange_database"), grading.exchange_database)]
    if grading.exchange_s3 is not None:
        for name in ("access_key_id", "secret_access_key"):
            refs.append((("grading", "exchange_s3", name), getattr(grading.exchange_s3, name)))
    problems: list[tuple[Loc, str]] = []
    for loc, ref in refs:
        if ref is not None:
            _, error = _read_secret(ref, loaded.resolve)
            if error is not None:
                problems.append(((*loc, "env" if ref.env is not None else "file"), error))
    return problems


def _check_tracking_secrets(loaded: LoadedConfig) -> list[tuple[Loc, str]]:
    tracking = loaded.site.tracking
    if not tracking.enabled:
        return []
    problems: list[tuple[Loc, str]] = []
    for name in ("database", "s3_access_key_id", "s3_secret_access_key"):
        ref = getattr(tracking, name)
        if ref is None:
            continue
        value, error = _read_secret(ref, loaded.resolve)
        loc: Loc = ("tracking", name, "env" if ref.env is not None else "file")
        if error is not None:
            problems.append((loc, error))
        elif name == "database" and not value.startswith(("postgresql", "mysql", "sqlite:", "mssql")):
            problems.append(
                (loc, "the tracking database must be an SQLAlchemy URL such as postgresql+psycopg://user:pw@host/db")
            )
    return problems


def _check_roles(cid: str, course: Any, roster: tuple[str, ...]) -> list[tuple[Loc, str]]:
    """A user is a student or staff of a course, never both."""
    problems: list[tuple[Loc, str]] = []
    staff = {u: "an instructor" for u in course.instructors}
    for u in course.tas:
        staff.setdefault(u, "a TA")
    for i, u in enumerate(course.students):
        if u in staff:
            message = f"'{u}' is both a student and {staff[u]} of course '{cid}'; keep one role"
            problems.append((("courses", cid, "students", i), message))
    inline = set(course.students)
    for role, key, users in (("an instructor", "instructors", course.instructors), ("a TA", "tas", course.tas)):
        for i, u in enumerate(users):
            if u in roster and u not in inline:
                message = f"'{u}' is both {role} and a student (from {course.roster}) of course '{cid}'; keep one role"
                problems.append((("courses", cid, key, i), message))
    return problems


def read_roster(path: Path) -> tuple[tuple[str, ...], str | None]:
    """Usernames from a roster CSV with a `username` column, or an error message naming the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            if "username" not in header:
                found = ", ".join(header) or "nothing"
                return (), (
                    f"roster file {path} has no 'username' column (found: {found});"
                    " name the column of usernames `username`"
                )
            column = reader.fieldnames[header.index("username")]  # type: ignore[index]
            names: list[str] = []
            for n, row in enumerate(reader, start=2):
                name = (row.get(column) or "").strip()
                if not name:
                    continue
                if not _valid_username(name):
                    return (), (
                        f"roster file {path}:{n}: {name!r} is not a valid username"
                        " (letters, digits and . _ @ : + -, no spaces); fix that row"
                    )
                if name not in names:
                    names.append(name)
            return tuple(names), None
    except FileNotFoundError:
        return (), f"roster file {path} not found; fix the path (it is relative to the config file) or create the file"
    except IsADirectoryError:
        return (), f"roster file {path} is a directory; point `roster:` at a CSV file"
    except PermissionError:
        return (
            (),
            f"roster file {path} cannot be read (permission denied); make it readable by the account running atlaslab",
        )
    except UnicodeDecodeError:
        return (), f"roster file {path} is not UTF-8 text; export the CSV as UTF-8"
    except (OSError, csv.Error) as e:
        return (), f"cannot read roster file {path} ({e.__class__.__name__}: {e}); check the file"


def _valid_username(name: str) -> bool:
    return re.fullmatch(schema.USERNAME_PATTERN, name) is not None


def _read_secret(ref: SecretRef, resolve: Any) -> tuple[str, str | None]:
    """(value, None), or ("", what is wrong and how to fix it). The value itself never appears in messages."""
    if ref.env is not None:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            return "", f"environment variable {ref.env} is not set or empty; export it before starting (or use `file:`)"
        return value, None
    path = resolve(ref.file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return "", (
            f"secret file {path} not found; create it (one line, mode 0600) or fix the path,"
            " which is relative to the config file"
        )
    except IsADirectoryError:
        return "", f"secret file {path} is a directory; point `file:` at the file holding the secret"
    except PermissionError:
        return "", (
            f"secret file {path} cannot be read (permission denied); make the account running atlaslab its owner"
            " (mode 0600)"
        )
    except UnicodeDecodeError:
        return "", f"secret file {path} is not UTF-8 text; write the secret as plain text on its first line"
    except OSError as e:
        return "", f"cannot read secret file {path} ({e.strerror or e}); check the path"
    value = lines[0].strip() if lines else ""
    if not value:
        return "", f"secret file {path} is empty; write the secret on its first line"
    return value, None
