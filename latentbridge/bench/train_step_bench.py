"""One training step at the reference shapes: time and model FLOP utilisation.

The step the train loop runs, built from the same pieces with random ids in place of text:
the source's hidden states over `source_tokens` (no grad), the translator (float32, train
mode, AdamW), the target reading `[BOS] [K soft] [answer]` with the LM loss on the answer
(`losses.answer_logits`), backward to the translator through the frozen target, clipping and
the optimizer step. With `kl=True` the step also runs the KL teacher as `compute_losses` does
after warmup (no grad): the target reading each row's question (`text_tokens - prefix_tokens`
ids) after the shared few-shot prefix's keys and values (computed once, as once a run) and the
first `kl_tokens` answer tokens, the only ones its logits see. `prefix_tokens=0` times the teacher
that read the whole text prompt and answer in each row (before sharing).

Model FLOPs count what the step must compute: 2 FLOPs per parameter and token for each
forward matrix product (embeddings excluded, the LM head only where logits are taken),
attention at 4·s·d per token and layer halved for causality, and for the backward through
the frozen target only the input gradients (as many FLOPs as its forward, attention twice).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentbridge.bench.shapes import SHAPES, random_model
from latentbridge.bridge import IGNORE_INDEX, TargetInputs, TranslatorStep
from latentbridge.config import TranslatorConfig
from latentbridge.losses import answer_logits
from latentbridge.prefix_cache import compute_prefix, continuing, id_rows_batch
from latentbridge.generation import synchronize
from latentbridge.models import FrozenLM
from latentbridge.translators import build_translator


def _forward_flops(shape, tokens_per_row: int, batch: int, head_tokens: int) -> float:
    linear = 2 * shape.block_params * tokens_per_row * batch
    attention = 2 * shape.layers * tokens_per_row * tokens_per_row * shape.hidden * batch  # 4·s·d/2 per token
    head = 2 * shape.hidden * shape.vocab * head_tokens
    return float(linear + attention + head)


def _teacher_flops(target, batch: int, text_tokens: int, answer: int, prefix_tokens: int, kl_tokens: int) -> float:
    if not prefix_tokens:  # each row reads [BOS] text answer
        return _forward_flops(target, 1 + text_tokens + answer, batch, batch * kl_tokens)
    row = text_tokens - prefix_tokens + min(answer, kl_tokens)  # after the prefix, to the last logit needed
    prefix_reads = 4 * target.layers * prefix_tokens * target.hidden * row * batch  # every row token reads all prefix keys
    return _forward_flops(target, row, batch, batch * kl_tokens) + prefix_reads


def step_flops(source, target, batch: int, source_tokens: int, soft: int, answer: int, kl: bool, translator_params: int,
               text_tokens: int, prefix_tokens: int = 0, kl_tokens: int = 32) -> dict:
    student_len = 1 + soft + answer
    source_fwd = _forward_flops(source, source_tokens, batch, 0)
    target_fwd = _forward_flops(target, student_len, batch, batch * answer)
    target_bwd = target_fwd + 2 * target.layers * student_len * student_len * target.hidden * batch  # input grads
    translator = 6 * translator_params * soft * batch  # its own weights: forward and both backward products
    teacher = _teacher_flops(target, batch, text_tokens, answer, prefix_tokens, kl_tokens) if kl else 0.0
    total = source_fwd + target_fwd + target_bwd + translator + teacher
    return {"source_forward": source_fwd, "target_forward": target_fwd, "target_backward": target_bwd,
            "translator": translator, "kl_teacher": teacher, "total": total}


class _Step:
    def __init__(self, source: FrozenLM, target: FrozenLM, soft: int, device: torch.device) -> None:
        self.source, self.target = source, target
        config = TranslatorConfig(num_tokens=soft)
        self.translator = build_translator(config, source_dim=source.hidden_size, target_dim=target.hidden_size, target_rms=target.embedding_rms)
        self.translator = self.translator.to(device).float().train()  # float32 master weights
        self.module = TranslatorStep(self.translator, dtype=source.dtype)  # bf16 autocast, as in training
        self.optimizer = torch.optim.AdamW(self.translator.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.params = sum(p.numel() for p in self.translator.parameters())

    def teacher_reads_prefix(self, prefix_tokens: int, generator) -> None:
        """The KL teacher continues a shared prefix of `prefix_tokens` random ids (after BOS),
        whose keys and values are computed here, once, as once a run; 0: no prefix."""
        self.prefix_tokens, self.teacher = prefix_tokens, self.target
        if prefix_tokens:
            ids = [1, *torch.randint(3, self.target.model.config.vocab_size, (prefix_tokens,), generator=generator).tolist()]
            self.teacher = continuing(self.target, compute_prefix(self.target, ids, ids[1:]))

    def __call__(self, batch: int, source_tokens: int, answer: int, kl: bool, text_tokens: int, generator, kl_tokens: int = 32) -> float:
        device = self.target.device
        vocab_s, vocab_t = self.source.model.config.vocab_size, self.target.model.config.vocab_size
        src_ids = torch.randint(3, vocab_s, (batch, source_tokens), generator=generator).to(device)
        src_mask = torch.ones_like(src_ids)
        answer_ids = torch.randint(3, vocab_t, (batch, answer), generator=generator).to(device)
        states = self.source.hidden_states(src_ids, src_mask, layer=-1)
        soft, _ = self.module(states, src_mask)
        bos = self.target.embed(torch.ones(batch, 1, dtype=torch.long, device=device))
        embeds = torch.cat([bos, soft.to(bos.dtype), self.target.embed(answer_ids)], 1)
        labels = torch.cat([torch.full((batch, 1 + soft.shape[1]), IGNORE_INDEX, device=device), answer_ids], 1)
        student = TargetInputs(inputs_embeds=embeds, attention_mask=torch.ones_like(labels), labels=labels)
        logits, gold, order = answer_logits(self.target, student)
        loss = F.cross_entropy(logits, gold)
        if kl:
            with torch.no_grad():
                if self.prefix_tokens:  # as compute_losses: the question after the prefix, the answer to its last logit
                    question = torch.randint(3, vocab_t, (batch, text_tokens - self.prefix_tokens), generator=generator)
                    full_text = id_rows_batch(self.target, question.tolist(), answer_ids[:, :kl_tokens].tolist())
                else:
                    text_ids = torch.randint(3, vocab_t, (batch, text_tokens), generator=generator).to(device)
                    full = torch.cat([bos, self.target.embed(text_ids), self.target.embed(answer_ids)], 1)
                    full_labels = torch.cat([torch.full((batch, 1 + text_tokens), IGNORE_INDEX, device=device), answer_ids], 1)
                    full_text = TargetInputs(full, torch.ones_like(full_labels), full_labels)
                teacher, _, _ = answer_logits(self.teacher, full_text, first_n=kl_tokens)
            student_logits = logits[order <= kl_tokens]
            loss = loss + 0.03 * F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.translator.parameters(), 1.0)
        self.optimizer.step()
        return float(loss.detach())


def run(
    source_shape: str,
    target_shape: str,
    device: torch.device,
    batches: list[int],
    *,
    peak_flops: float,
    source_tokens: int = 1100,
    soft: int = 64,
    answer: int = 256,
    text_tokens: int = 1100,
    prefix_tokens: int = 1000,
    steps: int = 5,
    warmup: int = 2,
    kl_variants: tuple[bool, ...] = (False, True),
    compile_frozen: bool = False,
    profile_to: Path | None = None,
    log=print,
) -> dict:
    """Median step time and MFU per (loss, batch); with `profile_to`, also a table of where the
    time of two LM steps at the largest batch goes (torch.profiler, by device time)."""
    if not 0 <= prefix_tokens < text_tokens:
        raise ValueError(f"the KL teacher's shared prefix ({prefix_tokens} tokens) must be shorter than its text ({text_tokens}); "
                         "pass --prefix-tokens below it, or 0 for no prefix")
    dtype = torch.bfloat16
    source = FrozenLM(source_shape, random_model(source_shape, device=device, dtype=dtype, seed=1), tokenizer=None)
    target = FrozenLM(target_shape, random_model(target_shape, device=device, dtype=dtype, seed=2), tokenizer=None)
    if compile_frozen:  # as the trainer does with train.compile_frozen=true
        for lm in (source, target):
            lm.compile_blocks()
        warmup += 1  # compiling for the first shapes, then once more with dynamic shapes
    step = _Step(source, target, soft, device)
    generator = torch.Generator().manual_seed(0)
    step.teacher_reads_prefix(prefix_tokens, generator)
    results = {"source": source_shape, "target": target_shape, "source_tokens": source_tokens, "soft_tokens": soft,
               "answer_tokens": answer, "kl_text_tokens": text_tokens, "kl_prefix_tokens": prefix_tokens, "translator_params": step.params, "compile_frozen": compile_frozen,
               "runs": {}}
    for kl in kl_variants:
        for batch in batches:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(warmup):
                step(batch, source_tokens, answer, kl, text_tokens, generator)
            times = []
            for _ in range(steps):
                synchronize(device)
                began = time.perf_counter()
                step(batch, source_tokens, answer, kl, text_tokens, generator)
                synchronize(device)
                times.append(time.perf_counter() - began)
            seconds = statistics.median(times)
            flops = step_flops(SHAPES[source_shape], SHAPES[target_shape], batch, source_tokens, soft, answer, kl, step.params,
                               text_tokens, prefix_tokens)
            name = f"{'lm_kl' if kl else 'lm'}_b{batch}"
            results["runs"][name] = {
                "batch": batch,
                "kl": kl,
                "step_s_median": seconds,
                "step_s_all": times,
                "model_flops": flops,
                "achieved_tflops": flops["total"] / seconds / 1e12,
                "mfu": flops["total"] / seconds / peak_flops,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            }
            log(f"[train] {name}: {seconds:.3f}s/step, {flops['total'] / seconds / 1e12:.0f} TFLOP/s, MFU {results['runs'][name]['mfu']:.0%}")
    if profile_to is not None:
        from latentbridge.bench.hardware import profile_table

        def two_lm_steps() -> None:
            for _ in range(2):
                step(max(batches), source_tokens, answer, False, text_tokens, generator)

        profile_table(two_lm_steps, device, profile_to)
        results["profile"] = str(profile_to)
        log(f"[train] profile of 2 LM steps at batch {max(batches)}: {profile_to}")
    del step, source, target
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results
