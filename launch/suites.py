"""Named suites: each a base config and the runs that differ from it (what a study is)."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

from latentbridge.config import ConfigError, RunConfig

# The demo reads Gemma-3-270M into SmolLM2-135M: on a CPU the target's LM head (forward and
# backward over every answer token) is a training step's largest cost, and SmolLM2's 49k
# vocabulary makes it 5x smaller than Gemma's 262k (2.4 s against 3.6 s a step, BENCHMARKS.md).
EMBEDDED_PAIR = {"source_model": "gemma3-270m", "target_model": "smollm2-135m"}
REFERENCE_PAIR = {
    "source_model": "mistralai/Mistral-7B-Instruct-v0.3",
    "target_model": "meta-llama/Llama-3.1-8B-Instruct",
}
SWAPPED_PAIR = {"source_model": REFERENCE_PAIR["target_model"], "target_model": REFERENCE_PAIR["source_model"]}

# The reference study's settings (reference-study.md), without its defects.
REFERENCE = {
    **REFERENCE_PAIR,
    "dtype": "bfloat16",
    "train.compile_frozen": True,  # 0.458 -> 0.364 s a step at batch 8 on one H200 (BENCHMARKS.md)
    "seed": 1234,
    "data.source": "gsm8k",
    "data.num_shots": 8,
    "data.val_size": 500,  # held out of GSM8K's train split, for the 500 validation questions
    "eval.num_questions": 500,
    "eval.split": "validation",
    "eval.max_new_tokens": 256,
    "eval.batch_size": 50,
    "train.steps": 2000,
    "train.batch_size": 2,
    "train.eval_every": 250,
    "train.checkpoint_every": 250,
    "optim.lr": 1e-4,
    "optim.weight_decay": 0.01,
    "optim.warmup_steps": 200,
    "translator.num_tokens": 64,
    "translator.width": 1024,
    "translator.depth": 8,
    "translator.heads": 16,
    # Validation selects the step; the selected translator is then tested on held-out questions.
    "eval.test_questions": 500,
    # The reference source read the whole 8-shot prompt. With it the same-model positive control
    # carried nothing (InfoNCE at ln 8 for 600 steps, as many of another question's numbers in the
    # answers as of its own): the question is ~10% of 1.1k tokens, mostly the exemplars every row
    # shares. Reading the question alone, the control carries it (results/positive-control/).
    "data.source_reads": "question",
}
# "Stability fixes": the KL and InfoNCE terms, early stopping, warmup, a lower learning rate.
FIXES_ON = {
    "loss.kl_weight": 0.03,
    "loss.info_nce_weight": 0.05,
    "train.early_stop_patience": 5,
    "optim.warmup_steps": 200,
    "optim.lr": 1e-4,
}
FIXES_OFF = {
    "loss.kl_weight": 0.0,
    "loss.info_nce_weight": 0.0,
    "train.early_stop_patience": 0,
    "optim.warmup_steps": 0,
    "optim.lr": 3e-4,
}


# Trained controls, each trained by the same loop on the same data as the bridges beside it:
# NO_SOURCE learns K soft tokens that read nothing, in the bridge's prompt mode (what a bridge that
# carries no question reduces to: the floor a bridge must beat); TRAINED_TEXT gives the target the
# same K trained vectors and the question's text (the fair reference for a bridge trained on the
# task: an untrained 8-shot target-alone flatters it). Neither reads the source, so neither needs
# the InfoNCE term (its soft tokens are the same for every question).
NO_SOURCE = {"translator.kind": "soft_prompt", "loss.info_nce_weight": 0.0, "loss.prompt_alignment_weight": 0.0}
TRAINED_TEXT = {**NO_SOURCE, "eval.prompt_mode": "soft_plus_question"}
CONTROL_TAGS = {"no-source": {"role": "control", "control": "no_source"}, "trained-text": {"role": "control", "control": "trained_text"}}
LAUNCHER_KEYS = ("name", "suite")  # set by the launcher on every run: they name it, never differ from the base


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    base: dict[str, object]
    runs: dict[str, dict[str, object]] = field(default_factory=lambda: {"main": {}})
    tasks: int | None = None  # processes per run; None = one per GPU
    run_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # e.g. {"1a": {"fixes": "on"}}
    sequential: bool = False  # run the members one after another in one job
    preserve_each: bool = False  # preserve each finished run in the registry as it goes

    def tags(self, run_name: str) -> dict[str, str]:
        return {"suite": self.name, "suite_member": run_name, **self.run_tags.get(run_name, {})}

    def configs(self, overrides: dict[str, str] | None = None) -> dict[str, RunConfig]:
        """Each run's resolved config: base, then the run's changes, then the user's overrides."""
        out = {}
        for run_name, changes in self.runs.items():
            values = {**self.base, **changes, **(overrides or {}), "name": run_name, "suite": self.name}
            out[run_name] = RunConfig().override(*(f"{k}={v}" for k, v in values.items()))
        return out

    def base_config(self) -> RunConfig:
        """The base alone, resolved: no member's changes, no overrides."""
        try:
            return RunConfig().override(*(f"{k}={v}" for k, v in self.base.items()))
        except ConfigError as error:
            raise ConfigError(f"suite {self.name!r}: its base is not a valid config on its own ({error})") from None


def config_diff(config: RunConfig, base: RunConfig) -> dict[str, Any]:
    """Dotted key -> value of `config`, for each key whose value differs from `base`'s."""
    base_values = base.flat()
    return {k: v for k, v in config.flat().items() if k not in LAUNCHER_KEYS and base_values.get(k) != v}


SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


register(
    Suite(
        name="demo",
        description=(
            "The embedded pair (Gemma-3-270M -> SmolLM2-135M) on the synthetic task, sized for a"
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
            # 60 steps, evaluated at step 0 (with the baselines) and at the end: 100 steps with an
            # evaluation at step 50 took 10 min 12 s - 10 min 30 s from a fresh clone (BENCHMARKS.md)
            "train.steps": 60,
            "train.batch_size": 4,
            "train.eval_every": 60,
            "train.checkpoint_every": 30,
            "train.max_answer_tokens": 64,
            # lr 1e-3 and InfoNCE at weight 1 (the embedded-carry recipe's step size, and its content
            # term made the main one): in 60 CPU steps the question crosses, 2.8 and 3.0 bits a question
            # (intervals [1.2, 4.6] and [1.3, 4.9], seeds 1234 and 2); either change alone, 0.61 and
            # 0.05 bits with intervals through 0; lr 3e-4 with weight 0.05, 0.01 (results/demo-probes/)
            "optim.lr": 1e-3,
            "loss.info_nce_weight": 1.0,
            "optim.warmup_steps": 10,
            "eval.num_questions": 20,
            "eval.batch_size": 20,
            "eval.max_new_tokens": 48,
            # 3 other questions' soft tokens a question for retrieval (chance 1/4), not 15: on a
            # 2-core CPU the content metrics took 35-67 s an evaluation with 15
            "eval.content_negatives": 3,
        },
        tasks=1,
        preserve_each=True,
    )
)


register(
    Suite(
        name="ablations",
        description=(
            "Phase 1: stability fixes on/off at K=64, and shorter soft prompts (K=32, 48),"
            " with trained no-source and text controls at each K."
        ),
        base=REFERENCE,
        runs={
            "1a": {**FIXES_ON},
            "1b": {**FIXES_OFF},
            "2a": {**FIXES_ON, "translator.num_tokens": 32, "translator.width": 768, "translator.depth": 4},
            "2b": {**FIXES_ON, "translator.num_tokens": 48, "translator.depth": 6},
            "no-source": {**FIXES_ON, **NO_SOURCE},
            "trained-text": {**FIXES_ON, **TRAINED_TEXT},
            # the same controls at 2a's and 2b's K (the reference study had them at K=64 alone,
            # which left its shorter bridges judged against an untrained target-alone)
            **{
                f"{control}-k{k}": {**FIXES_ON, **changes, "translator.num_tokens": k}
                for k in (32, 48)
                for control, changes in (("no-source", NO_SOURCE), ("trained-text", TRAINED_TEXT))
            },
        },
        run_tags={
            "1a": {"fixes": "on"}, "1b": {"fixes": "off"}, "2a": {"fixes": "on"}, "2b": {"fixes": "on"}, **CONTROL_TAGS,
            **{f"{control}-k{k}": CONTROL_TAGS[control] for k in (32, 48) for control in CONTROL_TAGS},
        },
    )
)

register(
    Suite(
        name="ablation-b",
        description="KL only: the KL term to the full-prompt teacher, no InfoNCE or alignment.",
        base={**REFERENCE, **FIXES_ON},
        runs={"kl-only": {"loss.info_nce_weight": 0.0, "loss.prompt_alignment_weight": 0.0}},
    )
)

register(
    Suite(
        name="ablation-c",
        description="KL + prompt alignment, no InfoNCE.",
        base={**REFERENCE, **FIXES_ON},
        runs={"kl-prompt-align": {"loss.info_nce_weight": 0.0, "loss.prompt_alignment_weight": 0.1}},
    )
)

DIT = {
    "translator.kind": "dit",
    "loss.flow_weight": 1.0,
    "loss.token_alignment_weight": 0.1,
}

register(
    Suite(
        name="phase2-swap",
        description=(
            "Phase 2: Llama -> Mistral with the DiT bridge and the prompt teacher, which turns"
            " evaluation to soft_only by itself (the soft tokens stand in for the prompt)."
        ),
        base={**REFERENCE, **SWAPPED_PAIR, **FIXES_ON, **DIT, "translator.dit_teacher": "prompt"},
        runs={
            "swap-prompt-teacher": {},
            "no-source": {**NO_SOURCE, "loss.flow_weight": 0.0, "loss.token_alignment_weight": 0.0},
            "trained-text": {**TRAINED_TEXT, "loss.flow_weight": 0.0, "loss.token_alignment_weight": 0.0},
        },
        run_tags=CONTROL_TAGS,
    )
)

# The positive control: source and target are the same model, so everything the target needs
# to answer is in the source's hidden states, and a working pipeline must carry it. On the
# synthetic task at K=64 each bridge must reach content/bits_transmitted_low > 0 and
# content/retrieval_top1 >= 0.5 before the tool's verdicts on real pairs mean anything.
# Settings, and why: the source reads the question alone (see REFERENCE); lr 3e-4, as in the one
# measured run that carried content (the research suites keep the reference's 1e-4 with its
# warmup); the KL term is off (its teacher is
# the same model reading the text: with the same model it adds nothing the LM loss lacks);
# batch 8 gives InfoNCE 7 in-batch negatives; 1,500 steps (InfoNCE 0.41 by then in the measured
# run). Each pair has its two trained controls beside it.
POSITIVE_CONTROL = {
    "dtype": "bfloat16",
    "data.source": "synthetic",
    "data.source_reads": "question",
    "data.val_size": 200,
    "translator.num_tokens": 64,
    "train.steps": 1500,
    "train.batch_size": 8,
    "train.eval_every": 250,
    "train.checkpoint_every": 250,
    "train.max_answer_tokens": 64,
    "train.early_stop_patience": 0,
    "optim.lr": 3e-4,
    "optim.warmup_steps": 100,
    "loss.kl_weight": 0.0,
    "loss.info_nce_weight": 0.05,
    "eval.num_questions": 200,
    "eval.test_questions": 500,
    "eval.batch_size": 64,
    "eval.max_new_tokens": 48,
}
# The registry judges a bridge only once a positive control on its target model has passed
# (registry/positive_control.py): the embedded models, and the reference pair's two models.
SAME_MODEL = {
    "smollm2-self": "smollm2-135m",
    "gemma3-self": "gemma3-270m",
    "llama3.1-8b-self": REFERENCE_PAIR["target_model"],
    "mistral-7b-self": REFERENCE_PAIR["source_model"],
}
register(
    Suite(
        name="positive-control",
        description=(
            "Same model on both ends (SmolLM2-135M, Gemma-3-270M, Llama-3.1-8B, Mistral-7B each to"
            " itself), synthetic, K=64: the bridge must carry the question (bits transmitted above 0,"
            " retrieval >= 0.5) before the registry judges bridges into that model; each with its"
            " no-source and trained-text controls (--only smollm2-self,... picks the models)."
        ),
        base=POSITIVE_CONTROL,
        runs={
            f"{pair}{suffix}": {"source_model": model, "target_model": model, **changes}
            for pair, model in SAME_MODEL.items()
            for suffix, changes in (("", {}), ("-no-source", NO_SOURCE), ("-trained-text", TRAINED_TEXT))
        },
        run_tags={
            f"{pair}{suffix}": {"pair": pair, **tags}
            for pair in SAME_MODEL
            for suffix, tags in (("", {"role": "bridge"}), ("-no-source", CONTROL_TAGS["no-source"]), ("-trained-text", CONTROL_TAGS["trained-text"]))
        },
        tasks=1,
    )
)

# Bridges between the two embedded models that carry the question (issue 17). The positive
# control's recipe (the source reads the question alone, LM + InfoNCE) at K=32, cross-family, and
# what is added to make the soft tokens say the question: the reconstruction term (the target
# retells the question from the soft tokens alone) from the first step, or first alone for 300
# steps (`loss.content_first_steps`: the soft tokens learn to say the question before the answer's
# format). Batch 32 (31 in-batch negatives, and a small model's step costs about the same at 8),
# 1,000 steps, 20,000 synthetic training questions (the generator is free: 32,000 draws see each
# about 1.6 times, so a translator cannot memorise its way to low loss). KL is off: its teacher reads
# the whole 8-shot prompt, the costliest forward, and the trained text control is the fairer
# reference. 500 validation and 500 test questions. Each direction and task has its two trained
# controls; the content-first bridge, the expected best, runs with three seeds.
CARRY = {
    **POSITIVE_CONTROL,
    "data.synthetic_train_size": 20000,
    "data.val_size": 500,
    "translator.num_tokens": 32,
    "translator.width": 768,
    "translator.depth": 4,
    "train.steps": 1000,
    "train.batch_size": 32,
    "eval.num_questions": 500,
    "eval.batch_size": 100,
}
GSM8K_TASK = {
    "data.source": "gsm8k",
    # batch 32 of 1,100-token texts and 256-token answers ran out of the H200's memory (session 6)
    "train.batch_size": 8,
    "train.max_answer_tokens": 256,
    "eval.max_new_tokens": 256,
    "eval.batch_size": 50,
}
DIRECTIONS = {
    "s2g": {"source_model": "smollm2-135m", "target_model": "gemma3-270m"},
    "g2s": {"source_model": "gemma3-270m", "target_model": "smollm2-135m"},
}
RECONSTRUCT = {"loss.reconstruction_weight": 1.0}
# evaluated every 500 steps: as many evaluations as a 1,000-step run, so three such runs fit one
# session's device time (a 1,000-step run took 13-14.5 min four at a time on one H200)
LONGER = {"train.steps": 2000, "train.eval_every": 500, "train.checkpoint_every": 500}
GSM8K_LONGER = {**LONGER, "train.eval_every": 1000}
CONTENT_FIRST = {**RECONSTRUCT, "loss.content_first_steps": 300}
CONTENT_CONTROLS = {"loss.reconstruction_weight": 0.0, "loss.content_first_steps": 0}
CARRY_MEMBERS: dict[str, tuple[dict[str, object], dict[str, str]]] = {
    "lm-nce": ({}, {"role": "bridge"}),
    "recon": (RECONSTRUCT, {"role": "bridge"}),
    "recon-first": (CONTENT_FIRST, {"role": "bridge"}),
    "recon-first-seed2": ({**CONTENT_FIRST, "seed": 2}, {"role": "bridge", "seed_of": "recon-first"}),
    "recon-first-seed3": ({**CONTENT_FIRST, "seed": 3}, {"role": "bridge", "seed_of": "recon-first"}),
    "lm-nce-seed2": ({"seed": 2}, {"role": "bridge", "seed_of": "lm-nce"}),
    "lm-nce-seed3": ({"seed": 3}, {"role": "bridge", "seed_of": "lm-nce"}),
    # every lm-nce bridge was still climbing steeply at its 1,000th step (session 7): a larger step
    # size, to see whether the bridge is limited by how far 1,000 steps take it
    "lm-nce-lr1e-3": ({"optim.lr": 1e-3}, {"role": "bridge"}),
    "lm-nce-lr1e-3-seed2": ({"optim.lr": 1e-3, "seed": 2}, {"role": "bridge", "seed_of": "lm-nce-lr1e-3"}),
    "lm-nce-lr1e-3-seed3": ({"optim.lr": 1e-3, "seed": 3}, {"role": "bridge", "seed_of": "lm-nce-lr1e-3"}),
    "no-source": ({**NO_SOURCE, **CONTENT_CONTROLS}, CONTROL_TAGS["no-source"]),
    "trained-text": ({**TRAINED_TEXT, **CONTENT_CONTROLS}, CONTROL_TAGS["trained-text"]),
    # the lr 1e-3 bridges were still rising at step 1,000 in both directions, three seeds each, and
    # their seeds spread 13-28 points (sessions 9-10): twice as long, with controls trained as long
    "lm-nce-lr1e-3-2k": ({"optim.lr": 1e-3, **LONGER}, {"role": "bridge"}),
    "no-source-2k": ({**NO_SOURCE, **CONTENT_CONTROLS, **LONGER}, CONTROL_TAGS["no-source"]),
    "trained-text-2k": ({**TRAINED_TEXT, **CONTENT_CONTROLS, **LONGER}, CONTROL_TAGS["trained-text"]),
    # SmolLM2 -> Gemma at 2,000 steps beat its trained text control by 7 points on test (session 11):
    # the issue asks three seeds of the best configuration of each direction
    "lm-nce-lr1e-3-2k-seed2": ({"optim.lr": 1e-3, **LONGER, "seed": 2}, {"role": "bridge", "seed_of": "lm-nce-lr1e-3-2k"}),
    "lm-nce-lr1e-3-2k-seed3": ({"optim.lr": 1e-3, **LONGER, "seed": 3}, {"role": "bridge", "seed_of": "lm-nce-lr1e-3-2k"}),
    "gsm8k-lm-nce": (GSM8K_TASK, {"role": "bridge"}),  # the synthetic task's best recipe (session 7)
    "gsm8k-no-source": ({**GSM8K_TASK, **NO_SOURCE, **CONTENT_CONTROLS}, CONTROL_TAGS["no-source"]),
    "gsm8k-trained-text": ({**GSM8K_TASK, **TRAINED_TEXT, **CONTENT_CONTROLS}, CONTROL_TAGS["trained-text"]),
    # GSM8K at 1,000 steps sat at the floor both ways while 6-32 bits crossed (sessions 7-10): the
    # synthetic task's best recipe (lr 1e-3, 2,000 steps) on it, evaluated every 1,000 steps (a
    # GSM8K evaluation of 500 questions writes up to 256 tokens each), with its controls as long
    "gsm8k-lm-nce-lr1e-3-2k": ({**GSM8K_TASK, "optim.lr": 1e-3, **GSM8K_LONGER}, {"role": "bridge"}),
    "gsm8k-no-source-2k": ({**GSM8K_TASK, **NO_SOURCE, **CONTENT_CONTROLS, **GSM8K_LONGER}, CONTROL_TAGS["no-source"]),
    "gsm8k-trained-text-2k": ({**GSM8K_TASK, **TRAINED_TEXT, **CONTENT_CONTROLS, **GSM8K_LONGER}, CONTROL_TAGS["trained-text"]),
}
register(
    Suite(
        name="embedded-carry",
        description=(
            "SmolLM2-135M <-> Gemma-3-270M, both directions, K=32: the positive control's recipe"
            " cross-family, plus the reconstruction term (from the start, or alone first), with the"
            " trained controls; synthetic (three seeds each of the plain and the content-first bridge) and GSM8K."
        ),
        base=CARRY,
        runs={
            f"{direction}-{member}": {**pair, **changes}
            for direction, pair in DIRECTIONS.items()
            for member, (changes, _) in CARRY_MEMBERS.items()
        },
        run_tags={
            f"{direction}-{member}": {"direction": direction, **tags}
            for direction in DIRECTIONS
            for member, (_, tags) in CARRY_MEMBERS.items()
        },
        tasks=1,
    )
)

register(
    Suite(
        name="single-gpu",
        description="The sequential single-GPU sweep; each finished run is preserved as it goes.",
        base={**REFERENCE, **FIXES_ON, **DIT},
        runs={
            "prompt_softonly": {"translator.dit_teacher": "prompt", "eval.prompt_mode": "soft_only"},
            "answer_softplus": {"translator.dit_teacher": "answer", "eval.prompt_mode": "soft_plus_text"},
        },
        tasks=1,
        sequential=True,
        preserve_each=True,
    )
)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known suites: {sorted(SUITES)}")
    return SUITES[name]


# --------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class Grid:
    """One axis of a study (`submit --grid NAME`): each label's settings. Every run of the suite
    is copied once per label, named `<label>-<run>`, tagged `<name>=<label>`, and given the label's
    settings after its own changes (before the user's overrides)."""

    name: str
    description: str
    values: dict[str, dict[str, object]]


GRIDS: dict[str, Grid] = {}


def register_grid(grid: Grid) -> Grid:
    GRIDS[grid.name] = grid
    return grid


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise KeyError(f"unknown grid {name!r}; known grids: {sorted(GRIDS)}")
    return GRIDS[name]


def expand(suite: Suite, grids: Sequence[Grid]) -> Suite:
    """`suite` run once per combination of the grids' labels: run `r` under labels `a` and `b` is
    `a-b-r`, with `a`'s then `b`'s settings over `r`'s changes, and the tags of `r`, `<axis>=<label>`
    for each grid and `grid_member=r`. The suite keeps its name (its MLflow experiment)."""
    axes = [grid.name for grid in grids]
    if len(set(axes)) < len(axes):
        raise ConfigError(f"--grid: {sorted({a for a in axes if axes.count(a) > 1})} named more than once")
    if not grids:
        return suite
    runs, tags = {}, {}
    for combination in itertools.product(*(grid.values.items() for grid in grids)):
        labels = [label for label, _ in combination]
        settings = {key: value for _, values in combination for key, value in values.items()}
        for member, changes in suite.runs.items():
            name = "-".join([*labels, member])
            runs[name] = {**changes, **settings}
            tags[name] = {**suite.run_tags.get(member, {}), **dict(zip(axes, labels)), "grid_member": member}
    return dataclasses.replace(suite, runs=runs, run_tags=tags)


# The study on the embedded pair (issue 17): the ablations and phase2-swap suites, both directions,
# both tasks, with the embedded models' sizes. Their own settings stay (K, losses, translator,
# 2,000 steps of batch 2, evaluations every 250 steps on 500 validation questions, 500 test
# questions); the task axis sets what the task needs, and 500 validation questions held out of
# the training split for both (the reference's GSM8K default is 200).
register_grid(
    Grid(
        name="direction",
        description="the embedded pair both ways: s2g SmolLM2-135M -> Gemma-3-270M, g2s the reverse",
        values=dict(DIRECTIONS),
    )
)
register_grid(
    Grid(
        name="task",
        description="the synthetic arithmetic task, or GSM8K (8-shot chain of thought)",
        values={
            "synthetic": {
                "data.source": "synthetic",
                "data.val_size": 500,
                "data.synthetic_train_size": 20000,
                "train.max_answer_tokens": 64,
                "eval.max_new_tokens": 48,
            },
            "gsm8k": {"data.source": "gsm8k", "data.val_size": 500, "train.max_answer_tokens": 256, "eval.max_new_tokens": 256},
        },
    )
)
