"""Broken model files and impossible source layers fail naming the file or value (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import make_tiny_lm, write_tiny_gguf

from latentbridge import models
from latentbridge.bridge import Bridge
from latentbridge.config import ConfigError
from latentbridge.models import EmbeddedModel, UnreadableModelFileError, load_frozen_lm


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    source = make_tiny_lm(tmp_path_factory.mktemp("gguf_src") / "src", tokenizer="bpe", hidden=32, layers=2)
    return write_tiny_gguf(source, source / "tiny.gguf").read_bytes()


def _cut(data: bytes, how: str) -> bytes:
    return {"empty": b"", "header": data[:100], "half": data[: len(data) // 2]}[how]


@pytest.mark.parametrize("how", ["empty", "header", "half"])
def test_broken_gguf_file_is_named_with_the_way_out(tmp_path: Path, gguf_bytes: bytes, how: str, isolated_cache: Path) -> None:
    path = tmp_path / f"{how}.gguf"
    path.write_bytes(_cut(gguf_bytes, how))
    with pytest.raises(UnreadableModelFileError) as caught:
        load_frozen_lm(str(path))
    message = str(caught.value)
    assert str(path.resolve()) in message and "truncated" in message and "again" in message
    assert not any((isolated_cache / "models").iterdir())  # nothing half-converted is cached


def test_broken_embedded_gguf_names_the_file_and_the_reinstall_command(
    tmp_path: Path, gguf_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "lb_fake_embedded_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.gguf").write_bytes(gguf_bytes[: len(gguf_bytes) // 2])
    monkeypatch.syspath_prepend(str(package.parent))
    embedded = EmbeddedModel(package="lb_fake_embedded_model", pip_install="pip install lb-fake==1.0", gguf_file="model.gguf")
    monkeypatch.setitem(models.EMBEDDED_MODELS, "fake-embedded", embedded)
    with pytest.raises(UnreadableModelFileError) as caught:
        load_frozen_lm("fake-embedded")
    message = str(caught.value)
    assert str((package / "model.gguf").resolve()) in message
    assert "pip install lb-fake==1.0 --force-reinstall" in message


def test_broken_cache_entry_is_named_with_delete_advice(tmp_path: Path, gguf_bytes: bytes, isolated_cache: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(gguf_bytes)
    load_frozen_lm(str(path))
    (cached,) = (isolated_cache / "models").iterdir()
    weights = cached / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(UnreadableModelFileError, match=rf"cannot read the cached conversion.*delete the cache entry \(rm -r {cached}\)"):
        load_frozen_lm(str(path))


def test_source_layer_out_of_range_names_value_model_and_range(tiny_config, tiny_pair) -> None:
    source_name, target_name = tiny_pair
    source, target = load_frozen_lm(source_name), load_frozen_lm(target_name)
    assert source.num_layers == 2
    for layer in (99, 3, -4):
        config = tiny_config.override(f"translator.source_layer={layer}")
        with pytest.raises(ConfigError, match=rf"translator.source_layer={layer} .*{source_name}.* -3 to 2"):
            Bridge(config, source, target, [])
    for layer in (0, 2, -1, -3):  # every hidden state the source has
        Bridge(tiny_config.override(f"translator.source_layer={layer}"), source, target, [])


def test_unreadable_model_directory_is_named_with_the_way_out(tmp_path: Path) -> None:
    """A local model directory whose weights were cut short (an interrupted copy) fails naming the
    directory and what to do, as a broken GGUF or cache entry does, not with safetensors' bare
    'invalid header length'."""
    path = make_tiny_lm(tmp_path / "cut", tokenizer="bpe", hidden=32, layers=2)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(UnreadableModelFileError) as caught:
        load_frozen_lm(str(path))
    message = str(caught.value)
    assert str(path) in message and "again" in message and "SafetensorError" in message


def test_directory_holding_only_a_gguf_names_the_file_to_pass(tmp_path: Path, gguf_bytes: bytes) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "tiny.gguf").write_bytes(gguf_bytes)
    with pytest.raises(ValueError, match=rf"{folder}.*config\.json.*pass the file itself: {folder / 'tiny.gguf'}"):
        load_frozen_lm(str(folder))
