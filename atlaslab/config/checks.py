"""Cross-checks after validation: what the schema alone cannot see.

References between sections (tenants, environments, teams), port clashes, duplicate and reserved names,
roster files and the roles they give, and secrets (variables and files, read but never shown). Each check
returns ``(location, message)`` pairs; the loader turns them into problems with lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .messages import SECRET_FIELDS, Loc
from .rosters import read_roster
from .schema import OAuthBase, SecretRef, SiteConfig

PASSWORD_FIELDS = ("password", "admin_password")
# Names the hub's own services use (atlaslab.hub.services); an extra service may not take them.
RESERVED_SERVICES = ("atlaslab-cli", "idle-culler", "prometheus", "exchange", "autograder", "mlflow", "credits")
# Hosts whose ports the hub and proxy API (both on 127.0.0.1) would share.
_LOCAL_HOSTS = ("0.0.0.0", "::", "127.0.0.1", "localhost", "")

# Turns a path written in the config into one to open: relative paths start at the config file's folder.
Resolve = Callable[[Path], Path]


def cross_check(
    site: SiteConfig, resolve: Resolve, check_secrets: bool
) -> tuple[list[tuple[Loc, str]], dict[str, tuple[str, ...]]]:
    """References between sections, ports, names, roster files and secrets; also the rosters read."""
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
            problems += _check_secrets(resolve, i, provider)
    if check_secrets:
        problems += _check_grading_secrets(site, resolve)
        problems += _check_tracking_secrets(site, resolve)

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
        roster_names, error = read_roster(resolve(course.roster))
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


def _check_secrets(resolve: Resolve, index: int, provider: Any) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for name in SECRET_FIELDS:
        secret = getattr(provider, name, None)
        if not isinstance(secret, SecretRef):
            continue
        source = "env" if secret.env is not None else "file"
        loc: Loc = ("login", index, name, source)
        value, error = read_secret(secret, resolve)
        if error is not None:
            problems.append((loc, error))
        elif name in PASSWORD_FIELDS:
            # JupyterHub's SharedPasswordAuthenticator refuses an admin password under 32 characters.
            shortest = 32 if name == "admin_password" else 8
            if len(value) < shortest:
                where = f"${secret.env}" if secret.env is not None else str(resolve(secret.file))  # type: ignore[arg-type]
                problems.append(
                    (loc, f"the password in {where} is shorter than {shortest} characters; write a longer one")
                )
    return problems


def _check_grading_secrets(site: SiteConfig, resolve: Resolve) -> list[tuple[Loc, str]]:
    grading = site.grading
    refs: list[tuple[Loc, SecretRef | None]] = [(("grading", "exchange_database"), grading.exchange_database)]
    if grading.exchange_s3 is not None:
        for name in ("access_key_id", "secret_access_key"):
            refs.append((("grading", "exchange_s3", name), getattr(grading.exchange_s3, name)))
    problems: list[tuple[Loc, str]] = []
    for loc, ref in refs:
        if ref is not None:
            _, error = read_secret(ref, resolve)
            if error is not None:
                problems.append(((*loc, "env" if ref.env is not None else "file"), error))
    return problems


def _check_tracking_secrets(site: SiteConfig, resolve: Resolve) -> list[tuple[Loc, str]]:
    tracking = site.tracking
    if not tracking.enabled:
        return []
    problems: list[tuple[Loc, str]] = []
    for name in ("database", "s3_access_key_id", "s3_secret_access_key"):
        ref = getattr(tracking, name)
        if ref is None:
            continue
        value, error = read_secret(ref, resolve)
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


def read_secret(ref: SecretRef, resolve: Resolve) -> tuple[str, str | None]:
    """(value, None), or ("", what is wrong and how to fix it). The value itself never appears in messages."""
    if ref.env is not None:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            return "", f"environment variable {ref.env} is not set or empty; export it before starting (or use `file:`)"
        return value, None
    path = resolve(ref.file)  # type: ignore[arg-type]  # a SecretRef without env has a file
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
