"""The two ceilings of the machine, measured rather than read off a datasheet.

Memory bandwidth from a large device-to-device copy (bytes read plus bytes written), and
bf16 matrix throughput from a large square product, each the median of timed repeats
after a warm-up, on random data.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

H100_SXM_BF16_DENSE_TFLOPS = 989.0
"""The datasheet figure, for reference next to the measured one."""


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` (after two warm-up calls)."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30, repeats: int = 10) -> float:
    """Bytes per second of a device-to-device copy, counting read plus write."""
    numel = nbytes // 2
    src = torch.randn(numel, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    seconds = _timed(lambda: dst.copy_(src), device, repeats)
    del src, dst
    return 2 * numel * 2 / seconds


def matmul_flops(device: torch.device, size: int = 8192, repeats: int = 10, dtype=torch.bfloat16) -> float:
    """FLOP/s of one size^3 product on random data."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, repeats)
    del a, b
    return 2 * size**3 / seconds


def describe(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_bytes=props.total_memory, multiprocessors=props.multi_processor_count)
    return info


def profile_table(work: Callable[[], object], device: torch.device, path: Path, rows: int = 40) -> None:
    """Run `work` under torch.profiler and write its operators' table to `path`, by device time
    on a GPU (by CPU time otherwise): where the time of a bench part goes."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=rows))
