import pytest

from launch.suites import SUITES, get_suite
from latentbridge.config import ConfigError


def test_every_suite_resolves_to_valid_configs():
    assert {"demo", "ablations", "ablation-b", "ablation-c", "phase2-swap", "single-gpu"} <= set(SUITES)
    for suite in SUITES.values():
        for name, config in suite.configs().items():
            assert config.suite == suite.name and config.name == name


def test_ablations_differ_where_the_study_says():
    runs = get_suite("ablations").configs()
    assert [runs[k].translator.num_tokens for k in ("1a", "1b", "2a", "2b")] == [64, 64, 32, 48]
    assert runs["1a"].loss.kl_weight > 0 and runs["1b"].loss.kl_weight == 0  # 1b really is "fixes off"
    assert runs["1a"].train.early_stop_patience == 5 and runs["1b"].train.early_stop_patience == 0
    assert runs["1a"].source_model == "mistralai/Mistral-7B-Instruct-v0.3"
    assert runs["1a"].loss.info_nce_weight == 0.05 and runs["1a"].seed == 1234
    assert runs["1a"].eval.split == "validation"  # model selection never on test


def test_overrides_put_every_suite_on_the_embedded_pair():
    runs = get_suite("ablations").configs({"source_model": "smollm2-135m", "target_model": "gemma3-270m"})
    assert {c.source_model for c in runs.values()} == {"smollm2-135m"}
    with pytest.raises(ConfigError, match="translator.num_tokens=0"):
        get_suite("ablations").configs({"translator.num_tokens": "0"})


def test_prompt_teacher_switches_to_soft_only():
    swap = get_suite("phase2-swap").configs({"eval.prompt_mode": "soft_plus_text"})
    config = next(iter(swap.values()))
    assert config.translator.dit_teacher == "prompt" and config.eval.prompt_mode == "soft_only"
    assert config.source_model.startswith("meta-llama")


def test_unknown_suite_names_the_known_ones():
    with pytest.raises(KeyError, match="known suites"):
        get_suite("nope")


def test_the_faster_carry_bridge_differs_from_lm_nce_only_in_its_step_size():
    configs = get_suite("embedded-carry").configs()
    for direction in ("s2g", "g2s"):
        plain, fast = (configs[f"{direction}-{name}"].flat() for name in ("lm-nce", "lm-nce-lr1e-3"))
        plain.pop("name"), fast.pop("name")
        assert {k: (plain[k], fast[k]) for k in plain if plain[k] != fast[k]} == {"optim.lr": (3e-4, 1e-3)}
        for seed in (2, 3):  # its seeds differ from it in the seed alone
            other = configs[f"{direction}-lm-nce-lr1e-3-seed{seed}"].flat()
            other.pop("name")
            assert {k: other[k] for k in fast if fast[k] != other[k]} == {"seed": seed}


def test_the_longer_carry_runs_differ_from_their_1000_step_runs_in_length_and_evaluation_spacing_alone():
    configs = get_suite("embedded-carry").configs()
    for direction in ("s2g", "g2s"):
        for short, long in (("lm-nce-lr1e-3", "lm-nce-lr1e-3-2k"), ("no-source", "no-source-2k"), ("trained-text", "trained-text-2k")):
            a, b = configs[f"{direction}-{short}"].flat(), configs[f"{direction}-{long}"].flat()
            a.pop("name"), b.pop("name")
            assert {k: (a[k], b[k]) for k in a if a[k] != b[k]} == {
                "train.steps": (1000, 2000), "train.eval_every": (250, 500), "train.checkpoint_every": (250, 500),
            }, (direction, long)
        for seed in (2, 3):  # the longer bridge's seeds differ from it in the seed alone
            base, other = configs[f"{direction}-lm-nce-lr1e-3-2k"].flat(), configs[f"{direction}-lm-nce-lr1e-3-2k-seed{seed}"].flat()
            base.pop("name"), other.pop("name")
            assert {k: other[k] for k in base if base[k] != other[k]} == {"seed": seed}
    tags = get_suite("embedded-carry").run_tags
    assert tags["s2g-lm-nce-lr1e-3-2k-seed3"]["seed_of"] == "lm-nce-lr1e-3-2k"


# --------------------------------------------------------------------------- grids
def test_a_grid_runs_each_member_once_per_label_with_the_labels_settings_over_the_members():
    """`expand`: the study on the embedded pair is the ablations suite x direction x task: every
    member under every combination, named `<direction>-<task>-<member>`, the member's own
    changes kept where the grids say nothing (K of 2a and 2b, 1b's fixes off), the grids' settings
    over the suite's base (the embedded models, the task), tagged with each label and the member."""
    from launch.suites import expand, get_grid

    ablations = get_suite("ablations")
    study = expand(ablations, [get_grid("direction"), get_grid("task")])
    configs = study.configs()
    assert len(configs) == 2 * 2 * len(ablations.runs) and study.name == "ablations"
    assert list(configs)[:2] == ["s2g-synthetic-1a", "s2g-synthetic-1b"]
    alone = ablations.configs()
    for name, config in configs.items():
        direction, task, member = name.split("-", 2)
        assert (config.source_model, config.target_model) == (
            ("smollm2-135m", "gemma3-270m") if direction == "s2g" else ("gemma3-270m", "smollm2-135m"))
        assert config.data.source == task
        assert config.translator.num_tokens == alone[member].translator.num_tokens
        assert config.translator.kind == alone[member].translator.kind and config.loss.kl_weight == alone[member].loss.kl_weight
        assert study.tags(name) == {**ablations.tags(member), "suite_member": name, "direction": direction, "task": task,
                                    "grid_member": member}
    # 500 validation questions for both tasks (the "where the data allows"), as many as are evaluated
    assert {(c.data.val_size, c.eval.num_questions, c.eval.test_questions) for c in configs.values()} == {(500, 500, 500)}
    # the swap suite's own (swapped) pair gives way to the direction's
    swap = expand(get_suite("phase2-swap"), [get_grid("direction")]).configs()
    assert swap["s2g-swap-prompt-teacher"].source_model == "smollm2-135m"
    assert swap["s2g-swap-prompt-teacher"].eval.prompt_mode == "soft_only"  # the prompt teacher still switches it


def test_grids_are_named_once_and_unknown_ones_name_the_known_ones():
    from launch.suites import GRIDS, expand, get_grid

    assert expand(get_suite("ablations"), []) is get_suite("ablations")
    with pytest.raises(ConfigError, match=r"\['task'\] named more than once"):
        expand(get_suite("ablations"), [get_grid("task"), get_grid("direction"), get_grid("task")])
    with pytest.raises(KeyError, match="known grids") as raised:
        get_grid("directions")
    assert all(name in str(raised.value) for name in GRIDS)


@pytest.mark.parametrize("suite, grids", [("ablations", ["direction", "task"]), ("phase2-swap", ["direction", "task"]),
                                          ("embedded-carry", [])])
def test_every_bridge_of_a_research_suite_has_both_trained_controls(suite, grids):
    """As the registry matches them (same pair, task, K, steps, batch): each bridge of the study,
    on every cell of its grids, has a trained no-source and a trained text control beside it;
    without them the verdicts can say no headline (the reference suite had controls at K=64 alone)."""
    from launch.suites import expand, get_grid
    from registry.facts import control_role

    study = expand(get_suite(suite), [get_grid(name) for name in grids])
    params = {name: {k: str(v) for k, v in config.flat().items()} for name, config in study.configs().items()}
    bridges = [name for name, p in params.items() if p["translator.kind"] != "soft_prompt"]
    assert len(bridges) >= 4
    for bridge in bridges:
        roles = {control_role(p, params[bridge]) for name, p in params.items() if name != bridge}
        assert {"no_source", "trained_text"} <= roles, f"{suite}/{bridge} lacks a trained control of its K"
