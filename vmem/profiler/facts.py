"""Device facts (what a backend's `facts()` says) as the short lines a report
opens with."""

from __future__ import annotations

from typing import Any

from vmem.units import format_bytes


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value.startswith("unavailable"))


def device_memory_bytes(facts: dict[str, Any] | None) -> int | None:
    """The device's own memory where the facts know it (a GPU's, a sim GPU's)."""
    total = (facts or {}).get("total_memory_bytes", (facts or {}).get("memory_bytes"))
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def capacity_text(memory_limit: int | None, facts: dict[str, Any] | None) -> str:
    """What bounded a run's device memory, as a user reads it: the limit they gave,
    or the device's own memory and that they gave none."""
    if memory_limit:
        return f"memory limit {format_bytes(memory_limit)}"
    total = device_memory_bytes(facts)
    if total is None:
        return "no --memory-limit"
    return f"device memory {format_bytes(total)} (no --memory-limit)"


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
    total = device_memory_bytes(get)
    if total is not None:
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
