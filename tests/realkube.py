"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK (fake nodes), with RBAC and admission as a cluster has them.

The binaries (etcd at the release Kubernetes requires included) are built once per version by
``scripts/k8s/build.sh`` (``scripts/install.sh --test`` runs it) into ``$ATLASLAB_K8S_CACHE`` (default
``/var/cache/atlaslab-k8s``). No container
runs: KWOK marks pods on its nodes Running, with an address from the node's pod CIDR (``127.X.N.0/24``, loopback,
so a test can serve a pod's "container" itself on that address).

From a shell (a developer's cluster, left running; the tests reuse it)::

    python tests/realkube.py up      # prints the admin KUBECONFIG
    python tests/realkube.py down

The tests' session fixture (``tests/conftest.py``) reuses such a cluster, or starts its own in a temporary
directory on free ports and stops it at the end of the session.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts" / "k8s"
SERVICE_CIDR = "10.96.0.0/16"  # ClusterIPs are allocated here; nothing connects to them on this machine
FAKE_NODE = {"kwok.x-k8s.io/node": "fake"}


def versions() -> dict[str, str]:
    out = {}
    for line in (SCRIPTS / "versions.sh").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("ATLASLAB_K8S_CACHE", "/var/cache/atlaslab-k8s"))


def binaries() -> dict[str, Path]:
    v = versions()
    k8s = cache_dir() / f"k8s-{v['K8S_VERSION']}" / "bin"
    kwok = cache_dir() / f"kwok-{v['KWOK_VERSION']}" / "bin"
    found = {name: k8s / name for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")}
    found["kwok"] = kwok / "kwok"
    return found


def missing_tools() -> list[str]:
    """What is absent to start a control plane here, one path per thing (empty: all there)."""
    return [str(path) for path in binaries().values() if not path.exists()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- certificates -----------------------------------------------------------------------------------------------


def _pki(directory: Path) -> None:
    """A CA, the API server's serving certificate, client certificates and the service-account signing key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(name: str, k: ec.EllipticCurvePrivateKey) -> None:
        pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())  # fmt: skip
        (directory / f"{name}.key").write_bytes(pem)
        os.chmod(directory / f"{name}.key", 0o600)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("atlaslab-test-ca"))
        .issuer_name(name("atlaslab-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write_key("ca", ca_key)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(file: str, cn: str, org: str | None = None, server: bool = False) -> None:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn, org))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            first_service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
            names: list[x509.GeneralName] = [
                x509.DNSName(n)
                for n in (
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ]
            names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(first_service_ip)]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        write_key(file, k)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{file}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    issue("apiserver", "kube-apiserver", server=True)
    issue("admin", "atlaslab-test-admin", "system:masters")
    issue("controller-manager", "system:kube-controller-manager")
    issue("scheduler", "system:kube-scheduler")
    # KWOK plays every node's kubelet (node and pod status, leases, deleting pods): cluster admin here.
    issue("kwok", "kwok-controller", "system:masters")
    sa = key()
    write_key("service-account", sa)
    pub = sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (directory / "service-account.pub").write_bytes(pub)


def kubeconfig(server: str, ca: Path, user: dict[str, str], path: Path) -> Path:
    """A kubeconfig for ``server`` with ``user`` (client-certificate/client-key, or token)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "atlaslab-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "atlaslab-test", "context": {"cluster": "atlaslab-test", "user": "user"}}],
        "current-context": "atlaslab-test",
    }
    path.write_text(json.dumps(doc, indent=1))
    os.chmod(path, 0o600)
    return path


# --- a small client (the admin's view; the hub's own code uses kubernetes_asyncio) --------------------------------


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{status}: {message}")


class Kube:
    """JSON over HTTPS to the API server, as the admin or with a bearer token."""

    def __init__(self, server: str, ca: Path, cert: tuple[str, str] | None = None, token: str | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        tls = ssl.create_default_context(cafile=str(ca))
        if cert:
            tls.load_cert_chain(*cert)
        self.http = httpx.Client(base_url=server, verify=tls, headers=headers, timeout=30)

    def request(self, method: str, path: str, body: Any = None, ok404: bool = False, **kw) -> Any:
        content_type = kw.pop("content_type", "application/json")
        r = self.http.request(method, path, json=body if body is not None else None,
                              headers={"Content-Type": content_type}, **kw)  # fmt: skip
        if r.status_code == 404 and ok404:
            return None
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        if r.status_code >= 400:
            raise ApiError(r.status_code, data)
        return data

    def get(self, path: str, ok404: bool = False, **params) -> Any:
        return self.request("GET", path, ok404=ok404, params=params or None)

    def create(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)

    def apply(self, path: str, body: dict) -> dict:
        """Create, or replace what is there (``path`` is the collection)."""
        try:
            return self.create(path, body)
        except ApiError as e:
            if e.status != 409:
                raise
            current = self.get(f"{path}/{body['metadata']['name']}")
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
            return self.request("PUT", f"{path}/{body['metadata']['name']}", body)

    def patch(self, path: str, body: dict, kind: str = "merge") -> dict:
        return self.request("PATCH", path, body, content_type=f"application/{kind}-patch+json")

    def delete(self, path: str, **params) -> Any:
        return self.request("DELETE", path, ok404=True, params=params or None)

    def wait(self, what: str, probe: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
        """``probe()``'s first truthy answer; fails naming ``what`` and the last answer after ``timeout`` s."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                last = probe()
            except ApiError as e:
                last = e
            if last and not isinstance(last, ApiError):
                return last
            time.sleep(every)
        raise TimeoutError(f"{what}: not after {timeout:.0f} s (last: {last})")


# --- the control plane --------------------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    run: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    owner: str = "tests"  # "cli": started by `realkube.py up`, left running for reuse
    # Pods get loopback addresses 127.<pod_net>.<node>.<n>; another control plane on this machine picks another.
    pod_net: int = field(default_factory=lambda: random.randint(64, 254))
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.run / "admin.kubeconfig"

    def admin(self) -> Kube:
        return Kube(self.server, self.pki / "ca.crt", cert=(str(self.pki / "admin.crt"), str(self.pki / "admin.key")))

    def as_token(self, token: str) -> Kube:
        return Kube(self.server, self.pki / "ca.crt", token=token)

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        return kubeconfig(self.server, self.pki / "ca.crt", {"token": token}, path)

    # state file: what `up` leaves for the next test session (and `down`) to find
    def save(self) -> None:
        (self.run / "state.json").write_text(json.dumps({**asdict(self), "run": str(self.run)}, indent=1))

    @classmethod
    def load(cls, run: Path) -> ControlPlane | None:
        try:
            state = json.loads((run / "state.json").read_text())
        except (OSError, ValueError):
            return None
        state["run"] = Path(state["run"])
        return cls(**state)

    def alive(self) -> bool:
        if not self.pids or not all(_running(pid) for pid in self.pids.values()):
            return False
        try:
            return self.admin().get("/readyz") == "ok"
        except (httpx.HTTPError, ApiError, OSError):
            return False

    # starting
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.run / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        log.close()
        self.pids[name] = proc.pid
        self.save()

    def _check(self, name: str) -> None:
        pid = self.pids[name]
        if not _running(pid):
            tail = (self.run / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited at start; its log ends:\n{tail}")

    def start(self, progress: Callable[[str], None] = print) -> None:
        missing = missing_tools()
        if missing:
            raise FileNotFoundError("missing: " + "; ".join(missing))
        bins = binaries()
        t0 = time.monotonic()
        (self.run / "logs").mkdir(parents=True, exist_ok=True)
        _pki(self.pki)
        for name in ("etcd-client", "etcd-peer", "apiserver", "kwok"):
            self.ports[name] = free_port()
        pki = self.pki
        for name in ("admin", "controller-manager", "scheduler", "kwok"):
            kubeconfig(self.server, pki / "ca.crt", {"client-certificate": str(pki / f"{name}.crt"),
                                                      "client-key": str(pki / f"{name}.key")},
                       self.run / f"{name}.kubeconfig")  # fmt: skip
        # etcd on tmpfs: no fsync cost; it holds nothing worth keeping.
        data = Path(tempfile.mkdtemp(prefix="atlaslab-etcd-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        (self.run / "etcd-data").write_text(str(data))
        etcd_url = f"http://127.0.0.1:{self.ports['etcd-client']}"
        peer_url = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn("etcd", [str(bins["etcd"]), "--name", "atlaslab-test", "--data-dir", str(data / "etcd"),
                             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                             "--initial-cluster", f"atlaslab-test={peer_url}", "--log-level", "warn"])  # fmt: skip
        _wait_http(f"{etcd_url}/health", lambda r: '"health":"true"' in r.text, "etcd", self, 30)
        self.timings["etcd"] = round(time.monotonic() - t0, 2)
        progress(f"etcd up in {self.timings['etcd']} s")
        self._spawn("kube-apiserver", [
            str(bins["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.ports['apiserver']}",
            # The API server would list itself at 127.0.0.1 in the `kubernetes` Service, which Endpoints refuse.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ])  # fmt: skip
        admin = self.admin()

        def ready() -> bool:
            self._check("kube-apiserver")
            try:
                return admin.get("/readyz") == "ok"
            except (httpx.HTTPError, ApiError):
                return False

        admin.wait("kube-apiserver ready", ready, timeout=90, every=0.25)
        self.timings["apiserver"] = round(time.monotonic() - t0, 2)
        progress(f"kube-apiserver ready at {self.server} after {self.timings['apiserver']} s")
        self._spawn("kube-controller-manager", [
            str(bins["kube-controller-manager"]),
            *(f"--{flag}={self.run / 'controller-manager.kubeconfig'}"
              for flag in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")),
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'service-account.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true", "--allocate-node-cidrs=false", "--v=1",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(bins["kube-scheduler"]),
            *(f"--{flag}={self.run / 'scheduler.kubeconfig'}"
              for flag in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")),
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false", "--v=1",
        ])  # fmt: skip
        self._spawn("kwok", [
            str(bins["kwok"]), f"--kubeconfig={self.run / 'kwok.kubeconfig'}",
            f"--config={SCRIPTS / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=127.0.0.1", f"--cidr=127.{self.pod_net}.255.0/24", "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
        ])  # fmt: skip

        def default_service_account() -> bool:
            for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self._check(name)
            return bool(admin.get("/api/v1/namespaces/default/serviceaccounts/default", ok404=True))

        admin.wait("the default ServiceAccount (kube-controller-manager)", default_service_account, timeout=90)
        for i, node in enumerate(NODES):
            admin.apply("/api/v1/nodes", node_object(**node, cidr=f"127.{self.pod_net}.{i}.0/24"))
        for node in NODES:
            admin.wait(f"node {node['name']} Ready", lambda n=node["name"]: node_ready(admin, n), timeout=90)
        self.timings["all"] = round(time.monotonic() - t0, 2)
        self.save()
        progress(f"control plane up with {len(NODES)} KWOK nodes after {self.timings['all']} s")

    def stop(self) -> None:
        for name in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                _terminate(pid)
        data = self.run / "etcd-data"
        if data.exists():
            shutil.rmtree(data.read_text().strip(), ignore_errors=True)
            data.unlink()
        (self.run / "state.json").unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier `up`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _terminate(pid: int, grace: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.1)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
        while _running(pid):
            time.sleep(0.05)


def _wait_http(url: str, ok: Callable[[httpx.Response], bool], what: str, plane: ControlPlane, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plane._check(what)
        try:
            if ok(httpx.get(url, timeout=2)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not healthy at {url} after {timeout} s")


# --- nodes --------------------------------------------------------------------------------------------------------

GPU_TAINT = {"key": "nvidia.com/gpu", "effect": "NoSchedule", "value": "present"}
# The cluster the chart's tests install into: a plain node for the hub and services, a student pool (tainted, as
# the GPU/MIG values' cpu-small placement expects), two GPU nodes as NVIDIA's GPU operator labels them: an A100 with
# one MIG 1g.10gb slice (so one placeholder fills it and a user's server must evict it) and whole GPUs, and a node
# with time-sliced ("shared") GPUs.
NODES: list[dict[str, Any]] = [
    {"name": "system-0", "labels": {"node-pool": "system"}},
    {
        "name": "students-0",
        "labels": {"node-pool": "students"},
        "taints": [{"key": "dedicated", "value": "students", "effect": "NoSchedule"}],
    },
    {
        "name": "gpu-a100-0",
        "labels": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "A100-SXM4-80GB"},
        "taints": [GPU_TAINT],
        "extra": {"nvidia.com/gpu": "4", "nvidia.com/mig-1g.10gb": "1"},
    },
    {
        "name": "gpu-shared-0",
        "labels": {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-L4-SHARED"},
        "taints": [GPU_TAINT],
        "extra": {"nvidia.com/gpu.shared": "8"},
    },
]


def node_object(name: str, cidr: str, labels: dict[str, str], taints: list | None = None,
                extra: dict[str, str] | None = None) -> dict:  # fmt: skip
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi", **(extra or {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {**FAKE_NODE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": taints or []},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def node_ready(kube: Kube, name: str) -> bool:
    node = kube.get(f"/api/v1/nodes/{name}")
    ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
    taints = [t["key"] for t in node["spec"].get("taints", [])]
    return bool(ready and ready[0]["status"] == "True" and "node.kubernetes.io/not-ready" not in taints)


# --- finding or starting one -------------------------------------------------------------------------------------


def shared_run() -> Path:
    return cache_dir() / "run"


def running() -> ControlPlane | None:
    """The cluster `realkube.py up` left running, if it still answers."""
    plane = ControlPlane.load(shared_run())
    return plane if plane is not None and plane.alive() else None


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        plane = running()
        if plane is None:
            run = shared_run()
            stale = ControlPlane.load(run)
            if stale is not None:
                stale.stop()
            shutil.rmtree(run, ignore_errors=True)
            plane = ControlPlane(run=run, owner="cli")
            try:
                plane.start()
            except BaseException:
                plane.stop()
                raise
        print(f"export KUBECONFIG={plane.admin_kubeconfig}")
        return 0
    if command == "down":
        plane = ControlPlane.load(shared_run())
        if plane is not None:
            plane.stop()
            print("stopped")
        return 0
    if command == "status":
        plane = running()
        print(f"running at {plane.server}; KUBECONFIG={plane.admin_kubeconfig}" if plane else "not running")
        return 0 if plane else 1
    print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
