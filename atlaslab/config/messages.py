"""Turn what is wrong with a site config into one-line problems: ``FILE:LINE: path: what is wrong; fix``.

``Problem`` and ``ConfigError`` are what every pass reports with. This module words YAML syntax errors and
pydantic's validation errors: unknown keys get a "did you mean", values are described as the user wrote them
(``true``, ``a mapping``, ``'text'``) and pattern mismatches say what the pattern allows.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from . import schema
from .schema import SiteConfig
from .units import format_size, parse_size

# The login fields that hold a SecretRef: the checks read them, and a secret written inline gets its own message.
SECRET_FIELDS = ("client_secret", "password", "admin_password")

# A place in the file: the keys and list indexes leading to it from the top level.
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


# ---------------------------------------------------------------------------------------------------------
# YAML syntax errors


def yaml_problem(e: yaml.YAMLError, label: str) -> Problem:
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


def describe_value(value: Any) -> str:
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
    return f"{describe_value(value)} {what}: {hint}"


def _url_example(loc: Loc) -> str:
    last = str(loc[-1]) if loc else ""
    if last == "issuer":
        return "https://sso.example.ma/realms/atlas"
    if last.endswith("_url") and last != "url":
        return "https://sso.example.ma/oauth/" + last.removesuffix("_url")
    return "https://lab.example.ma"


def pydantic_message(err: dict[str, Any]) -> tuple[Loc, str]:
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
        return loc, f"expected {what}, got {describe_value(value)}; {fix}"
    if kind == "list_type":
        if value is None:
            return loc, "is empty; write [] or remove the line"
        if isinstance(value, dict):
            example = " (e.g. `- provider: native`)" if loc == ("login",) else ""
            return loc, f"expected a list, got a mapping; start each entry with '- '{example}"
        example = f"[{value}]" if isinstance(value, str) and re.fullmatch(r"[\w.@:+-]{1,40}", value) else "[a, b]"
        return loc, f"expected a list, got {describe_value(value)}; write it as {example} or one '- ' item per line"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"expected a whole number, got {describe_value(value)}"
    if kind in ("float_type", "float_parsing"):
        return loc, f"expected a number, got {describe_value(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"expected true or false, got {describe_value(value)}"
    if kind == "string_type":
        if isinstance(value, bool):
            fix = "; YAML reads unquoted yes/no/on/off/true/false as a boolean, so put the text in quotes"
        elif isinstance(value, int | float):
            fix = f"; put it in quotes: '{value}'"
        else:
            fix = ""
        return loc, f"expected text, got {describe_value(value)}{fix}"
    if kind == "literal_error" and value is None:
        return loc, f"is empty; use one of {ctx.get('expected', '')}"
    if kind == "path_type":
        return loc, f"expected a file path, got {describe_value(value)}"
    if kind == "literal_error":
        return loc, f"{describe_value(value)} is not allowed; use one of {ctx.get('expected', '')}"
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
            return loc, f"{describe_value(value)} is not a valid id: {_PATTERN_HINTS[schema.ID_PATTERN][1]}"
        return loc, _pattern_message(value, ctx.get("pattern", ""), loc)
    if kind.startswith("url_"):
        reason = str(ctx.get("error") or err["msg"]).lower()
        return (
            loc,
            f"{describe_value(value)} is not a valid URL ({reason}); write it in full, like {_url_example(loc)}",
        )
    if kind == "value_error":
        return loc, str(err["msg"]).removeprefix("Value error, ")
    msg = str(err["msg"])
    return loc, f"{msg[:1].lower()}{msg[1:]}; got {describe_value(value)}"
