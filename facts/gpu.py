"""GPU VRAM per device, from whichever source the host has.

One command tries, in order: ``rocm-smi`` (JSON), ``amd-smi`` (JSON), ``nvidia-smi``
(CSV) and finally amdgpu sysfs (``mem_info_vram_total``/``_used``). It prints the output
it kept as a section named after its source (facts/sections.py), so the parser knows
which format it is reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pyinfra.api import FactBase
from typing_extensions import override

from facts._util import JsonDataclass, parse_json_lines, to_int
from facts.sections import framed, missing, split_sections

MIB = 1024 * 1024

# amd-smi labels its values "MB" but computes them as bytes // 2**20 (a 24 GiB
# RX 7900 XTX reports 24560 "MB" = 25753026560 bytes), so MB/GB mean MiB/GiB here.
_AMD_SMI_UNIT_BYTES = {
    "B": 1,
    "KB": 1024,
    "KIB": 1024,
    "MB": MIB,
    "MIB": MIB,
    "GB": MIB * 1024,
    "GIB": MIB * 1024,
}


@dataclass(frozen=True)
class GpuDevice(JsonDataclass):
    index: int
    name: str | None
    total_bytes: int | None
    used_bytes: int | None
    source: str


@dataclass(frozen=True)
class GpuInventory(JsonDataclass):
    """``source`` is the tool that answered (None if none did); ``reason`` says why
    ``devices`` is empty or incomplete."""

    source: str | None
    devices: tuple[GpuDevice, ...]
    reason: str | None = None

    @property
    def total_bytes(self) -> int | None:
        """Summed VRAM; None when no device or any device's total is unknown (never counted as 0)."""
        totals = [device.total_bytes for device in self.devices]
        return None if not totals or None in totals else sum(t for t in totals if t is not None)

    @property
    def unmeasured(self) -> tuple[GpuDevice, ...]:
        """Devices whose total VRAM the tool did not report (unified memory: NVIDIA GB10 prints [N/A])."""
        return tuple(device for device in self.devices if device.total_bytes is None)


def _rocm_smi_value(card: dict[str, Any], *suffixes: str) -> Any:
    """First value whose key (case-insensitively) equals one of ``suffixes`` or ends with it.

    rocm-smi changed capitalisation between releases ("Card series" in 5.x, "Card
    Series" in 6.x), so keys are compared lower-cased.
    """
    lowered = {key.lower(): value for key, value in card.items()}
    for suffix in suffixes:
        for key, value in lowered.items():
            if key == suffix or key.endswith(suffix):
                return value
    return None


def _clean_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.strip()
    return name if name and name.upper() != "N/A" else None


def parse_rocm_smi(lines: list[str]) -> GpuInventory:
    """``rocm-smi --showmeminfo vram --showproductname --json``: ``{"card0": {...}, ...}``."""
    data = parse_json_lines(lines)
    if not isinstance(data, dict):
        return GpuInventory("rocm-smi", (), "rocm-smi printed no JSON object")
    devices = []
    for key, card in data.items():
        match = re.fullmatch(r"card(\d+)", key)
        if not match or not isinstance(card, dict):
            continue  # e.g. the "system" block some versions add
        name = None
        for label in ("card series", "card sku", "card model"):
            name = _clean_name(_rocm_smi_value(card, label))
            if name:
                break
        devices.append(
            GpuDevice(
                index=int(match.group(1)),
                name=name,
                total_bytes=to_int(_rocm_smi_value(card, "vram total memory (b)")),
                used_bytes=to_int(_rocm_smi_value(card, "vram total used memory (b)")),
                source="rocm-smi",
            )
        )
    devices.sort(key=lambda device: device.index)
    return GpuInventory("rocm-smi", tuple(devices), None if devices else "rocm-smi reported no cards")


def amd_smi_bytes(value: Any) -> int | None:
    """An amd-smi quantity in bytes: ``{"value": 24560, "unit": "MB"}``, ``"24560 MB"`` or "N/A"."""
    if isinstance(value, dict):
        number, unit = value.get("value"), value.get("unit", "B")
    elif isinstance(value, str):
        parts = value.split()
        number, unit = (parts[0], parts[1]) if len(parts) == 2 else (value, "B")
    else:
        number, unit = value, "B"
    amount = to_int(number)
    multiplier = _AMD_SMI_UNIT_BYTES.get(str(unit).strip().upper())
    if amount is None or multiplier is None:
        return None
    return amount * multiplier


def _amd_smi_rows(data: Any) -> list[dict[str, Any]]:
    # ROCm 6.x prints a bare list; newer amd-smi wraps it as {"gpu_data": [...]}.
    if isinstance(data, dict):
        data = data.get("gpu_data", [data] if "gpu" in data else [])
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


def parse_amd_smi(metric_lines: list[str], static_lines: list[str]) -> GpuInventory:
    """``amd-smi metric --mem-usage --json`` plus ``amd-smi static --asic --json`` for names."""
    metric_rows = _amd_smi_rows(parse_json_lines(metric_lines))
    if not metric_rows:
        return GpuInventory("amd-smi", (), "amd-smi printed no GPU metrics")
    names: dict[int, str | None] = {}
    for row in _amd_smi_rows(parse_json_lines(static_lines)):
        asic = row.get("asic")
        index = to_int(row.get("gpu"))
        if index is not None and isinstance(asic, dict):
            names[index] = _clean_name(asic.get("market_name"))
    devices = []
    for position, row in enumerate(metric_rows):
        index = to_int(row.get("gpu"))
        index = position if index is None else index
        memory = row.get("mem_usage") if isinstance(row.get("mem_usage"), dict) else {}
        devices.append(
            GpuDevice(
                index=index,
                name=names.get(index),
                total_bytes=amd_smi_bytes(memory.get("total_vram")),
                used_bytes=amd_smi_bytes(memory.get("used_vram")),
                source="amd-smi",
            )
        )
    return GpuInventory("amd-smi", tuple(sorted(devices, key=lambda device: device.index)))


def parse_nvidia_smi(lines: list[str]) -> GpuInventory:
    """``nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader,nounits`` (MiB)."""
    devices = []
    for line in lines:
        fields = [field.strip() for field in line.split(",")]
        # The name never contains a comma in practice, but split from both ends to be safe.
        if len(fields) < 4:
            continue
        index = to_int(fields[0])
        if index is None:
            continue
        total, used = to_int(fields[-2]), to_int(fields[-1])
        devices.append(
            GpuDevice(
                index=index,
                name=_clean_name(", ".join(fields[1:-2])),
                total_bytes=None if total is None else total * MIB,
                used_bytes=None if used is None else used * MIB,
                source="nvidia-smi",
            )
        )
    if not devices:
        return GpuInventory("nvidia-smi", (), "nvidia-smi listed no GPUs")
    unknown = [device for device in devices if device.total_bytes is None]
    # Unified-memory GPUs (DGX Spark / GB10) share system RAM: nvidia-smi prints [N/A] for memory.*.
    reason = (f"nvidia-smi prints [N/A] for memory.total of GPU {', '.join(_described(d) for d in unknown)}: "
              "VRAM unknown (unified memory shared with the system, as on a DGX Spark/GB10)") if unknown else None
    return GpuInventory("nvidia-smi", tuple(devices), reason)


def _described(device: GpuDevice) -> str:
    return f"{device.index} ({device.name})" if device.name else str(device.index)


def parse_sysfs(lines: list[str]) -> GpuInventory:
    """Lines ``cardN <total bytes> <used bytes> [product name]`` printed from amdgpu sysfs."""
    devices = []
    for line in lines:
        parts = line.split(maxsplit=3)
        match = re.fullmatch(r"card(\d+)", parts[0]) if parts else None
        if not match or len(parts) < 2:
            continue
        total = to_int(parts[1])
        if total is None:
            continue
        devices.append(
            GpuDevice(
                index=int(match.group(1)),
                name=_clean_name(parts[3]) if len(parts) > 3 else None,
                total_bytes=total,
                used_bytes=to_int(parts[2]) if len(parts) > 2 else None,
                source="sysfs",
            )
        )
    if not devices:
        return GpuInventory(
            None, (), "no GPU tool (rocm-smi, amd-smi, nvidia-smi) and no amdgpu VRAM in sysfs"
        )
    return GpuInventory("sysfs", tuple(sorted(devices, key=lambda device: device.index)))


def parse_gpu_output(lines: list[str]) -> GpuInventory:
    """Dispatch on the section the command printed (the source that answered)."""
    sections = split_sections(lines)
    damaged = next((key for key in SOURCES if key in sections and sections[key].status is None), None)
    if damaged:
        return GpuInventory(None, (), f"{damaged}: {sections[damaged].problem}")
    if ROCM_SMI in sections:
        return parse_rocm_smi(list(sections[ROCM_SMI].lines))
    if AMD_SMI_METRIC in sections:
        static = sections.get(AMD_SMI_STATIC) or missing(AMD_SMI_STATIC)
        return parse_amd_smi(list(sections[AMD_SMI_METRIC].lines), list(static.lines))
    if NVIDIA_SMI in sections:
        return parse_nvidia_smi(list(sections[NVIDIA_SMI].lines))
    if SYSFS in sections:
        return parse_sysfs(list(sections[SYSFS].lines))
    return GpuInventory(None, (), "unrecognised GPU probe output")


# Section keys: the source whose output the command kept.
ROCM_SMI, AMD_SMI_METRIC, AMD_SMI_STATIC, NVIDIA_SMI, SYSFS = (
    "rocm-smi", "amd-smi-metric", "amd-smi-static", "nvidia-smi", "sysfs")
SOURCES = (ROCM_SMI, AMD_SMI_METRIC, AMD_SMI_STATIC, NVIDIA_SMI, SYSFS)
_NVIDIA_QUERY = "--query-gpu=index,name,memory.total,memory.used --format=csv,noheader,nounits"
# A section holding the output the probe captured in $out, with the probe's exit status ($rc).
_CAPTURED = 'printf \'%s\\n\' "$out"; exit "$rc"'

_SYSFS_VRAM = (
    "for card in /sys/class/drm/card[0-9]*; do"
    ' case "${card##*/}" in *-*) continue;; esac;'  # skip connectors such as card0-DP-1
    ' if [ -r "$card/device/mem_info_vram_total" ]; then'
    ' echo "${card##*/} $(cat "$card/device/mem_info_vram_total")'
    ' $(cat "$card/device/mem_info_vram_used" 2>/dev/null || echo -)'
    ' $(cat "$card/device/product_name" 2>/dev/null)";'
    " fi; done"
)

# Each probe only counts when its output looks like data (JSON with VRAM keys, CSV
# rows), so an installed-but-broken tool falls through to the next source.
GPU_COMMAND = " ".join(
    [
        "found=;",
        "if command -v rocm-smi >/dev/null 2>&1; then",
        "out=$(rocm-smi --showmeminfo vram --showproductname --json 2>/dev/null); rc=$?;",
        f"case \"$out\" in *'Total Memory (B)'*) found=1; {framed(ROCM_SMI, _CAPTURED)};; esac; fi;",
        'if [ -z "$found" ] && command -v amd-smi >/dev/null 2>&1; then',
        "out=$(amd-smi metric --mem-usage --json 2>/dev/null); rc=$?;",
        f'case "$out" in *total_vram*) found=1; {framed(AMD_SMI_METRIC, _CAPTURED)};',
        f"{framed(AMD_SMI_STATIC, 'amd-smi static --asic --json')};; esac; fi;",
        'if [ -z "$found" ] && command -v nvidia-smi >/dev/null 2>&1; then',
        f"out=$(nvidia-smi {_NVIDIA_QUERY} 2>/dev/null); rc=$?;",
        f'case "$out" in [0-9]*,*) found=1; {framed(NVIDIA_SMI, _CAPTURED)};; esac; fi;',
        'if [ -z "$found" ]; then',
        f"{framed(SYSFS, _SYSFS_VRAM)};",
        "fi",
    ]
)


class GpuVram(FactBase[GpuInventory]):
    """
    Returns the VRAM of every GPU: index, name, total and used bytes, and the source.

    .. code:: python

        GpuInventory(source="rocm-smi", devices=(GpuDevice(index=0, name="Radeon RX 7900 XTX",
                     total_bytes=25753026560, used_bytes=1073741824, source="rocm-smi"),))
    """

    @override
    @staticmethod
    def default() -> GpuInventory:
        return GpuInventory(None, (), "GPU probe printed nothing")

    @override
    def command(self) -> str:
        return GPU_COMMAND

    @override
    def process(self, output: list[str]) -> GpuInventory:
        return parse_gpu_output(output)
