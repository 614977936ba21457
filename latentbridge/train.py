"""Train a translator between a frozen source and a frozen target LLM.

Only the translator trains, with AdamW (decayed weights, undecayed norms and biases, gate
scalars at a higher learning rate), linear warmup then linear decay, and clipping. It is
evaluated at step 0, every `eval_every` steps and at the end; the text baselines run once.
Training state is checkpointed every `checkpoint_every` steps, so a run resumes where it
stopped. Everything is reported through the `Reporter` the caller hands in, with each
evaluation where the wall time since the last one went (`time/*`: training steps, baselines,
bridged and mismatched answers, content metrics).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from latentbridge import distributed
from latentbridge.bridge import Bridge, TranslatorStep, bos_ids, tokenize
from latentbridge.checkpoint import (
    STATE,
    TranslatorMeta,
    check_world_size,
    load_rank_state,
    load_training_state,
    rank_state_path,
    remove_rank_states_before,
    rng_state,
    save_training_state,
    save_translator,
    set_rng_state,
)
from latentbridge.config import OptimConfig, RunConfig, check_questions_fit
from latentbridge.data import Splits, load_splits
from latentbridge.content import content_metrics, derangement
from latentbridge.evaluate import bridged_answers, score, text_baselines, write_jsonl
from latentbridge.losses import compute_losses
from latentbridge.metric_names import (
    BEST_BRIDGED_ACCURACY,
    BEST_STEP,
    BITS_LOW,
    BRIDGED_ACCURACY,
    BRIDGED_INVALID,
    COMPRESSION_RATIO,
    GRAD_NORM,
    LEARNING_RATE,
    LOSS,
    LOSS_TERM_PREFIX,
    PROMPT_TOKENS_MEAN,
    TEST_EVAL_FILE,
    TEST_FOLDER,
    TEST_PREFIX,
    TIME_BASELINES,
    TIME_BRIDGED,
    TIME_CONTENT,
    TIME_MISMATCHED,
    TIME_TRAIN,
    compression_ratio,
)
from latentbridge.device_metrics import per_rank_metrics, read_own_device
from latentbridge.models import DTYPES, FrozenLM, load_frozen_lms
from latentbridge.prompts import select_exemplars
from latentbridge.reporting import NullReporter, Reporter

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: the run stops with this as its status."""


@dataclass
class TrainResult:
    status: str  # FINISHED, EARLY_STOPPED, INTERRUPTED or NAN_LOSS
    step: int
    best_step: int
    best_accuracy: float
    final_metrics: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None
    collapse_flags: list[str] = field(default_factory=list)


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
    source, target = load_frozen_lms([config.source_model, config.target_model], dtype=dtype, device=device)
    return source, target


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
        if config.train.compile_frozen:
            for lm in (source, target):
                lm.compile_blocks()
        self.splits = splits or load_splits(config.data)
        exemplars = select_exemplars(self.splits.train, config.data.num_shots, config.data.fewshot_seed)
        self.bridge = Bridge(config, source, target, exemplars)
        self.translator = self.bridge.translator.float()  # float32 master weights
        self.trainable = any(p.requires_grad for p in self.translator.parameters())
        self.model: nn.Module = TranslatorStep(self.translator, dtype=source.dtype)
        if distributed.is_distributed() and self.trainable:
            self.model = DistributedDataParallel(self.model)
        on_cuda = next(iter(self.translator.buffers())).is_cuda
        self.optimizer = torch.optim.AdamW(
            [g for g in param_groups(self.translator, config.optim) if g["params"]] or [{"params": [torch.zeros(1, requires_grad=True)]}],
            betas=(config.optim.beta1, config.optim.beta2),
            eps=config.optim.eps,
            fused=on_cuda,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_then_linear_decay(config.optim.warmup_steps, config.train.steps)
        )
        self.sampler = random.Random(config.seed + distributed.rank())
        self.eval_examples = self.splits.get(config.eval.split)[: config.eval.num_questions]
        self.step = 0
        self.best_step, self.best_accuracy, self.best_bits = -1, -1.0, float("-inf")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evals_since_best = 0
        self.stopped_early = False  # saved: a resume after an early stop goes straight to finish()
        self.final_metrics: dict[str, float] = {}  # of the latest evaluation (saved with the state)
        self.collapse_flags: list[str] = []
        self.last_invalid_rate: float | None = None
        self.baselines: dict[str, list[str]] | None = None
        self.content_fixed: dict[int, dict] = {}  # translator-independent NLLs of the eval questions
        self.stop_signal: int | None = None
        self.seconds: dict[str, float] = {}  # wall time of each phase (metric_names.TIME_*) since the last evaluation

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time to `phase` (its results are read back inside it, so the
        device's queue is drained: no explicit synchronisation)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - began

    def take_seconds(self) -> dict[str, float]:
        """The phase times gathered since the last call, reset."""
        taken, self.seconds = self.seconds, {}
        return taken

    # ------------------------------------------------------------ state
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    @property
    def state_path(self) -> Path:
        return self.checkpoint_dir / STATE

    def save_state(self) -> None:
        """Every rank saves what it draws on its own (data order, RNG), then rank 0 the shared state.

        `state.pt` of a step is written only once every rank's file of that step is in place, so
        a resume never pairs the shared state of one step with a rank's state of another.
        """
        rank, world = distributed.rank(), distributed.world_size()
        save_training_state(
            rank_state_path(self.checkpoint_dir, self.step, rank),
            {"step": self.step, "rank": rank, "world_size": world, "sampler": self.sampler.getstate(), "rng": rng_state()},
        )
        distributed.barrier()
        if not distributed.is_main():
            return
        save_training_state(
            self.state_path,
            {
                "step": self.step,
                "world_size": world,
                "translator": self.translator.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "best_step": self.best_step,
                "best_accuracy": self.best_accuracy,
                "best_bits": self.best_bits,
                "best_state": self.best_state,
                "evals_since_best": self.evals_since_best,
                "stopped_early": self.stopped_early,
                "final_metrics": self.final_metrics,
                "collapse_flags": self.collapse_flags,
                "last_invalid_rate": self.last_invalid_rate,
                "baselines": self.baselines,
                "mlflow_run_id": getattr(self.reporter, "run_id", None),
                "config": self.config.to_dict(),
            },
        )
        remove_rank_states_before(self.checkpoint_dir, self.step)

    def try_resume(self) -> bool:
        """Load the shared state and this rank's own state of the same step; False if none saved."""
        state = load_training_state(self.state_path)
        if state is None:
            return False
        if state["config"] != self.config.to_dict():
            raise ValueError(f"{self.state_path} was written by a different config; use a new run dir")
        check_world_size(self.state_path, state, distributed.world_size())
        mine = load_rank_state(self.checkpoint_dir, state["step"], distributed.rank(), distributed.world_size())
        self.translator.load_state_dict(state["translator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.setstate(mine["sampler"])
        set_rng_state(mine["rng"])
        self.step = state["step"]
        self.best_step, self.best_accuracy = state["best_step"], state["best_accuracy"]
        self.best_bits = state.get("best_bits", float("-inf"))  # absent from states saved before the tie-break
        self.best_state, self.baselines = state["best_state"], state["baselines"]
        self.evals_since_best = state["evals_since_best"]
        # absent from states saved before they were kept: then train on, or evaluate again at the end
        self.stopped_early = bool(state.get("stopped_early", False))
        self.final_metrics = dict(state.get("final_metrics") or {})
        self.collapse_flags, self.last_invalid_rate = state["collapse_flags"], state["last_invalid_rate"]
        log.info("resumed from %s at step %d", self.state_path, self.step)
        return True

    # ------------------------------------------------------------ evaluation
    def answer_and_measure(self, examples, baselines: dict[str, list[str]] | None, step: int, fixed: dict):
        """Bridged answers, and (with eval.content_metrics) the mismatched answers and the
        content metrics, scored with `baselines` on rank 0; None on the other ranks."""
        cfg = self.config.eval
        with self.timed(TIME_BRIDGED):
            outputs = {"bridged": bridged_answers(self.bridge, examples, cfg)}
        content = None
        if cfg.content_metrics:
            partner = derangement(len(examples), cfg.content_seed)
            with self.timed(TIME_MISMATCHED):
                outputs["mismatched"] = bridged_answers(self.bridge, examples, cfg, soft_from=partner)
            with self.timed(TIME_CONTENT):
                content = content_metrics(
                    self.bridge, examples, negatives_count=cfg.content_negatives, seed=cfg.content_seed,
                    batch_size=cfg.batch_size, fixed=fixed,
                )
        if not distributed.is_main():
            return None
        return score(examples, {**(baselines or {}), **outputs}, step, content)

    def evaluate(self) -> dict[str, float]:
        """Bridged answers and content now (baselines once); rank 0 writes the JSONL and reports."""
        cfg = self.config.eval
        if cfg.baselines and self.baselines is None:
            with self.timed(TIME_BASELINES):
                self.baselines = text_baselines(self.bridge, self.eval_examples, cfg) or {}
        evaluation = self.answer_and_measure(self.eval_examples, self.baselines, self.step, self.content_fixed)
        readings = distributed.gather_to_main(read_own_device(distributed.device()))  # every rank's own GPU
        seconds = {TIME_TRAIN: 0.0, **self.take_seconds()}
        metrics = None
        if distributed.is_main():
            self.reporter.log_metrics({**per_rank_metrics(readings), **seconds}, self.step)
            path = write_jsonl(evaluation.records, self.run_dir / "evals" / f"eval_step_{self.step:06d}.jsonl")
            self.reporter.log_artifact(path, "evals")
            self.reporter.log_metrics(evaluation.metrics, self.step)
            metrics = evaluation.metrics
            bridged = [r["bridged"]["output"] for r in evaluation.records]
            self.check_collapse(bridged, metrics[BRIDGED_INVALID])
            log.info("step %d: %s", self.step, json.dumps(metrics))
        metrics = distributed.broadcast_from_main(metrics)
        self.keep_if_best(metrics)  # every rank keeps the same best
        return metrics

    def keep_if_best(self, metrics: dict[str, float]) -> None:
        """Keep the translator as it is now if this evaluation beats the best so far: higher bridged
        accuracy; on a tie (train.best_tiebreak=content_bits) more content crossing, the lower bound
        of content/bits_transmitted (logged only with the content metrics; without them, the earliest)."""
        accuracy, bits = metrics[BRIDGED_ACCURACY], metrics.get(BITS_LOW, float("-inf"))
        if accuracy != self.best_accuracy or self.config.train.best_tiebreak == "earliest":
            better = accuracy > self.best_accuracy
        else:
            better = bits > self.best_bits
        if not better:
            self.evals_since_best += 1
            return
        self.best_step, self.best_accuracy, self.best_bits = self.step, accuracy, bits
        # a real copy: later steps must not change the best weights
        self.best_state = {k: v.detach().cpu().clone() for k, v in self.translator.state_dict().items()}
        self.evals_since_best = 0

    def prompt_lengths(self) -> dict[str, float]:
        """Mean tokens of the text prompt the target would read, and the compression ratio."""
        prompts = [self.bridge.prompt(ex.question) for ex in self.eval_examples]
        lengths = [len(ids) + len(bos_ids(self.bridge.target)) for ids in tokenize(self.bridge.target, prompts)]
        mean = sum(lengths) / len(lengths)
        ratio = compression_ratio(mean, self.config.translator.num_tokens, self.config.eval.prompt_mode)
        return {PROMPT_TOKENS_MEAN: mean, COMPRESSION_RATIO: ratio}

    def check_collapse(self, outputs: list[str], invalid_rate: float) -> None:
        """Flag constant outputs and jumps in the invalid rate (the verdict reads the flags)."""
        flags = []
        if self.step > 0 and len(outputs) > 1 and len(set(outputs)) == 1:
            flags.append(f"constant_outputs@{self.step}")
        jump = self.config.train.collapse_invalid_jump
        if jump and self.last_invalid_rate is not None and invalid_rate - self.last_invalid_rate >= jump:
            flags.append(f"invalid_jump@{self.step}")
        self.last_invalid_rate = invalid_rate
        if flags:
            self.collapse_flags.extend(flags)
            log.warning("collapse flags at step %d: %s", self.step, flags)
            self.reporter.set_tags({"collapse_flags": ",".join(self.collapse_flags)})

    def should_stop_early(self) -> bool:
        patience = self.config.train.early_stop_patience
        return bool(patience) and self.evals_since_best >= patience

    # ------------------------------------------------------------ training
    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the loss terms and the gradient norm."""
        batch = [self.sampler.choice(self.splits.train) for _ in range(self.config.train.batch_size)]
        self.model.train()
        terms = compute_losses(self.bridge, batch, self.step, self.model)
        loss = terms["total"]
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.translator.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {**{f"{LOSS_TERM_PREFIX}{k}" if k != "total" else LOSS: v.item() for k, v in terms.items()}, GRAD_NORM: float(grad_norm)}

    def _on_signal(self, signum, frame) -> None:
        log.warning("got signal %d: checkpointing after this step", signum)
        self.stop_signal = signum

    def run(self) -> TrainResult:
        """Train to the end (or an early stop, a signal, a NaN loss) and save everything."""
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS} if in_main_thread else {}
        try:
            status = self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            # Drop the DDP wrapper while the process group lives: a DDP reducer freed after
            # destroy_process_group() can deadlock in gloo's destructor and hang the job at exit.
            if isinstance(self.model, DistributedDataParallel):
                self.model = self.model.module
        if status == "INTERRUPTED" and self.stop_signal in previous and callable(previous[self.stop_signal]):
            previous[self.stop_signal](self.stop_signal, None)  # e.g. submitit's requeue on USR2
        return TrainResult(
            status=status,
            step=self.step,
            best_step=self.best_step,
            best_accuracy=self.best_accuracy,
            final_metrics=self.final_metrics,
            run_dir=self.run_dir,
            collapse_flags=list(self.collapse_flags),
        )

    def _loop(self) -> str:
        cfg = self.config.train
        resumed = self.try_resume()
        if not resumed:
            check_questions_fit(self.config, {name: len(self.splits.get(name)) for name in ("validation", "test")})
            self.reporter.log_params(self.config.flat())
            self.reporter.log_metrics(self.prompt_lengths(), 0)
            self.final_metrics = self.evaluate()
        steps = cfg.steps if self.trainable else 0
        progress = tqdm(total=steps, initial=min(self.step, steps), desc="train", disable=not distributed.is_main())
        while self.step < steps and not self.stopped_early:
            try:
                with self.timed(TIME_TRAIN):
                    logged = self.train_step()
            except NonFiniteLoss as error:
                log.error("stopping: %s", error)
                self.reporter.set_tags({"stop_reason": str(error)})
                return "NAN_LOSS"
            self.step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{logged['loss']:.3f}")
            self.reporter.log_metrics({**logged, LEARNING_RATE: self.scheduler.get_last_lr()[0]}, self.step)
            last = self.step == steps
            if self.step % cfg.eval_every == 0 or last:
                self.final_metrics = self.evaluate()
                if not last and self.should_stop_early():
                    log.info("early stop at step %d: no new best in %d evaluations", self.step, cfg.early_stop_patience)
                    self.stopped_early = True
                    self.save_state()
                    break
            if self.step % cfg.checkpoint_every == 0 or last:
                self.save_state()
            if distributed.broadcast_from_main(self.stop_signal is not None):
                self.save_state()
                return "INTERRUPTED"
        progress.close()
        if not self.final_metrics:  # resumed from a state saved before they were kept: evaluate now
            self.final_metrics = self.evaluate()
        self.finish()
        return "EARLY_STOPPED" if self.stopped_early else "FINISHED"

    def finish(self) -> None:
        """Save the final translator, restore and save the best, then test it if asked."""
        meta = TranslatorMeta(
            config=self.config,
            source_dim=self.bridge.source.hidden_size,
            target_dim=self.bridge.target.hidden_size,
            target_rms=float(self.translator.target_rms),
        )
        if distributed.is_main():
            final = save_translator(self.run_dir / "translator", self.translator, meta)
            self.reporter.log_artifact(final, "translator")
        self.translator.load_state_dict(self.best_state)  # every rank: the best weights
        if distributed.is_main():
            best = save_translator(self.run_dir / "best_translator", self.translator, meta)
            self.reporter.log_artifact(best, "best_translator")
            self.reporter.log_metrics(
                {BEST_BRIDGED_ACCURACY: self.best_accuracy, BEST_STEP: float(self.best_step)}, self.step
            )
        if self.config.eval.test_questions:
            self.evaluate_test()

    def evaluate_test(self) -> dict[str, float]:
        """The best translator and the baselines on held-out test questions (reported once)."""
        cfg = self.config.eval
        examples = self.splits.test[: cfg.test_questions]
        self.take_seconds()  # the test's own phases only
        with self.timed(TIME_BASELINES):
            outputs = text_baselines(self.bridge, examples, cfg) if cfg.baselines else {}
        evaluation = self.answer_and_measure(examples, outputs, self.best_step, {})
        seconds = self.take_seconds()
        if not distributed.is_main():
            return {}
        path = write_jsonl(evaluation.records, self.run_dir / TEST_FOLDER / TEST_EVAL_FILE)
        self.reporter.log_artifact(path, TEST_FOLDER)
        metrics = {f"{TEST_PREFIX}{k}": v for k, v in evaluation.metrics.items()}
        self.reporter.log_metrics({**metrics, **{f"{TEST_PREFIX}{k}": v for k, v in seconds.items()}}, self.step)
        log.info("test (best step %d): %s", self.best_step, json.dumps(metrics))
        return metrics


def train(
    config: RunConfig,
    run_dir: Path,
    reporter: Reporter | None = None,
    **kwargs,
) -> TrainResult:
    """Train one run end to end (resuming from `run_dir` if it holds a checkpoint)."""
    return Trainer(config, run_dir, reporter, **kwargs).run()
