"""Saving and loading translators (weights + config) and full training state.

A translator checkpoint is a folder: `translator.safetensors` and `translator.json`
(the run config and the widths it was built for). A training checkpoint adds optimizer,
scheduler, RNG states and the step, written atomically so a crash never leaves half a file.

`state.pt` is read with `torch.load(weights_only=True)`: only tensors and plain Python values
(dicts, lists, tuples, numbers, strings, None) are accepted, so a crafted file cannot run code
on resume. A file that holds anything else, or that is corrupt or truncated, is refused with a
`CheckpointError` naming the file and the way out.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latentbridge.config import RunConfig
from latentbridge.translators import build_translator

WEIGHTS, META = "translator.safetensors", "translator.json"


@dataclass(frozen=True)
class TranslatorMeta:
    config: RunConfig
    source_dim: int
    target_dim: int
    target_rms: float


def save_translator(folder: Path, translator: nn.Module, meta: TranslatorMeta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in translator.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    record = {
        "config": meta.config.to_dict(),
        "source_dim": meta.source_dim,
        "target_dim": meta.target_dim,
        "target_rms": meta.target_rms,
    }
    (folder / META).write_text(json.dumps(record, indent=2))
    return folder


def load_translator(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TranslatorMeta]:
    folder = Path(folder)
    for name in (WEIGHTS, META):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"not a translator checkpoint: {folder / name} is missing")
    record = json.loads((folder / META).read_text())
    meta = TranslatorMeta(
        config=RunConfig.from_dict(record["config"]),
        source_dim=record["source_dim"],
        target_dim=record["target_dim"],
        target_rms=record["target_rms"],
    )
    translator = build_translator(
        meta.config.translator,
        source_dim=meta.source_dim,
        target_dim=meta.target_dim,
        target_rms=meta.target_rms,
    )
    translator.load_state_dict(load_file(str(folder / WEIGHTS)))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)


class CheckpointError(RuntimeError):
    """A training checkpoint cannot be used (unsafe or corrupt); the message names the file."""


def _way_out(path: Path) -> str:
    run_dir = path.parent.parent if path.parent.name == "checkpoint" else path.parent
    return (
        f"either start over into a new run dir (not {run_dir}), or put a good copy of {path.name} back "
        f"at {path} and resume"
    )


def load_training_state(path: Path) -> dict[str, Any] | None:
    """The training state saved at `path`, or None if there is none.

    Loaded with `weights_only=True`; an unsafe, corrupt or truncated file raises CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        if path.parent.is_dir() and not any(path.parent.iterdir()):
            # the folder is made by the first save and only ever holds this file (or a temp file
            # of a save cut off mid-write): empty means the checkpoint was deleted
            raise CheckpointError(
                f"training checkpoint {path} is missing from its folder: it was deleted after it was saved,"
                f" so this run cannot continue where it stopped; {_way_out(path)}"
            )
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this trainer (no step recorded); {_way_out(path)}")
    return state


def _first_line(text: str) -> str:
    """The informative part of torch's long error messages."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return found.group(1).strip()[:160]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.split(". ")[0][:160]
