import pytest

from latentbridge.config import ConfigError, RunConfig


def test_overrides_are_typed_and_nested():
    config = RunConfig().override("translator.num_tokens=32", "optim.lr=3e-4", "source_model=x", "eval.baselines=false")
    assert config.translator.num_tokens == 32
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.source_model == "x"
    assert config.eval.baselines is False
    assert RunConfig().translator.num_tokens == 64  # the default is untouched


@pytest.mark.parametrize(
    "override, message",
    [
        ("translator.num_tokens=0", "translator.num_tokens=0 must be > 0"),
        ("translator.num_tokens=-3", "translator.num_tokens=-3 must be > 0"),
        ("eval.prompt_mode=everything", "choose one of ['soft_only', 'soft_plus_question', 'soft_plus_text']"),
        ("translator.colour=red", "unknown config key 'translator.colour'"),
        ("optim.lr=fast", "optim.lr='fast' is not a valid float"),
        ("translator.width=100", "divisible by translator.heads"),
        ("data.source=jsonl", "needs data.train_file and data.test_file"),
        ("notakeyvalue", "not of the form key=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        RunConfig().override(override)


def test_round_trip_through_dict_and_flat_params():
    config = RunConfig().override("translator.depth=3", "data.num_shots=4")
    assert RunConfig.from_dict(config.to_dict()) == config
    flat = config.flat()
    assert flat["translator.depth"] == 3 and flat["data.num_shots"] == 4
    assert all("." in key or key in {"name", "suite", "source_model", "target_model", "seed", "dtype", "output_dir"} for key in flat)
