"""The start page's environment menu: only what the user may start, each with its resources."""

from __future__ import annotations

import html
from collections.abc import Mapping

from atlaslab.config.schema import Environment
from atlaslab.config.units import format_size

NOTHING_OPEN = (
    '<p class="alert alert-warning" role="alert">No environment is open to your account yet. '
    "Ask your instructor or the site administrator to add you to a course, team or tenant.</p>"
)


def resources(env: Environment) -> str:
    parts = [f"{env.cpu:g} CPU", f"{format_size(int(env.memory))}B RAM"]
    if env.gpu is not None:
        parts.append(env.gpu.describe())
    return ", ".join(parts)


def render(environments: Mapping[str, Environment], allowed: list[str], choice: str | None) -> str:
    if not allowed:
        return NOTHING_OPEN
    rows = []
    for key in allowed:
        env = environments[key]
        checked = " checked" if key == choice else ""
        desc = html.escape(env.description or "")
        rows.append(
            f'<div class="form-check atlaslab-env">'
            f'<input class="form-check-input" type="radio" name="environment" id="env-{key}" value="{key}"'
            f"{checked}>"
            f'<label class="form-check-label" for="env-{key}"><strong>{html.escape(env.display_title(key))}</strong>'
            f' <span class="text-muted">{html.escape(resources(env))}</span>'
            + (f'<br><small class="text-muted">{desc}</small>' if desc else "")
            + "</label></div>"
        )
    return "<fieldset><legend>Choose an environment</legend>" + "".join(rows) + "</fieldset>"
