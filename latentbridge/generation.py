"""Greedy generation from input embeddings, stopping each sequence at its answer line.

Every system (source-alone, target-alone, bridged) goes through `generate`, so the
baselines and the bridge are decoded the same way: pure greedy, no repetition penalty.

The decoder is a hand-written greedy loop over the model's own forward with a static KV
cache, and it gives the same tokens as `model.generate(do_sample=False)` (tests check this
token for token):

- prefill: one forward over the left-padded prompt embeddings (soft prefixes included) with
  position ids counted from each row's first real token, as `generate` does; with a shared
  prefix (`latentbridge.prefix_cache`) its keys and values are copied into the first slots of
  every row and the forward runs over the left-padded suffixes only, so a row holds
  `[prefix][padding][suffix]` and its positions continue from the prefix past the padding;
- decode: one token a step into a preallocated cache of `max_len` slots, each step reading only
  its first slots, the written ones rounded up to `DECODE_WIDTH_BUCKET` (a few widths a batch);
  on CUDA the step is captured once a width as a CUDA graph (all in one memory pool) and
  replayed, so a step costs no Python or launch overhead;
  the causal, padding and sliding-window masks are computed inside the step from a position
  tensor, so the graph stays valid from step to step; the sliding window is measured in
  positions (each slot's position is kept), which is the slot distance under left padding
  and stays right when padding sits between a shared prefix and the suffix;
- attention: grouped-query attention reads each KV head once (the query heads that share it
  become rows of one query), never a repeated copy of the cache;
- a shared prefix in decode ("cascade" attention): the rows' copies of slots `[0, P)` are
  identical, so a decode step reads the prefix's own (1, kv_heads, P, head_dim) keys and values
  once for the whole batch (one batched product with every row's query heads) and each row's
  cache only from slot P on; the scores of both parts go through the row's mask (a sliding
  window can leave early prefix slots out) and one float32 softmax computed in two parts (the
  joint max and sum, as flash attention combines blocks), so the result is the per-row one up to
  rounding, and no tensor of batch x slots is copied (no concatenation, no reshape of a strided
  view). The prefill still reads the rows' copies.
  `LATENTBRIDGE_SHARED_PREFIX_DECODE=0` makes every row read its own copy again (A/B timing);
- compiled decode (opt-in, `LATENTBRIDGE_COMPILE_DECODE=1`): the decode step runs through
  `torch.compile` at its fixed shapes, so inductor fuses the small elementwise kernels between
  the matrix products (norms, rotary embeddings, gated activations, residual adds, the masked
  softmax); on CUDA the compiled step is what the CUDA graph captures. The prefill stays eager.
  `LATENTBRIDGE_COMPILE_DECODE=max-autotune` compiles in inductor's "max-autotune-no-cudagraphs"
  mode (kernels autotuned on the first step; no CUDA graphs of inductor's own);
  `=frozen` compiles with inductor's freezing: the weights become constants of the step, and
  `latentbridge.concat_projections` joins the products that read one input into one over their
  concatenated weights (query, key and value, whatever their widths; gate and up), which
  inductor's own pattern does only for weights of one shape in torch 2.11 (gate and up; session
  13's H200 run); the bench's `compiled_extern_products` counts the products left. The joined
  weights are copies (the eager prefill keeps the originals): 7.0 GiB more for gate and up at the
  Llama-3.1-8B shape, held by the compiled function for the rest of the process (`release` does
  not free them): a bench's switch. `=frozen-max-autotune` freezes, joins and autotunes the
  joined products as `=max-autotune` does; `=frozen-split-k` freezes, joins, and splits along its
  inner dimension each product whose output tiles leave most processors idle (`split_k_products`:
  Llama-3.1-8B's down and output projections at batch 64). Other values raise;
- stopping: each row stops at EOS or once it has written `#### <number>` and a newline (or
  starts a new question), checked on the host a chunk of steps behind the GPU; the loop ends
  when every row has stopped. Finished rows keep stepping (their tokens are discarded), as a
  static batch must.

`GENERATION_VERSION` names what the outputs depend on; bump it when a change can alter them
(cached baselines are keyed on it).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, StaticLayer

from latentbridge.bridge import TargetInputs
from latentbridge.config import env_choice, env_flag, env_switch
from latentbridge.models import FrozenLM
from latentbridge.prefix_cache import PrefixedInputs, SharedPrefix, cache_argument
from latentbridge.scoring import cut_generation

log = logging.getLogger(__name__)

GENERATION_VERSION = "static-greedy-3"  # 3: decode reads the written slots by width buckets (rounding may differ)
ATTENTION_NAME = "latentbridge_static"
GRAPHS_ENV = "LATENTBRIDGE_CUDA_GRAPHS"  # a no word ("0", "off", ...) turns CUDA-graph decoding off
DECODE_ATTENTION_ENV = "LATENTBRIDGE_DECODE_ATTENTION"  # "matmul": two batched products instead of SDPA
SHARED_PREFIX_DECODE_ENV = "LATENTBRIDGE_SHARED_PREFIX_DECODE"  # "0": each row reads its own copy of a shared prefix
COMPILE_DECODE_ENV = "LATENTBRIDGE_COMPILE_DECODE"  # "1": the decode step through torch.compile
DECODE_BLAS_ENV = "LATENTBRIDGE_DECODE_BLAS"  # "cublaslt" / "cublas": the library a CUDA decode step's products use
DECODE_BLAS_LIBRARIES = ("cublas", "cublaslt")
FROZEN_DECODE_MODE = "default+freezing"
FROZEN_AUTOTUNE_MODE = "max-autotune-no-cudagraphs+freezing"
FROZEN_SPLIT_K_MODE = "default+freezing+split-k"
COMPILE_DECODE_MODES = {
    "max-autotune": "max-autotune-no-cudagraphs",
    "frozen": FROZEN_DECODE_MODE,
    "frozen-max-autotune": FROZEN_AUTOTUNE_MODE,
    "frozen-split-k": FROZEN_SPLIT_K_MODE,
}
"""The values `COMPILE_DECODE_ENV` takes beside yes and no -> the torch.compile mode each picks
(never one with CUDA graphs of inductor's own: the engine captures the compiled step itself);
`FROZEN_DECODE_MODE` is inductor's default mode with its freezing passes (`_compiled_step`),
`FROZEN_AUTOTUNE_MODE` the same in max-autotune-no-cudagraphs (the joined products autotuned),
`FROZEN_SPLIT_K_MODE` the frozen mode with the skinny products split along K (`split_k_products`)."""
_FROZEN_MODES = {FROZEN_DECODE_MODE: "default", FROZEN_AUTOTUNE_MODE: "max-autotune-no-cudagraphs",
                 FROZEN_SPLIT_K_MODE: "default"}
"""Each frozen mode -> the torch.compile mode whose inductor options it adds to freezing."""

_DONE = re.compile(r"####\s*[-+]?[\d,]*\.?\d+\s*\n|\nQ:")
DECODE_WIDTH_BUCKET = 64
"""A decode step reads the cache's first slots up to the written ones rounded up to a multiple of
this (one captured step per width), not all its slots: at Llama-3.1-8B's bench shape the cache is
1,280 slots and a row's own part of it 380, of which 188 are written on average (session 17)."""
STOP_WINDOW = 24
"""The answer-line rule reads the last 24 generated tokens (as `AnswerLineStop` did)."""


# --------------------------------------------------------------------------- attention


def shared_prefix_decode_enabled() -> bool:
    """Whether decode reads a shared prefix once for the batch (`SHARED_PREFIX_DECODE_ENV`)."""
    return env_flag(SHARED_PREFIX_DECODE_ENV, default=True)


def decode_blas() -> str | None:
    """The BLAS library a decode step's matrix products go through on CUDA (`DECODE_BLAS_ENV`):
    None (torch's own preference, the default) or one of `DECODE_BLAS_LIBRARIES`, set for the
    decode steps only (a captured step keeps the kernels it was captured with). Any other value
    raises a ValueError naming it; on a CPU the setting has nothing to choose."""
    return env_choice(DECODE_BLAS_ENV, DECODE_BLAS_LIBRARIES)


@contextlib.contextmanager
def _preferred_blas(device: torch.device, library: str | None) -> Iterator[None]:
    """torch's preferred BLAS library set to `library` for a block, on CUDA; restored after."""
    if library is None or device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(saved)


def compile_decode_mode() -> str | None:
    """The torch.compile mode decode steps run through (`COMPILE_DECODE_ENV`): None when off (the
    default), "default" for a yes, or the mode a word of `COMPILE_DECODE_MODES` picks; any other
    value raises a ValueError."""
    mode = env_switch(COMPILE_DECODE_ENV, False, COMPILE_DECODE_MODES)
    if isinstance(mode, bool):
        return "default" if mode else None
    return mode


def _attention_probs(scores: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(scale * scores) in float32 over the slots `mask` allows (True = attend; it
    broadcasts against `scores`). The scaled scores are a fresh tensor, so they are masked in
    place: an out-of-place `masked_fill` would clone them (batch x slots) first."""
    scores = scores.float() * scale
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    return scores.softmax(-1)


def _prefix_once_attention(
    folded: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    prefix_keys: torch.Tensor,
    prefix_values: torch.Tensor,
) -> torch.Tensor:
    """Decode attention over `[shared prefix][the row's own slots]`, the prefix read once.

    `folded` (B, kv_heads, G, d) holds each row's query heads by KV head; `key`/`value`
    (B, kv_heads, width, d) the rows' cache, read from slot P on only; `prefix_keys`/
    `prefix_values` (1, kv_heads, P, d) the prefix every row starts with; `mask`
    (B, 1, 1 or G, width) says which slots each row attends, the prefix's included. Returns
    (B, kv_heads, G, d_v): softmax over all `width` slots in float32, as `_attention_probs`.

    Nothing that grows with batch x slots is copied (a decode step runs this at every layer):
    the rows' keys and values are strided views of the cache that matmul folds into one batch
    dim (B * kv_heads) without a copy; the two parts' scores are not concatenated but go through
    one softmax split in two (cascade / flash attention: the joint max and the sum of both
    parts' exponentials), each part in place in the layout its product made it.
    """
    batch, kv_heads, groups, dim = folded.shape
    length = prefix_keys.shape[2]
    own_keys, own_values = key[:, :, length:], value[:, :, length:]
    # Every row's query heads as rows of one query per KV head, (kv_heads, B * G, d), so the
    # prefix's keys are read once for all rows. This copies the queries (one token's worth,
    # B x heads x d); a broadcast product with the prefix would copy its keys B times instead.
    queries = folded.transpose(0, 1).reshape(kv_heads, batch * groups, dim)
    shared = torch.matmul(queries, prefix_keys[0].transpose(-1, -2)).float().mul_(scale)  # (kv_heads, B * G, P)
    own = torch.matmul(folded, own_keys.transpose(-1, -2)).float().mul_(scale)  # (B, kv_heads, G, width - P)
    # A plain view, (kv_heads, B, G, P): the (B, 1, ...) pieces it meets are transposed to it
    # instead (views too). Written in place through a transposed view, inductor's functionalization
    # of a compiled step cannot view the result back as `shared` when kv_heads > 1.
    shared_rows = shared.view(kv_heads, batch, groups, length)
    if mask is not None:
        hidden = ~mask
        shared_rows.masked_fill_(hidden[..., :length].transpose(0, 1), float("-inf"))
        own.masked_fill_(hidden[..., length:], float("-inf"))
    # softmax over [prefix | own] = exp(s - m) / sum, m the max over both parts: finite, since a
    # row always attends its newest token (an own slot), even where a sliding window hides the
    # whole prefix (its exponentials are then 0).
    top = torch.maximum(shared_rows.amax(-1, keepdim=True).transpose(0, 1), own.amax(-1, keepdim=True))  # (B, kv_heads, G, 1)
    shared_rows.sub_(top.transpose(0, 1)).exp_()
    own.sub_(top).exp_()
    total = shared_rows.sum(-1, keepdim=True).transpose(0, 1) + own.sum(-1, keepdim=True)
    shared_rows.div_(total.transpose(0, 1))
    own.div_(total)
    out = torch.matmul(own.to(value.dtype), own_values)  # (B, kv_heads, G, d_v)
    from_prefix = torch.matmul(shared.to(value.dtype), prefix_values[0])  # (kv_heads, B * G, d_v)
    return out.add_(from_prefix.view(kv_heads, batch, groups, -1).transpose(0, 1))


def static_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    decode_prefix: SharedPrefix | None = None,
    matmul_attention: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA over a static cache with a boolean (B, 1, q, S) mask (True = attend).

    Prefill (q > 1) reads the slots its mask covers (the prompt, after any shared prefix), not
    the whole cache; decode (q = 1) folds the G query heads that share a KV head into G query
    rows, so the cache is read once, and reads `decode_prefix` once for the batch
    (`_prefix_once_attention`; layer by `module.layer_idx`), else uses two batched products
    instead of SDPA with `matmul_attention` (`DECODE_ATTENTION_ENV`). Both are keywords of the
    model's forward, which transformers hands to every attention call: a compiled step is traced
    with them and guarded on them (neither a context variable nor the environment would be).
    """
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("attention logit soft-capping is not supported by the static decoder")
    batch, q_heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = q_heads // kv_heads
    if attention_mask is not None:  # the slots the mask covers; the rest of the cache is unwritten
        width = attention_mask.shape[-1]
        key, value = key[:, :, :width], value[:, :, :width]
    elif q_len > 1:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    if q_len > 1:
        width = key.shape[2]
        if groups > 1:
            key = key[:, :, None].expand(batch, kv_heads, groups, width, dim).reshape(batch, q_heads, width, dim)
            value = value[:, :, None].expand(batch, kv_heads, groups, width, value.shape[-1])
            value = value.reshape(batch, q_heads, width, -1)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    else:
        folded = query.reshape(batch, kv_heads, groups, dim)
        mask = attention_mask  # (B, 1, 1, width), broadcast over the G query rows: `~mask` of it expanded would write G copies
        scale = scaling if scaling is not None else dim**-0.5
        if decode_prefix is not None:
            layer = module.layer_idx
            out = _prefix_once_attention(folded, key, value, mask, scale, decode_prefix.keys[layer], decode_prefix.values[layer])
        elif matmul_attention:
            probs = _attention_probs(torch.matmul(folded, key.transpose(-1, -2)), mask, scale)
            out = torch.matmul(probs.to(value.dtype), value)
        else:
            if mask is not None:
                mask = mask.expand(batch, 1, groups, key.shape[2])  # a view
            out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
        out = out.reshape(batch, q_heads, 1, -1)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, static_attention)


class _use_static_attention:
    """Point every config of `model` at `static_attention` for the duration of a block."""

    def __init__(self, model: torch.nn.Module) -> None:
        configs = {id(model.config): model.config}
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation"):
                configs[id(config)] = config
        self.configs = list(configs.values())

    def __enter__(self) -> None:
        self.saved = [c._attn_implementation for c in self.configs]
        for c in self.configs:
            c._attn_implementation = ATTENTION_NAME

    def __exit__(self, *exc) -> None:
        for c, saved in zip(self.configs, self.saved):
            c._attn_implementation = saved


# --------------------------------------------------------------------------- the engine


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class _Engine:
    """A static KV cache, the decode buffers and (on CUDA) the captured decode step for one
    model, batch size and cache length."""

    model: torch.nn.Module
    batch: int
    max_len: int
    device: torch.device
    use_graph: bool
    compile_mode: str | None = None
    """The torch.compile mode decode steps run through (`_compiled_step`); None: eagerly."""
    blas: str | None = None
    """The BLAS library decode steps' products go through on CUDA (`decode_blas`); None: torch's."""
    graphs: dict = field(default_factory=dict)
    """Width -> the decode step captured as a CUDA graph at that width (`_width`)."""
    graph_failed: bool = False
    decode_prefix: SharedPrefix | None = field(default=None, init=False)
    """The shared prefix the decode steps read once for the batch (the captured step reads its
    tensors); None when the batch has none or `SHARED_PREFIX_DECODE_ENV` is off."""

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None

    def __post_init__(self) -> None:
        text = self.model.config.get_text_config()
        layer_types = list(getattr(text, "layer_types", None) or [])
        self.window = getattr(text, "sliding_window", None) if "sliding_attention" in layer_types else None
        self.mapping = bool(layer_types) and "sliding_attention" in layer_types
        # every layer full-length: sliding windows are applied by the mask, as a dynamic cache does
        self.cache = Cache(layers=[StaticLayer(max_cache_len=self.max_len) for _ in range(text.num_hidden_layers)])
        self.cache_arg = cache_argument(self.model)
        dev = self.device
        self.valid = torch.zeros(self.batch, self.max_len, dtype=torch.bool, device=dev)
        self.slots = torch.arange(self.max_len, device=dev)
        self.slot_positions = torch.zeros(self.batch, self.max_len, dtype=torch.long, device=dev)  # position of each slot's token
        self.cache_pos = torch.zeros((), dtype=torch.long, device=dev)
        self.positions = torch.zeros(self.batch, 1, dtype=torch.long, device=dev)
        self.tokens = torch.zeros(self.batch, 1, dtype=torch.long, device=dev)
        self.step_index = torch.zeros(1, dtype=torch.long, device=dev)
        self.out = torch.zeros(self.batch, self.max_len, dtype=torch.long, device=dev)
        self.written = 0  # slots written so far (the host's copy of `cache_pos`)
        self.read_slots = self.slots[: self.max_len - 1]  # the slots a decode step reads (`_width`)
        self.pool = None  # the captured steps' shared memory pool (they never replay at once)

    # ------------------------------------------------------------------ masks
    def _layer_masks(self, full: torch.Tensor, sliding: torch.Tensor | None):
        if not self.mapping:
            return full
        return {"full_attention": full, "sliding_attention": sliding}

    def _prefill_masks(self, start: int, length: int, positions: torch.Tensor):
        """(B, 1, length, start + length) masks for prompt slots [start, start + length) reading
        every slot before them (a shared prefix fills [0, start))."""
        width = start + length
        keys = self.slots[:width]
        queries = keys[start:]
        causal = keys[None, :] <= queries[:, None]
        # a padding query attends to itself too, so no row is empty (an empty row gives NaN keys)
        own = keys[None, :] == queries[:, None]
        full = (self.valid[:, None, None, :width] & causal) | own
        sliding = None
        if self.mapping:
            near = self.slot_positions[:, None, :width] > positions[:, :, None] - self.window
            sliding = full & near[:, None] | own
        return self._layer_masks(full, sliding)

    def _width(self) -> int:
        """The slots the next decode step reads: the written ones and the one it writes, rounded
        up to `DECODE_WIDTH_BUCKET`, short of `max_len` (never the whole cache: Dynamo would
        specialize a compiled step on that width; no step writes the last slot, as `_engine`'s
        `need` counts the last new token, which no step feeds)."""
        return min(self.max_len - 1, _round_up(self.written + 1, DECODE_WIDTH_BUCKET))

    def _decode_masks(self):
        """Masks over `read_slots`, whose length a compiled step takes as dynamic (one compile)."""
        width = self.read_slots.shape[0]
        valid = self.valid[:, :width] & (self.read_slots <= self.cache_pos)
        sliding = None
        if self.mapping:
            sliding = (valid & (self.slot_positions[:, :width] > self.positions - self.window))[:, None, None, :]
        return self._layer_masks(valid[:, None, None, :], sliding)

    # ------------------------------------------------------------------ steps
    def _forward(self, **inputs):
        return self.model(use_cache=True, logits_to_keep=1, **{self.cache_arg: self.cache}, **inputs)

    def _load_prefix(self, prefix: SharedPrefix) -> None:
        """Copy the prefix's keys and values into slots [0, P) of every row."""
        for layer, keys, values in zip(self.cache.layers, prefix.keys, prefix.values):
            if not layer.is_initialized:
                layer.lazy_initialization(keys.expand(self.batch, -1, -1, -1), values.expand(self.batch, -1, -1, -1))
            layer.keys[:, :, : prefix.length].copy_(keys)
            layer.values[:, :, : prefix.length].copy_(values)
            layer.cumulative_length.fill_(prefix.length)

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor, prefix: SharedPrefix | None = None) -> None:
        """Run the prompt (after `prefix`, whose keys are copied in, not recomputed); leaves the
        first new token in `out[:, 0]` and the state at step 1."""
        for layer in self.cache.layers:
            layer.reset()
        start = 0
        if prefix is not None:
            self._load_prefix(prefix)
            start = prefix.length
        self._set_decode_prefix(prefix if shared_prefix_decode_enabled() else None)
        length = embeds.shape[1]
        self.valid.zero_()
        self.valid[:, :start] = True
        self.valid[:, start : start + length] = mask.bool()
        self.valid[:, start + length :] = True
        padding = length - mask.long().sum(-1, keepdim=True)  # left padding of each row's suffix
        self.slot_positions.copy_(self.slots - padding * (self.slots >= start))
        positions = start + (mask.long().cumsum(-1) - 1).clamp(min=0)
        masks = self._prefill_masks(start, length, positions)
        logits = self._forward(inputs_embeds=embeds, attention_mask=masks, position_ids=positions).logits
        first = logits[:, -1].argmax(-1, keepdim=True)
        self.tokens.copy_(first)
        self.out[:, :1] = first
        self.positions.copy_(positions[:, -1:] + 1)
        self.cache_pos.fill_(start + length)
        self.written = start + length
        self.step_index.fill_(1)

    def _set_decode_prefix(self, prefix: SharedPrefix | None) -> None:
        """Make the decode steps read `prefix` once (None: each row's cache alone). A captured
        step reads the prefix it was captured with, so another one is captured again."""
        if prefix is not self.decode_prefix and self.graphs:
            log.debug("shared prefix for decode changed; the decode steps are captured again")
            self.graphs.clear()
            self.pool = None  # the pool dies with its last graph: capturing into it again fails an allocator assert
        self.decode_prefix = prefix

    def _step(self) -> None:
        """One greedy decode step, compiled where the engine is (`compile_mode`)."""
        matmul_attention = os.environ.get(DECODE_ATTENTION_ENV) == "matmul"  # read here: Dynamo does not guard the environment
        if not self.compiled:
            self._greedy_step(matmul_attention)
            return
        # generate_tokens runs compiled code eagerly (`FrozenLM.compile_blocks`' blocks); not this
        # step. Its read width is dynamic (marked), every other size static: one compile for all widths
        torch._dynamo.mark_dynamic(self.read_slots, 0)
        with torch.compiler.set_stance("default"), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            _compiled_step(self.compile_mode)(self, matmul_attention)

    def _greedy_step(self, matmul_attention: bool) -> None:
        """Feed the last tokens, write the next ones to `out`; every shape fixed, all state in tensors."""
        logits = self._forward(
            input_ids=self.tokens,
            attention_mask=self._decode_masks(),
            position_ids=self.positions,
            decode_prefix=self.decode_prefix,
            matmul_attention=matmul_attention,
        ).logits
        chosen = logits[:, -1].argmax(-1, keepdim=True)
        self.tokens.copy_(chosen)
        self.out.index_copy_(1, self.step_index, chosen)
        self.positions.add_(1)
        self.cache_pos.add_(1)
        self.step_index.add_(1)

    def decode(self, steps: int) -> None:
        """`steps` greedy steps, queued without waiting (the graphs replay asynchronously), each
        reading the slots `_width` says, their products through the engine's `blas` library."""
        with _preferred_blas(self.device, self.blas):
            for _ in range(max(steps, 0)):
                width = self._width()
                if width != self.read_slots.shape[0]:
                    self.read_slots = self.slots[:width]
                if not self.use_graph or self.graph_failed:
                    self._step()
                elif width in self.graphs:
                    self.graphs[width].replay()
                else:
                    self._capture(width)  # runs one real step while warming up (and compiles a compiled step)
                self.written += 1

    def _capture(self, width: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._step()  # warm-up on a side stream: a real step
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self._step()  # recorded, not run: the state stays after the warm-up step
        except Exception as error:  # pragma: no cover - depends on the model code
            log.warning("CUDA-graph capture failed (%s); decoding eagerly", error)
            self.graph_failed = True
            return
        self.pool = self.pool or graph.pool()
        self.graphs[width] = graph

    def _layer_token_bytes(self) -> list[int]:
        """Bytes one token occupies in each initialized layer, keys and values (GQA as stored)."""
        return [
            (layer.keys[0, :, 0].numel() + layer.values[0, :, 0].numel()) * layer.keys.element_size()
            for layer in self.cache.layers
            if getattr(layer, "is_initialized", False)
        ]

    @property
    def per_token_kv_bytes(self) -> int:
        """Bytes one token occupies in this cache, all layers, keys and values (GQA as stored)."""
        return sum(self._layer_token_bytes())

    @property
    def sliding_kv_bytes(self) -> int:
        """The part of `per_token_kv_bytes` in sliding-window layers: a cache needs at most
        `window` tokens of those (this engine stores them full length and masks)."""
        if not self.mapping:
            return 0
        kinds = list(self.model.config.get_text_config().layer_types)
        return sum(b for b, kind in zip(self._layer_token_bytes(), kinds) if kind == "sliding_attention")

    @property
    def cache_bytes(self) -> int:
        return sum(
            layer.keys.nbytes + layer.values.nbytes
            for layer in self.cache.layers
            if getattr(layer, "is_initialized", False)
        )


@functools.cache  # one compiled function a mode, shared by every engine
def _compiled_step(mode: str) -> Callable:
    """`_Engine._greedy_step` compiled at the engine's fixed shapes (but the read width, which
    `_Engine._step` marks dynamic; `dynamic=None` so the mark holds) in the torch.compile `mode`
    ("default" or one of `COMPILE_DECODE_MODES`: none adds CUDA graphs of inductor's own, the engine
    captures the compiled step itself), as one graph (fullgraph: a graph break raises rather than
    silently leaving work eager). Dynamo compiles it on the first step of each new combination of
    mode, shapes, shared prefix (or none) and attention switch, and reuses it for later engines that
    match; past `torch._dynamo.config.recompile_limit` (8) combinations it warns and steps eagerly.
    `FROZEN_DECODE_MODE` (`FROZEN_AUTOTUNE_MODE`: with max-autotune-no-cudagraphs' options too)
    compiles in the default mode with inductor's `freezing` on for the
    compiling call (given as a torch.compile option alone it was not applied: torch 2.13, CPU)
    and `ConcatProjections` as its post-grad pass (on a CPU with weight prepacking off, which would
    turn the products into MKL linears the pass does not read); another model of the same shape compiles its own step
    (Dynamo guards the weights) rather than reading the first one's constants (tested)."""
    if mode not in _FROZEN_MODES:
        return torch.compile(_Engine._greedy_step, mode=mode, dynamic=None, fullgraph=True)
    from torch._inductor import list_mode_options

    from latentbridge.concat_projections import ConcatProjections

    passes = ConcatProjections()
    if mode == FROZEN_SPLIT_K_MODE:
        from latentbridge.split_k_products import AfterEachOther, SplitKProducts

        passes = AfterEachOther(passes, SplitKProducts(_processors()))
    freezing = {"freezing": True, "cpp.weight_prepack": False, "post_grad_custom_pre_pass": passes,
                **list_mode_options(_FROZEN_MODES[mode])}
    # as options too: a backend of its own, so Dynamo never hands this step another mode's graph
    step = torch.compile(_Engine._greedy_step, options=freezing, dynamic=None, fullgraph=True)

    def frozen_step(engine: _Engine, matmul_attention: bool) -> None:
        with torch._inductor.config.patch(freezing):
            step(engine, matmul_attention)

    return frozen_step


def _processors() -> int:
    """What the split-K pass counts output tiles against: the GPU's streaming multiprocessors, or
    on a machine without one its CPU cores (where the split is for tests: a CPU gains nothing)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return os.cpu_count() or 1


_ENGINES: "weakref.WeakKeyDictionary[torch.nn.Module, _Engine]" = weakref.WeakKeyDictionary()


def _graphs_wanted(device: torch.device, graphs: bool | None) -> bool:
    if device.type != "cuda":
        return False
    if graphs is not None:
        return graphs
    return env_flag(GRAPHS_ENV, default=True)


def _engine(
    model: torch.nn.Module, batch: int, need: int, device: torch.device, graphs: bool, compile_mode: str | None,
    blas: str | None = None,
) -> _Engine:
    """The model's engine if it fits (same batch, graphs, compile mode and BLAS library, enough
    slots, at most a quarter spare), else a new one."""
    current = _ENGINES.get(model)
    if (
        current is not None
        and current.batch == batch
        and current.use_graph == graphs
        and current.compile_mode == compile_mode
        and current.blas == blas
        and need <= current.max_len <= need + max(need // 4, 128)
    ):
        return current
    del current  # released next: nothing here may hold it (a compiled engine's cache is freed by a collection)
    release(model)
    max_len = _round_up(need, 128) if device.type == "cuda" else need
    engine = _Engine(model=model, batch=batch, max_len=max_len, device=device, use_graph=graphs, compile_mode=compile_mode, blas=blas)
    if engine.compiled:
        log.info("decode steps at batch %d, %d cache slots through torch.compile, mode %r (new shapes compile on the first step)",
                 batch, max_len, compile_mode)
    _ENGINES[model] = engine
    return engine


def release(model_or_lm: torch.nn.Module | FrozenLM | None = None) -> None:
    """Free the static cache and graph kept for a model (all models when None). Dynamo's trace
    of a compiled step leaves reference cycles that hold the engine's cache, so where a compiled
    engine goes, they are collected now, before the allocator's cache is emptied."""
    if model_or_lm is None:
        compiled = any(engine.compiled for engine in _ENGINES.values())
        _ENGINES.clear()
    else:
        model = model_or_lm.model if isinstance(model_or_lm, FrozenLM) else model_or_lm  # a causal LM has a `.model` too
        try:
            engine = _ENGINES.pop(model, None)
        except TypeError:  # not weak-referenceable: it never had an engine
            engine = None
        compiled = engine is not None and engine.compiled
        del engine
    if compiled:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- stopping


class AnswerLineRule:
    """Per-row stop rule: EOS, or the answer line / a new question in the last 24 tokens.

    The regex can only start matching at a step whose new token carries a newline or a colon
    (or decodes to nothing / a partial character), so only those steps decode the window.
    """

    def __init__(self, tokenizer, eos_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.eos = set(int(e) for e in eos_ids)
        self._piece: dict[int, bool] = {}

    def _may_end_match(self, token: int) -> bool:
        hit = self._piece.get(token)
        if hit is None:
            text = self.tokenizer.decode([token], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            hit = not text or "\n" in text or ":" in text or "\ufffd" in text
            self._piece[token] = hit
        return hit

    def __call__(self, row: list[int]) -> bool:
        """Whether the row stops at its last token."""
        token = row[-1]
        if token in self.eos:
            return True
        if self.tokenizer is None or not self._may_end_match(token):
            return False
        tail = self.tokenizer.decode(row[-STOP_WINDOW:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return bool(_DONE.search(tail))


def eos_ids_of(model: torch.nn.Module, tokenizer=None) -> list[int]:
    """The EOS ids `generate` would stop at (the generation config's, else the tokenizer's)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


# --------------------------------------------------------------------------- the loop


@dataclass
class GenerationStats:
    """What one batch cost. Times in seconds; per-row lists in row order."""

    batch: int
    prompt_length: int  # padded
    prompt_tokens: list[int]  # real tokens per row
    new_tokens: list[int]  # per row, up to and including its stop token
    steps: int  # decode steps run (finished rows included), first token excluded
    prefill_s: float  # time to first token
    decode_s: float
    graphs: bool
    cache_len: int
    cache_bytes: int  # the static cache as allocated (all rows, all slots)
    per_token_kv_bytes: int  # one token, all layers, keys + values, as stored (GQA counted)
    peak_memory_bytes: int | None = None
    row_latency_s: list[float] = field(default_factory=list)
    sliding_kv_bytes: int = 0  # the part of per_token_kv_bytes in sliding-window layers
    sliding_window: int | None = None  # tokens those layers need at most
    shared_prefix_tokens: int = 0  # of prompt_length/prompt_tokens: a shared prefix's, computed once, not in this prefill
    prefix_read_once: bool = False  # decode read the shared prefix once a step for the batch, not once a row
    compiled_decode: str | None = None  # the torch.compile mode decode steps ran through (`COMPILE_DECODE_ENV`); None: eager

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    def held_bytes(self, context: int) -> int:
        """KV bytes a cache needs for `context` tokens: every token in full-attention layers, at
        most the window in sliding-window layers."""
        full = self.per_token_kv_bytes - self.sliding_kv_bytes
        window = context if self.sliding_window is None else min(context, self.sliding_window)
        return full * context + self.sliding_kv_bytes * window

    def kv_bytes(self, row: int) -> int:
        """Cache bytes the row needs at its end (prompt plus its new tokens)."""
        return self.held_bytes(self.prompt_tokens[row] + self.new_tokens[row])

    def kv_read_bytes(self, row: int) -> int:
        """Cache bytes the row's decode steps must read: its context at every step. Where the
        decode read the shared prefix once a step for the batch (`prefix_read_once`), the row
        counts its own context after the prefix and an equal share (1 / batch) of the prefix's
        part (`held_bytes(c) - held_bytes(c - P)`: P tokens in full layers, the window's tokens
        inside the prefix in sliding ones), so the rows' sum counts the prefix once a step."""
        p, n = self.prompt_tokens[row], self.new_tokens[row]
        contexts = [p + t for t in range(1, n)]
        if not self.prefix_read_once:
            return sum(self.held_bytes(c) for c in contexts)
        shared = self.shared_prefix_tokens
        own = sum(self.held_bytes(c - shared) for c in contexts)
        prefix = sum(self.held_bytes(c) - self.held_bytes(c - shared) for c in contexts)
        return own + prefix // self.batch


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens of each row, through its stop token
    stats: GenerationStats


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing needs it); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_tokens(
    model: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    *,
    stop: Callable[[list[int]], bool] | None = None,
    graphs: bool | None = None,
    chunk: int | None = None,
    prefix: SharedPrefix | None = None,
) -> GenerationResult:
    """Greedy new tokens for a left-padded batch of embeddings.

    `stop(row_tokens)` says whether a row stops at its last token; None runs every row to
    `max_new_tokens`. `graphs` forces CUDA-graph decoding on or off (default: on for CUDA).
    With `prefix`, every row reads the prefix's cached keys first and the batch holds what
    follows it. `COMPILE_DECODE_ENV` compiles the decode step (an engine built with one mode, or
    none, is not reused with another).
    """
    device = inputs_embeds.device
    use_graph = _graphs_wanted(device, graphs)
    mask = attention_mask.to(device)
    real = mask.sum(-1)
    first_real = int((mask.shape[1] - real.max()).item())
    embeds, mask = inputs_embeds[:, first_real:], mask[:, first_real:]  # drop all-padding columns
    if device.type == "cuda":  # align the prompt for the attention kernels: more left padding
        pad = _round_up(embeds.shape[1], 16) - embeds.shape[1]
        if pad:
            embeds = torch.cat([embeds.new_zeros(embeds.shape[0], pad, embeds.shape[2]), embeds], 1)
            mask = torch.cat([mask.new_zeros(mask.shape[0], pad), mask], 1)
    batch, length = mask.shape
    start = prefix.length if prefix is not None else 0
    if chunk is None:
        chunk = 16 if device.type == "cuda" else 4
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    engine = _engine(model, batch, start + length + max_new_tokens, device, use_graph, compile_decode_mode(), decode_blas())
    rows: list[list[int]] = [[] for _ in range(batch)]
    finished = [False] * batch
    finish_step = [max_new_tokens - 1] * batch

    def take(first: int, block: torch.Tensor) -> None:
        values = block.tolist()
        for r in range(batch):
            if finished[r]:
                continue
            for offset, token in enumerate(values[r]):
                rows[r].append(token)
                if stop is not None and stop(rows[r]):
                    finished[r] = True
                    finish_step[r] = first + offset
                    break

    # Compiled blocks (`FrozenLM.compile_blocks`) run eagerly here: the engine's shapes change
    # with every bucket and its decode step is captured as a CUDA graph. Only a compiled decode
    # step (`COMPILE_DECODE_ENV`) compiles, at the engine's fixed shapes (`_Engine._step`).
    with _use_static_attention(model), FrozenLM.blocks_eager():
        synchronize(device)
        started = time.perf_counter()
        engine.prefill(embeds.to(next(model.parameters()).dtype), mask, prefix)
        take(0, engine.out[:, :1].cpu())
        prefill_s = time.perf_counter() - started
        produced, pending = 1, None
        host = torch.empty((batch, chunk), dtype=torch.long, pin_memory=device.type == "cuda")
        spare = torch.empty_like(host)
        while True:
            launched = None
            if produced < max_new_tokens and not all(finished):
                n = min(chunk, max_new_tokens - produced)
                engine.decode(n)
                buf = host[:, :n]
                buf.copy_(engine.out[:, produced : produced + n], non_blocking=True)
                event = torch.cuda.Event() if device.type == "cuda" else None
                if event is not None:
                    event.record()
                launched = (produced, buf, event)
                produced += n
                host, spare = spare, host  # the next chunk must not overwrite this one
            if pending is not None:
                first, buf, event = pending
                if event is not None:
                    event.synchronize()
                take(first, buf)
            pending = launched
            if pending is None:
                break
        synchronize(device)
        total = time.perf_counter() - started

    decode_s = total - prefill_s
    steps = produced - 1
    step_s = decode_s / steps if steps else 0.0
    tokens = [row[: finish_step[r] + 1] for r, row in enumerate(rows)]
    stats = GenerationStats(
        batch=batch,
        prompt_length=start + length,
        prompt_tokens=[start + int(x) for x in real.tolist()],
        new_tokens=[len(t) for t in tokens],
        steps=steps,
        prefill_s=prefill_s,
        decode_s=decode_s,
        graphs=bool(engine.use_graph and engine.graphs),
        cache_len=engine.max_len,
        cache_bytes=engine.cache_bytes,
        per_token_kv_bytes=engine.per_token_kv_bytes,
        sliding_kv_bytes=engine.sliding_kv_bytes,
        sliding_window=engine.window if engine.sliding_kv_bytes else None,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        row_latency_s=[prefill_s + step_s * (len(t) - 1) for t in tokens],
        shared_prefix_tokens=start,
        prefix_read_once=engine.decode_prefix is not None,
        compiled_decode=engine.compile_mode,
    )
    return GenerationResult(tokens=tokens, stats=stats)


def decode_texts(lm: FrozenLM, tokens: Sequence[Sequence[int]]) -> list[str]:
    texts = lm.tokenizer.batch_decode(
        [list(t) for t in tokens], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return [cut_generation(t) for t in texts]


def generate_with_stats(
    lm: FrozenLM, inputs: TargetInputs | PrefixedInputs, max_new_tokens: int, **options
) -> tuple[list[str], GenerationResult]:
    if isinstance(inputs, PrefixedInputs):
        options["prefix"], inputs = inputs.prefix, inputs.suffix
    rule = AnswerLineRule(lm.tokenizer, eos_ids_of(lm.model, lm.tokenizer))
    result = generate_tokens(lm.model, inputs.inputs_embeds, inputs.attention_mask, max_new_tokens, stop=rule, **options)
    return decode_texts(lm, result.tokens), result


def generate(lm: FrozenLM, inputs: TargetInputs | PrefixedInputs, max_new_tokens: int) -> list[str]:
    """Greedy continuations of a left-padded batch of input embeddings (after a shared prefix
    for `PrefixedInputs`), cut at the next question."""
    return generate_with_stats(lm, inputs, max_new_tokens)[0]


# --------------------------------------------------------------------------- the reference


@torch.no_grad()
def plain_generate_tokens(
    model: torch.nn.Module,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    *,
    eos_ids: Sequence[int] | None = None,
    stopping_criteria=None,
    min_new_tokens: int | None = None,
    input_ids: torch.Tensor | None = None,
    cache_implementation: str | None = None,
) -> torch.Tensor:
    """transformers' own greedy `generate` on the same inputs: the reference the tests and
    the bench compare against. From embeddings, or (`input_ids`, embeddings None) from token
    ids, with its default dynamic cache or `cache_implementation` ("static"). Returns the new
    tokens only; rows that stop early are padded with the pad id."""
    config = model.generation_config
    prompt = {"inputs_embeds": inputs_embeds} if input_ids is None else {"input_ids": input_ids}
    out = model.generate(
        **prompt,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        eos_token_id=list(eos_ids) if eos_ids is not None else config.eos_token_id,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
        stopping_criteria=stopping_criteria,
        cache_implementation=cache_implementation,
    )
    return out if input_ids is None else out[:, input_ids.shape[1] :]
