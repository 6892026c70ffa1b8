"""What the panel shows, read from plain inputs (environment variables, NVML, the credits service, MLflow)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx

from atlaslab.core.membership import Membership


class Unavailable(RuntimeError):
    """A source that cannot answer; its message is shown in the panel."""


def environment(env: Mapping[str, str]) -> dict:
    gpus = [u for u in env.get("ATLASLAB_GPUS", "").split(",") if u]
    return {
        "environment": env.get("ATLASLAB_ENVIRONMENT") or None,
        "cpu_limit": float(env["CPU_LIMIT"]) if env.get("CPU_LIMIT") else None,
        "mem_limit": int(float(env["MEM_LIMIT"])) if env.get("MEM_LIMIT") else None,
        "gpus": gpu_status(gpus) if gpus else [],
    }


def gpu_status(uuids: list[str]) -> list[dict]:
    """Live utilisation and memory of the assigned devices; their UUIDs alone when NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:
        return [{"uuid": u, "error": f"NVML unavailable: {e}"} for u in uuids]
    try:
        out = []
        for u in uuids:
            try:
                h = pynvml.nvmlDeviceGetHandleByUUID(u)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                name = pynvml.nvmlDeviceGetName(h)
                out.append(
                    {
                        "uuid": u,
                        "name": name.decode() if isinstance(name, bytes) else name,
                        "utilization": util.gpu,
                        "memory_used": mem.used,
                        "memory_total": mem.total,
                    }
                )
            except pynvml.NVMLError as e:
                out.append({"uuid": u, "error": str(e)})
        return out
    finally:
        pynvml.nvmlShutdown()


async def credits(env: Mapping[str, str]) -> dict:
    url, token = env.get("ATLASLAB_CREDITS_URL"), env.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        raise Unavailable("credits are not available on this server (no credits service configured)")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(url.rstrip("/") + "/api/v1/me", headers={"Authorization": f"token {token}"})
    except httpx.HTTPError as e:
        raise Unavailable(f"the credits service did not answer ({e})") from None
    if r.status_code != 200:
        raise Unavailable(f"the credits service answered {r.status_code}: {r.text[:200]}")
    data = r.json()
    return {"budgets": data.get("budgets", []), "notices": data.get("notices", []), "gpus": data.get("gpus", [])}


def runs(env: Mapping[str, str], limit: int = 5) -> list[dict]:
    uri = env.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise Unavailable("experiment tracking is not configured for this server (no MLFLOW_TRACKING_URI)")
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    client = MlflowClient(tracking_uri=uri)
    try:
        experiments = client.search_experiments(max_results=50)
        found = client.search_runs(
            [e.experiment_id for e in experiments], max_results=limit, order_by=["attributes.start_time DESC"]
        )
    except Exception as e:
        raise Unavailable(f"MLflow did not answer ({type(e).__name__}: {str(e)[:200]})") from None
    ui = uri.rstrip("/")
    return [
        {
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "metrics": dict(run.data.metrics),
            "link": f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
        }
        for run in found
    ]


async def hub_user(env: Mapping[str, str]) -> dict:
    """The user's own model from the hub (last activity, groups), read with the server's token."""
    api, token, user = env.get("JUPYTERHUB_API_URL"), env.get("JUPYTERHUB_API_TOKEN"), env.get("JUPYTERHUB_USER")
    if not api or not token or not user:
        raise Unavailable("this server was not started by a hub (no JUPYTERHUB_API_URL)")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{api.rstrip('/')}/users/{user}", headers={"Authorization": f"token {token}"})
    except httpx.HTTPError as e:
        raise Unavailable(f"the hub did not answer ({e})") from None
    if r.status_code != 200:
        raise Unavailable(f"the hub answered {r.status_code}: {r.text[:200]}")
    return r.json()


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def idle(model: Mapping, env: Mapping[str, str], now: datetime | None = None) -> dict:
    """Seconds left before the hub's idle culler stops this server, from the hub's last activity."""
    after = int(float(env.get("ATLASLAB_IDLE_CULL_AFTER") or 0))
    server = (model.get("servers") or {}).get(env.get("JUPYTERHUB_SERVER_NAME", ""), {})
    last = _parse_time(server.get("last_activity") or model.get("last_activity"))
    if not after or last is None:
        return {"idle_cull_after": after or None, "last_activity": last.isoformat() if last else None, "left": None}
    now = now or datetime.now(UTC)
    left = max(0, int(after - (now - last).total_seconds()))
    return {"idle_cull_after": after, "last_activity": last.isoformat(), "left": left}


def course_roles(model: Mapping) -> dict[str, list[str]]:
    """The user's courses and their roles in each, from hub groups ``course:ID:ROLE`` (students, instructors, tas)."""
    groups = list(model.get("groups") or [])
    return Membership.of(groups).course_roles(groups)


async def exchange_assignments(env: Mapping[str, str]) -> tuple[list[dict], list[dict]]:
    """The assignments released in the user's courses and the user's own submissions, from the exchange.

    Asked with the server's own token, so the exchange answers as for the user (a student sees their courses'
    releases and only their own submissions); the gradebooks with the due dates are on the instructors' side.
    """
    url, token = env.get("ATLASLAB_EXCHANGE_URL"), env.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        raise Unavailable("due dates are not available on this server (no exchange configured)")
    base = url.rstrip("/") + "/api/v1/"
    headers = {"Authorization": f"token {token}"}
    try:
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            released, submitted = await asyncio.gather(
                client.get(base + "assignments"), client.get(base + "submissions")
            )
    except httpx.HTTPError as e:
        raise Unavailable(f"the exchange did not answer ({type(e).__name__}: {e})") from None
    for r in (released, submitted):
        if r.status_code != 200:
            raise Unavailable(f"the exchange answered {r.status_code}: {r.text[:200]}")
    try:
        return released.json()["assignments"], submitted.json()["submissions"]
    except (ValueError, KeyError):
        raise Unavailable(f"the exchange answered something unexpected: {released.text[:200]}") from None


def due_dates(
    roles: Mapping[str, list[str]],
    released: list[dict],
    submitted: list[dict],
    now: datetime,
    per_course: int = 3,
) -> dict[str, dict[str, list[dict]]]:
    """Per course: the next due dates (future ones, soonest first, ``per_course`` of them) and, for a student,
    the assignments past due that they never submitted (latest due first)."""
    done = {(s["course"], s["assignment"]) for s in submitted}
    out: dict[str, dict[str, list[dict]]] = {c: {"due": [], "overdue": []} for c in roles}
    for a in released:
        course, due = a.get("course"), _parse_time(a.get("due"))
        if course not in out or due is None:
            continue
        item = {"name": a["assignment"], "due": due.isoformat(), "submitted": (course, a["assignment"]) in done}
        if due > now:
            out[course]["due"].append(item)
        elif "students" in roles[course] and not item["submitted"]:
            out[course]["overdue"].append(item)
    for lists in out.values():
        lists["due"] = sorted(lists["due"], key=lambda i: (i["due"], i["name"]))[:per_course]
        lists["overdue"] = sorted(lists["overdue"], key=lambda i: (i["due"], i["name"]), reverse=True)[:per_course]
    return out


async def courses(model: Mapping, env: Mapping[str, str], now: datetime | None = None) -> dict:
    """The user's courses with their next due dates; when the exchange cannot tell, the courses and the reason."""
    roles = course_roles(model)
    listed = [{"id": course, "roles": r, "due": [], "overdue": []} for course, r in roles.items()]
    if not listed:
        return {"courses": []}
    try:
        released, submitted = await exchange_assignments(env)
    except Unavailable as e:
        return {"courses": listed, "error": str(e)}
    dates = due_dates(roles, released, submitted, now or datetime.now(UTC))
    return {"courses": [{**c, **dates[c["id"]]} for c in listed]}
