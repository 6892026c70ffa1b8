"""The JSON Schema and the Markdown reference generated from the site config models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from atlaslab.cli import app
from atlaslab.config.docs import json_schema, reference_markdown, undocumented_fields

ROOT = Path(__file__).parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
EXAMPLE = ROOT / "examples" / "atlaslab.yaml"
INVALID = Path(__file__).parent / "configs" / "invalid"
REGENERATE = "regenerate it with `atlaslab config docs -o docs/reference.md`"


def printed_schema() -> dict:
    result = CliRunner().invoke(app, ["config", "schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(printed_schema(), format_checker=jsonschema.FormatChecker())


def test_schema_command_prints_a_valid_json_schema() -> None:
    schema = printed_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == json_schema()


def test_example_config_matches_the_schema() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    errors = [f"{e.json_path}: {e.message}" for e in validator().iter_errors(data)]
    assert errors == []


def test_empty_mapping_matches_the_schema() -> None:
    assert list(validator().iter_errors({})) == []


# What the schema can see by itself: the loader rejects these and so must the JSON Schema.
SCHEMA_LEVEL = [
    "unknown-top-level-key",
    "unknown-site-key",
    "unknown-deep-key",
    "unknown-provider-key",
    "wrong-type-number",
    "wrong-type-bool",
    "list-instead-of-map",
    "map-instead-of-list",
    "bad-size",
    "bad-duration",
    "bad-bind",
    "bad-id-characters",
    "bad-username",
    "bad-mig-profile",
    "bad-literal",
    "unknown-provider",
    "provider-missing",
    "missing-required",
    "no-login-provider",
    "bad-port",
]


@pytest.mark.parametrize("name", SCHEMA_LEVEL)
def test_schema_rejects_what_the_loader_rejects(name: str) -> None:
    data = yaml.safe_load((INVALID / f"{name}.yaml").read_text())
    assert list(validator().iter_errors(data)), f"the JSON Schema accepts {name}.yaml"


def test_id_maps_reject_keys_that_are_not_ids() -> None:
    errors = list(validator().iter_errors({"tenants": {"Bad Id": {"title": "x"}}}))
    assert errors
    assert any("Bad Id" in e.message for e in errors)


def test_sizes_and_durations_in_any_case_match_the_schema() -> None:
    data = {"environments": {"a": {"memory": "2g", "default": True}}, "limits": {"idle_cull_after": "1H30m"}}
    assert list(validator().iter_errors(data)) == []


def walk_properties(node: object, where: str = "#") -> list[str]:
    """Every property (in every object schema) that has no description."""
    missing: list[str] = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if not isinstance(prop, dict) or not prop.get("description"):
                missing.append(f"{where}/properties/{name}")
        for key, value in node.items():
            missing += walk_properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            missing += walk_properties(value, f"{where}/{i}")
    return missing


def test_every_schema_property_has_a_description() -> None:
    assert walk_properties(json_schema()) == []


def test_every_model_field_has_a_description() -> None:
    assert undocumented_fields() == []


def test_every_model_has_a_description() -> None:
    schema = json_schema()
    missing = [name for name, definition in schema["$defs"].items() if not definition.get("description")]
    assert missing == []


def test_committed_reference_is_up_to_date() -> None:
    assert REFERENCE.is_file(), f"docs/reference.md is missing; {REGENERATE}"
    assert REFERENCE.read_text() == reference_markdown(), f"docs/reference.md is stale; {REGENERATE}"


def test_docs_command_writes_and_prints_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "reference.md"
    result = CliRunner().invoke(app, ["config", "docs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == reference_markdown()
    result = CliRunner().invoke(app, ["config", "docs"])
    assert result.exit_code == 0
    assert result.stdout == reference_markdown()


def row(markdown: str, section: str, key: str) -> list[str]:
    """The cells of ``key``'s row in the table under ``### section``."""
    body = markdown.split(f"\n### {section}\n", 1)[1].split("\n### ", 1)[0]
    for line in body.splitlines():
        if line.startswith(f"| `{key}` |"):
            return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
    raise AssertionError(f"no row for {key} under {section}")


def test_reference_shows_real_defaults_types_and_descriptions() -> None:
    md = reference_markdown()
    assert row(md, "Top level", "environments")[1:3] == [
        "map of [id](#ids-and-usernames) -> [Environment](#environment)",
        '`{"cpu-small": {"default": true}}`',
    ]
    assert row(md, "Top level", "login")[2] == '`[{"provider": "native"}]`'
    assert row(md, "Top level", "tenants")[2] == "empty"
    assert row(md, "Top level", "limits")[1] == "[Limits](#limits)"
    assert row(md, "Environment", "memory")[1:3] == ["[size](#sizes-and-durations) (at least 128M)", "`2G`"]
    assert row(md, "Limits", "idle_cull_after")[2] == "`1h`"
    assert row(md, "Limits", "start_timeout")[2] == "`2m`"
    assert row(md, "Limits", "max_server_age")[2] == "`0` (off)"
    assert row(md, "Site", "hub_port")[1:3] == ["integer (at least 1, at most 65535)", "`8081`"]
    assert row(md, "Site", "url")[2] == "not set"
    assert row(md, "Site", "admins")[1] == "list of [username](#ids-and-usernames)"
    assert row(md, "Tenant", "title")[2] == "**required**"
    assert row(md, "Tenant", "kind")[1] == "one of `school`, `institute`, `research`, `startup`, `other`"
    assert row(md, "Course", "tenant")[1] == "[id](#ids-and-usernames)"
    assert row(md, "SharedPasswordLogin", "password")[1] == "[secret](#secretref)"
    assert row(md, "NativeLogin", "provider")[1] == "`native`"
    assert "| required |" not in md.replace("**required**", "")


def test_reference_links_all_resolve() -> None:
    md = reference_markdown()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', md))
    links = set(re.findall(r"\]\(#([^)]+)\)", md))
    assert links - anchors == set()
    for model in re.findall(r"^### (\w+)$", md, flags=re.MULTILINE):
        assert model.lower() in anchors, f"no anchor for {model}"
