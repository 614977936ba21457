"""Two CPU processes with gloo: DDP keeps the translators identical, evaluation is sharded."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from latentbridge import distributed
from latentbridge.config import RunConfig
from latentbridge.train import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: dict, run_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    distributed.init_from_env()
    try:
        trainer = Trainer(RunConfig.from_dict(config), run_dir)
        answered = distributed.shard(trainer.eval_examples)
        result = trainer.run()
        weights = {k: v.detach().clone() for k, v in trainer.translator.state_dict().items()}
        torch.save({"weights": weights, "answered": answered, "status": result.status}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_and_cover_every_question_once(tiny_config, tmp_path):
    config = tiny_config.override("eval.num_questions=7", "eval.batch_size=2", "train.steps=4", "train.eval_every=2")
    mp.spawn(_worker, args=(2, _free_port(), config.to_dict(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["status"] == r1["status"] == "FINISHED"
    assert r0["weights"].keys() == r1["weights"].keys()
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key]), key
    # each rank answered a disjoint share; together every question exactly once
    assert sorted(r0["answered"] + r1["answered"]) == list(range(7))
    assert not set(r0["answered"]) & set(r1["answered"])
    records = [json.loads(line) for line in (tmp_path / "run" / "evals" / "eval_step_000004.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(7))
    assert all(r["bridged"]["output"] is not None for r in records)
