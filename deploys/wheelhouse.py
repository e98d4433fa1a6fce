"""Wheels of the router's pinned LiteLLM, downloaded once, for an offline install on the server.

    python -m deploys wheelhouse [--version X] [--prisma-version Y] [--dest .cache/wheelhouse]
                                 [--venv .cache/litellm-venv]

Downloads `litellm[proxy]==X`, `prisma==Y` and their whole dependency closure as
wheels for the server's interpreter (CPython 3.11, manylinux x86_64: Debian 12),
writes `requirements.lock` (one `name==version --hash=sha256:...` line per wheel)
and `wheelhouse.json` beside them, and reuses them while the pins are the same
and every file still matches its sha256 (no network then). Another pin rebuilds
the directory. The server installs with

    pip install --no-index --find-links DIR --no-deps --require-hashes -r DIR/requirements.lock

which installs exactly the locked files and never resolves: that is what lets a
relaxed requirement (below) install at all. `--venv` builds that venv locally
the same way, from the wheelhouse only (the runtime tests use it).

Relaxed requirements: litellm 1.103.11 and later (every 1.104-1.109 release)
require `certifi>=2026.10.19`, which the package index does not have; certifi is
only Mozilla's CA bundle, so the newest available one is locked instead, and the
lock says so. 1.108.8-1.108.14 need `litellm-enterprise==0.1.79.post2` (1.108.13 and .14 also
`litellm-proxy-extras==0.4.110.post1`) and 1.109.x `litellm-proxy-extras==0.4.113`, none of which
the index has (measured 2026-12-01): 1.108.7 is the newest release whose closure resolves here.
1.107.0 was a compromised release (supply-chain attack) and is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from inventory.model import Router

REPO = Path(__file__).resolve().parent.parent
# The inventory's defaults: one place for the pins.
DEFAULT_LITELLM_VERSION = Router.model_fields["litellm_version"].default
DEFAULT_PRISMA_VERSION = Router.model_fields["prisma_version"].default
DEFAULT_DEST = REPO / ".cache" / "wheelhouse"
DEFAULT_VENV = REPO / ".cache" / "litellm-venv"
LOCK_FILE = "requirements.lock"
MANIFEST_FILE = "wheelhouse.json"
EXTRAS = ("proxy",)
# Releases never to install: 1.107.0 was published by an attacker (supply-chain compromise).
COMPROMISED_LITELLM = frozenset({"1.107.0"})
# Requirements whose version bound is dropped (see the module docstring); the package stays.
RELAXED = frozenset({"certifi"})

# The server's interpreter: Debian 12's CPython 3.11 on x86_64, glibc 2.36.
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36
TARGET_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


class WheelhouseError(Exception):
    pass


def target_platforms(glibc_minor: int = GLIBC_MINOR) -> list[str]:
    """Every manylinux tag a glibc 2.<minor> x86_64 host accepts (pip does not expand these itself)."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc_minor, 4, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pip_target_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for platform in target_platforms():
        args += ["--platform", platform]
    return args


def wheel_requirements(metadata: str, extras: tuple[str, ...] = EXTRAS,
                       markers: dict[str, str] | None = None) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA that apply on the target with `extras`,
    markers removed and RELAXED packages unbounded."""
    env = TARGET_MARKERS if markers is None else markers
    found: list[str] = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        applies = requirement.marker is None or any(
            requirement.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras)
        )
        if not applies:
            continue
        requirement.marker = None
        if canonicalize_name(requirement.name) in RELAXED:
            requirement.specifier = type(requirement.specifier)("")
        text = str(requirement)
        if text not in found:
            found.append(text)
    return found


def missing_for_target(wheels: list[Path]) -> list[str]:
    """Requirements of the downloaded wheels that apply on the TARGET but have no wheel yet.

    pip evaluates transitive markers with the workstation's interpreter: with 3.11.7 it skips
    `async-timeout; python_full_version < "3.11.3"`, which Debian 12's 3.11.2 needs.
    """
    have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    missing: list[str] = []
    for wheel in wheels:
        for text in wheel_requirements(wheel_metadata(wheel), extras=()):
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) not in have and text not in missing:
                missing.append(text)
    return missing


def complete_for_target(staging: Path, log=print) -> None:
    for _ in range(5):  # each round can only add dependencies of what the last one added
        missing = missing_for_target(sorted(staging.glob("*.whl")))
        if not missing:
            return
        log(f"adding what the target interpreter needs too: {', '.join(missing)}")
        _pip(["-d", str(staging), *missing, *pip_target_args()])
    raise WheelhouseError("the wheelhouse's dependency closure did not settle")


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LockedWheel:
    file: str
    name: str
    version: str
    sha256: str

    @property
    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


def locked_wheel(path: Path) -> LockedWheel:
    name, version, _build, _tags = parse_wheel_filename(path.name)
    return LockedWheel(path.name, str(name), str(version), sha256_of(path))


def lock_text(litellm_version: str, prisma_version: str, wheels: list[LockedWheel]) -> str:
    header = [
        f"# litellm[proxy]=={litellm_version} + prisma=={prisma_version} and their closure,",
        f"# for CPython {PYTHON_VERSION} on manylinux x86_64 (Debian 12). Generated by python -m deploys wheelhouse.",
        "# Install exactly these files, without resolving:",
        "#   pip install --no-index --find-links DIR --no-deps --require-hashes -r requirements.lock",
        f"# Relaxed (bound dropped, newest available locked): {', '.join(sorted(RELAXED))}",
    ]
    return "\n".join([*header, *(w.line for w in sorted(wheels, key=lambda w: w.name))]) + "\n"


def manifest_key(litellm_version: str, prisma_version: str) -> dict[str, object]:
    """What decides the wheelhouse's content: a different key means a rebuild."""
    return {
        "litellm": litellm_version,
        "prisma": prisma_version,
        "extras": list(EXTRAS),
        "python": PYTHON_VERSION,
        "platforms": target_platforms(),
        "relaxed": sorted(RELAXED),
        "markers": TARGET_MARKERS,  # transitive requirements are completed for these
    }


def is_current(dest: Path, litellm_version: str, prisma_version: str) -> bool:
    """The wheelhouse holds these pins and every locked file is intact."""
    try:
        manifest = json.loads((dest / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("key") != manifest_key(litellm_version, prisma_version):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not (dest / LOCK_FILE).is_file():
        return False
    for name, digest in files.items():
        path = dest / name
        if not path.is_file() or sha256_of(path) != digest:
            return False
    return True


def _pip(args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", *args]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if not line.startswith("WARNING: Location")]
        raise WheelhouseError("pip download failed:\n" + "\n".join(errors[-15:]))


def build(litellm_version: str = DEFAULT_LITELLM_VERSION, prisma_version: str = DEFAULT_PRISMA_VERSION,
          dest: Path = DEFAULT_DEST, log=print) -> Path:
    """Make `dest` the wheelhouse of these pins (a no-op when it already is). Returns the lock file."""
    if litellm_version in COMPROMISED_LITELLM:
        raise WheelhouseError(f"litellm {litellm_version} was a compromised release: choose another pin")
    if is_current(dest, litellm_version, prisma_version):
        log(f"wheelhouse {dest} is up to date (litellm {litellm_version}, prisma {prisma_version})")
        return dest / LOCK_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=dest.parent))
    try:
        log(f"downloading litellm {litellm_version} ...")
        _pip(["--no-deps", "-d", str(staging), f"litellm=={litellm_version}", *pip_target_args()])
        litellm_wheel = next(staging.glob("litellm-*.whl"))
        requirements = wheel_requirements(wheel_metadata(litellm_wheel))
        requirements.append(f"prisma=={prisma_version}")
        log(f"downloading its {len(requirements)} requirements and their dependencies ...")
        requirements_file = staging / "requirements.in"
        requirements_file.write_text("\n".join(requirements) + "\n")
        _pip(["-d", str(staging), "-r", str(requirements_file), *pip_target_args()])
        requirements_file.unlink()
        complete_for_target(staging, log)
        wheels = [locked_wheel(p) for p in sorted(staging.glob("*.whl"))]
        others = [p.name for p in staging.iterdir() if not p.name.endswith(".whl")]
        if others:
            raise WheelhouseError(f"not wheels (no binary for the target?): {others}")
        (staging / LOCK_FILE).write_text(lock_text(litellm_version, prisma_version, wheels))
        (staging / MANIFEST_FILE).write_text(json.dumps({
            "key": manifest_key(litellm_version, prisma_version),
            "files": {w.file: w.sha256 for w in wheels},
        }, indent=2, sort_keys=True) + "\n")
        # Swap in whole: a failed download never leaves a half wheelhouse behind.
        if dest.exists():
            old = dest.with_name(dest.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            staging.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wheelhouse {dest}: {len(wheels)} wheels, {LOCK_FILE} written")
    return dest / LOCK_FILE


def offline_install_command(python: Path, wheelhouse: Path) -> list[str]:
    """What the server runs, here for a local venv: no index, no resolution, hashes enforced."""
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
            "--no-index", "--find-links", str(wheelhouse), "--no-deps", "--require-hashes",
            "-r", str(wheelhouse / LOCK_FILE)]


def venv_is_current(venv: Path, wheelhouse: Path) -> bool:
    marker = venv / ".installed-lock"
    lock = wheelhouse / LOCK_FILE
    return marker.is_file() and lock.is_file() and marker.read_text() == lock.read_text()


def build_venv(venv: Path = DEFAULT_VENV, wheelhouse: Path = DEFAULT_DEST, python: str = sys.executable,
               log=print) -> Path:
    """A venv with exactly the wheelhouse's lock installed offline (rebuilt when the lock changed)."""
    if venv_is_current(venv, wheelhouse):
        log(f"venv {venv} matches {wheelhouse / LOCK_FILE}")
        return venv
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    if version != PYTHON_VERSION:
        raise WheelhouseError(f"{python} is Python {version}; the wheelhouse is for {PYTHON_VERSION} (the server's)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # Only the wheelhouse: no pip.conf index or find-links, no PIP_* settings.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    log(f"installing {wheelhouse / LOCK_FILE} into {venv} (offline) ...")
    result = subprocess.run(offline_install_command(venv / "bin" / "python", wheelhouse),
                            check=False, capture_output=True, text=True, env=environ)
    if result.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise WheelhouseError("offline install failed:\n" + result.stderr[-3000:])
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import litellm.proxy.proxy_server, prisma"],
                           check=False, capture_output=True, text=True, env={**environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    if check.returncode != 0:
        raise WheelhouseError("the venv cannot import litellm's proxy:\n" + check.stderr[-3000:])
    (venv / ".installed-lock").write_text((wheelhouse / LOCK_FILE).read_text())
    log(f"venv {venv} ready")
    return venv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploys wheelhouse", description=__doc__.split("\n")[0])
    parser.add_argument("--version", default=DEFAULT_LITELLM_VERSION, help="litellm version to pin")
    parser.add_argument("--prisma-version", default=DEFAULT_PRISMA_VERSION)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="wheelhouse directory")
    parser.add_argument("--venv", type=Path, help="also build this venv from the wheelhouse (offline)")
    args = parser.parse_args(argv)
    try:
        build(args.version, args.prisma_version, args.dest)
        if args.venv is not None:
            build_venv(args.venv, args.dest)
    except WheelhouseError as err:
        print(f"wheelhouse: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
