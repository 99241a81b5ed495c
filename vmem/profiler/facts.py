"""Device facts (what a backend's `facts()` says) as the short lines a report
opens with."""

from __future__ import annotations

from typing import Any

from vmem.units import format_bytes


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value.startswith("unavailable"))


def facts_lines(facts: dict[str, Any] | None) -> list[str]:
    """One line of what is known about the device, and a second where NVML
    could not be read on a GPU (what the report then cannot show)."""
    if not facts:
        return ["device facts: none recorded (no trial ran)"]
    get = {k: v for k, v in facts.items() if _known(v)}
    parts = [str(get.get("backend", "device"))]
    for key in ("device", "description", "processor"):
        if key in get:
            parts.append(str(get[key]))
    if "cores" in get:
        parts.append(f"{get['cores']} cores")
    if "nvml_driver" in get or "cuda_driver" in get:
        parts.append(f"driver {get.get('nvml_driver', get.get('cuda_driver'))}")
    total = get.get("total_memory_bytes", get.get("memory_bytes"))
    if isinstance(total, int):
        used = get.get("memory_used_bytes")
        parts.append(f"{format_bytes(total)} total" + (
            f", {format_bytes(used)} used (NVML)" if isinstance(used, int) else ""))
    if isinstance(get.get("pcie_generation"), int) and isinstance(get.get("pcie_width"), int):
        parts.append(f"PCIe gen{get['pcie_generation']} ×{get['pcie_width']}")
    if "tflops" in get:
        parts.append(f"{get['tflops']:g} TFLOPS")
    if "bandwidth_gbps" in get:
        parts.append(f"{get['bandwidth_gbps']:g} GB/s")
    if "d2h_gbps" in get and "h2d_gbps" in get:
        parts.append(f"copies {get['d2h_gbps']:g}/{get['h2d_gbps']:g} GB/s d2h/h2d")
    if "calibration" in get:
        parts.append(f"calibrated from {get['calibration']}")
    if "cupy" in get:
        parts.append(f"CuPy {get['cupy']}")
    if get.get("tf32") is True:
        parts.append(f"TF32: {get.get('tf32_gemms', 'on')}")
    if isinstance(get.get("cuda_kernels"), list):
        parts.append("vmem CUDA kernels: " + (", ".join(get["cuda_kernels"]) or "none"))
    lines = ["device: " + " · ".join(parts)]
    nvml = facts.get("nvml")
    if isinstance(nvml, str):
        lines.append("NVML " + nvml + "; the card's used memory and PCIe link are not shown")
    return lines
