"""`state.pt` is read with weights_only=True: a crafted pickle cannot run code on resume, a
corrupt file is named with the way out, and the trainer's real state still round-trips."""

from __future__ import annotations

import os
import pickle
import random

import pytest
import torch

from latentbridge.checkpoint import CheckpointError, load_training_state, save_training_state
from latentbridge.train import Trainer


class _RunsACommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "run" / "checkpoint" / "state.pt"
    path.parent.mkdir(parents=True)
    torch.save({"step": 3, "payload": _RunsACommand(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load training checkpoint .*state.pt.*could run code") as info:
        load_training_state(path)
    assert not marker.exists(), "unpickling the checkpoint ran a command"
    message = str(info.value)
    assert str(path) in message and "new run dir" in message and "good copy" in message
    # a plain pickle (not torch's zip format) holding the same payload is refused as well
    with path.open("wb") as out:
        pickle.dump({"step": 3, "payload": _RunsACommand(marker)}, out)
    with pytest.raises(CheckpointError):
        load_training_state(path)
    assert not marker.exists()


def test_a_crafted_checkpoint_is_refused_on_resume(tiny_config, tmp_path):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    path = run_dir / "checkpoint" / "state.pt"
    path.parent.mkdir(parents=True)
    torch.save({"step": 1, "config": tiny_config.to_dict(), "payload": _RunsACommand(marker)}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        Trainer(tiny_config, run_dir).run()
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "corrupt or truncated"), (b"not a checkpoint at all", "corrupt"), ("half", "corrupt or truncated")],
)
def test_a_corrupt_checkpoint_names_the_file_and_the_way_out(tmp_path, content, reason):
    path = tmp_path / "run" / "checkpoint" / "state.pt"
    save_training_state(path, {"step": 2, "weights": torch.ones(64)})
    if content == "half":
        data = path.read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_training_state(path)
    message = str(info.value)
    assert f"training checkpoint {path} is {reason}" in message
    assert "start over into a new run dir" in message and f"good copy of state.pt back at {path}" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_the_trainer_state_round_trips_with_weights_only(tiny_config, tmp_path):
    from latentbridge.checkpoint import load_rank_state, rank_state_path

    trainer = Trainer(tiny_config, tmp_path / "run")
    assert trainer.run().status == "FINISHED"
    path, own_path = trainer.state_path, rank_state_path(trainer.checkpoint_dir, 6, 0)
    for saved in (path, own_path):
        torch.load(saved, map_location="cpu", weights_only=True)  # the format itself passes weights_only
    state = load_training_state(path)
    own = load_rank_state(trainer.checkpoint_dir, 6, 0, 1)  # this rank's data order and RNG state
    assert state["step"] == 6 and state["world_size"] == 1 and state["config"] == tiny_config.to_dict()
    assert isinstance(own["rng"]["python"], tuple) and isinstance(own["sampler"], tuple)

    fresh = Trainer(tiny_config, tmp_path / "run")
    assert fresh.try_resume() and fresh.step == 6
    assert (fresh.best_step, fresh.best_accuracy, fresh.best_bits) == (trainer.best_step, trainer.best_accuracy, trainer.best_bits)
    assert fresh.sampler.getstate() == trainer.sampler.getstate()
    assert random.getstate() == own["rng"]["python"]
    for key, value in state["translator"].items():
        assert torch.equal(value, fresh.translator.state_dict()[key]), key
    assert fresh.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()
    assert fresh.scheduler.state_dict()["last_epoch"] == state["scheduler"]["last_epoch"]


def test_a_random_state_saved_as_lists_still_restores(tmp_path):
    from latentbridge.checkpoint import rng_state, set_rng_state

    state = rng_state()
    version, internal, gauss = state["python"]
    path = tmp_path / "state.pt"
    save_training_state(path, {"step": 0, "rng": {**state, "python": [version, list(internal), gauss]}})
    expected = [random.random() for _ in range(3)]
    set_rng_state(load_training_state(path)["rng"])
    assert [random.random() for _ in range(3)] == expected


def test_a_deleted_checkpoint_is_not_a_silent_restart(tmp_path):
    from latentbridge.checkpoint import CheckpointError, load_training_state, save_training_state

    path = tmp_path / "run" / "checkpoint" / "state.pt"
    assert load_training_state(path) is None  # never saved: a fresh start
    save_training_state(path, {"step": 5})
    assert load_training_state(path)["step"] == 5
    path.unlink()
    with pytest.raises(CheckpointError, match="missing from its folder: it was deleted") as error:
        load_training_state(path)
    assert "start over into a new run dir" in str(error.value)
