"""The typed inventory: the one contract users edit.

Every option is typed, defaulted securely and described (the descriptions end up
in the JSON Schema editors show). This module imports nothing of ours: derived
values (router URLs, VRAM budgets, Ollama's environment) are pure functions in
`inventory.derive`, and the cross-field rules in `inventory.rules` turn known
failure modes into load-time errors; the loader (`inventory.load`) runs them after
validation.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)


class Strict(BaseModel):
    """Base for every inventory model: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, defer_build=True)


# --- small reusable types -------------------------------------------------------

HostName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    Field(description="Short host name: lower-case letters, digits and '-'."),
]
InterfaceName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,15}$"),
    Field(description="A Linux network interface name (at most 15 characters)."),
]
Port = Annotated[int, Field(ge=1, le=65535)]
ModelName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9._-]+)?$"),
    Field(description="An Ollama model name with tag, e.g. 'qwen3.6:27b'."),
]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Duration = Annotated[
    str,
    StringConstraints(pattern=r"^(-1|0|\d+(ms|s|m|h))$"),
    Field(description="Go-style duration as Ollama reads it: '5m', '30s', '1h', '0' or '-1' (forever)."),
]
UnixUser = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]

# A reference into the local secrets directory: a file NAME, never a value.
_SECRET_VALUE_HINTS = re.compile(r"^(sk-|sk_|ghp_|xox|AIza|-----BEGIN)|[A-Za-z0-9+/=_-]{40,}")


def _secret_ref(value: str) -> str:
    if _SECRET_VALUE_HINTS.search(value):
        raise ValueError(
            "this looks like a secret VALUE pasted into the inventory; put the value in a file "
            "in the secrets directory and write that file's name here instead"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", value):
        raise ValueError("a secret reference is a file name in the secrets directory: [a-z0-9._-], max 64")
    return value


SecretRef = Annotated[
    str,
    AfterValidator(_secret_ref),
    Field(
        description="Name of a file in the secrets directory (never the secret itself). "
        "The file is created with mode 0600 on first apply where the deploy generates it."
    ),
]


def _glob_or_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/*-]*", value):
        raise ValueError("alias names use letters, digits, '.', '_', '-', ':', '/' and '*' wildcards")
    return value


AliasName = Annotated[str, AfterValidator(_glob_or_name)]


class Role(StrEnum):
    gpu_server = "gpu_server"
    client = "client"


class Acceleration(StrEnum):
    rocm = "rocm"
    cuda = "cuda"
    vulkan = "vulkan"
    cpu = "cpu"


class Capability(StrEnum):
    completion = "completion"
    tools = "tools"
    thinking = "thinking"
    vision = "vision"
    embedding = "embedding"


# --- hosts ------------------------------------------------------------------------


class Ssh(Strict):
    hostname: str = Field(description="Address or DNS name pyinfra connects to.")
    port: Port = Field(22, description="SSH port.")
    user: UnixUser = Field("root", description="SSH login user.")
    key: Path | None = Field(
        None, description="Private key file on the workstation (relative paths are relative to the inventory)."
    )
    sudo: bool = Field(False, description="Run operations through sudo (needed when user is not root).")
    known_hosts: Path | None = Field(
        None, description="known_hosts file to verify host keys against (the lab uses its own)."
    )
    strict_host_key_checking: bool = Field(
        True, description="Refuse unknown host keys. Only throwaway lab hosts should turn this off."
    )


class Network(Strict):
    lan_interfaces: list[InterfaceName] = Field(
        default_factory=list, description="LAN interface name(s) on which the router port opens, e.g. enp1s0."
    )
    lan_address: IPvAnyAddress | None = Field(
        None, description="The host's LAN address (used for LAN client URLs and firewall probes)."
    )
    tailnet_interface: InterfaceName | None = Field(
        "tailscale0", description="Tailnet interface; null if the host is not on a tailnet."
    )
    tailnet_address: IPvAnyAddress | None = Field(None, description="The host's tailnet address (100.x).")
    tailnet_dns_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]+(\.[a-z0-9-]+)+$",
        description="MagicDNS name, e.g. p620.tail1234.ts.net.",
    )


# --- GPU server: Ollama -----------------------------------------------------------


class Gpu(Strict):
    name: str = Field(description="GPU model, for humans and checks, e.g. 'RX 7900 XTX'.")
    vram_gb: float = Field(gt=0, le=1024, description="Total VRAM in GB.")


class CatalogueModel(Strict):
    vram_gb: float = Field(gt=0, description="Size in VRAM when loaded at the configured context (GB).")
    context_length: int = Field(65536, ge=2048, description="Context length the model is run with.")
    capabilities: frozenset[Capability] = Field(
        frozenset({Capability.completion}), description="What the model can do: tools, thinking, vision, ..."
    )
    description: str = Field("", description="Free text for humans.")


class ArtifactSourceUrl(Strict):
    kind: Literal["url"] = "url"
    base_url: str = Field(
        "https://github.com/ollama/ollama/releases/download/v{version}/",
        pattern=r"^https://",
        description="Where the host downloads release archives; '{version}' is replaced. HTTPS only.",
    )


class ArtifactSourceUpload(Strict):
    kind: Literal["upload"] = "upload"
    local_dir: Path = Field(
        description="Directory on the workstation holding the archives; they are uploaded (air-gapped hosts)."
    )


class Ollama(Strict):
    version: str = Field(pattern=r"^\d+\.\d+\.\d+([.-][A-Za-z0-9.]+)?$", description="Pinned Ollama version.")
    artifacts: dict[
        Annotated[str, StringConstraints(pattern=r"^ollama-linux-(amd64|arm64)(-[a-z0-9]+)?\.(tar\.zst|tgz)$")],
        Sha256,
    ] = Field(description="Release archive file name -> sha256. The base archive plus the ROCm add-on for rocm.")
    source: ArtifactSourceUrl | ArtifactSourceUpload = Field(
        default_factory=ArtifactSourceUrl, discriminator="kind", description="Where archives come from."
    )
    acceleration: Acceleration = Field(Acceleration.cpu, description="GPU stack: rocm, cuda, vulkan or cpu.")
    bind: IPvAnyAddress = Field(
        ipaddress.IPv4Address("127.0.0.1"),
        description="Listen address. Loopback only: the router is the only network-facing service.",
    )
    port: Port = Field(11434, description="Ollama API port (loopback).")
    keep_alive: Duration = Field("5m", description="Unload a model after this idle time (frees the GPU).")
    num_parallel: int = Field(1, ge=1, le=64, description="Parallel requests per model (VRAM grows with it).")
    max_loaded_models: int = Field(1, ge=1, le=16, description="Models resident at once (evict-then-load).")
    flash_attention: bool = Field(True, description="OLLAMA_FLASH_ATTENTION.")
    context_length: int = Field(
        65536, ge=65536, description="Default context (OLLAMA_CONTEXT_LENGTH); Claude Code needs >= 64k."
    )
    hsa_override_gfx_version: str | None = Field(
        None, pattern=r"^\d+\.\d+\.\d+$", description="HSA_OVERRIDE_GFX_VERSION for ROCm, e.g. 11.0.0."
    )
    visible_devices: list[Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z-]+$")]] = Field(
        default_factory=list, description="GPU ids for ROCR_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES."
    )
    models_dir: Path = Field(Path("/var/lib/ollama/models"), description="Where model blobs live.")
    persistent_models: list[ModelName] = Field(
        default_factory=list, description="Pulled on apply; the default coding models."
    )
    on_demand_models: list[ModelName] = Field(
        default_factory=list, description="Pulled on apply, loaded on first request, evicted after keep_alive."
    )
    prune_models: bool = Field(False, description="Delete pulled models no longer listed (default: keep them).")
    extra_environment: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")], str
    ] = Field(default_factory=dict, description="Extra environment for the Ollama unit (not for secrets).")
    oom_score_adjust: int = Field(200, ge=-1000, le=1000, description="Desktop apps should win OOM tiebreaks.")
    nice: int = Field(10, ge=-20, le=19, description="CPU priority below interactive work.")
    io_scheduling_class: Literal["best-effort", "idle", "realtime"] = Field("best-effort")
    io_scheduling_priority: int = Field(5, ge=0, le=7)

    @model_validator(mode="after")
    def _check(self) -> Ollama:
        if not ipaddress.ip_address(str(self.bind)).is_loopback:
            raise ValueError(
                f"ollama.bind {self.bind} is not a loopback address: Ollama has no authentication, "
                "so it must only listen on 127.0.0.1 (the router is the network-facing service)"
            )
        if not any(re.fullmatch(r"ollama-linux-[a-z0-9]+\.(tar\.zst|tgz)", n) for n in self.artifacts):
            raise ValueError("ollama.artifacts needs the base archive, e.g. ollama-linux-amd64.tar.zst")
        if self.acceleration is Acceleration.rocm and not any("-rocm." in n for n in self.artifacts):
            raise ValueError("acceleration rocm needs the ROCm add-on archive, e.g. ollama-linux-amd64-rocm.tar.zst")
        overlap = set(self.persistent_models) & set(self.on_demand_models)
        if overlap:
            raise ValueError(f"models listed both persistent and on-demand: {sorted(overlap)}")
        for key in self.extra_environment:
            if key in ("OLLAMA_HOST", "OLLAMA_ORIGINS") or re.search(r"KEY|TOKEN|SECRET|PASSWORD", key):
                raise ValueError(
                    f"extra_environment may not set {key}: the bind is managed, and secrets do not go in units"
                )
        return self


# --- GPU server: router -----------------------------------------------------------


class Router(Strict):
    litellm_version: str = Field(
        "1.108.7", pattern=r"^\d+\.\d+\.\d+$", description="Pinned litellm[proxy] version (never 1.107.0: compromised)."
    )
    prisma_version: str = Field(
        "0.15.0", pattern=r"^\d+\.\d+\.\d+$",
        description="Pinned prisma, installed beside LiteLLM so a missing key gets 401, not 500.",
    )
    install_source: Literal["pypi", "wheelhouse"] = Field(
        "pypi", description="pypi: the host installs from PyPI; wheelhouse: wheels uploaded from the workstation."
    )
    wheelhouse_dir: Path | None = Field(None, description="Workstation directory of wheels (install_source wheelhouse).")
    bind: IPvAnyAddress = Field(
        ipaddress.IPv4Address("0.0.0.0"),
        description="Listen address; the firewall decides who may reach it (loopback, tailnet, LAN).",
    )
    port: Port = Field(4000, description="Router port.")
    workers: int | None = Field(None, ge=1, le=64, description="Uvicorn workers; default: one per CPU core.")
    memory_max: str = Field("2G", pattern=r"^\d+[KMGT]?$", description="systemd MemoryMax for the router.")
    drop_params: bool = Field(True, description="Drop request params the backend does not support.")
    aliases: dict[AliasName, ModelName] = Field(
        default_factory=dict,
        description="Name clients ask for -> catalogue model. '*' wildcards match Claude Code's dated ids.",
    )
    expose_model_names: bool = Field(True, description="Also serve each model under its own Ollama name.")
    master_key: SecretRef = Field("litellm-master-key", description="Secret file holding the master key.")
    security_exposure_max: float = Field(
        5.0, ge=0, le=10, description="Upper bound for `systemd-analyze security` exposure of the router unit."
    )


# --- exposure ---------------------------------------------------------------------


class TailscaleServe(Strict):
    enabled: bool = Field(True, description="Publish the router with `tailscale serve`.")
    https_port: Port = Field(443, description="HTTPS port tailscale serve listens on.")
    path: str = Field("/router", pattern=r"^/[A-Za-z0-9._/-]*$", description="Path prefix (stripped by tailscale).")


class Caddy(Strict):
    enabled: bool = Field(False, description="Reverse proxy with Caddy `tls internal` instead of tailscale serve.")
    site_names: list[str] = Field(
        default_factory=list,
        description="Names Caddy serves (one site each), resolved by your DNS to the tailnet address; "
                    "not *.ts.net (Caddy takes those certificates from tailscaled, not its own CA).",
    )
    https_port: Port = Field(443)
    path: str = Field("/router", pattern=r"^/[A-Za-z0-9._/-]*$")

    @field_validator("site_names")
    @classmethod
    def _not_magicdns(cls, names: list[str]) -> list[str]:
        for name in names:
            if name.lower().rstrip(".").endswith(".ts.net"):
                raise ValueError(f"{name}: Caddy gets *.ts.net certificates from tailscaled, not from its "
                                 "`tls internal` CA; use tailscale_serve for the MagicDNS name, or a name of "
                                 "your own DNS (e.g. llm.home.arpa) for Caddy")
        return names


class Exposure(Strict):
    firewall: Literal["auto", "nftables", "firewalld", "ufw", "none"] = Field(
        "auto", description="auto: detect what the host runs; a host with none gets nftables."
    )
    router_interfaces: list[InterfaceName] | None = Field(
        None, description="Interfaces admitted to the router port; default: lo, tailnet and LAN interfaces."
    )
    tailscale_serve: TailscaleServe = Field(default_factory=TailscaleServe)
    caddy: Caddy = Field(default_factory=Caddy)

    @model_validator(mode="after")
    def _one_front(self) -> Exposure:
        if self.tailscale_serve.enabled and self.caddy.enabled and (
            self.tailscale_serve.https_port == self.caddy.https_port
        ):
            raise ValueError("tailscale_serve and caddy both enabled on the same https port: choose one")
        if self.caddy.enabled and not self.caddy.site_names:
            raise ValueError("caddy.enabled needs at least one site name")
        return self


class Server(Strict):
    gpus: list[Gpu] = Field(default_factory=list, description="GPUs Ollama uses (empty for CPU).")
    vram_headroom_gb: float = Field(1.0, ge=0, description="VRAM kept free for the desktop and KV growth.")
    ollama: Ollama
    router: Router = Field(default_factory=Router)
    exposure: Exposure = Field(default_factory=Exposure)


# --- clients ----------------------------------------------------------------------


class ClientUser(Strict):
    name: UnixUser = Field(description="Unix user whose Claude Code is configured.")
    home: Path | None = Field(None, description="Home directory; default /home/<name> (/root for root).")
    anthropic_key: SecretRef | None = Field(
        None,
        description="Secret with the user's Anthropic API key for cloud repositories; "
        "null: Claude Code uses its own login.",
    )

    @property
    def home_dir(self) -> Path:
        if self.home is not None:
            return self.home
        return Path("/root") if self.name == "root" else Path("/home") / self.name


class Client(Strict):
    router: HostName = Field(description="The gpu_server host whose router this client uses.")
    via: Literal["auto", "loopback", "tailnet", "lan"] = Field(
        "auto", description="auto: loopback on the server itself, the tailnet URL elsewhere."
    )
    users: list[ClientUser] = Field(min_length=1, description="Users configured on this host.")
    key: SecretRef | None = Field(None, description="Router key secret; default 'router-key-<host>'.")
    default_model: AliasName = Field("claude-sonnet-4-6", description="Alias `claude-router use-ollama` selects.")


class Host(Strict):
    name: HostName = Field(description="Filled from the key under `hosts`.")
    roles: frozenset[Role] = Field(min_length=1, description="gpu_server and/or client.")
    ssh: Ssh
    network: Network = Field(default_factory=Network)
    server: Server | None = Field(None, description="Required for role gpu_server.")
    client: Client | None = Field(None, description="Required for role client.")

    @model_validator(mode="after")
    def _sections_match_roles(self) -> Host:
        for role, section in ((Role.gpu_server, self.server), (Role.client, self.client)):
            key = "server" if role is Role.gpu_server else "client"
            if role in self.roles and section is None:
                raise ValueError(f"role {role.value} needs a '{key}:' section")
            if role not in self.roles and section is not None:
                raise ValueError(f"'{key}:' given but the host does not have role {role.value}")
        return self

    @property
    def is_server(self) -> bool:
        return Role.gpu_server in self.roles

    @property
    def is_client(self) -> bool:
        return Role.client in self.roles


# --- cloud (modelled now, deployed later) -----------------------------------------


class CloudProvider(Strict):
    kind: Literal["openrouter", "cerebras", "gemini", "anthropic", "openai_compatible"]
    api_key: SecretRef
    api_base: str | None = Field(None, pattern=r"^https://")


class CloudModel(Strict):
    provider: str = Field(description="Key under cloud.providers.")
    model: str = Field(description="The provider's model id.")


class Cloud(Strict):
    providers: dict[str, CloudProvider] = Field(default_factory=dict)
    models: dict[str, CloudModel] = Field(default_factory=dict, description="Named cloud models.")
    fallbacks: dict[AliasName, list[str]] = Field(
        default_factory=dict, description="Alias -> ordered cloud model names tried when the local model fails."
    )
    premium: dict[AliasName, str] = Field(
        default_factory=dict,
        description="Explicit premium lane: alias -> cloud model, only ever used when asked for by name.",
    )

    @model_validator(mode="after")
    def _refs(self) -> Cloud:
        for name, m in self.models.items():
            if m.provider not in self.providers:
                raise ValueError(f"cloud model {name!r} uses unknown provider {m.provider!r}")
        for alias, chain in {**self.fallbacks, **{k: [v] for k, v in self.premium.items()}}.items():
            for target in chain:
                if target not in self.models:
                    raise ValueError(f"{alias!r} refers to unknown cloud model {target!r}")
        return self


# --- checks -----------------------------------------------------------------------


class VantagePoint(Strict):
    exec: list[str] = Field(
        min_length=1, description="argv prefix that runs a command at this vantage point (e.g. lab exec)."
    )
    targets: list[IPvAnyAddress] = Field(min_length=1, description="Server addresses probed from here.")
    router_expected: Literal["open", "refused"] = Field(description="What the router port must do from here.")


class Checks(Strict):
    vantage_points: dict[str, VantagePoint] = Field(
        default_factory=dict, description="Active probes; in the lab: lan, tailnet and public peers."
    )
    idle_margin_s: int = Field(60, ge=0, description="Added to keep_alive before `checks idle` judges VRAM.")


# --- the inventory ----------------------------------------------------------------


class Inventory(Strict):
    secrets_dir: Path = Field(
        Path("secrets"), description="Local, gitignored directory of secret files (relative to the inventory)."
    )
    tailnet: str | None = Field(None, description="Tailnet DNS suffix, e.g. tail1234.ts.net.")
    models: dict[ModelName, CatalogueModel] = Field(default_factory=dict, description="The model catalogue.")
    hosts: dict[HostName, Host] = Field(min_length=1)
    cloud: Cloud = Field(default_factory=Cloud)
    checks: Checks = Field(default_factory=Checks)
    # The file this inventory was loaded from; relative paths in it are relative to its directory.
    _source: Path | None = PrivateAttr(None)

    def resolve_path(self, path: Path) -> Path:
        """A workstation path from the inventory: ~ expanded, relative to the inventory file."""
        path = path.expanduser()
        if path.is_absolute() or self._source is None:
            return path
        return self._source.parent / path

    @property
    def secrets_path(self) -> Path:
        return self.resolve_path(self.secrets_dir)

    @model_validator(mode="before")
    @classmethod
    def _name_hosts(cls, data: object) -> object:
        # Host names are the mapping keys; copy them in so a Host knows its name.
        if isinstance(data, dict) and isinstance(data.get("hosts"), dict):
            hosts = {}
            for key, value in data["hosts"].items():
                if isinstance(value, dict) and "name" not in value:
                    value = {"name": key, **value}
                hosts[key] = value
            data = {**data, "hosts": hosts}
        return data

    @property
    def servers(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.is_server]

    @property
    def clients(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.is_client]
