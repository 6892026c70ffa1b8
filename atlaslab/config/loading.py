"""Read, validate and cross-check a site config file, reporting every problem as one clear line.

Each problem names the file, the line, the field path as the user wrote it (``courses.agri-ai.tenant``,
``login[0].client_secret``), what is wrong and how to fix it. Three passes find them:

1. YAML: syntax errors, duplicate keys (PyYAML would silently keep the last one) and a top level that
   is not a mapping. An empty file (or one with only comments) is an error too: it is more often a
   truncated file than a wish for the defaults; ``{}`` asks for every default explicitly.
2. The schema (``schema.SiteConfig``): unknown keys (with a "did you mean"), types, formats, ranges;
   ``messages`` words pydantic's errors.
3. Cross-checks the schema cannot see (``checks``): references between sections, port clashes, duplicate
   names, roster files and secrets.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from .checks import cross_check, read_secret
from .messages import ConfigError, Loc, Problem, describe_value, pydantic_message, yaml_problem
from .schema import SecretRef, SiteConfig

ENV_VAR = "ATLASLAB_CONFIG"
SYSTEM_CONFIG = Path("/etc/atlaslab/atlaslab.yaml")


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
        value, error = read_secret(ref, self.resolve)
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
        # One pass gives both the node tree (lines, duplicate keys) and the data, as yaml.safe_load builds it.
        # PyYAML's own loader, not libyaml's: libyaml accepts tabs PyYAML refuses, which would change what loads.
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError([yaml_problem(e, label)]) from None
    doc = _Document(node)
    problems = [doc.problem(label, loc, message) for loc, message in _duplicate_keys(node)]
    if data is None:
        message = "the file has no settings; write `{}` to use every default, or start from examples/atlaslab.yaml"
        raise ConfigError([*problems, Problem(label, "", message, doc.line(()))])
    if not isinstance(data, dict):
        message = f"expected a mapping of sections (site:, login:, tenants:, ...), got {describe_value(data)}" + (
            "; remove the leading '- '" if isinstance(data, list) else ""
        )
        raise ConfigError([*problems, Problem(label, "", message, doc.line(()))])
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as e:
        seen = {(p.path, p.message) for p in problems}
        for err in e.errors():
            loc, message = pydantic_message(err)
            problem = doc.problem(label, loc, message)
            if (problem.path, problem.message) not in seen:
                seen.add((problem.path, problem.message))
                problems.append(problem)
        raise ConfigError(_ordered(problems)) from None
    loaded = LoadedConfig(site=site, source=source)
    found, rosters = cross_check(site, loaded.resolve, check_secrets)
    problems += [doc.problem(label, loc, message) for loc, message in found]
    if problems:
        raise ConfigError(_ordered(problems))
    return LoadedConfig(site=site, source=source, rosters=rosters)


def _ordered(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.path))


# ---------------------------------------------------------------------------------------------------------
# YAML: duplicate keys, and where a location is in the file


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
