"""Generate the JSON Schema and the Markdown reference of the site config from the pydantic models.

The reference is built from the models' own field information (types, defaults, default factories,
constraints, descriptions), not only from the JSON Schema, so defaults such as the built-in
environment show as they are rather than as "required". ``docs/reference.md`` is this module's output;
a test keeps the committed file equal to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AnyHttpUrl, BaseModel
from pydantic.fields import FieldInfo

from . import schema
from .schema import SiteConfig
from .units import format_duration, format_size, parse_duration, parse_size

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The site config's JSON Schema (draft 2020-12), for editors and for validating files elsewhere."""
    schema_ = SiteConfig.model_json_schema(mode="validation")
    schema_ = {"$schema": SCHEMA_DIALECT, **schema_}
    _close_id_maps(schema_)
    return schema_


def helm_values_schema() -> dict[str, Any]:
    """``helm/atlaslab/values.schema.json``: the chart's values, whose ``atlaslab`` key is a site config."""
    site = json_schema()
    defs = site.pop("$defs", {})
    site.pop("$schema", None)
    obj = {"type": "object"}
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "AtlasLab Helm chart values",
        "type": "object",
        "properties": {
            "atlaslab": {"$ref": "#/$defs/SiteConfig", "description": "The site config (docs/reference.md)."},
            "jupyterhub": {**obj, "description": "Zero to JupyterHub's own values."},
            "placeholders": {
                **obj,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "image": {"type": "string"},
                    "kubectlImage": {"type": "string"},
                    "replicas": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    "schedules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["environment", "replicas", "at"],
                            "properties": {
                                "environment": {"type": "string"},
                                "replicas": {"type": "integer", "minimum": 0},
                                "at": {"type": "string"},
                                "until": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
            "networkPolicy": {
                **obj,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "deniedCIDRs": {"type": "array", "items": {"type": "string"}},
                },
            },
            "siteFiles": {
                **obj,
                "description": "Files the site config names by relative path (rosters): path -> text.",
                "additionalProperties": {"type": "string"},
            },
            "exchange": obj,
            "mlflow": obj,
            "gateway": {
                **obj,
                "description": "Dask Gateway for users' clusters beyond one pod (docs/kubernetes.md).",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "maxWorkersPerCluster": {"type": "integer", "minimum": 0},
                },
            },
            "global": obj,
        },
        "$defs": {**defs, "SiteConfig": site},
    }


def _close_id_maps(node: Any) -> None:
    """Maps keyed by ids: pydantic writes ``patternProperties`` but lets other keys through; forbid them."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1:
            [pattern] = patterns
            names = node.setdefault("propertyNames", {})
            names.setdefault("pattern", pattern)
            node["additionalProperties"] = False
        for value in node.values():
            _close_id_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_id_maps(value)


# ---------------------------------------------------------------------------------------------------------
# Walking the models


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _split(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(bare type, metadata from Annotated layers, whether None is allowed)."""
    metadata: list[Any] = []
    optional = False
    while True:
        if get_origin(annotation) is Annotated:
            args = get_args(annotation)
            annotation, metadata = args[0], [*metadata, *args[1:]]
        elif get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation):
            optional = True
            members = [a for a in get_args(annotation) if a is not type(None)]
            annotation = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        else:
            return annotation, metadata, optional


def _provider_models() -> list[type[BaseModel]]:
    return list(get_args(_split(schema.LoginProvider)[0]))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    bare, _, _ = _split(annotation)
    if _is_model(bare):
        return [bare]
    if get_origin(bare) in (Union, UnionType):
        return [m for a in get_args(bare) for m in _models_in(a)]
    return [m for a in get_args(bare) for m in _models_in(a)]


def _reachable(start: type[BaseModel], stop: set[type[BaseModel]]) -> list[type[BaseModel]]:
    """Models reachable from ``start`` (breadth first, in field order), not going through ``stop``."""
    order: list[type[BaseModel]] = []
    queue: list[type[BaseModel]] = [start]
    while queue:
        model = queue.pop(0)
        if model in order or model in stop:
            continue
        order.append(model)
        for info in model.model_fields.values():
            queue += [m for m in _models_in(info.annotation) if m not in order]
    return order


def _ordered_models() -> tuple[list[type[BaseModel]], list[type[BaseModel]]]:
    """(site models, login models): the sections, then the providers and the models only they use."""
    providers = _provider_models()
    site_models = _reachable(SiteConfig, set(providers))
    login_models = list(providers)
    for provider in providers:
        login_models += [m for m in _reachable(provider, set()) if m not in login_models + site_models]
    return site_models, login_models


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


# ---------------------------------------------------------------------------------------------------------
# Types, constraints and defaults in words


def _pattern_of(metadata: list[Any]) -> str | None:
    return next((m.pattern for m in metadata if getattr(m, "pattern", None)), None)


def _unit_of(metadata: list[Any]) -> str | None:
    for m in metadata:
        func = getattr(m, "func", None)
        if func is parse_size:
            return "size"
        if func is parse_duration:
            return "duration"
    return None


def _type_text(annotation: Any, extra_metadata: list[Any] = ()) -> str:  # type: ignore[assignment]
    bare, metadata, _ = _split(annotation)
    metadata = [*metadata, *extra_metadata]
    unit = _unit_of(metadata)
    if unit:
        return f"[{unit}](#sizes-and-durations)"
    pattern = _pattern_of(metadata)
    if bare is str and pattern == schema.ID_PATTERN:
        return "[id](#ids-and-usernames)"
    if bare is str and pattern == schema.USERNAME_PATTERN:
        return "[username](#ids-and-usernames)"
    if _is_model(bare):
        if bare is schema.SecretRef:
            return "[secret](#secretref)"
        return f"[{bare.__name__}](#{_anchor(bare)})"
    origin = get_origin(bare)
    if origin is Literal:
        values = [f"`{v}`" for v in get_args(bare)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if origin in (Union, UnionType):
        if set(get_args(bare)) == set(_provider_models()):
            return "[login provider](#login-providers)"
        return " or ".join(_type_text(a) for a in get_args(bare))
    if origin is list:
        return f"list of {_type_text(get_args(bare)[0])}"
    if origin is dict:
        key, value = get_args(bare)
        return f"map of {_type_text(key)} -> {_type_text(value)}"
    names = {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path", AnyHttpUrl: "URL"}
    return names.get(bare, getattr(bare, "__name__", str(bare)))


def _bound(value: Any, unit: str | None) -> str:
    if unit == "size":
        return format_size(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _constraints(info: FieldInfo) -> str:
    unit = _unit_of(info.metadata)
    parts = []
    for m in info.metadata:
        if isinstance(m, Ge):
            parts.append(f"at least {_bound(m.ge, unit)}")
        elif isinstance(m, Gt):
            parts.append(f"more than {_bound(m.gt, unit)}")
        elif isinstance(m, Le):
            parts.append(f"at most {_bound(m.le, unit)}")
        elif isinstance(m, Lt):
            parts.append(f"less than {_bound(m.lt, unit)}")
        elif isinstance(m, MinLen) and m.min_length:
            if _split(info.annotation)[0] is str:
                parts.append("not empty")
            else:
                parts.append(f"at least {m.min_length} {'item' if m.min_length == 1 else 'items'}")
    return ", ".join(parts)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is None:
        return "not set"
    if isinstance(value, BaseModel):
        shown = value.model_dump(mode="json", exclude_defaults=True)
        return "its own defaults" if not shown else f"`{_json(shown)}`"
    if isinstance(value, list | dict) and not value:
        return "empty"
    if isinstance(value, list | dict):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        dumped = {
            k: v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v for k, v in items
        }
        shown = dumped if isinstance(value, dict) else list(dumped.values())
        return f"`{_json(shown)}`"
    unit = _unit_of(info.metadata)
    if unit == "size":
        return f"`{format_size(value)}`"
    if unit == "duration":
        return f"`{format_duration(value)}`" + (" (off)" if value == 0 else "")
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _model_section(model: type[BaseModel]) -> list[str]:
    title = "Top level" if model is SiteConfig else model.__name__
    lines = [f'<a id="{_anchor(model)}"></a>', "", f"### {title}", ""]
    doc = " ".join((model.__doc__ or "").split())
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    # A login provider's `provider:` comes first, as in the YAML.
    fields = sorted(model.model_fields.items(), key=lambda item: item[0] != "provider")
    for name, info in fields:
        kind = _type_text(info.annotation, info.metadata)
        limits = _constraints(info)
        if limits:
            kind += f" ({limits})"
        lines.append(f"| `{name}` | {_cell(kind)} | {_cell(_default_text(info))} | {_cell(info.description or '')} |")
    return [*lines, ""]


def reference_markdown() -> str:
    """The whole site config reference as Markdown."""
    site_models, login_models = _ordered_models()
    providers = _provider_models()
    kinds = ", ".join(f"[`{get_args(p.model_fields['provider'].annotation)[0]}`](#{_anchor(p)})" for p in providers)
    out = [
        "# Site config reference",
        "",
        "<!-- Generated by `atlaslab config docs -o docs/reference.md`; do not edit by hand. -->",
        "",
        "One YAML file describes a whole AtlasLab site. AtlasLab reads `--config PATH`, else `$ATLASLAB_CONFIG`,",
        "else `/etc/atlaslab/atlaslab.yaml`, else `./atlaslab.yaml`; with none of them it runs on the built-in",
        "defaults shown below (local accounts and one small CPU environment). A file that exists but holds no",
        "settings at all is an error, since it is more often truncated than meant: write `{}` to ask for every",
        "default.",
        "",
        "`atlaslab config check` validates a file without starting anything and prints one line per problem",
        "(file, line, field path, what is wrong and how to fix it), exiting with status 2.",
        "`atlaslab config schema` prints the JSON Schema, for editors and CI.",
        "",
        "## Conventions",
        "",
        '<a id="ids-and-usernames"></a>',
        "",
        "### Ids and usernames",
        "",
        "- **id**: the keys of `tenants`, `environments`, `courses` and `teams`, and references to them: lower-case",
        "  letters, digits, `-` and `_`, starting with a letter or digit, at most 63 characters (`school-1337-bg`).",
        "- **username**: a name as the user logs in: letters, digits and `. _ @ : + -`, no spaces.",
        "",
        '<a id="sizes-and-durations"></a>',
        "",
        "### Sizes and durations",
        "",
        "- **size**: bytes, or a number with a binary unit: `512M`, `2G`, `1.5G`, `1T` (`2GB` and `2GiB` mean `2G`).",
        "- **duration**: seconds, or numbers with units s, m, h, d, w: `90s`, `30m`, `1h`, `1h30m`, `2d`.",
        "",
        "### Secrets and paths",
        "",
        "Secrets (client secrets, shared passwords) never go in this file: each is a [secret](#secretref) that names",
        "an environment variable (`env:`) or a file (`file:`) holding it. Relative paths (state directory, rosters,",
        "secret files) are relative to the config file.",
        "",
        "Unknown keys are errors everywhere, so a misspelt key is reported (with a suggestion) rather than ignored.",
        "",
        "## Sections",
        "",
    ]
    for model in site_models:
        out += _model_section(model)
    out += [
        '<a id="login-providers"></a>',
        "",
        "## Login providers",
        "",
        f"Each entry of `login:` picks its kind with `provider:`: {kinds}.",
        "Several providers may be listed; give two of the same kind distinct `id`s.",
        "",
    ]
    for model in login_models:
        out += _model_section(model)
    return "\n".join(out).rstrip() + "\n"


def undocumented_fields() -> list[str]:
    """Every model field without a description, as ``Model.field``: the reference needs one for each."""
    site_models, providers = _ordered_models()
    models = site_models + providers
    return [f"{m.__name__}.{name}" for m in models for name, info in m.model_fields.items() if not info.description]
