"""What the machine is: CPU model, CPU count, GPU compute capability (for reports and for
deciding whether a TensorRT plan fits this GPU)."""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

from .lazy import import_module

#: The compute capability when no GPU (or no way to ask) is found.
UNKNOWN = "unknown"
NVIDIA_SMI_TIMEOUT_S = 10


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or None where there is none to read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_compute_caps(text: str) -> list[str]:
    """``nvidia-smi --query-gpu=compute_cap --format=csv,noheader`` output -> ["9.0", ...]."""
    caps = []
    for line in text.splitlines():
        value = line.strip()
        if not value:
            continue
        major, dot, minor = value.partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            return []  # "[N/A]", an error text: nothing trustworthy
        caps.append(f"{int(major)}.{int(minor)}")
    return caps


def _nvidia_smi_compute_capability() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    caps = parse_compute_caps(proc.stdout) if proc.returncode == 0 else []
    return caps[0] if caps else None  # the first GPU: the one a build targets by default


def _torch_compute_capability() -> str | None:
    try:
        torch = import_module("torch")
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except Exception:  # noqa: BLE001 - torch missing or CUDA broken: just unknown
        pass
    return None


def gpu_compute_capability() -> tuple[str, str]:
    """``(capability, source)`` of this machine's first GPU, e.g. ``("9.0", "nvidia-smi")``.

    Asks ``nvidia-smi`` first (no torch needed: the NGC TensorRT container has none), then
    torch; ``("unknown", "unknown")`` where neither answers.
    """
    cap = _nvidia_smi_compute_capability()
    if cap is not None:
        return cap, "nvidia-smi"
    cap = _torch_compute_capability()
    if cap is not None:
        return cap, "torch.cuda"
    return UNKNOWN, UNKNOWN


def machine_info() -> dict:
    """The machine a report was measured on."""
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": cpu_model() or platform.processor() or "unknown",
        "cpus": cpu_count(),
        "python": platform.python_version(),
    }
    try:
        info["onnxruntime"] = import_module("onnxruntime").__version__
    except ImportError:
        pass
    try:
        torch = import_module("torch")
        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info
