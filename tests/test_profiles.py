"""Notebook profiles: the full study writes into the repository, a smoke run never does."""

from __future__ import annotations

import pytest

from kd_utils.profiles import PROFILES, REPO_ROOT, final_config, notebook_setup


def test_smoke_profile_writes_outside_the_repository(tmp_path):
    cfg, paths, final_epochs = notebook_setup("smoke", "fashion-mnist", seed=3, output_dir=str(tmp_path))
    for path in (paths.results, paths.pictures, paths.checkpoints):
        assert tmp_path in path.parents and REPO_ROOT not in path.parents
    assert paths.results == tmp_path / "results" / "fashion-mnist" / "runs.json"
    assert (cfg.train_size, cfg.epochs, cfg.seed, cfg.resume) == (PROFILES["smoke"]["train_size"], 2, 3, True)
    assert final_epochs == PROFILES["smoke"]["final_epochs"]
    default_cfg, default_paths, _ = notebook_setup("smoke", "fashion-mnist")
    assert REPO_ROOT not in default_paths.results.parents


def test_full_profile_uses_the_repository_folders_and_70_final_epochs():
    cfg, paths, final_epochs = notebook_setup("full", "cifar10", epochs=5)
    assert paths.results == REPO_ROOT / "results" / "cifar10" / "runs.json"
    assert paths.pictures == REPO_ROOT / "Pictures"
    assert cfg.train_size is None and cfg.epochs == 5 and cfg.teacher_epochs == PROFILES["full"]["teacher_epochs"]
    assert final_epochs == 70 and final_config(cfg, final_epochs).epochs == 70


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile 'quick'; choose from: full, smoke"):
        notebook_setup("quick")
