"""The chart's hub.extraConfig run on top of what Zero to JupyterHub's own config sets in the hub pod: the chart's
networking, database and secrets survive, services get addresses other pods reach, and a real KubeSpawner's pods
carry AtlasLab's environment with URLs that work from a tenant's namespace."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kube_support import CHART, by_kind, chart_without_dependency, hub_user, offline_kubeconfig, pod_for, render
from traitlets.config import Config

from atlaslab.config import mounted as mounted_mod

POD_IP = "10.42.0.7"
TOKENS = {"ATLASLAB_EXCHANGE_TOKEN": "exchange-token-from-secret", "ATLASLAB_MLFLOW_TOKEN": "mlflow-token-from-secret"}
ROSTER = "username\nnadia\nomar\n"


def z2jh_config() -> Config:
    """What Zero to JupyterHub 4's jupyterhub_config.py has set when hub.extraConfig runs (its own values)."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.ConfigurableHTTPProxy.api_url = "http://proxy-api:8001"
    c.ConfigurableHTTPProxy.should_start = False
    c.JupyterHub.hub_bind_url = "http://:8081"
    c.JupyterHub.hub_connect_url = "http://hub:8081"
    c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
    c.JupyterHub.cookie_secret = "ab" * 32
    c.CryptKeeper.keys = ["cd" * 32]
    c.KubeSpawner.namespace = "atlaslab"
    c.KubeSpawner.environment = {"SET_BY_SINGLEUSER_EXTRAENV": "1"}
    return c


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[list[dict], dict]:
    tmp = tmp_path_factory.mktemp("incluster")
    chart = chart_without_dependency(tmp)
    values = yaml.safe_load((CHART / "ci" / "gpu-mig-values.yaml").read_text())
    values["atlaslab"]["courses"]["ml101"]["roster"] = "roster/ml101.csv"
    values["siteFiles"] = {"roster/ml101.csv": ROSTER}
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render(chart, path, lint=False), yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture
def hub(rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Config, object]:
    """The hub pod's config: the ConfigMap's files where the chart mounts them, extraConfig run as z2jh runs it."""
    objects, defaults = rendered
    [site] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "atlaslab-site"]
    mounted = tmp_path / "etc-atlaslab"
    mounted.mkdir()
    for key, text in site["data"].items():
        (mounted / key).write_text(text)
    env = {
        "POD_NAMESPACE": "atlaslab",
        "ATLASLAB_POD_IP": POD_IP,
        "ATLASLAB_SITE_DIR": str(mounted),
        "ATLASLAB_STATE_DIR": str(tmp_path / "srv-jupyterhub-atlaslab"),
        **TOKENS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    offline_kubeconfig(tmp_path, monkeypatch)
    c = z2jh_config()
    exec(defaults["jupyterhub"]["hub"]["extraConfig"]["atlaslab"], {"c": c})
    return c, objects


def services(c: Config) -> dict[str, dict]:
    return {s["name"]: s for s in c.JupyterHub.services}


def test_the_charts_networking_database_and_secrets_survive(hub) -> None:
    c, _ = hub
    assert c.ConfigurableHTTPProxy.api_url == "http://proxy-api:8001"
    assert c.JupyterHub.hub_bind_url == "http://:8081" and c.JupyterHub.hub_connect_url == "http://hub:8081"
    assert c.JupyterHub.db_url == "sqlite:///jupyterhub.sqlite" and c.JupyterHub.cookie_secret == "ab" * 32
    assert c.CryptKeeper["keys"] == ["cd" * 32]
    # AtlasLab's one-machine values are gone where the chart set none: the proxy token comes from the environment
    # the chart gives the hub (CONFIGPROXY_AUTH_TOKEN), the hub listens where hub_bind_url says.
    for section, key in [("ConfigurableHTTPProxy", "auth_token"), ("JupyterHub", "hub_ip"), ("JupyterHub", "bind_url")]:
        assert key not in c[section], (section, key)
    # AtlasLab's part is there: KubeSpawner profiles, groups from the site (the roster came through siteFiles).
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert c.JupyterHub.load_groups["course:ml101:students"]["users"] == ["nadia", "omar"]


def test_services_get_addresses_other_pods_reach(hub) -> None:
    c, objects = hub
    found = services(c)
    exchange, mlflow = found["exchange"], found["mlflow"]
    # Run by the chart's Deployments, not by the hub; the token is the one in the chart's Secret.
    assert exchange["url"] == "http://atlaslab-exchange.atlaslab.svc:8000" and "command" not in exchange
    assert exchange["api_token"] == TOKENS["ATLASLAB_EXCHANGE_TOKEN"]
    assert mlflow["url"] == "http://atlaslab-mlflow.atlaslab.svc:8000" and "command" not in mlflow
    assert mlflow["api_token"] == TOKENS["ATLASLAB_MLFLOW_TOKEN"]
    # Hub-managed services listen on the pod's address (the proxy pod routes there), on ports the hub's
    # NetworkPolicy (jupyterhub.hub.networkPolicy.ingress in values.yaml) opens to the proxy.
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    [rule] = defaults["jupyterhub"]["hub"]["networkPolicy"]["ingress"]
    [ports] = rule["ports"]
    managed = [s for s in found.values() if "command" in s and "url" in s]
    assert {s["name"] for s in managed} >= {"credits", "autograder", "ml101"}
    for s in managed:
        host, port = s["url"].removeprefix("http://").split(":")
        assert host == POD_IP and ports["port"] <= int(port) <= ports["endPort"], s["url"]
    # The formgrader reaches the exchange at its Service.
    env = found["ml101"]["environment"]
    assert env["ATLASLAB_EXCHANGE_URL"] == "http://atlaslab-exchange.atlaslab.svc:8000/services/exchange/"
    # The Deployments read the same Secret keys the hub's environment does.
    hub_env = defaults["jupyterhub"]["hub"]["extraEnv"]
    deployments = by_kind(objects, "Deployment")
    for name, var in (("atlaslab-exchange", "ATLASLAB_EXCHANGE_TOKEN"), ("atlaslab-mlflow", "ATLASLAB_MLFLOW_TOKEN")):
        [container] = deployments[("", name)]["spec"]["template"]["spec"]["containers"]
        [token] = [e for e in container["env"] if e["name"] == "JUPYTERHUB_API_TOKEN"]
        assert token["valueFrom"] == hub_env[var]["valueFrom"], name
    secret = by_kind(objects, "Secret")[("", "atlaslab-service-tokens")]
    assert {"exchange", "mlflow", "mlflow-flask-secret"} <= set(secret["data"])


async def test_a_tenants_pod_carries_atlaslabs_environment_with_reachable_urls(hub) -> None:
    c, _ = hub
    nadia = hub_user("nadia", ["tenant:campus", "course:ml101:students"])
    pod, spawner = await pod_for(c, nadia, "gpu-shared", api_token="server-token-of-nadia")
    assert spawner.namespace == "lab-campus"
    [notebook] = [x for x in pod["spec"]["containers"] if x["name"] == "notebook"]
    env = {e["name"]: e.get("value") for e in notebook["env"]}
    assert env["SET_BY_SINGLEUSER_EXTRAENV"] == "1" and env["ATLASLAB_ENVIRONMENT"] == "gpu-shared"
    assert env["ATLASLAB_EXCHANGE_URL"] == "http://atlaslab-exchange.atlaslab.svc:8000/services/exchange/"
    assert env["MLFLOW_TRACKING_URI"] == "http://atlaslab-mlflow.atlaslab.svc:8000/services/mlflow"
    # The hub pod's own services through the proxy: a new hub pod (new IP) does not break running servers.
    assert env["ATLASLAB_CREDITS_URL"] == "http://proxy-public.atlaslab.svc/services/credits/"
    assert env["MLFLOW_TRACKING_TOKEN"] == "server-token-of-nadia"
    assert not any(v and "127.0.0.1" in v for v in env.values()), env
    assert "JUPYTER_CONFIG_PATH" not in env and env.get("PATH") is None
    assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"


def test_a_site_file_cannot_leave_the_site_directory(tmp_path: Path) -> None:
    mounted = tmp_path / "m"
    mounted.mkdir()
    (mounted / "atlaslab.yaml").write_text("{}\n")
    (mounted / "files.json").write_text('{"../../etc/evil": "x"}')
    with pytest.raises(ValueError, match="leaves the site directory"):
        mounted_mod.materialise(mounted, tmp_path / "state" / "site")
    assert not (tmp_path / "etc").exists()
