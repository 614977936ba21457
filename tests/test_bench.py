"""`python -m latentbridge.bench --quick` runs end to end on the CPU and writes its records."""

from __future__ import annotations

import json

import pytest
import torch

from latentbridge.bench import __main__ as bench
from latentbridge.bench.generation_bench import STATIC_VARIANTS
from latentbridge.bench.shapes import SHAPES, random_model, weight_bytes_read_per_step


def test_reference_shapes_have_the_published_sizes():
    assert round(SHAPES["llama3.1-8b"].total_params / 1e9, 2) == 8.03
    assert round(SHAPES["mistral-7b"].total_params / 1e9, 2) == 7.25
    # grouped-query attention: 8 KV heads of 128, 32 layers, keys and values, bf16
    assert SHAPES["llama3.1-8b"].kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2


def test_random_model_matches_its_shape():
    model = random_model("tiny-llama", dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == SHAPES["tiny-llama"].total_params
    embed = SHAPES["tiny-llama"].embedding_params * 4
    assert weight_bytes_read_per_step(model) == SHAPES["tiny-llama"].total_params * 4 - embed


def test_quick_bench_writes_aggregate_and_samples(tmp_path, mlflow_store):
    out = tmp_path / "bench"
    code = bench.main(["--quick", "--device", "cpu", "--out", str(out), "--parts", "hardware,equality,gen,train,methods-ref,estimate", "--profile",
                       "--gen-variants", "static_matmul_attention"])
    results = json.loads((out / "bench.json").read_text())
    assert code == 0 and results["errors"] == {}
    assert results["equality"]["equal"]  # the static decoder gives plain generate's tokens
    row = results["gen"]["batches"]["4"]
    assert row["static"]["decode_tokens_per_s"] > 0 and row["plain"]["tokens_per_s"] > 0
    assert 0 < row["static"]["fraction_of_bound"]
    assert set(results["train"]["runs"]) == {"lm_b2", "lm_kl_b2"}
    profile = (out / "train_profile.txt").read_text()  # --profile: a table of where a step's time went
    assert "aten::mm" in profile and results["train"]["profile"].endswith("train_profile.txt")
    decode_profile = (out / "gen_profile.txt").read_text()  # and of 16 eager decode steps
    assert "scaled_dot_product_attention" in decode_profile and results["gen"]["profile"].endswith("gen_profile.txt")
    # and of each variant timed, under its own settings: two products in place of SDPA
    variant_profile = (out / "gen_profile_static_matmul_attention.txt").read_text()
    assert "aten::matmul" in variant_profile and "scaled_dot_product_attention" not in variant_profile
    assert row["static_matmul_attention"]["decode_tokens_per_s"] > 0
    methods = results["methods-ref"]["methods"]
    assert set(methods) == {"source-alone", "target-alone", "bridged-4", "bridged-8", "truncated-4", "truncated-8", "relay"}
    # a short soft prefix holds far less cache than the full text prompt
    assert methods["bridged-4"]["kv_bytes_mean"] < methods["target-alone"]["kv_bytes_mean"]
    samples = [json.loads(line) for line in (out / "methods_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 7 * 2 and {"latency_s", "ttft_s", "kv_bytes", "kv_read_bytes"} <= set(samples[0])
    # the relay's first token waits for the source's whole generation: that time is counted
    # upstream of the target (a truncated prompt has nothing upstream), and the relay reads a
    # longer prompt and holds the source's cache too (behaviour, not a timing race)
    relay = [s for s in samples if s["method"] == "relay"]
    truncated = [s for s in samples if s["method"] == "truncated-4"]
    assert len(relay) == len(truncated) == 2
    assert all(s["upstream_s"] > 0 and s["ttft_s"] >= s["upstream_s"] for s in relay)
    assert all(s["upstream_s"] == 0 for s in truncated)
    assert methods["relay"]["prompt_tokens_mean"] > methods["truncated-4"]["prompt_tokens_mean"]
    assert methods["relay"]["kv_bytes_mean"] > methods["truncated-4"]["kv_bytes_mean"]
    assert results["estimate"]["per_batch_size"]["2"]["total_h"] > 0

    # the bench writes a run record, never MLflow; `python -m registry import` replays it, into one run
    from registry.import_runs import import_records
    from registry.runs import client

    record = out / bench.RECORD
    assert (record / "params.json").is_file() and client().search_experiments(filter_string="name = 'bench'") == []
    (first,) = import_records([record], bench.EXPERIMENT)
    run = client().get_run(first.run_id)
    assert run.data.metrics["gen.batches.4.static.decode_tokens_per_s"] == row["static"]["decode_tokens_per_s"]
    assert run.data.tags["kind"] == "bench" and run.data.params["quick"] == "True"
    assert run.info.run_name == "bench-bench" and run.info.status == "FINISHED"
    assert {a.path for a in client().list_artifacts(run.info.run_id, "bench")} >= {
        "bench/bench.json", "bench/methods_samples.jsonl", "bench/gen_profile.txt", "bench/gen_profile_static_matmul_attention.txt"}
    assert bench.main(["--log", str(out)]) == 0  # the record written again from the folder: the same record
    (again,) = import_records([record], bench.EXPERIMENT)
    assert (again.run_id, again.created) == (first.run_id, False)
    assert len(client().search_runs([run.info.experiment_id])) == 1


def test_log_needs_a_bench_folder(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="bench.json not found"):
        bench.main(["--log", str(tmp_path)])


def test_embedded_methods_use_the_saved_translator_and_its_config(tiny_config, tmp_path):
    """--translator evaluates a trained translator with the run config saved beside it: its
    models, data and K (here the tiny pair and K=4, not the embedded defaults)."""
    from latentbridge.bridge import Bridge
    from latentbridge.checkpoint import TranslatorMeta, save_translator
    from latentbridge.data import load_splits
    from latentbridge.prompts import select_exemplars
    from latentbridge.train import load_models

    source, target = load_models(tiny_config)
    splits = load_splits(tiny_config.data)
    bridge = Bridge(tiny_config, source, target, select_exemplars(splits.train, 8, 42))
    meta = TranslatorMeta(tiny_config, source.hidden_size, target.hidden_size, target.embedding_rms)
    save_translator(tmp_path / "translator", bridge.translator, meta)

    out = tmp_path / "bench"
    code = bench.main(["--parts", "methods-embedded", "--device", "cpu", "--out", str(out), "--translator",
                       str(tmp_path / "translator"), "--embedded-questions", "3", "--embedded-new-tokens", "4",
                       "--embedded-batch", "2"])
    results = json.loads((out / "bench.json").read_text())
    assert code == 0 and results["errors"] == {}
    part = results["methods-embedded"]
    assert (part["source"], part["target"]) == (tiny_config.source_model, tiny_config.target_model)
    assert set(part["methods"]) == {"source-alone", "target-alone", "bridged-4", "truncated-4", "relay"}
    assert all(m["samples"] == 3 and 0 <= m["accuracy"] <= 1 for m in part["methods"].values())
    # the bridged target reads BOS + 4 soft tokens + the cue, not the few-shot text
    assert part["methods"]["bridged-4"]["prompt_tokens_mean"] < part["methods"]["target-alone"]["prompt_tokens_mean"]


def test_train_losses_choose_the_train_runs_and_refuse_unknown_names(tmp_path):
    import pytest

    out = tmp_path / "bench"
    assert bench.main(["--quick", "--device", "cpu", "--out", str(out), "--parts", "train", "--train-losses", "lm_kl"]) == 0
    assert set(json.loads((out / "bench.json").read_text())["train"]["runs"]) == {"lm_kl_b2"}
    with pytest.raises(SystemExit, match="--train-losses: \\['kl'\\] not in lm, lm_kl"):
        bench.parse(["--train-losses", "lm,kl"])


def test_eval_parts_time_a_whole_evaluation_with_and_without_the_shared_prefix(tiny_config, tmp_path, monkeypatch):
    """eval-ref: N questions x source-alone, target-alone, bridged at the tiny shapes, the text
    systems unshared and shared; eval-embedded: `evaluate`'s own
    text baselines both ways on a saved tiny run (the same answers) and its bridged answers."""
    from latentbridge.bridge import Bridge
    from latentbridge.checkpoint import TranslatorMeta, save_translator
    from latentbridge.data import load_splits
    from latentbridge.prompts import select_exemplars
    from latentbridge.train import load_models

    monkeypatch.setenv("LATENTBRIDGE_CACHE", str(tmp_path / "cache"))
    source, target = load_models(tiny_config)
    bridge = Bridge(tiny_config, source, target, select_exemplars(load_splits(tiny_config.data).train, 2, 42))
    save_translator(tmp_path / "translator", bridge.translator,
                    TranslatorMeta(tiny_config, source.hidden_size, target.hidden_size, target.embedding_rms))
    out = tmp_path / "bench"
    code = bench.main(["--quick", "--device", "cpu", "--out", str(out), "--parts", "eval-ref,eval-embedded",
                       "--translator", str(tmp_path / "translator"), "--embedded-questions", "3",
                       "--embedded-new-tokens", "4", "--embedded-batch", "2"])
    results = json.loads((out / "bench.json").read_text())
    assert code == 0 and results["errors"] == {}
    ref = results["eval-ref"]
    assert set(ref["systems"]) == {"source-alone", "target-alone", "bridged-8"} and ref["questions"] == 6
    assert ref["total_unshared_s"] > 0 and ref["total_shared_s"] > 0
    for name in ("source-alone", "target-alone"):  # bf16 random weights: agreement is reported, not asserted
        assert ref["systems"][name]["agreement"]["rows"] == 6 and ref["systems"][name]["shared_s"] > 0
    emb = results["eval-embedded"]
    assert emb["questions"] == 3 and emb["answers_identical"] == {"source": 3, "target": 3}
    assert emb["bridged_s"] > 0 and emb["total_shared_s"] > 0
    # the content metrics, one question's group a forward and packed: the same bits
    assert emb["content_one_group_s"] > 0 and emb["content_packed_s"] > 0
    assert emb["content_bits"]["packed"] == pytest.approx(emb["content_bits"]["one_group"], rel=1e-4, abs=1e-4)
    assert not list((tmp_path / "cache").glob("baselines/*.json"))  # the baseline cache stayed off


def test_the_run_estimate_uses_the_whole_evaluation_when_it_was_timed():
    args = bench.parse(["--run-steps", "1000", "--eval-every", "250", "--train-batches", "8"])
    train = {"runs": {"lm_b8": {"step_s_median": 0.5}, "lm_kl_b8": {"step_s_median": 0.6}}}
    methods = {"methods": {"source-alone": {"latency_p95_s": 6.0}, "target-alone": {"latency_p95_s": 6.0},
                           f"bridged-{max(args.ks)}": {"latency_p95_s": 5.0}}}
    evaluation = {"questions": 200, "batch": 64, "new_tokens_forced": 256,
                  "systems": {"source-alone": {"shared_s": 7.0}, "target-alone": {"shared_s": 8.0},
                              "bridged-64": {"shared_s": 10.0, "unshared_s": 10.0}}}
    train_s = 200 * 0.5 + 800 * 0.6
    # methods-ref alone: 4 batches of 64 for 200 questions, per batch latency
    old = bench.estimate({"train": train, "methods-ref": methods}, args)
    assert old["from"] == "methods-ref"
    assert old["per_batch_size"]["8"]["evaluations_s"] == 5 * 4 * 5.0
    assert old["per_batch_size"]["8"]["baselines_once_s"] == 4 * 12.0
    # a whole evaluation timed (prefix shared) replaces it
    new = bench.estimate({"train": train, "methods-ref": methods, "eval-ref": evaluation}, args)
    assert new["from"] == "eval-ref"
    run = new["per_batch_size"]["8"]
    assert (run["train_s"], run["evaluations_s"], run["baselines_once_s"]) == (train_s, 5 * 10.0, 15.0)
    assert run["total_h"] == (train_s + 50.0 + 15.0) / 3600
    assert "error" in bench.estimate({"train": train}, args)


def test_the_kl_teachers_flops_count_the_shared_prefix_once_and_the_answer_to_its_last_logit():
    from latentbridge.bench.train_step_bench import step_flops

    llama = SHAPES["llama3.1-8b"]
    args = (SHAPES["mistral-7b"], llama, 8, 1100, 64, 256, True, 10**8, 1100)
    whole = step_flops(*args, prefix_tokens=0)["kl_teacher"]
    shared = step_flops(*args, prefix_tokens=1000)["kl_teacher"]
    # rows read 100 question tokens and 32 answer tokens, not 1 + 1,100 + 256 tokens
    assert 0 < shared < whole * (100 + 32) / (1 + 1100 + 256) * 1.5
    assert step_flops(*args[:6], False, *args[7:], prefix_tokens=1000)["kl_teacher"] == 0


def test_the_train_part_refuses_a_prefix_as_long_as_the_teachers_text(tmp_path):
    import pytest

    from latentbridge.bench import train_step_bench

    with pytest.raises(ValueError, match="shared prefix \\(64 tokens\\) must be shorter than its text \\(64\\).*--prefix-tokens"):
        train_step_bench.run("tiny-mistral", "tiny-llama", torch.device("cpu"), [2], peak_flops=1e12, text_tokens=64, prefix_tokens=64)


def test_a_bound_is_a_fraction_of_the_measured_bandwidth_even_when_hardware_is_not_asked_for(tmp_path):
    out = tmp_path / "gen_only"
    code = bench.main(["--quick", "--device", "cpu", "--out", str(out), "--parts", "gen", "--no-plain"])
    results = json.loads((out / "bench.json").read_text())
    assert code == 0 and results["errors"] == {}
    bandwidth = results["hardware"]["copy_bandwidth_Bps"]  # measured, not assumed
    for row in results["gen"]["batches"].values():
        bound = row["bound"]
        assert bound["bound_step_s"] == pytest.approx((bound["weights_bytes"] + bound["kv_bytes_mean_step"]) / bandwidth)


def test_the_bench_counts_the_products_each_compiled_variant_leaves_to_blas(tmp_path):
    """`compiled_extern_products`: the matrix products inductor left to aten/BLAS in the graphs a
    variant compiled (at least the 7 projections of each of the two layers and the LM head,
    unfused); an eager variant compiles nothing. On a GPU it says whether `=frozen` concatenated
    the projections (on this CPU, in bfloat16, inductor packs the frozen weights for oneDNN instead)."""
    import shutil

    from latentbridge.models import CPU_COMPILERS

    if not any(shutil.which(cxx) for cxx in CPU_COMPILERS):
        pytest.skip(f"inductor's CPU backend needs a C++ compiler ({', '.join(CPU_COMPILERS)}) and none is on PATH")
    torch._dynamo.reset()  # no step compiled by an earlier test reused (nor its recompile budget spent)
    out = tmp_path / "compiled"
    try:
        code = bench.main(["--quick", "--device", "cpu", "--out", str(out), "--parts", "gen", "--no-plain",
                           "--gen-variants", "static_matmul_attention,static_compiled"])
    finally:
        torch._dynamo.reset()
    results = json.loads((out / "bench.json").read_text())
    assert code == 0 and results["errors"] == {}
    rows = results["gen"]["batches"]
    row = rows[str(max(map(int, rows)))]  # the variants run at the largest batch
    assert row["static_matmul_attention"]["compiled_extern_products"] == 0
    assert row["static_compiled"]["compiled_extern_products"] >= 2 * 7 + 1


def test_gen_variants_pick_the_static_variants_timed_and_refuse_unknown_names(tmp_path, capsys):
    """`--gen-variants`: the named variants are timed at the largest batch, on a CPU too (none by
    default there); an unknown name is refused with the names there are, before anything is
    measured."""
    out = tmp_path / "variants"
    code = bench.main(["--quick", "--device", "cpu", "--out", str(out), "--parts", "gen", "--no-plain",
                       "--gen-variants", "static_matmul_attention"])
    results = json.loads((out / "bench.json").read_text())
    assert code == 0 and results["errors"] == {}
    rows = results["gen"]["batches"]
    largest, smaller = rows[str(max(map(int, rows)))], rows[str(min(map(int, rows)))]
    assert "static_matmul_attention" in largest and "static_compiled" not in largest
    assert "static_matmul_attention" not in smaller
    default = tmp_path / "default"
    assert bench.main(["--quick", "--device", "cpu", "--out", str(default), "--parts", "gen", "--no-plain"]) == 0
    assert not set(STATIC_VARIANTS) & set(json.loads((default / "bench.json").read_text())["gen"]["batches"][str(max(map(int, rows)))])
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "bad"), "--parts", "gen", "--gen-variants", "static_compiled,frozen"])
    assert "frozen not among" in capsys.readouterr().err and not (tmp_path / "bad").exists()


