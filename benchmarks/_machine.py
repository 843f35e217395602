"""What the benchmark scripts print about the machine they ran on."""

from __future__ import annotations

import os
import platform
from typing import Any


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_record(load_start: tuple[float, ...] | list[float], threads: int, **extra: Any) -> dict:
    """What a benchmark's JSON says about where it ran: CPU, versions, threads, and the load
    average when it started (``load_start``, from ``os.getloadavg()``) and now."""
    import numpy as np
    import torch

    return {
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": threads,
        **extra,
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }
