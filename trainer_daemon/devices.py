"""Which devices a machine offers, decided without importing torch (ops calls this)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

_DEVICE = re.compile(r"^(cpu|cuda:\d+)$")


class DeviceError(ValueError):
    pass


def parse_device(text: str) -> str:
    text = text.strip().lower()
    if text == "cuda":
        text = "cuda:0"
    if not _DEVICE.match(text):
        raise DeviceError(f"device '{text}' is not 'cpu' or 'cuda:N'")
    return text


def visible_gpus() -> list[str]:
    """cuda:N for every GPU nvidia-smi lists (respecting CUDA_VISIBLE_DEVICES), else []."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return [f"cuda:{i}" for i in range(count)]


def check_device(device: str) -> str:
    """`device` parsed, and present on this machine: cuda:N needs an Nth visible GPU
    (DeviceError otherwise, before any worker tries to open it)."""
    device = parse_device(device)
    if device == "cpu":
        return device
    if shutil.which("nvidia-smi") is None and glob.glob("/dev/nvidia[0-9]*"):
        return device  # GPUs but no nvidia-smi to count them: let the worker try
    gpus = visible_gpus()
    if device not in gpus:
        seen = f"GPUs visible here: {', '.join(gpus)}" if gpus else "no GPU is visible on this machine (nvidia-smi lists none)"
        raise DeviceError(f"device {device} is not available: {seen}; use --device cpu")
    return device


def default_devices() -> list[str]:
    return visible_gpus() or ["cpu"]


def default_concurrency(device: str) -> int:
    """GPU: 8 small candidates share one device well (BENCHMARKS.md anchor); CPU: one per 2 cores."""
    if device.startswith("cuda"):
        return 8
    return max(1, (os.cpu_count() or 2) // 2)
