"""Named suites: each a base config and the runs that differ from it (what a study is)."""

from __future__ import annotations

from dataclasses import dataclass, field

from latentbridge.config import RunConfig

EMBEDDED_PAIR = {"source_model": "smollm2-135m", "target_model": "gemma3-270m"}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    base: dict[str, object]
    runs: dict[str, dict[str, object]] = field(default_factory=lambda: {"main": {}})
    tasks: int | None = None  # processes per run; None = one per GPU

    def configs(self, overrides: dict[str, str] | None = None) -> dict[str, RunConfig]:
        """Each run's resolved config: base, then the run's changes, then the user's overrides."""
        out = {}
        for run_name, changes in self.runs.items():
            values = {**self.base, **changes, **(overrides or {}), "name": run_name, "suite": self.name}
            out[run_name] = RunConfig().override(*(f"{k}={v}" for k, v in values.items()))
        return out


SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


register(
    Suite(
        name="demo",
        description=(
            "The embedded pair (SmolLM2-135M -> Gemma-3-270M) on the synthetic task, sized for a"
            " 2-core CPU: the source reads the question alone and the KL term is off (its teacher"
            " reads the whole 8-shot prompt, the most expensive forward on a CPU)."
        ),
        base={
            **EMBEDDED_PAIR,
            "data.source": "synthetic",
            "data.source_reads": "question",
            "loss.kl_weight": 0.0,
            "data.val_size": 64,
            "data.synthetic_train_size": 600,
            "translator.num_tokens": 16,
            "translator.width": 256,
            "translator.depth": 2,
            "translator.heads": 4,
            "train.steps": 60,
            "train.batch_size": 4,
            "train.eval_every": 30,
            "train.checkpoint_every": 30,
            "train.max_answer_tokens": 64,
            "optim.lr": 3e-4,
            "optim.warmup_steps": 10,
            "eval.num_questions": 20,
            "eval.batch_size": 20,
            "eval.max_new_tokens": 48,
        },
        tasks=1,
    )
)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known suites: {sorted(SUITES)}")
    return SUITES[name]
