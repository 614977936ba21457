"""A run stopped mid-way resumes from its checkpoint to the same weights as an unbroken run.

Each rank draws its own batches and dropout masks: a resume restores every rank's own data
order and RNG state (its file in checkpoint/rank_state/), not rank 0's for all.
"""

import json
import os
import signal
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_RUN

import latentbridge.train as train_module
from latentbridge import distributed
from latentbridge.checkpoint import CheckpointError, load_translator, rank_state_path
from latentbridge.config import RunConfig
from latentbridge.metric_names import BRIDGED_ACCURACY
from latentbridge.reporting import MemoryReporter
from latentbridge.train import Trainer


def _final_weights(run_dir):
    translator, _ = load_translator(run_dir / "translator")
    return translator.state_dict()


def test_sigterm_checkpoints_and_resume_is_exact(tiny_config, tmp_path, monkeypatch):
    config = tiny_config.override("translator.dropout=0.1", "train.steps=6", "train.eval_every=2", "train.checkpoint_every=100")
    unbroken = Trainer(config, tmp_path / "unbroken").run()
    assert unbroken.status == "FINISHED"

    original = Trainer.train_step

    def step_then_signal(self):
        out = original(self)
        if self.step == 2:  # the signal arrives during step 3 (0-based step counter 2)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    first = MemoryReporter()
    stopped = Trainer(config, tmp_path / "broken", first).run()
    assert stopped.status == "INTERRUPTED" and stopped.step == 3
    assert (tmp_path / "broken" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "broken" / "translator").exists()  # not finished: nothing final saved
    monkeypatch.setattr(Trainer, "train_step", original)

    second = MemoryReporter()
    resumed = Trainer(config, tmp_path / "broken", second).run()
    assert resumed.status == "FINISHED" and resumed.step == 6
    assert [s for s, _ in second.metrics["loss"]] == [4, 5, 6]  # continues, no step repeated
    assert second.params == {}  # params were logged by the first attempt
    a, b = _final_weights(tmp_path / "unbroken"), _final_weights(tmp_path / "broken")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # losses logged across the two attempts equal the unbroken run's
    assert [v for _, v in first.metrics["loss"]] + [v for _, v in second.metrics["loss"]] == [
        v for _, v in _losses(config, tmp_path / "again")
    ]


def _losses(config, run_dir):
    reporter = MemoryReporter()
    Trainer(config, run_dir, reporter).run()
    return reporter.metrics["loss"]


def test_resume_refuses_a_checkpoint_from_another_config(tiny_config, tmp_path):
    Trainer(tiny_config, tmp_path / "run").run()
    changed = tiny_config.override("optim.lr=0.5")
    with pytest.raises(ValueError, match="different config"):
        Trainer(changed, tmp_path / "run").run()


def test_nan_loss_stops_the_run_with_a_clear_status(tiny_config, tmp_path, monkeypatch):
    import latentbridge.train as train_module

    real = train_module.compute_losses

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(train_module, "compute_losses", poisoned)
    reporter = MemoryReporter()
    result = Trainer(tiny_config, tmp_path / "run", reporter).run()
    assert result.status == "NAN_LOSS" and result.step == 0
    assert "loss is nan" in reporter.tags["stop_reason"]



def test_a_crash_after_an_early_stop_resumes_to_finish_not_to_more_training(tiny_config, tmp_path, monkeypatch):
    config = tiny_config.override("train.steps=6", "train.eval_every=1", "train.checkpoint_every=100")
    monkeypatch.setattr(Trainer, "should_stop_early", lambda self: self.step == 2)

    def crash(self):
        raise OSError("disk full while saving the translator")

    monkeypatch.setattr(Trainer, "finish", crash)
    first = MemoryReporter()
    with pytest.raises(OSError, match="disk full"):
        Trainer(config, tmp_path / "run", first).run()
    assert [s for s, _ in first.metrics["loss"]] == [1, 2]
    monkeypatch.undo()

    second = MemoryReporter()
    resumed = Trainer(config, tmp_path / "run", second).run()
    assert resumed.status == "EARLY_STOPPED" and resumed.step == 2
    assert "loss" not in second.metrics  # not one step past the stop
    assert BRIDGED_ACCURACY not in second.metrics  # the stop's evaluation is not run again
    assert resumed.final_metrics[BRIDGED_ACCURACY] == first.metrics[BRIDGED_ACCURACY][-1][1]
    assert (tmp_path / "run" / "best_translator").is_dir() and (tmp_path / "run" / "translator").is_dir()


# --------------------------------------------------------------------------- per-rank state
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, config: dict, run_dir: str, out_dir: str, stop: tuple) -> None:
    """Train (or resume) one rank; append each step's drawn train indices to draws_rank{R}.jsonl.

    `stop` is ("sigterm", step): SIGTERM to rank 0 while it trains `step`; ("kill", step): every
    rank dies (os._exit, no checkpoint) while it trains `step`; (): train to the end.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    distributed.init_from_env()
    try:
        trainer = Trainer(RunConfig.from_dict(config), run_dir)
        index = {id(example): i for i, example in enumerate(trainer.splits.train)}
        real = train_module.compute_losses

        def recording(bridge, batch, step, model):
            with open(f"{out_dir}/draws_rank{rank}.jsonl", "a") as out:
                out.write(json.dumps({"step": step + 1, "drawn": [index[id(ex)] for ex in batch]}) + "\n")
            if stop == ("kill", step + 1):
                os._exit(1)
            if stop == ("sigterm", step + 1) and rank == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(bridge, batch, step, model)

        final: dict[str, torch.Tensor] = {}
        finish = trainer.finish

        def keep_final_then_finish() -> None:  # finish() puts the best weights back
            final.update({k: v.detach().clone() for k, v in trainer.translator.state_dict().items()})
            finish()

        train_module.compute_losses = recording
        trainer.finish = keep_final_then_finish
        result = trainer.run()
        torch.save({"status": result.status, "step": result.step, "weights": final}, f"{out_dir}/result_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(config: RunConfig, run_dir, out_dir, stop: tuple = ()) -> list[dict]:
    """Two gloo ranks on the CPU; each rank's result (status, step, translator weights).

    The ranks fork from a server that imported the trainer once: a spawned child imports torch
    and transformers anew (seconds each time), and a child forked from this process, whose
    OpenMP threads have run, can hang.
    """
    out_dir.mkdir(exist_ok=True)
    mp.get_context("forkserver").set_forkserver_preload(["latentbridge.train"])
    args = (2, _free_port(), config.to_dict(), str(run_dir), str(out_dir), stop)
    mp.start_processes(_rank_worker, args=args, nprocs=2, join=True, start_method="forkserver")
    return [torch.load(out_dir / f"result_rank{rank}.pt") for rank in range(2)]


def _draws(out_dir, rank: int) -> list[tuple[int, list[int]]]:
    """(step, drawn train indices) of one rank, in the order its attempts drew them."""
    lines = (out_dir / f"draws_rank{rank}.jsonl").read_text().splitlines()
    return [(record["step"], record["drawn"]) for record in map(json.loads, lines)]


@pytest.fixture(scope="module")
def two_rank_runs(tiny_pair, tmp_path_factory):
    """An unbroken 2-rank run, and the same run stopped by SIGTERM during step 3, resumed, killed
    (no signal, no checkpoint) during step 5 after the periodic checkpoint of step 4, resumed again."""
    source, target = tiny_pair
    config = RunConfig().override(
        f"source_model={source}", f"target_model={target}", *TINY_RUN,
        "translator.dropout=0.1", "train.steps=6", "train.eval_every=6", "train.checkpoint_every=2",
        "eval.num_questions=2", "eval.baselines=false", "eval.content_metrics=false",
    )
    root = tmp_path_factory.mktemp("two_ranks")
    unbroken = _spawn(config, root / "unbroken", root / "unbroken_out")
    out = root / "broken_out"
    stopped = _spawn(config, root / "broken", out, ("sigterm", 3))
    with pytest.raises(mp.ProcessExitedException):
        _spawn(config, root / "broken", out, ("kill", 5))
    resumed = _spawn(config, root / "broken", out)
    return {"config": config, "root": root, "unbroken": unbroken, "stopped": stopped, "resumed": resumed}


def test_each_rank_resumes_its_own_batches(two_rank_runs):
    root = two_rank_runs["root"]
    for rank in range(2):
        unbroken = dict(_draws(root / "unbroken_out", rank))
        broken = _draws(root / "broken_out", rank)
        # steps 1-3, interrupted; 4-5, killed in 5; resumed from 4: step 5 drawn again, then 6
        assert [step for step, _ in broken] == [1, 2, 3, 4, 5, 5, 6]
        assert [drawn for _, drawn in broken] == [unbroken[step] for step, _ in broken], f"rank {rank}"
    rank0, rank1 = dict(_draws(root / "unbroken_out", 0)), dict(_draws(root / "unbroken_out", 1))
    assert all(rank0[step] != rank1[step] for step in range(1, 7)), (rank0, rank1)


def test_resumed_ranks_end_with_the_unbroken_weights(two_rank_runs):
    assert [(r["status"], r["step"]) for r in two_rank_runs["stopped"]] == [("INTERRUPTED", 3)] * 2
    assert [(r["status"], r["step"]) for r in two_rank_runs["resumed"]] == [("FINISHED", 6)] * 2
    reference = two_rank_runs["unbroken"][0]["weights"]
    for result in two_rank_runs["unbroken"][1:] + two_rank_runs["resumed"]:
        for key, value in reference.items():
            assert torch.equal(result["weights"][key], value), key  # dropout masks resumed per rank too


def test_the_checkpoint_keeps_one_file_per_rank_of_its_step(two_rank_runs):
    folder = two_rank_runs["root"] / "broken" / "checkpoint"
    assert sorted(p.name for p in (folder / "rank_state").iterdir()) == ["step00000006_rank0.pt", "step00000006_rank1.pt"]
    assert torch.load(folder / "state.pt", weights_only=True)["world_size"] == 2


def test_resuming_with_another_number_of_ranks_is_refused(two_rank_runs):
    run_dir = two_rank_runs["root"] / "broken"
    with pytest.raises(CheckpointError) as error:
        Trainer(two_rank_runs["config"], run_dir).run()  # one process, saved by two
    message = str(error.value)
    assert str(run_dir / "checkpoint" / "state.pt") in message
    assert str(run_dir / "checkpoint" / "rank_state" / "step00000006_rank*.pt") in message
    assert "saved by 2 ranks, but this job has 1" in message
    assert "resume with 2 tasks" in message and "new run dir" in message


class _CutOff(Exception):
    """Stands for a kill between the ranks' files and state.pt of one save."""


def test_a_save_cut_off_before_state_pt_resumes_from_the_step_before(tiny_config, tmp_path, monkeypatch):
    import random

    config = tiny_config.override("train.steps=6", "train.checkpoint_every=2", "train.eval_every=6")
    real = train_module.save_training_state

    def cut_off_at_step_4(path, state):
        if path.name == "state.pt" and state["step"] == 4:
            raise _CutOff
        real(path, state)

    monkeypatch.setattr(train_module, "save_training_state", cut_off_at_step_4)
    with pytest.raises(_CutOff):
        Trainer(config, tmp_path / "run").run()
    monkeypatch.undo()
    checkpoint = tmp_path / "run" / "checkpoint"
    assert rank_state_path(checkpoint, 4, 0).is_file()  # this rank's file of the save that was cut off
    fresh = Trainer(config, tmp_path / "run")
    assert fresh.try_resume() and fresh.step == 2
    expected = random.Random(config.seed)  # rank 0's data order after two steps, not four
    for _ in range(2 * config.train.batch_size):
        expected.choice(fresh.splits.train)
    assert fresh.sampler.getstate() == expected.getstate()


def test_damaged_per_rank_state_is_named(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    Trainer(tiny_config, run_dir).run()
    checkpoint = run_dir / "checkpoint"
    mine = rank_state_path(checkpoint, 6, 0)
    saved = mine.read_bytes()

    torch.save({**torch.load(mine, weights_only=True), "step": 3}, mine)  # another step's state under this name
    with pytest.raises(CheckpointError, match="records .*'step': 3.* not .*'step': 6") as error:
        Trainer(tiny_config, run_dir).try_resume()
    assert str(mine) in str(error.value) and "new run dir" in str(error.value)

    mine.unlink()
    with pytest.raises(CheckpointError, match=f"per-rank state {mine} is missing") as error:
        Trainer(tiny_config, run_dir).try_resume()
    assert "new run dir" in str(error.value)

    mine.write_bytes(saved)
    (checkpoint / "state.pt").unlink()  # the rank files stay: still not a silent restart
    with pytest.raises(CheckpointError, match="missing from its folder: it was deleted"):
        Trainer(tiny_config, run_dir).run()
