"""A suite member's real training step, timed and profiled, with and without compiled frozen blocks.

The `Trainer` of one suite member (default: embedded-carry's s2g-lm-nce-lr1e-3-2k, SmolLM2-135M ->
Gemma-3-270M, batch 32, K=32) is built with a small data set (`SETUP`: setup in seconds; a step's
shapes are the run's), its step set past the warm-ups so every loss term runs, and
`Trainer.train_step` is called directly: no evaluation. The warm-up runs until `warmup` steps in a
row compiled no new graph (just `warmup` steps when eager); then `steps` steps are timed, the device
synchronised around each, and one more runs under torch.profiler: the aten ops it calls (nested ones
included), the device kernels it launches, the host's time in operators and CUDA runtime calls
(waits for the device left out) and the device's time in kernels. A step whose kernel time is far
below its wall time is bound by the host launching them. Dynamo's counters tell whether the timed
and profiled steps recompiled (`graphs_compiled_after_warmup`, 0 when warm) and how often the
compiled blocks broke their graphs (`graph_breaks`, each a return to Python).
Once per train.compile_frozen value, eager first: the second Trainer reuses the loaded models and
compiles their blocks in place (`FrozenLM.compile_blocks`). Profiler figures carry its overhead.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import traceback

import torch
from torch.autograd import DeviceType

from latentbridge.config import RunConfig
# latentbridge.generation, .models and .train are imported where used: `python -m latentbridge.bench`
# reads this module's defaults for every part, and they pull in transformers (seconds)

SUITE, MEMBER = "embedded-carry", "s2g-lm-nce-lr1e-3-2k"
SETUP = {"data.synthetic_train_size": 512, "data.val_size": 16, "data.synthetic_test_size": 16, "eval.num_questions": 8}
"""Small data, so the Trainer is built in seconds: a batch is drawn from these questions as from the run's."""
QUICK = {"dtype": "float32", "train.batch_size": 2, "train.max_answer_tokens": 8, "translator.num_tokens": 4,
         "translator.width": 64, "translator.depth": 1, "translator.heads": 4}
"""--quick: the member's models at CPU sizes."""
VARIANTS = {"eager": False, "compiled": True}  # name -> train.compile_frozen
WARMUP_LIMIT = 5  # a warm-up stops after this many times `warmup` steps even if it still compiles


def member_config(suite: str, member: str, overrides: dict[str, object] | None = None) -> RunConfig:
    """The member's resolved config with `SETUP` and then `overrides` applied."""
    from launch.suites import get_suite

    found = get_suite(suite)
    if member not in found.runs:
        raise ValueError(f"--train-member {member!r} is not a member of suite {suite!r}; its members: {', '.join(found.runs)}")
    return found.configs({**SETUP, **(overrides or {})})[member]


def check_options(variants, steps: int) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"train-embedded variants {unknown or list(variants)} not in {', '.join(VARIANTS)}")
    if steps < 1:
        raise ValueError(f"train-embedded times at least 1 step (got {steps})")


def profile_step(step, device: torch.device) -> dict:
    """One call of `step` under torch.profiler (CPU, plus CUDA on a GPU): its wall time, aten ops,
    host time (self CPU time of every operator and runtime call, less the waits in *Synchronize calls)
    and, on a GPU, its device kernels, memory copies and sets, and their summed durations."""
    from latentbridge.generation import synchronize

    on_cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
    synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        began = time.perf_counter()
        step()
        synchronize(device)
        wall = time.perf_counter() - began
    events = prof.events()
    host = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    waits = sum(e.self_cpu_time_total for e in host if "Synchronize" in e.name) / 1e6
    out = {"wall_s": wall, "aten_ops": sum(e.name.startswith("aten::") for e in host),
           "host_s": sum(e.self_cpu_time_total for e in host) / 1e6 - waits, "host_sync_wait_s": waits,
           "device_kernels": None, "device_kernel_s": None, "device_copies": None, "device_copy_s": None}
    if on_cuda:
        kinds = [(e, getattr(e, "activity_type", None) or "") for e in events if e.device_type == DeviceType.CUDA
                 and not getattr(e, "is_user_annotation", False)]  # annotations (optimizer step, ...) span kernels
        kernels = [e for e, kind in kinds if not kind.startswith("gpu_")]  # libkineto's "kernel"
        copies = [e for e, kind in kinds if kind in ("gpu_memcpy", "gpu_memset")]
        out.update(device_kernels=len(kernels), device_kernel_s=sum(e.time_range.elapsed_us() for e in kernels) / 1e6,
                   device_copies=len(copies), device_copy_s=sum(e.time_range.elapsed_us() for e in copies) / 1e6)
    return out


def full_step(config: RunConfig) -> int:
    """The first step at which every loss term of `config` runs (KL and InfoNCE after their warm-ups, the
    LM term after the content-first curriculum): the step the timed steps pretend to be."""
    return max(config.optim.warmup_steps, config.loss.content_first_steps)


def _dynamo_counts() -> tuple[int, int]:
    """Graphs dynamo compiled and graph breaks it met so far, in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _variant(config: RunConfig, models, device: torch.device, steps: int, warmup: int) -> dict:
    from latentbridge.generation import synchronize
    from latentbridge.train import Trainer

    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:  # the Trainer writes nothing: no evaluation, no checkpoint
        trainer = Trainer(config, run_dir, models=models)
    trainer.step = full_step(config)
    setup = time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counts = [_dynamo_counts()]
    synchronize(device)
    began = time.perf_counter()
    warmed = quiet = 0
    while quiet < warmup and warmed < WARMUP_LIMIT * warmup:  # until `warmup` steps in a row compiled nothing
        graphs = _dynamo_counts()[0]
        trainer.train_step()
        warmed, quiet = warmed + 1, quiet + 1 if _dynamo_counts()[0] == graphs else 0
    synchronize(device)
    warmup_s = time.perf_counter() - began
    counts.append(_dynamo_counts())
    times = []
    for _ in range(steps):
        synchronize(device)
        began = time.perf_counter()
        terms = trainer.train_step()
        synchronize(device)
        times.append(time.perf_counter() - began)
    profile = profile_step(trainer.train_step, device)
    counts.append(_dynamo_counts())
    return {"compile_frozen": config.train.compile_frozen, "setup_s": setup, "warmup_steps": warmed, "warmup_s": warmup_s,
            "graphs_compiled_warmup": counts[1][0] - counts[0][0], "graphs_compiled_after_warmup": counts[2][0] - counts[1][0],
            "graph_breaks": counts[2][1] - counts[0][1], "steps": steps, "step_s_mean": statistics.mean(times),
            "step_s_median": statistics.median(times), "steps_per_s": steps / sum(times), "step_s_all": times,
            "loss_terms": sorted(terms), "profile": profile,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def _summary(name: str, row: dict) -> str:
    p = row["profile"]
    kernels = f"{p['device_kernels']} kernels in {p['device_kernel_s']:.3f}s" if p["device_kernels"] is not None else "no device"
    return (f"{name}: {row['step_s_median']:.3f}s/step median, {row['step_s_mean']:.3f}s mean ({row['steps_per_s']:.2f} steps/s;"
            f" warm-up {row['warmup_s']:.0f}s, {row['graphs_compiled_warmup']} graphs compiled, {row['graph_breaks']} breaks);"
            f" one profiled step: {p['wall_s']:.3f}s, {p['aten_ops']} aten ops, host {p['host_s']:.3f}s, {kernels}")


def run(config: RunConfig, device: torch.device, *, steps: int = 20, warmup: int = 5,
        variants: tuple[str, ...] = tuple(VARIANTS), log=print) -> dict:
    """Each of `variants` (names in `VARIANTS`) on `config`'s models, loaded once on `device`. A variant
    that fails records its error in its place, and the other's figures are kept."""
    from latentbridge.generation import release
    from latentbridge.models import DTYPES, load_frozen_lms

    check_options(variants, steps)
    models = tuple(load_frozen_lms([config.source_model, config.target_model], dtype=DTYPES[config.dtype], device=device))
    results = {"suite": config.suite, "member": config.name, "source": config.source_model, "target": config.target_model,
               "dtype": config.dtype, "batch": config.train.batch_size, "k": config.translator.num_tokens,
               "translator": f"{config.translator.kind} width {config.translator.width} depth {config.translator.depth}",
               "at_step": full_step(config), "variants": {}}
    for name in sorted(variants, key=VARIANTS.get):  # eager first: compiling is done in place
        try:
            row = _variant(config.override(f"train.compile_frozen={VARIANTS[name]}"), models, device, steps, warmup)
            log(f"[train-embedded] {config.name} {_summary(name, row)}")
        except Exception as error:  # noqa: BLE001 - keep the other variant's figures
            row = {"compile_frozen": VARIANTS[name], "error": f"{type(error).__name__}: {error}"}
            log(f"[train-embedded] {config.name} {name} failed:\n{traceback.format_exc()}")
        results["variants"][name] = row
        gc.collect()  # the variant's Trainer, then the allocator's cache on a GPU
        release()
    return results
