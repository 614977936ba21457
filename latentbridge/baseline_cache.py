"""Text-baseline outputs cached per (model, prompts, generation settings), across evaluations and runs.

Source-alone and target-alone answers depend only on the model's weights and tokenizer, the
exact prompts, `max_new_tokens`, the dtype and device kind, and the decoding code (with whether
the few-shot prefix is shared, `latentbridge.prefix_cache`: the same tokens up to rounding), so a run
that evaluates the same questions with the same models reuses them instead of generating
~250 tokens for every question again. The key is a sha256 of all of those; the weights enter
as a fingerprint of sampled values of every parameter (any retrained or re-quantized weights
change it). Entries live in `models.cache_root()/baselines/<key>.json`, written atomically.
`LATENTBRIDGE_BASELINE_CACHE=0` turns the cache off.

Runs started together (a suite sharing a GPU or a node) all miss an empty cache at once; `claimed`
lets one compute an entry while the others wait for it (an exclusive `flock` on `<key>.lock`
beside the entry) and then read it, at most `LATENTBRIDGE_BASELINE_WAIT_S` seconds (default 300:
well inside a process group's collective timeout), after which a waiter computes its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from pathlib import Path
from typing import Iterator, Sequence

import torch

from latentbridge import prefix_cache
from latentbridge.config import env_flag
from latentbridge.generation import (
    DECODE_ATTENTION_ENV,
    GENERATION_VERSION,
    compile_decode_mode,
    decode_blas,
    shared_prefix_decode_enabled,
)
from latentbridge.models import FrozenLM, cache_root

log = logging.getLogger(__name__)

ENV = "LATENTBRIDGE_BASELINE_CACHE"
WAIT_ENV = "LATENTBRIDGE_BASELINE_WAIT_S"
DEFAULT_WAIT_S = 300.0
_FINGERPRINTS: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def enabled() -> bool:
    return env_flag(ENV, default=True)


def directory() -> Path:
    return cache_root() / "baselines"


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module, samples: int = 1024) -> str:
    """sha256 over every parameter's name, shape, dtype and `samples` evenly strided values."""
    cached = _FINGERPRINTS.get(model)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        values = flat[::step][:samples].float().cpu().numpy().tobytes()
        digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}|".encode())
        digest.update(values)
    result = digest.hexdigest()
    _FINGERPRINTS[model] = result
    return result


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's whole definition and its special tokens, once a tokenizer (half
    a second for Gemma-3's; `claimed`, `load` and `store` each need the key)."""
    cached = _FINGERPRINTS.get(tokenizer)
    if cached is not None:
        return cached
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extras = f"{type(tokenizer).__name__}|{tokenizer.bos_token}|{tokenizer.eos_token}|{tokenizer.pad_token}"
    result = hashlib.sha256((text + extras).encode()).hexdigest()
    _FINGERPRINTS[tokenizer] = result
    return result


def prompts_digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()


def key_material(lm: FrozenLM, prompts: Sequence[str], max_new_tokens: int) -> dict[str, str | int]:
    """What the outputs depend on. A shared prefix adds `shared_prefix` (its rounding differs in
    low precision), and `prefix_read_once` when decode reads it once for the batch (the same);
    `decode_attention` when decode attention is two batched products instead of SDPA (the same);
    a compiled decode step adds `compiled_decode`, its torch.compile mode (inductor's kernels round
    their own way, each mode's its own), and a CUDA decode's chosen BLAS library `decode_blas` (the
    same); outputs without them keep the keys they had before these existed."""
    shared = {"shared_prefix": True} if prefix_cache.enabled() else {}
    if shared and shared_prefix_decode_enabled():
        shared["prefix_read_once"] = True
    if os.environ.get(DECODE_ATTENTION_ENV) == "matmul":  # as generation reads it: two products, not SDPA
        shared["decode_attention"] = "matmul"
    mode = compile_decode_mode()
    if mode is not None:
        shared["compiled_decode"] = mode
    blas = decode_blas()
    if blas is not None and lm.device.type == "cuda":
        shared["decode_blas"] = blas
    return {
        **shared,
        "model": lm.name,
        "weights": weights_fingerprint(lm.model),
        "tokenizer": tokenizer_fingerprint(lm.tokenizer),
        "dtype": str(lm.dtype),
        "device": lm.device.type,
        "prompts": prompts_digest(prompts),
        "num_prompts": len(prompts),
        "max_new_tokens": int(max_new_tokens),
        "generation": GENERATION_VERSION,
    }


def cache_key(lm: FrozenLM, prompts: Sequence[str], max_new_tokens: int) -> str:
    material = key_material(lm, prompts, max_new_tokens)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def path_for(key: str) -> Path:
    return directory() / f"{key}.json"


def load(lm: FrozenLM, prompts: Sequence[str], max_new_tokens: int) -> list[str] | None:
    """The cached outputs for exactly these prompts, or None."""
    if not enabled():
        return None
    path = path_for(cache_key(lm, prompts, max_new_tokens))
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    outputs = entry.get("outputs")
    if not isinstance(outputs, list) or len(outputs) != len(prompts):
        return None
    log.info("baseline cache hit for %s (%d prompts): %s", lm.name, len(prompts), path.name)
    return outputs


def store(lm: FrozenLM, prompts: Sequence[str], max_new_tokens: int, outputs: Sequence[str]) -> Path | None:
    """Write the entry atomically (temporary file, then rename); returns its path."""
    if not enabled():
        return None
    if len(outputs) != len(prompts):
        raise ValueError(f"{len(outputs)} outputs for {len(prompts)} prompts")
    material = key_material(lm, prompts, max_new_tokens)
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    path = path_for(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"key": key, "material": material, "created": time.time(), "outputs": list(outputs)}
    handle, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(entry, stream)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def wait_seconds() -> float:
    """How long `claimed` waits for another process's entry (LATENTBRIDGE_BASELINE_WAIT_S)."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return DEFAULT_WAIT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ValueError(f"{WAIT_ENV}={raw!r} is not a number of seconds >= 0; set e.g. {WAIT_ENV}=300 (or unset it)")
    return seconds


@contextlib.contextmanager
def claimed(lm: FrozenLM, prompts: Sequence[str], max_new_tokens: int, poll_s: float = 1.0) -> Iterator[None]:
    """Hold this entry's lock while the caller looks it up and, on a miss, generates and stores it,
    so that processes needing the same baselines generate them once. Waits `wait_seconds()` at
    most for another holder, then goes on without the lock (each generates its own, as before)."""
    if not enabled():
        yield
        return
    key = cache_key(lm, prompts, max_new_tokens)
    lock = path_for(key).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:  # private, as the entries are
        wait = wait_seconds()
        deadline, held, told = time.monotonic() + wait, False, False
        while not held:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    log.warning("baselines %s of %s: another process still holds them after %.0f s (%s); generating them here",
                                key[:12], lm.name, wait, WAIT_ENV)
                    break
                if not told:
                    log.info("baselines %s of %s: another process is generating them; waiting (at most %.0f s)", key[:12], lm.name, wait)
                    told = True
                time.sleep(poll_s)
        try:
            yield
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)
