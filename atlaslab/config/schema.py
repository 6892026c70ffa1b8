"""The site config schema: one typed file that describes a whole AtlasLab site.

Every field carries a description; the reference docs (``atlaslab config docs``) and the Helm
values schema are generated from these models, so they are the single source of truth.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .units import Duration, Size

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$"
BIND_PATTERN = r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$"
Identifier = Annotated[
    str,
    StringConstraints(pattern=ID_PATTERN),
    Field(description="Lower-case letters, digits, '-' and '_'; starts with a letter or digit."),
]
Username = Annotated[
    str,
    StringConstraints(pattern=USERNAME_PATTERN, strip_whitespace=True),
    Field(description="A username as the user logs in: letters, digits and . _ @ : + - (no spaces)."),
]
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
LANGUAGES = ("en", "fr", "ar")


class Model(BaseModel):
    """Strict base: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Site(Model):
    """The site itself: its name, where it listens, where it keeps its state, who administers it."""

    name: str = Field("AtlasLab", description="Name shown on the login page and in the browser title.")
    url: AnyHttpUrl | None = Field(
        None,
        description="Public URL users type, e.g. https://lab.example.ma. Used for OAuth callback URLs;"
        " leave empty to derive it from `bind`.",
    )
    bind: str = Field(
        "127.0.0.1:8000",
        description="Address and port the public proxy listens on, as HOST:PORT (0.0.0.0:443 behind TLS).",
        pattern=BIND_PATTERN,
    )
    hub_port: int = Field(8081, ge=1, le=65535, description="Port of the hub itself on 127.0.0.1 (behind the proxy).")
    proxy_api_port: int = Field(
        8001, ge=1, le=65535, description="Port of the proxy's REST API on 127.0.0.1 (the hub adds routes there)."
    )
    service_ports: int = Field(
        10100,
        ge=1024,
        le=65000,
        description="First of the ports on 127.0.0.1 used by AtlasLab's own services: this one for the exchange,"
        " +1 the autograder, +2 experiment tracking, +3 credits, +10 onwards one formgrader per course in"
        " site-config order.",
    )
    base_url: str = Field(
        "/", description="URL prefix of the whole workbench, e.g. /lab/ when it shares a domain.", pattern=r"^/"
    )
    state_dir: Path | None = Field(
        None,
        description="Directory for the hub database, secrets and logs. Default: /var/lib/atlaslab as root,"
        " ~/.local/share/atlaslab otherwise. Relative paths are relative to the config file.",
    )
    admins: list[Username] = Field(
        default_factory=lambda: ["admin"],
        description="Hub administrators (usernames as they log in). With local accounts, an admin's first login"
        " uses the password generated into STATE_DIR/secrets/initial-admin-password.",
    )
    languages: list[Literal["en", "fr", "ar"]] = Field(
        default_factory=lambda: ["en"],
        min_length=1,
        description="JupyterLab languages offered; the first is the default language of users whose tenant sets"
        " none. A user's own choice in Settings > Language wins.",
    )

    @field_validator("base_url")
    @classmethod
    def _slash(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"

    @field_validator("bind")
    @classmethod
    def _port_in_range(cls, v: str) -> str:
        port = int(v.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range; use a port between 1 and 65535")
        return v

    @property
    def bind_host(self) -> str:
        return self.bind.rsplit(":", 1)[0].strip("[]")

    @property
    def bind_port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])

    @property
    def public_url(self) -> str:
        """The URL users reach, base URL included, without a trailing slash."""
        if self.url is not None:
            return str(self.url).rstrip("/")
        host = self.bind_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.bind_port}{self.base_url}".rstrip("/")


class SecretRef(Model):
    """Where a secret comes from: exactly one of `env` or `file`. Secrets never live in the site config itself."""

    env: str | None = Field(None, description="Name of an environment variable holding the secret.", pattern=ENV_NAME)
    file: Path | None = Field(
        None, description="File holding the secret (first line); relative to the config file; mode 0600."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` (a variable name) or `file` (a path)")
        return self


class ProviderBase(Model):
    id: Identifier | None = Field(
        None,
        description="Name of this login option, unique among providers; appears in callback URLs"
        " (/hub/ID/oauth_callback) when several providers are listed. Default: the provider kind.",
    )
    title: str | None = Field(None, description="Label of this provider's button on the login page.")
    tenant: Identifier | None = Field(
        None, description="Tenant given to users who log in this way and belong to no tenant otherwise."
    )
    username_prefix: str = Field(
        "",
        description="Prefix added to every username from this provider (e.g. 'oidc:') so that two providers"
        " cannot claim the same account.",
        pattern=r"^[a-z0-9._:-]{0,16}$",
    )

    @property
    def key(self) -> str:
        return self.id or self.provider  # type: ignore[attr-defined]


class NativeLogin(ProviderBase):
    """Local accounts with passwords (jupyterhub-nativeauthenticator)."""

    provider: Literal["native"] = Field(description="Selects this kind of login: `native`.")
    open_signup: bool = Field(
        False,
        description="Let anyone who signs up log in at once. Default: an admin approves each sign-up at"
        " /hub/authorize; users listed in the site config are approved automatically.",
    )
    minimum_password_length: int = Field(10, ge=6, description="Shortest password accepted at sign-up.")


class SharedPasswordLogin(ProviderBase):
    """One password for a whole workshop (JupyterHub's SharedPasswordAuthenticator)."""

    provider: Literal["shared-password"] = Field(description="Selects this kind of login: `shared-password`.")
    password: SecretRef = Field(description="Where the shared user password is read from (at least 8 characters).")
    admin_password: SecretRef | None = Field(
        None, description="Optional separate password that makes the site admins admin on login."
    )


class Endpoints(Model):
    """An OAuth provider's endpoints, when they cannot be discovered or differ from the public ones."""

    authorize_url: AnyHttpUrl = Field(description="The provider's authorization endpoint.")
    token_url: AnyHttpUrl = Field(description="The provider's token endpoint.")
    userdata_url: AnyHttpUrl = Field(description="The endpoint returning the user's claims.")


class OAuthBase(ProviderBase):
    client_id: str = Field(description="OAuth client ID registered with the provider.", min_length=1)
    client_secret: SecretRef = Field(description="Where the OAuth client secret is read from (env or file).")
    scopes: list[str] | None = Field(None, description="OAuth scopes to request. Default: the provider's usual set.")
    allow_all: bool = Field(False, description="Let every account of this provider log in.")
    allowed_users: list[Username] = Field(default_factory=list, description="Accounts allowed to log in.")
    endpoints: Endpoints | None = Field(
        None,
        description="Override the provider's endpoints (self-hosted GitHub Enterprise, a test provider)."
        " Default: the provider's public endpoints.",
    )

    def allows_nobody(self) -> bool:
        return not (self.allow_all or self.allowed_users or getattr(self, "allowed_groups", None))


class GroupMapping(Model):
    """Provider groups that decide who may log in, who is an admin and which tenant a user joins."""

    groups_claim: str | None = Field(
        None, description="Claim holding the user's groups (dot-separated path, e.g. realm_access.roles)."
    )
    allowed_groups: list[str] = Field(default_factory=list, description="Provider groups whose members may log in.")
    admin_groups: list[str] = Field(default_factory=list, description="Provider groups whose members are admins.")
    group_to_tenant: dict[str, Identifier] = Field(
        default_factory=dict, description="Provider group -> AtlasLab tenant, first match wins."
    )


class OIDCLogin(OAuthBase, GroupMapping):
    """Any OpenID Connect provider, e.g. Keycloak (OAuthenticator's GenericOAuthenticator)."""

    provider: Literal["oidc"] = Field(description="Selects this kind of login: `oidc`.")
    issuer: AnyHttpUrl = Field(
        description="Issuer URL; endpoints are discovered from ISSUER/.well-known/openid-configuration at start."
    )
    username_claim: str = Field("preferred_username", description="Claim used as the username.")


class GitHubLogin(OAuthBase):
    """GitHub or GitHub Enterprise accounts."""

    provider: Literal["github"] = Field(description="Selects this kind of login: `github`.")
    allowed_organizations: list[str] = Field(
        default_factory=list, description="GitHub organisations (or org:team) whose members may log in."
    )

    def allows_nobody(self) -> bool:
        return super().allows_nobody() and not self.allowed_organizations


class GoogleLogin(OAuthBase):
    """Google accounts, optionally restricted to Workspace domains."""

    provider: Literal["google"] = Field(description="Selects this kind of login: `google`.")
    hosted_domain: list[str] = Field(default_factory=list, description="Only accounts of these Workspace domains.")

    def allows_nobody(self) -> bool:
        return super().allows_nobody() and not self.hosted_domain


class AzureADLogin(OAuthBase, GroupMapping):
    """Microsoft Entra ID (Azure AD) accounts."""

    provider: Literal["azuread"] = Field(description="Selects this kind of login: `azuread`.")
    azure_tenant_id: str = Field(description="The directory (tenant) ID of the Entra ID organisation.", min_length=1)
    username_claim: str = Field("preferred_username", description="Claim used as the username.")


class Intra42Login(OAuthBase):
    """The 42 network's intranet (1337 campuses): username from `login`, campus -> tenant."""

    provider: Literal["intra42"] = Field(description="Selects this kind of login: `intra42`.")
    campus_to_tenant: dict[str, Identifier] = Field(
        default_factory=dict,
        description="42 campus name (lower case, e.g. benguerir) -> tenant. Users of other campuses are refused"
        " unless allow_all is set.",
    )

    def allows_nobody(self) -> bool:
        return super().allows_nobody() and not self.campus_to_tenant


LoginProvider = Annotated[
    NativeLogin | SharedPasswordLogin | OIDCLogin | GitHubLogin | GoogleLogin | AzureADLogin | Intra42Login,
    Field(discriminator="provider"),
]
OAUTH_PROVIDERS = ("oidc", "github", "google", "azuread", "intra42")


class Tenant(Model):
    """An organisation sharing the site: a school, an institute, a research lab or a startup."""

    title: str = Field(description="Display name, e.g. '1337 Benguerir'.")
    kind: Literal["school", "institute", "research", "startup", "other"] = Field(
        "other", description="What sort of organisation this is; used for defaults and reports."
    )
    environments: list[Identifier] = Field(
        default_factory=list, description="Environments members of this tenant may start."
    )
    members: list[Username] = Field(
        default_factory=list, description="Users placed in this tenant regardless of how they log in."
    )
    admins: list[Username] = Field(
        default_factory=list,
        description="Tenant administrators: may see, start and stop the servers of this tenant's users only.",
    )
    language: Literal["en", "fr", "ar"] | None = Field(
        None,
        description="Default JupyterLab language of this tenant's users, one of site.languages (empty: the site's"
        " first). A user's own choice in Settings > Language wins.",
    )


class Course(Model):
    """A course: its staff and students, and the tenant that runs it."""

    title: str = Field(description="Course name shown to students.")
    tenant: Identifier = Field(description="Tenant that runs the course.")
    instructors: list[Username] = Field(default_factory=list, description="Instructors of the course.")
    tas: list[Username] = Field(default_factory=list, description="Teaching assistants of the course.")
    students: list[Username] = Field(default_factory=list, description="Students listed inline.")
    roster: Path | None = Field(
        None,
        description="CSV file with a `username` column (other columns ignored), relative to the config file;"
        " its students are added to those listed inline.",
    )
    environments: list[Identifier] = Field(
        default_factory=list, description="Extra environments the course's members may start."
    )
    reveal_hidden_tests: bool = Field(
        False,
        description="Show hidden tests (their code and output) in the feedback students fetch. Off: feedback"
        " shows only that a hidden test failed.",
    )


class Team(Model):
    """A research or product team inside a tenant."""

    title: str | None = Field(None, description="Team name shown in the hub.")
    tenant: Identifier = Field(description="Tenant the team belongs to.")
    members: list[Username] = Field(default_factory=list, description="Team members.")
    environments: list[Identifier] = Field(
        default_factory=list, description="Extra environments the team's members may start."
    )


class GPURequest(Model):
    """GPUs for an environment: exactly one of whole GPUs, a MIG slice or a share of one GPU."""

    count: int | None = Field(None, ge=1, le=16, description="Whole GPUs, exclusive to the server.")
    mig: str | None = Field(
        None, description="A MIG slice profile such as 1g.10gb or 3g.40gb.", pattern=r"^[1-7]g\.\d+gb$"
    )
    shared: int | None = Field(None, ge=2, le=64, description="Share one GPU between this many servers.")

    @model_validator(mode="after")
    def _exactly_one(self) -> GPURequest:
        given = [k for k in ("count", "mig", "shared") if getattr(self, k) is not None]
        if len(given) != 1:
            got = " and ".join(given) or "none"
            raise ValueError(f"give exactly one of `count`, `mig` or `shared` (got {got})")
        return self

    def share(self) -> float:
        """GPUs a server or worker holding this counts for: whole GPUs, 1 for a MIG slice, 1/N for a shared seat."""
        if self.count:
            return float(self.count)
        if self.mig:
            return 1.0
        return 1.0 / float(self.shared or 1)

    def describe(self) -> str:
        if self.count:
            return f"{self.count} whole GPU{'s' if self.count > 1 else ''}"
        if self.mig:
            return f"a {self.mig} GPU slice"
        return f"a seat on a GPU shared by {self.shared}"


class Environment(Model):
    """What a user may start: CPU, memory, process and GPU limits of one server and its kernels."""

    title: str | None = Field(None, description="Name on the start page. Default: derived from the id.")
    description: str | None = Field(None, description="One line under the title on the start page.")
    cpu: float = Field(1.0, gt=0, le=512, description="CPU cores the server and its kernels may use.")
    memory: Size = Field(
        2 * 1024**3, description="Memory limit of the server and its kernels together, e.g. 2G.", ge=128 * 1024**2
    )
    processes: int = Field(
        512, ge=16, le=65536, description="Most processes and threads the server's account may run at once."
    )
    gpu: GPURequest | None = Field(None, description="GPUs for this environment; none for a CPU environment.")
    image: str | None = Field(None, description="Container image on Kubernetes; ignored on one machine.")
    default: bool = Field(False, description="Preselected on the start page.")

    def display_title(self, key: str) -> str:
        return self.title or key.replace("-", " ").replace("_", " ").capitalize()


class Limits(Model):
    """Site-wide limits: idle culling, server age, how many servers run and start at once."""

    idle_cull_after: Duration = Field(3600, description="Stop servers idle this long (e.g. 1h); 0 disables.")
    max_server_age: Duration = Field(0, description="Stop servers older than this whatever they do; 0 disables.")
    max_servers: int = Field(0, ge=0, description="Most servers running at once on the site; 0 means no limit.")
    concurrent_spawns: int = Field(
        100,
        ge=1,
        description="Most spawn requests in progress at once; more are refused (HTTP 429, try again). Starting"
        " servers still queue for one start slot per CPU core, so a class logging in together is not refused.",
    )
    start_timeout: Duration = Field(120, description="Give up on a server that has not started after this long.")


class Spawner(Model):
    """The local spawner: how users are isolated, where they land, where their homes are."""

    isolation: Literal["auto", "system-users", "none"] = Field(
        "auto",
        description="system-users: each user gets a system account jupyter-NAME and resource limits (needs root)."
        " none: every server runs as the hub's own account (development only, users are NOT isolated)."
        " auto: system-users when the hub runs as root, none otherwise.",
    )
    default_url: str = Field("/lab", description="Page a user lands on in their server.", pattern=r"^/")
    home_root: Path = Field(Path("/home"), description="Where system-user home directories are created.")


class ExtraService(Model):
    """A further process the hub starts, keeps running and may give an API token."""

    name: Identifier = Field(description="Service name; reachable at /services/NAME/ if it has a URL.")
    command: list[str] = Field(description="Command the hub starts and keeps running.", min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="Port on 127.0.0.1 the service listens on.")
    scopes: list[str] = Field(default_factory=list, description="Hub API scopes granted to the service's token.")
    environment: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")


class Services(Model):
    """Hub-managed services: the idle culler, the metrics scrape identity and any extras."""

    idle_culler: bool = Field(True, description="Run jupyterhub-idle-culler with the limits above.")
    metrics: bool = Field(
        True,
        description="Expose Prometheus metrics at /hub/metrics to a token with read:metrics only;"
        " a scrape token is written to STATE_DIR/secrets/metrics-token.",
    )
    extra: list[ExtraService] = Field(default_factory=list, description="Further hub-managed services.")


class S3Storage(Model):
    """An S3-compatible object store (AWS S3, MinIO, Ceph RGW): where the exchange keeps submissions' files."""

    bucket: str = Field(description="Bucket name.", min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+$")
    prefix: str = Field("atlaslab-exchange", description="Key prefix inside the bucket.")
    endpoint_url: AnyHttpUrl | None = Field(None, description="The store's URL (MinIO, Ceph). Default: AWS S3.")
    region: str | None = Field(None, description="Region name, where the store needs one.")
    access_key_id: SecretRef | None = Field(
        None, description="Access key id. Default: the usual AWS sources (instance role, AWS_* variables)."
    )
    secret_access_key: SecretRef | None = Field(None, description="Secret access key, with `access_key_id`.")

    @model_validator(mode="after")
    def _keys_together(self) -> S3Storage:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both `access_key_id` and `secret_access_key`, or neither")
        return self


class Grading(Model):
    """The nbgrader exchange's storage and the autograder's limits (used when the site has courses)."""

    exchange_database: SecretRef | None = Field(
        None,
        description="SQLAlchemy URL of the exchange's metadata database, e.g. postgresql+psycopg://user:pw@host/db;"
        " a secret because it may hold a password. Default: SQLite in STATE_DIR/exchange.",
    )
    exchange_s3: S3Storage | None = Field(
        None, description="Keep submissions' files in an S3-compatible store. Default: files in STATE_DIR/exchange."
    )
    max_upload: Size = Field(50 * 1024**2, description="Largest upload (a release or a submission) the exchange takes.")
    notebook_timeout: Duration = Field(300, description="Wall-clock limit per notebook when autograding.")
    notebook_memory: Size = Field(1024**3, description="Memory limit per notebook when autograding.")
    workers: int | None = Field(
        None, ge=1, le=256, description="Notebooks graded at once by `atlaslab grade`. Default: the machine's cores."
    )


class Tracking(Model):
    """Experiment tracking: an MLflow server behind the hub's login, permissions from hub groups."""

    enabled: bool = Field(
        False,
        description="Run MLflow at /services/mlflow/ and give every user's server MLFLOW_TRACKING_URI and a token"
        " for it, so `mlflow.start_run()` works in a fresh notebook.",
    )
    database: SecretRef | None = Field(
        None,
        description="SQLAlchemy URL of MLflow's database, e.g. postgresql+psycopg://user:pw@host/mlflow; a secret"
        " because it may hold a password. Default: SQLite in STATE_DIR/mlflow.",
    )
    artifacts: str | None = Field(
        None,
        description="Where MLflow keeps artifacts, e.g. s3://bucket/prefix. The server always proxies them, so"
        " users never hold storage credentials. Default: STATE_DIR/mlflow/artifacts.",
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{2,62}(/.*)?$",
    )
    s3_endpoint_url: AnyHttpUrl | None = Field(
        None, description="URL of an S3-compatible store (MinIO, Ceph) for `artifacts`. Default: AWS S3."
    )
    s3_access_key_id: SecretRef | None = Field(
        None, description="Access key id for `artifacts`. Default: the usual AWS sources (instance role, AWS_*)."
    )
    s3_secret_access_key: SecretRef | None = Field(
        None, description="Secret access key for `artifacts`, with `s3_access_key_id`."
    )
    permission_cache: Duration = Field(
        10,
        description="How long MLflow reuses what the hub said about a token or a user's groups (e.g. 10s); a"
        " revoked token or a group change takes effect within this time, without restarting MLflow.",
    )
    async_logging: bool = Field(
        True, description="Turn on MLflow's asynchronous logging in users' servers (MLFLOW_ENABLE_ASYNC_LOGGING)."
    )

    @model_validator(mode="after")
    def _keys_together(self) -> Tracking:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("give both `s3_access_key_id` and `s3_secret_access_key`, or neither")
        if self.artifacts is None and (self.s3_endpoint_url is not None or self.s3_access_key_id is not None):
            raise ValueError("the `s3_*` settings need `artifacts` (an s3:// URI)")
        return self


class Quota(Model):
    """A budget: GPU-hours and CPU-hours per period, concurrent GPUs, and the dates it is valid between."""

    gpu_hours: float | None = Field(
        None, ge=0, description="GPU-hours per period (a server holding 2 GPUs for 1 h uses 2). Not set: no limit."
    )
    cpu_hours: float | None = Field(
        None, ge=0, description="CPU-hours per period, counted from the environment's CPU limit. Not set: no limit."
    )
    period: Literal["day", "week", "month", "year", "total"] = Field(
        "month",
        description="When the hours renew (calendar periods, UTC; weeks start on Monday); `total`: never, over the"
        " whole validity.",
    )
    max_gpus: int | None = Field(None, ge=0, description="GPUs held at once by servers under this budget.")
    starts: date | None = Field(None, description="First day the budget may be used (YYYY-MM-DD).")
    expires: date | None = Field(
        None, description="Day after which nothing may start under this budget (an access programme's end)."
    )


class Credits(Model):
    """GPU and CPU credits: budgets per tenant, team and user, checked at spawn and while servers run."""

    tenants: dict[Identifier, Quota] = Field(default_factory=dict, description="Budget of each tenant (all members).")
    teams: dict[Identifier, Quota] = Field(default_factory=dict, description="Budget of each team.")
    users: dict[Username, Quota] = Field(default_factory=dict, description="Budget of particular users.")
    default_user: Quota | None = Field(None, description="Budget of every user not listed in `users`.")
    warn_at: list[float] = Field(
        default_factory=lambda: [0.8, 0.95],
        description="Fractions of a budget at which users are warned in their session.",
    )
    stop_at: float = Field(1.0, gt=0, description="Fraction of a budget at which servers under it are stopped.")
    grace: Duration = Field(300, description="Time between the notice that a budget is used up and the stop.")
    check_every: Duration = Field(60, description="How often running servers are counted and checked.")

    @field_validator("warn_at")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < x < 10 for x in v):
            raise ValueError("warn_at takes fractions such as 0.8 (80%)")
        return sorted(v)


class Toleration(Model):
    """A node taint an environment's pods tolerate (Kubernetes' own toleration fields)."""

    key: str = Field(description="Taint key, e.g. nvidia.com/gpu or dedicated.", min_length=1)
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Exists: any value; Equal: `value` only.")
    value: str | None = Field(None, description="Taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        "NoSchedule", description="Taint effect tolerated; empty: every effect."
    )


class Placement(Model):
    """Where one environment's pods may run, on top of the GPU node selector and toleration."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must match, e.g. {nvidia.com/gpu.product: A100}."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Node taints the pods tolerate.")


class Kubernetes(Model):
    """Run users' servers as Kubernetes pods (KubeSpawner) instead of processes on this machine."""

    enabled: bool = Field(False, description="Spawn users' servers with KubeSpawner (the hub runs in the cluster).")
    namespace_prefix: str = Field(
        "atlaslab-",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-?$",
        description="A tenant's servers run in namespace PREFIX + tenant id (quotas and network policies apply per"
        " namespace); users in no tenant run in the hub's namespace.",
    )
    default_image: str = Field(
        "atlaslab/user-cpu:0.1.0", description="Image of environments that name none (pinned tag, not `latest`)."
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource of a whole GPU (NVIDIA device plugin).")
    shared_gpu_resource: str = Field(
        "nvidia.com/gpu.shared",
        description="Extended resource of a shared GPU seat (the device plugin's time-slicing, renamed resources).",
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="Node labels GPU environments' pods must match.",
    )
    gpu_tolerate_taint: str | None = Field(
        "nvidia.com/gpu", description="Taint key of GPU nodes that GPU pods tolerate (NoSchedule); empty: none."
    )
    storage: Size = Field(10 * 1024**3, description="Size of each user's persistent volume (their home).")
    storage_class: str | None = Field(None, description="StorageClass of users' volumes. Default: the cluster's.")
    placement: dict[Identifier, Placement] = Field(
        default_factory=dict,
        description="Per environment id: node labels and taints of the nodes its servers (and placeholders) use,"
        " e.g. MIG slices on the A100 pool, large CPU servers on high-memory nodes.",
    )


class SiteConfig(Model):
    """The whole AtlasLab site: one file drives one machine or a Kubernetes cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="AtlasLab site config")

    site: Site = Field(default_factory=Site, description="The site itself: URLs, addresses, state, admins.")
    login: list[LoginProvider] = Field(
        default_factory=lambda: [NativeLogin(provider="native")],
        description="How users log in; several providers may be offered at once. Default: local accounts.",
        min_length=1,
    )
    tenants: dict[Identifier, Tenant] = Field(
        default_factory=dict, description="Organisations sharing the site (schools, institutes, labs, startups)."
    )
    environments: dict[Identifier, Environment] = Field(
        default_factory=lambda: {"cpu-small": Environment(default=True)},
        description="What a user may pick when starting a server.",
    )
    courses: dict[Identifier, Course] = Field(default_factory=dict, description="Courses taught on the site.")
    teams: dict[Identifier, Team] = Field(default_factory=dict, description="Research or product teams.")
    limits: Limits = Field(default_factory=Limits, description="Site-wide limits on servers.")
    spawner: Spawner = Field(default_factory=Spawner, description="How servers are started on one machine.")
    services: Services = Field(default_factory=Services, description="Hub-managed services to run.")
    grading: Grading = Field(default_factory=Grading, description="Exchange storage and autograder limits.")
    credits: Credits = Field(default_factory=Credits, description="GPU and CPU budgets, and what happens at their end.")
    kubernetes: Kubernetes = Field(default_factory=Kubernetes, description="Servers as pods on a Kubernetes cluster.")
    tracking: Tracking = Field(default_factory=Tracking, description="Experiment tracking (MLflow) behind the hub.")

    @model_validator(mode="after")
    def _placement_of_known_environments(self) -> SiteConfig:
        unknown = sorted(set(self.kubernetes.placement) - set(self.environments))
        if unknown:
            raise ValueError(
                f"kubernetes.placement names unknown environments: {', '.join(unknown)};"
                f" use one of {', '.join(self.environments)}"
            )
        return self

    @field_validator("login")
    @classmethod
    def _unique_providers(cls, v: list) -> list:
        seen: dict[str, int] = {}
        for i, p in enumerate(v):
            if p.key in seen:
                raise PydanticCustomError(
                    "duplicate_provider",
                    "two login providers are both called '{key}' (login[{first}] and login[{second}]);"
                    " give each a distinct `id`",
                    {"key": p.key, "first": seen[p.key], "second": i},
                )
            seen[p.key] = i
        return v
