"""The one contract between the floors: latentbridge imports nothing of registry or launch, and
the trainer and the registry compute the compression ratio with the one formula."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import latentbridge
from latentbridge.metric_names import COMPRESSION_RATIO, PROMPT_TOKENS_MEAN, compression_ratio

UPPER_FLOORS = ("registry", "launch")


def imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the module, in functions too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_science_imports_neither_registry_nor_launch():
    root = Path(latentbridge.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 20  # the walk found the package
    offending = [
        f"{path.relative_to(root.parent)}:{line} imports {package}"
        for path in modules
        for line, package in imported_packages(ast.parse(path.read_text(), str(path)))
        if package in UPPER_FLOORS
    ]
    assert offending == []


def test_the_import_walk_sees_lazy_imports():
    source = "def f():\n    from registry.runs import open_run\n\nclass C:\n    def g(self):\n        import launch.cli\n"
    assert imported_packages(ast.parse(source)) == [(2, "registry"), (6, "launch")]


def test_compression_is_prompt_over_what_the_target_reads_instead():
    assert compression_ratio(1000.0, 50, "soft_only") == 20.0
    assert compression_ratio(1000.0, 50, "soft_plus_question") == 20.0
    assert compression_ratio(1000.0, 50, "soft_plus_text") == pytest.approx(1000 / 1050)  # below 1: none


@pytest.mark.parametrize("prompt_mode", ["soft_only", "soft_plus_text"])
def test_trainer_and_registry_agree_on_the_compression_ratio(tiny_config, prompt_mode):
    """What the trainer logs at step 0 is what the registry computes from the logged prompt
    length, and the registry's own count (for runs without it) gives the same length."""
    from latentbridge.train import Trainer
    from registry.facts import RunFacts
    from registry.prompt_length import mean_prompt_tokens

    config = tiny_config.override(f"eval.prompt_mode={prompt_mode}")
    trainer = Trainer(config, Path("unused"))
    logged = trainer.prompt_lengths()
    facts = RunFacts(
        run_id="r", name="tiny", suite="", experiment_id="0", status="FINISHED", start_time=0,
        params={k: str(v) for k, v in config.flat().items()}, tags={}, metrics=logged, history={}, evals=[],
        prompt_tokens_mean=logged[PROMPT_TOKENS_MEAN],
    )
    assert facts.compression_ratio == logged[COMPRESSION_RATIO]
    assert (logged[COMPRESSION_RATIO] < 1) == (prompt_mode == "soft_plus_text")
    questions = [ex.question for ex in trainer.eval_examples]
    assert mean_prompt_tokens(config, questions) == logged[PROMPT_TOKENS_MEAN]
