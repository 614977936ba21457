"""Experiments the project makes open in the MLflow UI's model-training view."""

from __future__ import annotations

from registry import store
from registry.runs import open_run


def test_new_experiment_opens_in_the_training_view(mlflow_store, tmp_path):
    open_run(tmp_path / "run", "r", "fresh-suite")
    experiment = store.client().get_experiment_by_name("fresh-suite")
    assert experiment.tags[store.EXPERIMENT_KIND_TAG] == store.TRAINING_KIND


def test_an_older_experiment_gets_the_tag_and_a_users_choice_stays(mlflow_store):
    client = store.client()
    old = client.create_experiment("made-before-the-tag")
    chosen = client.create_experiment("users-choice", tags={store.EXPERIMENT_KIND_TAG: "genai_development"})
    assert store.experiment_id("made-before-the-tag") == old
    assert store.experiment_id("users-choice") == chosen
    assert client.get_experiment(old).tags[store.EXPERIMENT_KIND_TAG] == store.TRAINING_KIND
    assert client.get_experiment(chosen).tags[store.EXPERIMENT_KIND_TAG] == "genai_development"
