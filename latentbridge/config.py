"""What a run is: typed, validated dataclass configs and `key=value` overrides.

A `RunConfig` holds everything that decides a training run. Each section validates itself
when it is built, so a bad value fails at once with the field name and what is allowed.
Overrides use dotted keys: `translator.num_tokens=32`, `source_model=gemma3-270m`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence, get_args, get_origin, get_type_hints

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range."""


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def yes_no(word: str) -> bool | None:
    """True for one of TRUE_WORDS, False for one of FALSE_WORDS (any case), None for anything else."""
    word = word.lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def _env_word(name: str) -> str:
    return os.environ.get(name, "").strip().lower()


def env_flag(name: str, default: bool) -> bool:
    """A yes/no switch read from the environment variable `name`. On by default: off only for
    one of FALSE_WORDS. Off by default: on only for one of TRUE_WORDS. Case and spaces ignored."""
    raw = _env_word(name)
    return raw not in FALSE_WORDS if default else raw in TRUE_WORDS


def env_switch(name: str, default: bool, choices: dict[str, Any]) -> Any:
    """A yes/no switch (`env_flag`) whose variable also takes the words of `choices` (lower
    case), each giving its own value. Strict, unlike `env_flag`: any other value that is not
    empty raises a ValueError naming the variable, the value and the accepted values."""
    word = _env_word(name)
    if word in choices:
        return choices[word]
    if word and yes_no(word) is None:
        accepted = [*TRUE_WORDS, *FALSE_WORDS, *choices]
        raise ValueError(f"{name}={os.environ[name]!r} is not an accepted value; use one of {accepted} (or leave it unset)")
    return env_flag(name, default)


def env_choice(name: str, choices: Sequence[str]) -> str | None:
    """One of `choices` (lower case) read from the environment variable `name`, case and spaces
    ignored; None when unset or empty. Any other value raises a ValueError naming the variable,
    the value and the accepted values."""
    word = _env_word(name)
    if word and word not in choices:
        raise ValueError(f"{name}={os.environ[name]!r} is not an accepted value; use one of {list(choices)} (or leave it unset)")
    return word or None


def _check_choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _check_positive(section: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{name}={value!r} must be {bound}")


def _check_finite(obj: Any, section: str) -> None:
    """Every float field must hold a finite number: nan and inf slip past every range check."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{f.name}={value!r} must be a finite number")


def _check_literals(obj: Any, section: str) -> None:
    """Every field typed `Literal[...]` must hold one of its values."""
    for f in dataclasses.fields(obj):
        hint = get_type_hints(type(obj))[f.name]
        if get_origin(hint) is Literal:
            _check_choice(section, f.name, getattr(obj, f.name), get_args(hint))


@dataclass(frozen=True)
class DataConfig:
    """Where questions come from and how prompts are built."""

    source: Literal["synthetic", "gsm8k", "jsonl"] = "synthetic"
    hub_id: str = "openai/gsm8k"
    hub_config: str = "main"
    train_file: str = ""  # for source=jsonl
    test_file: str = ""  # for source=jsonl
    num_shots: int = 8
    fewshot_seed: int = 42
    val_size: int = 200  # carved from train; model selection never sees test
    split_seed: int = 0
    synthetic_train_size: int = 2000
    synthetic_test_size: int = 500
    synthetic_seed: int = 7
    source_reads: Literal["fewshot_prompt", "question"] = "fewshot_prompt"
    # drop train questions that repeat one in train or test, so that no question is in two splits
    # (the synthetic generator draws both from one space: at 20,000 train questions 19 of the 500
    # test questions were in train too). false: the splits of runs before session 20
    drop_repeats: bool = True

    def __post_init__(self) -> None:
        _check_finite(self, "data")
        _check_literals(self, "data")
        _check_positive("data", "num_shots", self.num_shots, allow_zero=True)
        _check_positive("data", "val_size", self.val_size)
        if self.source == "jsonl" and not (self.train_file and self.test_file):
            raise ConfigError("data.source=jsonl needs data.train_file and data.test_file")


@dataclass(frozen=True)
class TranslatorConfig:
    """The translator that turns source hidden states into K soft tokens."""

    # soft_prompt: K learned vectors that read nothing (the no-source and trained-text controls)
    kind: Literal["cross_attention", "dit", "passthrough", "soft_prompt"] = "cross_attention"
    num_tokens: int = 64  # K
    width: int = 1024  # bottleneck width d
    depth: int = 8
    heads: int = 16
    dropout: float = 0.1
    source_layer: int = -1  # -1 last hidden layer, 0 embeddings
    injection: Literal["prepend", "adapter"] = "prepend"
    adapter_scale: float = 1.0
    # the diffusion-transformer bridge (kind=dit)
    dit_width: int = 512
    dit_depth: int = 6
    dit_heads: int = 8
    dit_pool: Literal["mean", "attention"] = "mean"
    dit_teacher: Literal["answer", "prompt"] = "answer"
    dit_steps_train: int = 2
    dit_steps_eval: int = 4
    dit_noise_seed: int = 0  # evaluation noise: the same weights always give the same tokens

    def __post_init__(self) -> None:
        _check_finite(self, "translator")
        _check_literals(self, "translator")
        for name in ("dit_width", "dit_depth", "dit_heads", "dit_steps_train", "dit_steps_eval"):
            _check_positive("translator", name, getattr(self, name))
        if self.dit_width % self.dit_heads:
            raise ConfigError(
                f"translator.dit_width={self.dit_width} must be divisible by translator.dit_heads={self.dit_heads}"
            )
        for name in ("num_tokens", "width", "depth", "heads"):
            _check_positive("translator", name, getattr(self, name))
        if self.width % self.heads:
            raise ConfigError(
                f"translator.width={self.width} must be divisible by translator.heads={self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"translator.dropout={self.dropout} must be in [0, 1)")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (0 turns a term off) and their schedules."""

    lm_weight: float = 1.0  # next-token loss on the gold solution
    kl_weight: float = 0.03  # KL to the target reading the full text prompt
    kl_tokens: int = 32  # on the first N answer positions
    info_nce_weight: float = 0.05  # pooled soft tokens vs the target's embedding of the question
    info_nce_temperature: float = 0.07
    prompt_alignment_weight: float = 0.0  # MSE of soft tokens to the question's target embeddings
    token_alignment_weight: float = 0.0  # MSE of soft tokens to the bridge teacher
    flow_weight: float = 0.0  # rectified-flow loss of the DiT bridge
    # the target, reading only [BOS][soft tokens]"Q:", writes the question back: a term that
    # pays only for what the soft tokens say about the question (no answer format to learn)
    reconstruction_weight: float = 0.0
    # curriculum: the first N steps train on the content terms alone (reconstruction, InfoNCE);
    # the answer (lm, kl), alignment and flow terms join after them
    content_first_steps: int = 0

    def __post_init__(self) -> None:
        _check_finite(self, "loss")
        for f in dataclasses.fields(self):
            _check_positive("loss", f.name, getattr(self, f.name), allow_zero=True)
        _check_positive("loss", "kl_tokens", self.kl_tokens)
        if self.content_first_steps and not (self.reconstruction_weight or self.info_nce_weight):
            raise ConfigError(
                f"loss.content_first_steps={self.content_first_steps} trains on the content terms alone,"
                " but loss.reconstruction_weight and loss.info_nce_weight are both 0: set one of them"
                " or set loss.content_first_steps=0"
            )
        _check_positive("loss", "info_nce_temperature", self.info_nce_temperature)
        if not any(getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_weight")):
            raise ConfigError("every loss.*_weight is 0: there is nothing to train on")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then linear decay."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    warmup_steps: int = 200
    grad_clip: float = 1.0
    gate_lr_multiplier: float = 3.0

    def __post_init__(self) -> None:
        _check_finite(self, "optim")
        _check_positive("optim", "lr", self.lr)
        _check_positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("optim", "warmup_steps", self.warmup_steps, allow_zero=True)
        _check_positive("optim", "grad_clip", self.grad_clip)
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    steps: int = 2000
    batch_size: int = 2
    eval_every: int = 250
    checkpoint_every: int = 250
    max_answer_tokens: int = 256
    early_stop_patience: int = 5  # evaluations without a new best before stopping; 0 = never
    collapse_invalid_jump: float = 0.5  # flag when the bridged invalid rate rises this much
    compile_frozen: bool = False  # torch.compile the frozen models' decoder blocks for training
    # which evaluation's translator is "best" (saved, tested) when bridged accuracy ties: the one
    # carrying more content (content/bits_transmitted_low; needs eval.content_metrics), or the
    # earliest. At the floor every evaluation ties at 0, and "earliest" tested the untrained
    # translator of step 0 (phase2-swap/s2g-synthetic-swap-prompt-teacher, session 16)
    best_tiebreak: Literal["content_bits", "earliest"] = "content_bits"

    def __post_init__(self) -> None:
        _check_finite(self, "train")
        _check_literals(self, "train")
        for f in dataclasses.fields(self):
            if f.type in (bool, "bool") or isinstance(getattr(self, f.name), str):  # checked above
                continue
            allow_zero = f.name in ("early_stop_patience", "collapse_invalid_jump")
            _check_positive("train", f.name, getattr(self, f.name), allow_zero=allow_zero)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: which questions, how many tokens, how the target is prompted."""

    num_questions: int = 200  # no more than the split holds (data.val_size for validation)
    split: Literal["validation", "test"] = "validation"  # model selection uses validation
    batch_size: int = 16
    max_new_tokens: int = 256
    # what the target reads after the soft tokens: the answer cue alone, the question and the
    # cue (no exemplars), or the whole 8-shot prompt
    prompt_mode: Literal["soft_only", "soft_plus_question", "soft_plus_text"] = "soft_only"
    baselines: bool = True
    test_questions: int = 0  # after training: the best translator on this many test questions
    # what crosses the bridge (latentbridge.content): teacher-forced NLLs of the gold solution
    # under the text, own, another question's and no soft tokens, and mismatched generation
    content_metrics: bool = True
    content_negatives: int = 15  # other questions' soft tokens each question is ranked against
    content_seed: int = 0  # of the derangement and the negatives: the same every evaluation

    def __post_init__(self) -> None:
        _check_finite(self, "eval")
        _check_literals(self, "eval")
        _check_positive("eval", "test_questions", self.test_questions, allow_zero=True)
        for name in ("num_questions", "batch_size", "max_new_tokens", "content_negatives"):
            _check_positive("eval", name, getattr(self, name))
        if self.split == "test" and self.test_questions:
            raise ConfigError(
                f"eval.split=test picks the best translator on test questions, and eval.test_questions="
                f"{self.test_questions} would then test it on those same questions; select on eval.split=validation"
                " (questions held out of train), or set eval.test_questions=0"
            )
        if self.content_metrics and (self.num_questions < 2 or self.test_questions == 1):
            raise ConfigError(
                f"eval.content_metrics needs at least 2 questions to swap soft tokens between (got"
                f" eval.num_questions={self.num_questions}, eval.test_questions={self.test_questions});"
                " evaluate more questions or set eval.content_metrics=false"
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides one training run."""

    name: str = "run"
    suite: str = ""
    source_model: str = "smollm2-135m"
    target_model: str = "gemma3-270m"
    seed: int = 1234
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    translator: TranslatorConfig = field(default_factory=TranslatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check_finite(self, "run")
        _check_literals(self, "run")
        if not self.source_model or not self.target_model:
            raise ConfigError("source_model and target_model must be set")
        kind = self.translator.kind
        if self.loss.info_nce_weight and self.train.batch_size < 2:
            raise ConfigError("loss.info_nce_weight > 0 needs train.batch_size >= 2 (in-batch negatives)")
        if self.loss.reconstruction_weight and self.translator.injection != "prepend":
            raise ConfigError(
                "loss.reconstruction_weight > 0 needs translator.injection=prepend (the target reads the"
                f" soft tokens before a two-token cue; got {self.translator.injection!r})"
            )
        if self.loss.flow_weight and kind != "dit":
            raise ConfigError(f"loss.flow_weight > 0 needs translator.kind=dit (got {kind!r})")
        if kind == "dit" and self.translator.dit_teacher == "prompt" and self.eval.prompt_mode != "soft_only":
            # the prompt teacher makes the soft tokens stand in for the prompt: never show both
            log.info("translator.dit_teacher=prompt: switching eval.prompt_mode to soft_only")
            object.__setattr__(self, "eval", dataclasses.replace(self.eval, prompt_mode="soft_only"))

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. {'translator.num_tokens': 64}: MLflow params."""
        return flatten(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        return apply_overrides(cls(), flatten(values))

    def override(self, *assignments: str) -> "RunConfig":
        """Apply `key=value` strings, e.g. cfg.override('translator.num_tokens=32')."""
        return apply_overrides(self, parse_assignments(assignments))


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_assignments(assignments: typing.Iterable[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        parsed[key.strip()] = value.strip()
    return parsed


def _coerce(hint: Any, raw: Any, key: str) -> Any:
    """Turn an override value (often a string) into the field's declared type."""
    if not isinstance(raw, str):
        if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return raw
    if get_origin(hint) is Literal:
        return raw
    try:
        if hint is bool:
            value = yes_no(raw)
            if value is None:
                raise ValueError(raw)
            return value
        if hint in (int, float):
            return hint(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {hint.__name__}") from None
    return raw


def apply_overrides(config: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of a (nested) dataclass config with dotted overrides applied.

    Every section is rebuilt through its constructor, so validation runs again.
    """
    hints = get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ConfigError(f"unknown config key {prefix + key!r}; known keys: {sorted(names)}")
        if rest:
            if not dataclasses.is_dataclass(hints[head]):
                raise ConfigError(f"{prefix + head!r} has no sub-keys (got {prefix + key!r})")
            nested.setdefault(head, {})[rest] = value
        elif dataclasses.is_dataclass(hints[head]):
            if not isinstance(value, dict):
                raise ConfigError(f"{key!r} is a section; set its fields as {key}.<field>=value")
            nested.setdefault(head, {}).update(flatten(value))
        else:
            own[head] = _coerce(hints[head], value, prefix + key)
    for head, sub in nested.items():
        own[head] = apply_overrides(getattr(config, head), sub, f"{prefix}{head}.")
    return dataclasses.replace(config, **own)


def check_questions_fit(config: RunConfig, held: Mapping[str, int]) -> None:
    """Refuse a run that would evaluate fewer questions than its config says (its params would
    claim the larger number): `held` is how many questions each split holds, where known."""
    cfg = config.eval
    asked = [(f"eval.num_questions={cfg.num_questions}", cfg.split, cfg.num_questions)]
    if cfg.test_questions:
        asked.append((f"eval.test_questions={cfg.test_questions}", "test", cfg.test_questions))
    for setting, split, count in asked:
        if split in held and held[split] < count:
            grow = " (or raise data.val_size, which carves it from train)" if split == "validation" else ""
            raise ConfigError(
                f"{setting} asks for more questions than the {split} split holds ({held[split]}): set it to"
                f" {held[split]} or fewer{grow}"
            )
