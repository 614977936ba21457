"""`python -m latentbridge.bench`: speed at the reference scale, measured.

    python -m latentbridge.bench --parts hardware,gen,train,methods-ref,estimate --out bench_out   # one GPU
    python -m latentbridge.bench --parts methods-embedded --out bench_out                        # CPU is fine
    python -m latentbridge.bench --parts hardware,eval-ref --out bench_eval                       # a whole evaluation, prefix shared or not
    python -m latentbridge.bench --quick --out /tmp/bench                                         # tiny shapes, CPU smoke
    python -m registry import bench_out/record --experiment bench                                 # then, where the store is

Writes `bench.json` (every aggregate number, the machine, the command), `methods_samples.jsonl`
(one record per sample and method), `bench.log`, and `record/`: a run record
(`latentbridge.reporting.FileReporter`) with the arguments as params, every aggregate number
as a metric and the files as artifacts, which `python -m registry import` replays into an
MLflow run (the command is printed at the end). The bench itself never touches MLflow: the
former `--mlflow` flag is gone, and `--log DIR` now writes DIR's record (for a folder measured
before benches wrote one). Each part runs even if an earlier one failed; the error is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

from latentbridge.reporting import FileReporter

PARTS = ("hardware", "equality", "gen", "train", "methods-ref", "methods-embedded", "estimate", "eval-ref", "eval-embedded")
NEEDS_HARDWARE = frozenset({"gen", "train"})
"""Parts whose figures are fractions of the measured copy bandwidth or FLOP rate: asking for one
measures the hardware too."""
RECORD = "record"  # the run record's folder inside --out
RECORDED_FILES = ("bench.json", "methods_samples.jsonl", "bench.log", "train_profile.txt", "gen_profile.txt")
EXPERIMENT = "bench"  # the MLflow experiment the printed import command names


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _kl_variants(text: str) -> tuple[bool, ...]:
    names = [x for x in text.split(",") if x]
    unknown = sorted(set(names) - {"lm", "lm_kl"})
    if unknown or not names:
        raise SystemExit(f"--train-losses: {unknown or text!r} not in lm, lm_kl")
    return tuple(name == "lm_kl" for name in names)


def _gen_variants(text: str) -> list[str]:
    from latentbridge.bench.generation_bench import STATIC_VARIANTS

    names = [x for x in text.split(",") if x]
    unknown = sorted(set(names) - set(STATIC_VARIANTS))
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)} not among {', '.join(STATIC_VARIANTS)}")
    return names


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m latentbridge.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out", help="folder for bench.json, methods_samples.jsonl, bench.log and record/")
    p.add_argument("--parts", default="hardware,equality,gen,train,methods-ref,estimate", help=f"comma list of {PARTS}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes and sizes: a smoke run for CPU")
    p.add_argument("--target-shape", default="llama3.1-8b")
    p.add_argument("--source-shape", default="mistral-7b")
    p.add_argument("--gen-batches", type=_ints, default=[16, 64])
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--no-plain", action="store_true", help="skip transformers' plain generate")
    p.add_argument("--gen-variants", type=_gen_variants, default=None, metavar="NAME[,NAME...]",
                   help="gen: the static decoder's variants timed at the largest batch, on any device (default:"
                        " all of them on CUDA, none elsewhere; an empty value: none)")
    p.add_argument("--train-batches", type=_ints, default=[2, 8])
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--methods-batch", type=int, default=64)
    p.add_argument("--methods-new-tokens", type=int, default=256)
    p.add_argument("--ks", type=_ints, default=[32, 48, 64])
    p.add_argument("--embedded-source", default="smollm2-135m")
    p.add_argument("--embedded-target", default="gemma3-270m")
    p.add_argument("--embedded-questions", type=int, default=4)
    p.add_argument("--embedded-new-tokens", type=int, default=96)
    p.add_argument("--embedded-batch", type=int, default=4)
    p.add_argument("--translator", default="", help="a saved translator folder for the embedded bridged runs (else untrained)")
    p.add_argument("--eval-questions", type=int, default=200, help="estimate and eval-ref: questions an evaluation asks")
    p.add_argument("--eval-batch", type=int, default=64, help="eval-ref: questions a batch")
    p.add_argument("--prefix-tokens", type=int, default=1000, help="eval-ref and the train part's KL teacher: the shared few-shot prefix (8 exemplars); 0: none")
    p.add_argument("--gen-prefix-tokens", type=int, default=0,
                   help="gen: a shared prefix of this many tokens before each row's --prompt-tokens (the 8 exemplars:"
                        " read once by the static decoder, inside every prompt by plain generate)")
    p.add_argument("--question-tokens", type=_ints, default=[40, 120], help="eval-ref: question lengths, low,high")
    p.add_argument("--eval-new-tokens", type=int, default=256, help="eval-ref: new tokens forced a row")
    p.add_argument("--run-steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--profile", action="store_true", help="train and gen parts: also write train_profile.txt / gen_profile.txt, and gen_profile_<variant>.txt for each --gen-variants member (torch.profiler)")
    p.add_argument("--compile", action="store_true",
                   help="train part: compile the frozen models' decoder blocks (train.compile_frozen=true)")
    p.add_argument("--train-losses", default="lm,lm_kl", help="train part: comma list of lm, lm_kl")
    p.add_argument("--log", metavar="DIR", default=None,
                   help="measure nothing: write DIR/record, the run record of the bench folder DIR, and print its import command")
    args = p.parse_args(argv)
    args.train_kl = _kl_variants(args.train_losses)
    if args.quick:
        args.target_shape, args.source_shape = "tiny-llama", "tiny-mistral"
        args.gen_batches, args.prompt_tokens, args.new_tokens = [2, 4], 48, 16
        args.train_batches, args.train_steps = [2], 2
        args.methods_batch, args.methods_new_tokens, args.ks = 2, 12, [4, 8]
        args.eval_questions, args.eval_batch, args.prefix_tokens = 6, 4, 48
        args.question_tokens, args.eval_new_tokens = [4, 12], 8
    return args


class _Log:
    def __init__(self, path: Path) -> None:
        self.handle = path.open("a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        self.handle.write(line + "\n")
        self.handle.flush()


def _translators(args, source, target, device) -> dict[int, torch.nn.Module]:
    from latentbridge.config import TranslatorConfig
    from latentbridge.translators import build_translator

    out = {}
    for k in args.ks:
        torch.manual_seed(k)
        config = TranslatorConfig(num_tokens=k, **({"width": 64, "depth": 1, "heads": 4} if args.quick else {}))
        out[k] = build_translator(config, source_dim=source.hidden_size, target_dim=target.hidden_size, target_rms=target.embedding_rms).to(device).float().eval()
    return out


def _embedded_pair(args):
    """The embedded pair (or, with --translator, the saved run's pair), its config, exemplars and
    validation questions, and a Bridge for a given K sharing the models."""
    from latentbridge.bridge import Bridge
    from latentbridge.checkpoint import load_translator
    from latentbridge.config import RunConfig
    from latentbridge.data import load_splits
    from latentbridge.models import load_frozen_lms
    from latentbridge.prompts import select_exemplars

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    trained = load_translator(Path(args.translator), device) if args.translator else None
    if trained is not None:
        base = trained[1].config
        ks = [base.translator.num_tokens]
    else:
        base = RunConfig(source_model=args.embedded_source, target_model=args.embedded_target)
        ks = args.ks
    source, target = load_frozen_lms([base.source_model, base.target_model], dtype=dtype, device=device)
    splits = load_splits(base.data)
    exemplars = select_exemplars(splits.train, base.data.num_shots, base.data.fewshot_seed)
    examples = splits.validation[: args.embedded_questions]
    bridges = {}

    def bridge_for_k(k: int):
        if k not in bridges:
            torch.manual_seed(k)
            bridges[k] = Bridge(base.override(f"translator.num_tokens={k}"), source, target, exemplars)
            if trained is not None:
                bridges[k].translator = trained[0]
        return bridges[k]

    return base, ks, examples, bridge_for_k, dtype


def _embedded(args, log):
    """Every method on the embedded pair with real weights. With --translator the bridge is the
    saved run's (its config: models, data, K, what the source reads); else untrained translators
    at each of --ks on the default config."""
    from latentbridge.bench import methods

    base, ks, examples, bridge_for_k, dtype = _embedded_pair(args)
    summary, records = methods.run_embedded(bridge_for_k, examples, ks, args.embedded_new_tokens, args.embedded_batch, log=log)
    return {"source": base.source_model, "target": base.target_model, "questions": len(examples),
            "data": base.data.source, "source_reads": base.data.source_reads,
            "max_new_tokens": args.embedded_new_tokens, "batch": args.embedded_batch, "dtype": str(dtype),
            "translator": args.translator or "untrained (random init)", "methods": summary}, records


def _eval_embedded(args, log):
    """A whole evaluation on the embedded pair (`eval_bench.embedded`): --embedded-questions,
    --embedded-batch, --embedded-new-tokens, the largest of --ks (or the saved translator's)."""
    import dataclasses

    from latentbridge.bench import eval_bench

    base, ks, examples, bridge_for_k, dtype = _embedded_pair(args)
    bridge = bridge_for_k(max(ks))
    config = dataclasses.replace(base.eval, batch_size=args.embedded_batch, max_new_tokens=args.embedded_new_tokens)
    return {"source": base.source_model, "target": base.target_model, "k": max(ks), "dtype": str(dtype),
            "translator": args.translator or "untrained (random init)",
            **eval_bench.embedded(bridge, examples, config, log=log)}


def estimate(results: dict, args) -> dict:
    """A full reference run from the measured parts: train steps plus evaluations plus baselines.
    With the eval-ref part (a whole evaluation timed, the few-shot prefix shared), its times are
    used; else methods-ref's latency per batch of the three systems (the prefix in every prompt)."""
    train = results.get("train", {}).get("runs", {})
    methods = results.get("methods-ref", {}).get("methods", {})
    systems = results.get("eval-ref", {}).get("systems", {})
    if not train or not (methods or systems):
        return {"error": "needs the train part and the eval-ref or methods-ref part"}
    evaluations = args.run_steps // args.eval_every + 1
    if systems:
        bridged_name = next((name for name in systems if name.startswith("bridged")), None)
        eval_one = systems[bridged_name]["shared_s"] if bridged_name else None
        base_s = systems["source-alone"]["shared_s"] + systems["target-alone"]["shared_s"]
        out = {"from": "eval-ref", "evaluations": evaluations, "questions": results["eval-ref"]["questions"],
               "eval_batch": results["eval-ref"]["batch"], "forced_new_tokens": results["eval-ref"]["new_tokens_forced"],
               "per_batch_size": {}}
    else:
        batches_per_eval = math.ceil(args.eval_questions / args.methods_batch)
        bridged = methods.get(f"bridged-{max(args.ks)}", {}).get("latency_p95_s")
        eval_one = batches_per_eval * bridged if bridged is not None else None
        base_s = batches_per_eval * (methods["source-alone"]["latency_p95_s"] + methods["target-alone"]["latency_p95_s"])
        out = {"from": "methods-ref", "evaluations": evaluations, "questions": args.eval_questions,
               "eval_batch": args.methods_batch, "forced_new_tokens": args.methods_new_tokens, "per_batch_size": {}}
    if eval_one is None:
        return {"error": "no bridged system was timed"}
    for batch in args.train_batches:
        lm, kl = train.get(f"lm_b{batch}"), train.get(f"lm_kl_b{batch}")
        if lm is None:
            continue
        warmup = 200
        kl_s = (kl or lm)["step_s_median"]
        train_s = warmup * lm["step_s_median"] + (args.run_steps - warmup) * kl_s
        eval_s = evaluations * eval_one
        out["per_batch_size"][str(batch)] = {
            "train_s": train_s, "evaluations_s": eval_s, "baselines_once_s": base_s,
            "total_h": (train_s + eval_s + base_s) / 3600,
            "total_h_baselines_cached": (train_s + eval_s) / 3600,
        }
    out["reference_study"] = "3 h per run on 4 GPUs (12 GPU-hours)"
    return out


def _flat_metrics(results: dict) -> dict[str, float]:
    flat: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            key = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in prefix)
            flat[key] = float(value)

    walk("", results)
    return flat


def write_record(out: Path, results: dict) -> Path:
    """OUT/record: the bench as a run record, written afresh: the arguments as params (and the
    run's name, bench-OUT), every aggregate number as a metric at step 0, the machine and the
    command as tags, the files as artifacts under bench/. The same folder always gives the same
    record, so importing it twice makes one MLflow run."""
    folder = out / RECORD
    shutil.rmtree(folder, ignore_errors=True)  # metrics.jsonl is appended to: start from nothing
    reporter = FileReporter(folder)
    machine = results.get("machine", {})
    reporter.set_tags({"kind": "bench", "command": results.get("command", ""), "device_name": str(machine.get("name", ""))})
    reporter.log_params({"name": f"bench-{out.resolve().name}", **results.get("args", {})})
    reporter.log_metrics(_flat_metrics({k: v for k, v in results.items() if k != "args"}), 0)
    for path in [out / name for name in RECORDED_FILES] + sorted(out.glob("gen_profile_*.txt")):  # and the variants' profiles
        if path.is_file():
            reporter.log_artifact(path, "bench")
    return folder


def import_command(record: Path) -> str:
    return f"python -m registry import {record} --experiment {EXPERIMENT}"


def record_folder(folder: Path) -> Path:
    """The run record of a bench folder (one measured before benches wrote records)."""
    path = folder / "bench.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --log needs a folder that `python -m latentbridge.bench --out` wrote")
    try:
        results = json.loads(path.read_text())
    except ValueError as error:
        raise SystemExit(f"{path} is not valid JSON ({error})") from None
    return write_record(folder, results)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.log:
        record = record_folder(Path(args.log))
        print(f"wrote the run record {record}; import it into MLflow with: {import_command(record)}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out / "bench.log")
    device = torch.device(args.device)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    if "hardware" not in parts and set(parts) & NEEDS_HARDWARE:
        # their bounds divide by the measured bandwidth / FLOP rate: never by an assumed one
        parts.insert(0, "hardware")
    from latentbridge.bench import hardware

    results: dict = {"command": " ".join(["python -m latentbridge.bench", *(argv if argv is not None else sys.argv[1:])]),
                     "args": vars(args), "machine": {**hardware.describe(device), "host": platform.node()}, "errors": {}}
    samples: list[dict] = []
    started = time.perf_counter()

    def part(name: str, fn) -> None:
        if name not in parts:
            return
        log(f"--- {name}")
        began = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as error:  # record and go on: one broken part must not lose the others
            results["errors"][name] = f"{type(error).__name__}: {error}"
            log(traceback.format_exc())
        results.setdefault("part_seconds", {})[name] = time.perf_counter() - began
        (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))

    def measure_hardware():
        if device.type != "cuda":
            return {"copy_bandwidth_Bps": hardware.copy_bandwidth(device, 256 << 20, 3), "matmul_flops": hardware.matmul_flops(device, 1024, 3, torch.float32)}
        return {"copy_bandwidth_Bps": hardware.copy_bandwidth(device), "matmul_flops": hardware.matmul_flops(device),
                "datasheet_bf16_flops": hardware.H100_SXM_BF16_DENSE_TFLOPS * 1e12}

    part("hardware", measure_hardware)
    hw = results.get("hardware", {})

    def equality():
        from latentbridge.bench.generation_bench import tiny_equality_check

        check = tiny_equality_check(device)
        log(f"[equality] static decoder vs plain generate, tiny float32 llama on {device}: {check}")
        return check

    part("equality", equality)

    def gen():
        from latentbridge.bench import generation_bench

        return generation_bench.run(args.target_shape, device, args.gen_batches, args.prompt_tokens, args.new_tokens,
                                    hw["copy_bandwidth_Bps"], plain=not args.no_plain, prefix_tokens=args.gen_prefix_tokens,
                                    variants=args.gen_variants,
                                    profile_to=out / "gen_profile.txt" if args.profile else None, log=log)

    part("gen", gen)

    def train():
        from latentbridge.bench import train_step_bench

        return train_step_bench.run(args.source_shape, args.target_shape, device, args.train_batches,
                                    peak_flops=hw["matmul_flops"], steps=args.train_steps, warmup=1 if args.quick else 2,
                                    source_tokens=64 if args.quick else 1100, soft=8 if args.quick else 64,
                                    answer=16 if args.quick else 256, text_tokens=64 if args.quick else 1100,
                                    prefix_tokens=args.prefix_tokens, kl_variants=args.train_kl, compile_frozen=args.compile,
                                    profile_to=out / "train_profile.txt" if args.profile else None, log=log)

    part("train", train)

    def methods_ref():
        from latentbridge.bench import methods
        from latentbridge.bench.shapes import random_model
        from latentbridge.models import FrozenLM

        source = FrozenLM(args.source_shape, random_model(args.source_shape, device=device, seed=1), tokenizer=None)
        target = FrozenLM(args.target_shape, random_model(args.target_shape, device=device, seed=2), tokenizer=None)
        summary, records = methods.run_reference(
            source, target, _translators(args, source, target, device), batch=args.methods_batch,
            prompt_tokens=48 if args.quick else 1100, question_tokens=8 if args.quick else 60,
            cue_tokens=4 if args.quick else 10, new_tokens=args.methods_new_tokens, log=log)
        samples.extend({"part": "methods-ref", **r} for r in records)
        del source, target
        return {"source": args.source_shape, "target": args.target_shape, "batch": args.methods_batch,
                "new_tokens_forced": args.methods_new_tokens, "methods": summary}

    part("methods-ref", methods_ref)

    def methods_embedded():
        summary, records = _embedded(args, log)
        samples.extend({"part": "methods-embedded", **r} for r in records)
        return summary

    part("methods-embedded", methods_embedded)

    def eval_ref():
        from latentbridge.bench import eval_bench
        from latentbridge.bench.shapes import random_model
        from latentbridge.models import FrozenLM

        source = FrozenLM(args.source_shape, random_model(args.source_shape, device=device, seed=1), tokenizer=None)
        target = FrozenLM(args.target_shape, random_model(args.target_shape, device=device, seed=2), tokenizer=None)
        translator = _translators(args, source, target, device)[max(args.ks)]
        low, high = args.question_tokens
        return eval_bench.reference(source, target, translator, questions=args.eval_questions, batch=args.eval_batch,
                                    prefix_tokens=args.prefix_tokens, question_tokens=(low, high),
                                    cue_tokens=4 if args.quick else 10, new_tokens=args.eval_new_tokens, log=log)

    part("eval-ref", eval_ref)
    part("eval-embedded", lambda: _eval_embedded(args, log))
    part("estimate", lambda: estimate(results, args))

    results["total_seconds"] = time.perf_counter() - started
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    with (out / "methods_samples.jsonl").open("w", encoding="utf-8") as handle:
        for record in samples:
            handle.write(json.dumps(record, default=str) + "\n")
    log(f"done in {results['total_seconds']:.0f}s; errors: {results['errors'] or 'none'}")
    record = write_record(out, results)
    print(f"run record: {record}; import it into MLflow with: {import_command(record)}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
