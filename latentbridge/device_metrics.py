"""What each rank's own GPU is doing: memory, utilization and power, as run metrics.

MLflow's system metrics read every GPU of the machine (MLflow issue #13398); a job on a shared
node wants its own devices only. Each rank reads the device it trains on, rank 0 logs them all,
at every evaluation, under `system/rank<R>/<name>`.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

GB = 2**30


def read_own_device(device: torch.device) -> dict[str, float]:
    """This rank's GPU: memory allocated, reserved and peak (GB), and where the driver library
    (pynvml) is there, utilization (%) and power (W). Empty on a CPU."""
    if device.type != "cuda":
        return {}
    reading = {
        "memory_allocated_gb": torch.cuda.memory_allocated(device) / GB,
        "memory_reserved_gb": torch.cuda.memory_reserved(device) / GB,
        "memory_peak_gb": torch.cuda.max_memory_allocated(device) / GB,
    }
    for name, read, scale in (("utilization_percent", torch.cuda.utilization, 1.0), ("power_watts", torch.cuda.power_draw, 1e-3)):
        try:
            reading[name] = float(read(device)) * scale
        except (ModuleNotFoundError, RuntimeError, ValueError) as error:  # no pynvml / NVML: memory only
            log.debug("no %s for %s: %s", name, device, error)
    return reading


def per_rank_metrics(readings: list[dict[str, float]]) -> dict[str, float]:
    """Every rank's reading (in rank order) as metric names `system/rank<R>/<name>`."""
    return {f"system/rank{rank}/{name}": value for rank, reading in enumerate(readings) for name, value in reading.items()}
