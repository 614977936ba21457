"""Two concurrent `preserve` of one run with different rules: one version, and its archive passes its
sha256 check (the second never overwrites the first's archive)."""

from __future__ import annotations

import threading

import pytest
from conftest import private_store, train_tiny_run


def test_concurrent_preserves_of_one_run_keep_the_version_loadable(tmp_path, tiny_pair, monkeypatch):
    with private_store(tmp_path):
        import registry.preserve as preserve_module
        from registry.loading import fetch
        from registry.verdict import VerdictRules

        run_id, _ = train_tiny_run(tmp_path, tiny_pair, "race-suite")
        real_existing, real_retries = preserve_module.existing_version, preserve_module.with_retries
        roles, local = [], threading.local()
        both_checked = threading.Barrier(2, timeout=3)  # broken when a lock keeps the other thread out
        first_versioned = threading.Event()
        guard = threading.Lock()

        def existing_version(rid):
            if not hasattr(local, "role"):  # first call in this thread: who got here first
                with guard:
                    local.role = "first" if not roles else "second"
                    roles.append(local.role)
                try:
                    both_checked.wait()  # without atomicity both see no version yet
                except threading.BrokenBarrierError:
                    pass
            return real_existing(rid)

        def with_retries(action, what, *args, **kwargs):
            if what == "log archive" and local.role == "second":
                first_versioned.wait(60)  # the worst order: the loser writes its archive last
            result = real_retries(action, what, *args, **kwargs)
            if what == "create model version" and local.role == "first":
                first_versioned.set()
            return result

        monkeypatch.setattr(preserve_module, "existing_version", existing_version)
        monkeypatch.setattr(preserve_module, "with_retries", with_retries)
        outcomes, errors = [], []

        def run(rules):
            try:
                outcomes.append(preserve_module.preserve(run_id, rules))
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

        threads = [threading.Thread(target=run, args=(VerdictRules(min_questions=m),)) for m in (1, 500)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not errors, errors
        assert len(outcomes) == 2 and len({(p.model, p.version) for p in outcomes}) == 1, outcomes
        assert sorted(p.created for p in outcomes) == [False, True], outcomes
        model, version = outcomes[0].model, outcomes[0].version
        archive, _ = fetch(f"models:/{model}/{version}", tmp_path / "fetched")  # raises if the archive was overwritten
        assert archive.version == version
