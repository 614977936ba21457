"""`registry list --model NAME` with a name the archive lacks says so and lists the known ones (issue 13)."""

from __future__ import annotations

import pytest

from registry.errors import RegistryError


@pytest.fixture
def archive(mlflow_store, tmp_path):
    from registry.store import client

    mlflow_client = client()
    for name in ("latentbridge-b", "latentbridge-a"):
        mlflow_client.create_registered_model(name)
        mlflow_client.create_model_version(name, source=(tmp_path / name).as_uri())
    return mlflow_client


def test_unknown_model_names_it_and_lists_the_known_ones(archive) -> None:
    from registry.listing import archive_rows

    with pytest.raises(RegistryError, match=r"no model named 'nosuch'.*latentbridge-a, latentbridge-b"):
        archive_rows("nosuch")
    assert [row["model"] for row in archive_rows("latentbridge-a")] == ["latentbridge-a"]


def test_cli_list_unknown_model_is_an_error_not_an_empty_archive(archive, capsys) -> None:
    from registry.cli import main

    assert main(["list", "--model", "nosuch"]) != 0
    captured = capsys.readouterr()
    assert "no model named 'nosuch'" in captured.err and "latentbridge-a" in captured.err
    assert "archive is empty" not in captured.out + captured.err


def test_unknown_model_in_an_empty_archive_says_it_is_empty(mlflow_store) -> None:
    from registry.listing import archive_rows

    with pytest.raises(RegistryError, match="no model named 'nosuch'.*empty"):
        archive_rows("nosuch")
    assert archive_rows() == []
