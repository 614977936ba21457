"""Saving and loading translators (weights + config) and full training state.

A translator checkpoint is a folder: `translator.safetensors` and `translator.json`
(the run config and the widths it was built for). A training checkpoint adds optimizer,
scheduler, RNG states and the step, written atomically so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import random
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


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file then rename: the old checkpoint survives a crash mid-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)


def load_training_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
