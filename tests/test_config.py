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


def test_an_environment_switch_reads_yes_and_no_words_either_way_round(monkeypatch):
    from latentbridge.config import env_flag

    monkeypatch.delenv("LB_TEST_SWITCH", raising=False)
    assert env_flag("LB_TEST_SWITCH", default=True) and not env_flag("LB_TEST_SWITCH", default=False)
    for word, on in (("1", True), (" Yes ", True), ("ON", True), ("0", False), ("false", False), (" off", False)):
        monkeypatch.setenv("LB_TEST_SWITCH", word)
        assert env_flag("LB_TEST_SWITCH", default=True) == on and env_flag("LB_TEST_SWITCH", default=False) == on, word
    # a word that is neither leaves a switch at its default, as every switch read it before
    monkeypatch.setenv("LB_TEST_SWITCH", "maybe")
    assert env_flag("LB_TEST_SWITCH", default=True) and not env_flag("LB_TEST_SWITCH", default=False)
