"""What every benchmark reports besides its numbers: the machine it ran on, its load, and
the spread of a quantity over repetitions (issue 14: benchmarks that stay honest)."""
from __future__ import annotations

import json
import os
import platform
import statistics

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> list:
    """The 1, 5 and 15 minute load averages (``uptime``), or [] where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine(device: torch.device) -> dict:
    """The machine of a run: CPU model, cores, torch's threads and version, the GPU if used,
    and the load average when it started."""
    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "load_at_start": load()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def spread(values) -> dict:
    """Median, minimum, maximum and count of repeated measurements."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def describe(name: str, s: dict, unit: str = "", fmt: str = "{:.3g}") -> str:
    """``name median [min, max] unit (n repetitions)``."""
    f = fmt.format
    unit = f" {unit}" if unit else ""
    return f"{name} {f(s['median'])} [{f(s['min'])}, {f(s['max'])}]{unit} ({s['n']} repetitions)"


def write_json(path, result: dict) -> None:
    """Write a benchmark's result to ``path`` as indented JSON, atomically (a run cut
    short never leaves a half-written file; the previous one stays until replaced)."""
    from resultstore.files import atomic_write, text_writer

    atomic_write(path, text_writer(json.dumps(result, indent=2) + "\n"))
