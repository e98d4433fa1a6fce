"""LAB STAND-IN for Ollama: model names, the on-disk model store and the scheduler.

Stand-in because the real Ollama cannot be fetched in the lab sandbox; see
``__init__``. Manifests and small config/template blobs are written like the
real ``$OLLAMA_MODELS`` layout so "pulled" models survive restarts; the big
weight blob is never written (only its size is claimed in the manifest).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_VERSION = "0.13.5"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_KEEP_ALIVE_SECONDS = 300.0
# Real Ollama's default for OLLAMA_MAX_LOADED_MODELS=0 is 3 per GPU.
DEFAULT_MAX_LOADED = 3
# RX 7900 XTX: what the GPU budget is checked against when ROCm libraries are present.
DEFAULT_VRAM_BYTES = 24 * 1024**3
# Go's max time.Duration (~292 years): what Ollama uses for a negative keep_alive.
FOREVER_SECONDS = (2**63 - 1) / 1e9


def version() -> str:
    """The release version baked in by build.py, else the default."""
    baked = PACKAGE_DIR / "VERSION"
    return baked.read_text().strip() if baked.is_file() else DEFAULT_VERSION


def rocm_installed() -> bool:
    """True when the ROCm add-on tarball was extracted over the install (lib/ollama/rocm)."""
    return (PACKAGE_DIR.parent / "rocm").is_dir()


# ---------------------------------------------------------------- names


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def short(self) -> str:
        """Ollama's DisplayShortest: drop default host/namespace, keep the tag."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_model_name(raw: str) -> ModelName | None:
    """Parse `model`, `model:tag`, `ns/model:tag`, `host/ns/model:tag`; None when invalid."""
    raw = (raw or "").strip()
    if not raw:
        return None
    path, tag = raw, DEFAULT_TAG
    if ":" in raw.rsplit("/", 1)[-1]:
        path, tag = raw.rsplit(":", 1)
    parts = path.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    if len(parts) != 3 or not all(_NAME_PART.match(p) for p in [*parts[1:], tag]):
        return None
    return ModelName(host=parts[0], namespace=parts[1], model=parts[2], tag=tag)


# ---------------------------------------------------------------- durations

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """keep_alive (JSON number = seconds, or a Go duration string like "5m", "1h30m", "-1")
    -> seconds; negative means forever (math.inf); None when absent.

    Raises ValueError like Go's time.ParseDuration for unparseable strings.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f'time: invalid duration "{value}"')  # noqa: TRY004 (callers map ValueError to 400)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if re.fullmatch(r"\d+(\.\d*)?", body):  # bare number: seconds (as OLLAMA_KEEP_ALIVE allows)
            seconds = sign * float(body)
        else:
            parts = _GO_DURATION_PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f'time: invalid duration "{text}"')
            seconds = sign * sum(float(n) * _GO_UNIT_SECONDS[u] for n, u in parts)
    return math.inf if seconds < 0 else seconds


def env_keep_alive(environ: dict[str, str]) -> float:
    raw = environ.get("OLLAMA_KEEP_ALIVE", "").strip()
    if not raw:
        return DEFAULT_KEEP_ALIVE_SECONDS
    try:
        parsed = parse_keep_alive(raw)
    except ValueError:
        return DEFAULT_KEEP_ALIVE_SECONDS
    return DEFAULT_KEEP_ALIVE_SECONDS if parsed is None else parsed


def env_context_length(environ: dict[str, str]) -> int | None:
    try:
        value = int(environ.get("OLLAMA_CONTEXT_LENGTH", "0") or "0")
    except ValueError:
        return None
    return value if value > 0 else None


def env_max_loaded(environ: dict[str, str]) -> int:
    try:
        value = int(environ.get("OLLAMA_MAX_LOADED_MODELS", "0") or "0")
    except ValueError:
        value = 0
    return value if value > 0 else DEFAULT_MAX_LOADED


def iso_local(epoch: float) -> str:
    """Go's RFC3339Nano in local time, as /api/ps's expires_at."""
    base = datetime.fromtimestamp(0, UTC).astimezone()
    return (base + timedelta(seconds=epoch)).isoformat()


def iso_utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    architecture: str
    size: int
    parameter_size: str
    parameter_count: int
    quantization_level: str
    context_length: int
    capabilities: tuple[str, ...]


def load_catalogue(path: Path | None = None) -> dict[str, CatalogueModel]:
    path = path or Path(os.environ.get("OLLAMA_STANDIN_CATALOGUE", PACKAGE_DIR / "catalogue.json"))
    data = json.loads(path.read_text())
    catalogue: dict[str, CatalogueModel] = {}
    for entry in data["models"]:
        parsed = parse_model_name(entry["name"])
        assert parsed is not None, entry["name"]
        catalogue[parsed.full] = CatalogueModel(**{**entry, "capabilities": tuple(entry["capabilities"])})
    return catalogue


def template_for(capabilities: tuple[str, ...] | list[str]) -> str:
    """A chat template; LiteLLM decides tool support by looking for "tools" in it."""
    tools = (
        "{{- if .Tools }}<tools>{{ range .Tools }}{{ . }}{{ end }}</tools>{{- end }}\n"
        if "tools" in capabilities
        else ""
    )
    return tools + "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}{{ end }}<|assistant|>"


# ---------------------------------------------------------------- store


@dataclass(frozen=True)
class InstalledModel:
    name: ModelName
    config: dict[str, Any]  # the config blob (real keys + stand-in extras)
    digest: str  # sha256 of the manifest, as /api/tags shows it
    size: int
    modified_at: float

    @property
    def capabilities(self) -> list[str]:
        return list(self.config.get("capabilities", ["completion"]))

    @property
    def context_length(self) -> int:
        return int(self.config.get("context_length", 4096))

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.config.get("model_format", "gguf"),
            "family": self.config.get("model_family", ""),
            "families": self.config.get("model_families", []),
            "parameter_size": self.config.get("model_type", ""),
            "quantization_level": self.config.get("file_type", ""),
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelStore:
    """Manifests under $OLLAMA_MODELS/manifests/<host>/<ns>/<model>/<tag>, blobs under blobs/."""

    def __init__(self, root: Path, catalogue: dict[str, CatalogueModel]) -> None:
        self.root = root
        self.catalogue = catalogue
        self._lock = threading.Lock()

    def _manifest_path(self, name: ModelName) -> Path:
        return self.root / "manifests" / name.host / name.namespace / name.model / name.tag

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def get(self, name: ModelName) -> InstalledModel | None:
        path = self._manifest_path(name)
        try:
            raw = path.read_bytes()
            manifest = json.loads(raw)
            config = json.loads(self._blob_path(manifest["config"]["digest"]).read_bytes())
        except (OSError, ValueError, KeyError):
            return None
        size = sum(int(layer["size"]) for layer in manifest.get("layers", []))
        return InstalledModel(name, config, _sha256(raw), size, path.stat().st_mtime)

    def list(self) -> list[InstalledModel]:
        base = self.root / "manifests"
        found = []
        for path in sorted(base.glob("*/*/*/*")) if base.is_dir() else []:
            rel = path.relative_to(base).parts
            model = self.get(ModelName(*rel))
            if model is not None:
                found.append(model)
        return sorted(found, key=lambda m: m.modified_at, reverse=True)

    def delete(self, name: ModelName) -> bool:
        path = self._manifest_path(name)
        with self._lock:
            if not path.is_file():
                return False
            path.unlink()
        return True

    def pull(self, name: ModelName) -> Iterator[dict[str, Any]]:
        """Progress events like real /api/pull; an {"error": ...} event ends a failed pull."""
        yield {"status": "pulling manifest"}
        entry = self.catalogue.get(name.full)
        if entry is None:
            yield {"error": "pull model manifest: file does not exist"}
            return
        config = {
            "model_format": "gguf",
            "model_family": entry.architecture,
            "model_families": [entry.architecture],
            "model_type": entry.parameter_size,
            "file_type": entry.quantization_level,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            # stand-in extras (real Ollama reads these from the GGUF weights)
            "capabilities": list(entry.capabilities),
            "context_length": entry.context_length,
            "parameter_count": entry.parameter_count,
            "standin": "lab stand-in model: no weights",
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        template_bytes = template_for(entry.capabilities).encode()
        params_bytes = json.dumps({"temperature": 0.7, "top_p": 0.8}).encode()
        weights_digest = "sha256:" + _sha256(f"lab-standin-weights:{name.full}".encode())
        layers = [
            ("application/vnd.ollama.image.model", weights_digest, entry.size, None),
            (
                "application/vnd.ollama.image.template",
                "sha256:" + _sha256(template_bytes),
                len(template_bytes),
                template_bytes,
            ),
            (
                "application/vnd.ollama.image.params",
                "sha256:" + _sha256(params_bytes),
                len(params_bytes),
                params_bytes,
            ),
        ]
        for _media, digest, size, _content in layers:
            short = digest.split(":", 1)[1][:12]
            for completed in (0, size // 4, size // 2, size * 3 // 4, size):
                yield {"status": f"pulling {short}", "digest": digest, "total": size, "completed": completed}
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": "sha256:" + _sha256(config_bytes),
                "size": len(config_bytes),
            },
            "layers": [{"mediaType": m, "digest": d, "size": s} for m, d, s, _ in layers],
        }
        with self._lock:
            blobs = [(manifest["config"]["digest"], config_bytes)]
            blobs += [(d, c) for _m, d, _s, c in layers if c is not None]
            for digest, content in blobs:
                blob = self._blob_path(digest)
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(content)
            path = self._manifest_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_text(json.dumps(manifest))
            tmp.replace(path)
        yield {"status": "removing any unused layers"}
        yield {"status": "success"}


# ---------------------------------------------------------------- scheduler


@dataclass
class LoadedModel:
    model: InstalledModel
    size_vram: int
    expires_at: float  # epoch seconds; math.inf = forever
    last_used: float = field(default=0.0)
    context_length: int = 4096


class Scheduler:
    """Which models are "in memory": keep_alive expiry, max loaded models, VRAM budget.

    Like real Ollama: loading a model that does not fit (count or VRAM) first
    evicts the least recently used loaded models (evict-then-load).
    """

    def __init__(
        self,
        default_keep_alive: float,
        max_loaded: int,
        gpu: bool,
        vram_bytes: int = DEFAULT_VRAM_BYTES,
        default_context: int | None = None,
    ) -> None:
        self.default_keep_alive = default_keep_alive
        # Real Ollama's default num_ctx: 32768 on a >= 23 GiB GPU, 4096 otherwise.
        self.default_context = default_context or (32768 if gpu and vram_bytes >= 23 * 1024**3 else 4096)
        self.max_loaded = max_loaded
        self.gpu = gpu
        self.vram_bytes = vram_bytes
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def _purge(self, now: float) -> None:
        for key in [k for k, v in self._loaded.items() if v.expires_at <= now]:
            del self._loaded[key]

    def use(
        self,
        model: InstalledModel,
        keep_alive: float | None,
        now: float | None = None,
        context_length: int | None = None,
    ) -> int:
        """Load (evicting as needed) and set the expiry for a request on `model`; return its context.

        A different context length than the loaded one reloads the model, as in real Ollama.
        """
        now = time.time() if now is None else now
        keep = self.default_keep_alive if keep_alive is None else keep_alive
        context = min(context_length or self.default_context, model.context_length)
        with self._lock:
            self._purge(now)
            key = model.name.full
            if key in self._loaded and self._loaded[key].context_length != context:
                del self._loaded[key]
            if key not in self._loaded:
                vram = model.size if self.gpu else 0
                while self._loaded and (
                    len(self._loaded) >= self.max_loaded
                    or (self.gpu and sum(m.size_vram for m in self._loaded.values()) + vram > self.vram_bytes)
                ):
                    victim = min(self._loaded, key=lambda k: self._loaded[k].last_used)
                    del self._loaded[victim]
                self._loaded[key] = LoadedModel(model, vram, now, context_length=context)
            loaded = self._loaded[key]
            loaded.model = model
            loaded.last_used = now
            loaded.expires_at = now + keep if math.isfinite(keep) else math.inf
            return loaded.context_length

    def unload(self, name: ModelName) -> None:
        with self._lock:
            self._loaded.pop(name.full, None)

    def running(self, now: float | None = None) -> list[LoadedModel]:
        now = time.time() if now is None else now
        with self._lock:
            self._purge(now)
            return sorted(self._loaded.values(), key=lambda m: m.last_used, reverse=True)


def expires_at_text(loaded: LoadedModel) -> str:
    if math.isinf(loaded.expires_at):
        return iso_local(loaded.last_used + FOREVER_SECONDS)
    return iso_local(loaded.expires_at)
