"""Saving and loading translators (weights + config) and full training state.

A translator checkpoint is a folder: `translator.safetensors` and `translator.json`
(the run config and the widths it was built for). A training checkpoint is a folder too:
`state.pt`, the state every rank shares (weights, optimizer, scheduler, step, bookkeeping),
written by rank 0, and `rank_state/step{N}_rank{R}.pt`, what each rank draws on its own (its
data order and RNG states), written by every rank. Every file is written atomically, so a
crash never leaves half a file. The rank files of step N are all written before `state.pt`
of step N: `state.pt` commits a save, and a resume reads the rank files of its step, never
those of another (older steps' rank files are removed once a newer `state.pt` is in place).

`state.pt` and the rank files are read with `torch.load(weights_only=True)`: only tensors and
plain Python values (dicts, lists, tuples, numbers, strings, None) are accepted, so a crafted
file cannot run code on resume. A file that holds anything else, or that is corrupt or
truncated, is refused with a `CheckpointError` naming the file and the way out; so is a
checkpoint saved by another number of ranks than the one resuming it.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latentbridge.config import RunConfig
from latentbridge.translators import build_translator

WEIGHTS, META = "translator.safetensors", "translator.json"
STATE = "state.pt"  # the state all ranks share, in a training checkpoint folder
TMP_MARK = ".tmp"  # in the name of a file still being written
RANK_STATE = "rank_state"  # the checkpoint's folder of per-rank files
RANK_FILE = "step{step:08d}_rank{rank}.pt"
_RANK_FILE = re.compile(r"step(\d+)_rank(\d+)\.pt")


@dataclass(frozen=True)
class TranslatorMeta:
    config: RunConfig
    source_dim: int
    target_dim: int
    target_rms: float


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a temp file beside `path`, then rename it over `path`: a crash mid-write leaves
    the old file (or none), never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f"{TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_translator(folder: Path, translator: nn.Module, meta: TranslatorMeta) -> Path:
    """Weights, then the config, each written atomically: a crash mid-save leaves the folder's
    earlier save whole, never half a file."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in translator.state_dict().items()}
    _write_atomically(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    record = {
        "config": meta.config.to_dict(),
        "source_dim": meta.source_dim,
        "target_dim": meta.target_dim,
        "target_rms": meta.target_rms,
    }
    _write_atomically(folder / META, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return folder


def load_translator(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TranslatorMeta]:
    """The translator saved in `folder`; a missing, corrupt or truncated file is a CheckpointError
    naming it."""
    folder = Path(folder)
    for name in (WEIGHTS, META):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"not a translator checkpoint: {folder / name} is missing")
    try:
        record = json.loads((folder / META).read_text())
        meta = TranslatorMeta(
            config=RunConfig.from_dict(record["config"]),
            source_dim=int(record["source_dim"]),
            target_dim=int(record["target_dim"]),
            target_rms=float(record["target_rms"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"translator config {folder / META} is corrupt or not of this trainer ({type(error).__name__}: "
            f"{_first_line(str(error))}); save the translator again or restore the folder from its run's artifacts"
        ) from None
    translator = build_translator(
        meta.config.translator,
        source_dim=meta.source_dim,
        target_dim=meta.target_dim,
        target_rms=meta.target_rms,
    )
    try:
        weights = load_file(str(folder / WEIGHTS))
    except Exception as error:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointError(
            f"translator weights {folder / WEIGHTS} are corrupt or truncated ({_first_line(str(error))}); "
            f"restore the folder from its run's artifacts"
        ) from None
    translator.load_state_dict(weights)
    return translator.to(device), meta


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def python_random_state(value: Any) -> tuple:
    """`random.getstate()` as saved (a tuple; lists if a serializer turned tuples into lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(python_random_state(v) if isinstance(v, (list, tuple)) else v for v in value)
    raise CheckpointError(f"the saved Python random state is a {type(value).__name__}, not a tuple")


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(python_random_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file then rename: the old checkpoint survives a crash mid-write."""
    _write_atomically(path, lambda tmp: torch.save(state, tmp))


def rank_state_path(checkpoint_dir: Path, step: int, rank: int) -> Path:
    """Where `rank` keeps its own state for the checkpoint of `step`."""
    return Path(checkpoint_dir) / RANK_STATE / RANK_FILE.format(step=step, rank=rank)


def remove_rank_states_before(checkpoint_dir: Path, step: int) -> None:
    """Delete the rank files of checkpoints older than `step` (superseded by its state.pt)."""
    folder = Path(checkpoint_dir) / RANK_STATE
    for path in folder.iterdir() if folder.is_dir() else ():
        found = _RANK_FILE.fullmatch(path.name)
        if found and int(found.group(1)) < step:
            path.unlink(missing_ok=True)


class CheckpointError(RuntimeError):
    """A training checkpoint cannot be used (unsafe or corrupt); the message names the file."""


def _run_dir(path: Path) -> Path:
    """The run dir of a file in its `checkpoint` folder (or the file's own folder)."""
    return next((p.parent for p in path.parents if p.name == "checkpoint"), path.parent)


def _way_out(path: Path) -> str:
    return (
        f"either start over into a new run dir (not {_run_dir(path)}), or put a good copy of {path.name} back "
        f"at {path} and resume"
    )


def load_training_state(path: Path) -> dict[str, Any] | None:
    """The training state saved at `path`, or None if there is none.

    Loaded with `weights_only=True`; an unsafe, corrupt or truncated file raises CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        if path.parent.is_dir():
            # the folder is made by the first save and holds only checkpoint files: empty, or
            # holding files other than temp files of a first save cut off mid-write, means that
            # this file was deleted after it was saved
            files = [p for p in path.parent.rglob("*") if p.is_file()]
            kept = sorted(p for p in files if TMP_MARK not in p.name)
            if kept or not files:
                held = f" (the folder still holds {kept[0]})" if kept else ""
                raise CheckpointError(
                    f"training checkpoint {path} is missing from its folder: it was deleted after it was saved{held},"
                    f" so this run cannot continue where it stopped; {_way_out(path)}"
                )
        return None
    state = _load(path)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this trainer (no step recorded); {_way_out(path)}")
    return state


def check_world_size(path: Path, state: dict[str, Any], world_size: int) -> None:
    """Refuse the state.pt at `path` if another number of ranks saved it: each rank's data
    order and RNG state cannot be handed to another number of ranks."""
    saved, step = state.get("world_size"), state["step"]
    new_run = f"start over into a new run dir (not {_run_dir(path)})"
    if saved is None:
        raise CheckpointError(
            f"{path} was saved by an older trainer that kept one data order and RNG state for all ranks, so it"
            f" cannot be resumed exactly; {new_run}"
        )
    if saved != world_size:
        files = path.parent / RANK_STATE / RANK_FILE.format(step=step, rank="*")
        raise CheckpointError(
            f"{path} and its per-rank files {files} were saved by {saved} ranks, but this job has {world_size}:"
            f" each rank's data order and RNG state cannot be handed to another number of ranks. Either resume"
            f" with {saved} tasks (one per GPU: `--gpus-per-node {saved}` with `python launch`), or {new_run}"
        )


def load_rank_state(checkpoint_dir: Path, step: int, rank: int, world_size: int) -> dict[str, Any]:
    """The state `rank` saved with the checkpoint of `step` (of `world_size` ranks).

    Read like `state.pt`; a missing file, or one recording another step, rank or world size,
    raises CheckpointError naming it.
    """
    path = rank_state_path(checkpoint_dir, step, rank)
    shared = Path(checkpoint_dir) / STATE
    if not path.is_file():
        raise CheckpointError(
            f"per-rank state {path} is missing: {shared} is at step {step}, and each of its {world_size} ranks"
            f" saved its data order and RNG state beside it, so rank {rank} cannot continue exactly where it"
            f" stopped; {_way_out(path)}"
        )
    state = _load(path)
    expected = {"step": step, "rank": rank, "world_size": world_size}
    recorded = {k: state.get(k) for k in expected} if isinstance(state, dict) else None
    if recorded != expected:
        raise CheckpointError(
            f"per-rank state {path} records {recorded}, not {expected} as {shared} needs (it was copied or"
            f" renamed); {_way_out(path)}"
        )
    return state


def _load(path: Path) -> Any:
    """torch.load(weights_only=True), with an unsafe, corrupt or truncated file a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        found = re.search(r"unsupported GLOBAL (\S+)", text, re.IGNORECASE)
        if found or "Unsupported global" in text:
            what = found.group(1) if found else "a Python object"
            raise CheckpointError(
                f"refusing to load training checkpoint {path}: it holds {what}, not only tensors and plain "
                f"values, and unpickling it could run code. It was not written by this trainer (or was "
                f"tampered with); {_way_out(path)}"
            ) from None
        raise CheckpointError(f"training checkpoint {path} is corrupt ({_first_line(text)}); {_way_out(path)}") from None
    except (EOFError, RuntimeError, ValueError, OSError) as error:
        reason = _first_line(str(error)) or ("the file is empty" if isinstance(error, EOFError) else type(error).__name__)
        raise CheckpointError(f"training checkpoint {path} is corrupt or truncated ({reason}); {_way_out(path)}") from None


def _first_line(text: str) -> str:
    """The informative part of torch's long error messages."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return found.group(1).strip()[:160]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.split(". ")[0][:160]
