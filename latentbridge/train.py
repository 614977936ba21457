"""Train a translator between a frozen source and a frozen target LLM.

Only the translator trains, with AdamW (decayed weights, undecayed norms and biases, gate
scalars at a higher learning rate), linear warmup then linear decay, and clipping. It is
evaluated at step 0, every `eval_every` steps and at the end; the text baselines run once.
Training state is checkpointed every `checkpoint_every` steps, so a run resumes where it
stopped. Everything is reported through the `Reporter` the caller hands in.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from latentbridge import distributed
from latentbridge.bridge import Bridge
from latentbridge.checkpoint import (
    TranslatorMeta,
    load_training_state,
    rng_state,
    save_training_state,
    save_translator,
    set_rng_state,
)
from latentbridge.config import OptimConfig, RunConfig
from latentbridge.data import Splits, load_splits
from latentbridge.evaluate import bridged_answers, score, text_baselines, write_jsonl
from latentbridge.models import FrozenLM, load_frozen_lm
from latentbridge.prompts import select_exemplars
from latentbridge.reporting import NullReporter, Reporter

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainResult:
    status: str  # FINISHED or FAILED
    step: int
    best_step: int
    best_accuracy: float
    final_metrics: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None


def param_groups(module: nn.Module, config: OptimConfig) -> list[dict]:
    """Decayed matrices, undecayed norms/biases/queries' 1-d params, gates at a higher lr."""
    decay, no_decay, gates = [], [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith("_gate"):
            gates.append(param)
        elif param.ndim < 2:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": config.weight_decay, "lr": config.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": config.lr},
        {"params": gates, "weight_decay": 0.0, "lr": config.lr * config.gate_lr_multiplier},
    ]


def warmup_then_linear_decay(warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_models(config: RunConfig) -> tuple[FrozenLM, FrozenLM]:
    dtype, device = DTYPES[config.dtype], distributed.device()
    return (
        load_frozen_lm(config.source_model, dtype=dtype, device=device),
        load_frozen_lm(config.target_model, dtype=dtype, device=device),
    )


class Trainer:
    """One training run: build, (resume,) train, evaluate, checkpoint."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        reporter: Reporter | None = None,
        *,
        models: tuple[FrozenLM, FrozenLM] | None = None,
        splits: Splits | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.reporter = reporter if (reporter and distributed.is_main()) else NullReporter()
        seed_everything(config.seed + distributed.rank())
        source, target = models or load_models(config)
        self.splits = splits or load_splits(config.data)
        exemplars = select_exemplars(self.splits.train, config.data.num_shots, config.data.fewshot_seed)
        self.bridge = Bridge(config, source, target, exemplars)
        self.translator = self.bridge.translator.float()  # float32 master weights
        self.model: nn.Module = self.translator
        if distributed.is_distributed():
            self.model = DistributedDataParallel(self.translator)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.translator, config.optim),
            betas=(config.optim.beta1, config.optim.beta2),
            eps=config.optim.eps,
            fused=self.translator.queries.is_cuda,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_then_linear_decay(config.optim.warmup_steps, config.train.steps)
        )
        self.sampler = random.Random(config.seed + distributed.rank())
        self.eval_examples = self.splits.get(config.eval.split)[: config.eval.num_questions]
        self.step = 0
        self.best_step, self.best_accuracy = -1, -1.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.baselines: dict[str, list[str]] | None = None

    # ------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.run_dir / "checkpoint" / "state.pt"

    def save_state(self) -> None:
        if not distributed.is_main():
            return
        save_training_state(
            self.state_path,
            {
                "step": self.step,
                "translator": self.translator.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.getstate(),
                "rng": rng_state(),
                "best_step": self.best_step,
                "best_accuracy": self.best_accuracy,
                "best_state": self.best_state,
                "baselines": self.baselines,
                "config": self.config.to_dict(),
            },
        )

    def try_resume(self) -> bool:
        state = load_training_state(self.state_path)
        if state is None:
            return False
        if state["config"] != self.config.to_dict():
            raise ValueError(f"{self.state_path} was written by a different config; use a new run dir")
        self.translator.load_state_dict(state["translator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.setstate(state["sampler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.best_step, self.best_accuracy = state["best_step"], state["best_accuracy"]
        self.best_state, self.baselines = state["best_state"], state["baselines"]
        log.info("resumed from %s at step %d", self.state_path, self.step)
        return True

    # ------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float] | None:
        """Bridged answers now (baselines once); rank 0 writes the JSONL and reports."""
        cfg = self.config.eval
        if cfg.baselines and self.baselines is None:
            self.baselines = text_baselines(self.bridge, self.eval_examples, cfg) or {}
        bridged = bridged_answers(self.bridge, self.eval_examples, cfg)
        metrics = None
        if distributed.is_main():
            outputs = {**(self.baselines or {}), "bridged": bridged}
            evaluation = score(self.eval_examples, outputs, self.step)
            path = write_jsonl(evaluation.records, self.run_dir / "evals" / f"eval_step_{self.step:06d}.jsonl")
            self.reporter.log_artifact(path, "evals")
            self.reporter.log_metrics(evaluation.metrics, self.step)
            metrics = evaluation.metrics
            if metrics["bridged_accuracy"] > self.best_accuracy:
                self.best_step, self.best_accuracy = self.step, metrics["bridged_accuracy"]
                self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.translator.state_dict().items()})
            log.info("step %d: %s", self.step, json.dumps(metrics))
        return distributed.broadcast_from_main(metrics)

    # ------------------------------------------------------------ training
    def train_step(self) -> tuple[float, float]:
        batch = [self.sampler.choice(self.splits.train) for _ in range(self.config.train.batch_size)]
        self.model.train()
        loss = self.bridge.lm_loss(batch, translator=self.model)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.translator.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item(), float(grad_norm)

    def run(self) -> TrainResult:
        cfg = self.config.train
        resumed = self.try_resume()
        if not resumed:
            self.reporter.log_params(self.config.flat())
        if not resumed or self.step == 0:
            metrics = self.evaluate()
        progress = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not distributed.is_main())
        metrics = {}
        while self.step < cfg.steps:
            loss, grad_norm = self.train_step()
            self.step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}")
            self.reporter.log_metrics(
                {"loss": loss, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0]}, self.step
            )
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                metrics = self.evaluate() or {}
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_state()
        progress.close()
        if not metrics:  # resumed after the last step: evaluate the final weights again
            metrics = self.evaluate() or {}
        self.finish()
        return TrainResult(
            status="FINISHED",
            step=self.step,
            best_step=self.best_step,
            best_accuracy=self.best_accuracy,
            final_metrics=metrics,
            run_dir=self.run_dir,
        )

    def finish(self) -> None:
        """Save the final and best translators and hand them to the reporter."""
        if not distributed.is_main():
            return
        meta = TranslatorMeta(
            config=self.config,
            source_dim=self.bridge.source.hidden_size,
            target_dim=self.bridge.target.hidden_size,
            target_rms=float(self.translator.target_rms),
        )
        final = save_translator(self.run_dir / "translator", self.translator, meta)
        self.reporter.log_artifact(final, "translator")
        if self.best_state is not None:
            best = copy.deepcopy(self.translator)
            best.load_state_dict(self.best_state)
            self.reporter.log_artifact(save_translator(self.run_dir / "best_translator", best, meta), "best_translator")
        self.reporter.log_metrics(
            {"best_bridged_accuracy": self.best_accuracy, "best_step": float(self.best_step)}, self.step
        )


def train(
    config: RunConfig,
    run_dir: Path,
    reporter: Reporter | None = None,
    **kwargs,
) -> TrainResult:
    """Train one run end to end (resuming from `run_dir` if it holds a checkpoint)."""
    return Trainer(config, run_dir, reporter, **kwargs).run()
