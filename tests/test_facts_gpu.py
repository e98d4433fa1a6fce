import json
import stat
import subprocess
from pathlib import Path

import pytest

from facts.gpu import (
    AMD_SMI_METRIC,
    AMD_SMI_STATIC,
    GPU_COMMAND,
    MIB,
    NVIDIA_SMI,
    ROCM_SMI,
    SYSFS,
    GpuVram,
    amd_smi_bytes,
    parse_amd_smi,
    parse_gpu_output,
    parse_nvidia_smi,
    parse_rocm_smi,
    parse_sysfs,
)
from facts.sections import encode, split_sections


def test_rocm_smi_sorts_cards_and_skips_non_card_blocks():
    data = {
        "system": {"Driver version": "6.8.5"},
        "card1": {"VRAM Total Memory (B)": "2048", "VRAM Total Used Memory (B)": "1024", "Card Series": "B"},
        "card0": {"VRAM Total Memory (B)": "4096", "VRAM Total Used Memory (B)": "0", "Card Series": "A"},
    }
    inventory = parse_rocm_smi([json.dumps(data)])
    assert [(d.index, d.name, d.total_bytes, d.used_bytes) for d in inventory.devices] == [
        (0, "A", 4096, 0),
        (1, "B", 2048, 1024),
    ]
    assert inventory.total_bytes == 6144


def test_rocm_smi_name_falls_back_from_na_series_to_sku():
    card = {
        "VRAM Total Memory (B)": "1",
        "VRAM Total Used Memory (B)": "0",
        "Card series": "N/A",
        "Card SKU": "D70401XT",
    }
    assert parse_rocm_smi([json.dumps({"card0": card})]).devices[0].name == "D70401XT"


def test_rocm_smi_without_cards_says_so():
    inventory = parse_rocm_smi(["{}"])
    assert inventory.devices == ()
    assert inventory.reason == "rocm-smi reported no cards"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"value": 24560, "unit": "MB"}, 24560 * MIB),
        ({"value": "2", "unit": "GB"}, 2 * 1024 * MIB),
        ("512 MB", 512 * MIB),
        (4096, 4096),
        ("N/A", None),
        ({"value": "N/A", "unit": "MB"}, None),
        ({"value": 1, "unit": "parsecs"}, None),
    ],
)
def test_amd_smi_bytes(value, expected):
    assert amd_smi_bytes(value) == expected


def test_amd_smi_uses_position_when_gpu_index_missing_and_survives_bad_static():
    metric = [
        {"mem_usage": {"total_vram": {"value": 8, "unit": "MB"}, "used_vram": {"value": 1, "unit": "MB"}}}
    ]
    inventory = parse_amd_smi([json.dumps(metric)], ["not json"])
    assert inventory.devices[0].index == 0
    assert inventory.devices[0].name is None
    assert inventory.devices[0].total_bytes == 8 * MIB


def test_amd_smi_without_metrics_is_empty_with_reason():
    inventory = parse_amd_smi(["[]"], [])
    assert inventory.devices == ()
    assert inventory.reason == "amd-smi printed no GPU metrics"


def test_nvidia_smi_skips_garbage_rows_and_converts_mib():
    lines = ["No devices were found", "0, NVIDIA GeForce RTX 3060, 12288, 100", "x, y, 1, 2", ""]
    inventory = parse_nvidia_smi(lines)
    assert [(d.index, d.name, d.total_bytes, d.used_bytes) for d in inventory.devices] == [
        (0, "NVIDIA GeForce RTX 3060", 12288 * MIB, 100 * MIB)
    ]


def test_sysfs_keeps_product_name_with_spaces_and_missing_used():
    inventory = parse_sysfs(["card0 1000 - AMD Radeon Pro W7900", "card9 notanumber 1", "renderD128 1 1"])
    assert [(d.index, d.name, d.total_bytes, d.used_bytes) for d in inventory.devices] == [
        (0, "AMD Radeon Pro W7900", 1000, None)
    ]


def test_dispatch_reads_the_section_of_the_source_that_answered():
    inventory = parse_gpu_output(["login banner", encode(NVIDIA_SMI, 0, b"0, GPU, 1, 1\n")])
    assert inventory.source == "nvidia-smi"
    assert parse_gpu_output([]).reason == "unrecognised GPU probe output"
    cut = parse_gpu_output([encode(ROCM_SMI, 0, b'{"card0": {}}')[:-2]])
    assert (cut.source, cut.devices) == (None, ()) and cut.reason.startswith("rocm-smi: ") and "base64" in cut.reason


def test_fact_default_is_an_empty_inventory_with_reason():
    default = GpuVram.default()
    assert default.devices == () and default.reason


# --- the shell command itself, run locally with fake tools on PATH ----------------------------


def _fake_tool(directory: Path, name: str, stdout: str) -> None:
    script = directory / name
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + stdout + "\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def _run_gpu_command(bin_dir: Path) -> list[str]:
    # Keep /bin for cat and sh itself; the fakes come first so they shadow nothing real.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    result = subprocess.run(["sh", "-c", GPU_COMMAND], env=env, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@pytest.fixture
def no_real_gpu_tools():
    for tool in ("rocm-smi", "amd-smi", "nvidia-smi"):
        if any(Path(p, tool).exists() for p in ("/usr/bin", "/bin")):
            pytest.skip(f"a real {tool} is installed")


def test_command_prefers_rocm_smi(tmp_path, no_real_gpu_tools):
    card = {"card0": {"VRAM Total Memory (B)": "100", "VRAM Total Used Memory (B)": "5", "Card Series": "X"}}
    _fake_tool(tmp_path, "rocm-smi", json.dumps(card))
    _fake_tool(tmp_path, "nvidia-smi", "0, Other, 1, 1")
    inventory = parse_gpu_output(_run_gpu_command(tmp_path))
    assert inventory.source == "rocm-smi"
    assert inventory.devices[0].total_bytes == 100


def test_command_falls_through_a_broken_rocm_smi_to_amd_smi(tmp_path, no_real_gpu_tools):
    _fake_tool(tmp_path, "rocm-smi", "ERROR: No AMD GPUs specified")
    metric = [
        {
            "gpu": 0,
            "mem_usage": {"total_vram": {"value": 2, "unit": "MB"}, "used_vram": {"value": 1, "unit": "MB"}},
        }
    ]
    # The same fake answers both amd-smi calls; the static part then carries no names.
    _fake_tool(tmp_path, "amd-smi", json.dumps(metric))
    inventory = parse_gpu_output(_run_gpu_command(tmp_path))
    assert inventory.source == "amd-smi"
    assert inventory.devices[0].total_bytes == 2 * MIB
    sections = split_sections(_run_gpu_command(tmp_path))
    assert list(sections) == [AMD_SMI_METRIC, AMD_SMI_STATIC] and sections[AMD_SMI_METRIC].ok


def test_command_uses_nvidia_smi_when_amd_tools_are_absent(tmp_path, no_real_gpu_tools):
    _fake_tool(
        tmp_path, "nvidia-smi", "0, NVIDIA GeForce RTX 3070 Ti, 8192, 1\n1, NVIDIA GeForce RTX 3060, 12288, 2"
    )
    inventory = parse_gpu_output(_run_gpu_command(tmp_path))
    assert inventory.source == "nvidia-smi"
    assert [d.total_bytes for d in inventory.devices] == [8192 * MIB, 12288 * MIB]


def test_command_without_tools_reports_sysfs_or_nothing(tmp_path, no_real_gpu_tools):
    lines = _run_gpu_command(tmp_path)
    assert list(split_sections(lines)) == [SYSFS]
    inventory = parse_gpu_output(lines)
    has_amdgpu = any(Path("/sys/class/drm").glob("card*/device/mem_info_vram_total"))
    assert (inventory.source == "sysfs") == has_amdgpu
    if not has_amdgpu:
        assert inventory.devices == () and inventory.reason


def test_command_is_posix_sh():
    # dash rejects bashisms; -n parses without running.
    subprocess.run(["sh", "-n", "-c", GPU_COMMAND], check=True)
