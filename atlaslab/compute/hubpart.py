"""What compute adds to the hub: the credits service and the spawner's budget checks; the Dask Gateway on Kubernetes.

* ``credits``: users and their servers read their own budgets, notices and GPUs from this service (the workbench
  panel does); GPU assignments and usage are kept in STATE_DIR/compute, and the spawner checks budgets at every
  start and while servers run when the site sets any.
* ``dask-gateway`` (Kubernetes only, when the chart runs it): registered with the token the chart generated, users'
  tokens and their servers' may reach it (dask-gateway checks that scope), and users' pods are told where its API
  and its scheduler proxy are.
"""

from __future__ import annotations

from atlaslab.config import LoadedConfig
from atlaslab.core import ports
from atlaslab.core.hubpart import HubPart, access_scope, site_service
from atlaslab.core.state import StateDir

CREDITS_SERVICE = "credits"
GATEWAY_SERVICE = "dask-gateway"


def has_budgets(loaded: LoadedConfig) -> bool:
    credits = loaded.site.credits
    return bool(credits.tenants or credits.teams or credits.users or credits.default_user)


def credits_service(loaded: LoadedConfig) -> dict:
    return site_service(loaded, CREDITS_SERVICE, ports.CREDITS, "atlaslab.compute.service")


def hub_part(loaded: LoadedConfig, state: StateDir) -> HubPart:
    service = credits_service(loaded)
    base = loaded.site.site.base_url.rstrip("/")
    budgets = has_budgets(loaded)
    spawner: dict = {"compute_dir": str(state.compute_dir), "credits": loaded.site.credits if budgets else None}
    if budgets:
        # The spawner's poll counts and checks running servers.
        spawner["poll_interval"] = float(loaded.site.credits.check_every)
    scope = access_scope(CREDITS_SERVICE)
    return HubPart(
        "credits",
        services=(service,),
        user_scopes=(scope,),
        server_scopes=(scope,),
        server_env={"ATLASLAB_CREDITS_URL": f"{service['url']}{base}/services/{CREDITS_SERVICE}/"},
        spawner=spawner,
    )


def gateway_part(token: str, address: str, proxy_address: str) -> HubPart:
    """The Dask Gateway as a service with ``token``, reachable by users, and where users' pods find it: ``address``
    (its API) and ``proxy_address`` (the TLS proxy in front of the schedulers).

    No ``url``: the hub's proxy would forward ``/services/dask-gateway/...`` with that prefix, which the gateway's
    API does not serve; users' pods reach the API at its Service instead."""
    scope = access_scope(GATEWAY_SERVICE)
    return HubPart(
        "dask-gateway",
        services=({"name": GATEWAY_SERVICE, "api_token": token, "display": False},),
        user_scopes=(scope,),
        server_scopes=(scope,),
        server_env={
            # dask-gateway's client configuration (dask config from the environment), and atlaslab.compute.cluster().
            "DASK_GATEWAY__ADDRESS": address,
            "DASK_GATEWAY__PROXY_ADDRESS": proxy_address,
            "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        },
    )
