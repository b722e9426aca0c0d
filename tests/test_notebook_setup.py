"""The notebooks' shared setup: parameters and KD_* overrides, where a run writes (Google Drive in Colab, with
google.colab faked), the run-info and wall-time lines, notebooks.json, and the badges/install cells made from
the repository URL."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from kd_utils import notebook, notebook_files
from kd_utils.notebook import (
    PROFILES,
    REPO_ROOT,
    environment_overrides,
    finish,
    in_colab,
    setup,
    study_summary,
)
from kd_utils.notebook_files import out_of_sync, repository_url, sync

# the printed lines as a reader of the notebooks' outputs finds them
RUN_INFO = re.compile(r"run info \| profile: (\w+) \| dataset: ([\w-]+) \|.*device: ([^|]+)\|.*started: ([^\n]+)")
PRECISION = re.compile(r"run info \|.*\| precision: (\w+) \|")
WALL_TIME = re.compile(r"notebook wall time: (\d+) s \| profile: ([\w-]+)")


def quiet_setup(*args, environ=None, **kwargs):
    """``setup`` with the printed lines collected (and no KD_* variables from the caller's shell)."""
    lines: list[str] = []
    session = setup(*args, environ=environ or {}, log=lines.append, **kwargs)
    return session, "\n".join(lines)


# --- parameters, environment, profiles -----------------------------------------------------------------------


def test_environment_variables_override_the_parameters():
    params = {
        "profile": "full",
        "dataset": "cifar10",
        "seed": 0,
        "epochs": None,
        "precision": "auto",
        "output_dir": None,
        "data_dir": None,
    }
    environ = {"KD_PROFILE": "smoke", "KD_DATASET": "fashion-mnist", "KD_SEED": "3", "KD_EPOCHS": "4",
               "KD_PRECISION": "fp32", "KD_OUTPUT_DIR": "/somewhere", "KD_DATA_DIR": "/datasets",
               "KD_UNRELATED": "x"}  # fmt: skip
    assert environment_overrides(params, environ) == {
        "profile": "smoke", "dataset": "fashion-mnist", "seed": 3, "epochs": 4, "precision": "fp32",
        "output_dir": "/somewhere", "data_dir": "/datasets",
    }  # fmt: skip
    assert environment_overrides(params, {"KD_PROFILE": "", "KD_EPOCHS": "0"}) == {**params, "epochs": None}
    with pytest.raises(ValueError, match="KD_SEED='one': not a valid seed"):
        environment_overrides(params, {"KD_SEED": "one"})


def test_data_dir_comes_from_the_parameter_or_kd_data_dir_else_the_repository(tmp_path):
    default, _ = quiet_setup("x", "smoke", "fashion-mnist", output_dir=str(tmp_path))
    assert default.cfg.data.data_dir == str(REPO_ROOT / "data")
    chosen, _ = quiet_setup("x", "smoke", "fashion-mnist", output_dir=str(tmp_path), data_dir="/datasets/mine")
    assert chosen.cfg.data.data_dir == "/datasets/mine"
    environ = {"KD_DATA_DIR": "/mnt/shared-data"}
    overridden, printed = quiet_setup("x", "smoke", "fashion-mnist", output_dir=str(tmp_path), data_dir="/a",
                                      environ=environ)  # fmt: skip
    assert overridden.cfg.data.data_dir == "/mnt/shared-data" and "/mnt/shared-data" not in printed
    blank, _ = quiet_setup("x", "smoke", "fashion-mnist", output_dir=str(tmp_path), environ={"KD_DATA_DIR": " "})
    assert blank.cfg.data.data_dir == str(REPO_ROOT / "data")  # an empty variable leaves the parameter


def test_smoke_profile_writes_outside_the_repository(tmp_path):
    session, printed = quiet_setup("00_baseline", "smoke", "fashion-mnist", seed=3, output_dir=str(tmp_path))
    paths, cfg = session.paths, session.cfg
    for path in (paths.results, paths.pictures, paths.checkpoints):
        assert tmp_path in path.parents and REPO_ROOT not in path.parents
    assert paths.results == tmp_path / "results" / "fashion-mnist" / "runs.json"
    assert paths.notebooks == tmp_path / "results" / "fashion-mnist" / "notebooks.json"
    assert (cfg.data.train_size, cfg.train.epochs, cfg.train.seed, cfg.resume) == (2000, 2, 3, True)
    assert session.final_epochs == PROFILES["smoke"]["final_epochs"]
    assert session.final_config().train.epochs == session.final_epochs and cfg.train.epochs == 2
    default, _ = quiet_setup("00_baseline", "smoke", "fashion-mnist")
    assert REPO_ROOT not in default.paths.results.parents


def test_full_profile_uses_the_repository_folders_and_70_final_epochs():
    session, _ = quiet_setup("04_final_run", "full", "cifar10", epochs=5)
    assert session.paths.results == REPO_ROOT / "results" / "cifar10" / "runs.json"
    assert session.paths.pictures == REPO_ROOT / "Pictures"
    assert session.cfg.data.train_size is None and session.cfg.train.epochs == 5
    assert session.cfg.teacher_epochs == PROFILES["full"]["teacher_epochs"]
    assert session.final_epochs == 70 and session.final_config().train.epochs == 70


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_precision_reaches_the_training_config(precision, tmp_path):
    session, printed = quiet_setup("x", "smoke", "fashion-mnist", precision=precision, output_dir=str(tmp_path))
    assert session.cfg.train.precision == precision
    expected = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(precision, session.precision)
    assert session.precision == expected and PRECISION.search(printed)[1] == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "quick"}, "PROFILE 'quick': choose from: full, smoke"),
        ({"dataset": "mnist"}, "DATASET 'mnist': choose from: cifar10"),
        ({"precision": "fp8"}, "PRECISION 'fp8': choose from: auto, fp32, bf16, fp16"),
    ],
)
def test_bad_parameters_are_refused_naming_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quiet_setup("x", **kwargs)


def test_run_info_line_reads_back_and_names_no_absolute_path(tmp_path):
    session, printed = quiet_setup("x", "smoke", "fashion-mnist", seed=7, output_dir=str(tmp_path))
    profile, dataset, device, started = RUN_INFO.search(printed).groups()
    assert (profile, dataset, started) == ("smoke", "fashion-mnist", session.started)
    assert "seed: 7" in printed and "torch " in printed
    assert str(tmp_path) not in printed and str(REPO_ROOT) not in printed and "results, checkpoints" in printed


def test_summary_names_the_classes_and_parameter_counts():
    session, _ = quiet_setup("x", "smoke", "synthetic", output_dir="unused")
    lines = study_summary(session.cfg).splitlines()
    assert lines[0].startswith("synthetic classes: ") and len(lines) == 3
    assert lines[1].startswith("teacher teacher_cnn: ") and lines[2].endswith(" parameters")


# --- finish: wall time and notebooks.json --------------------------------------------------------------------


def test_finish_saves_one_entry_per_notebook_latest_wins(tmp_path):
    printed: list[str] = []
    first, _ = quiet_setup("00_baseline", "smoke", "fashion-mnist", output_dir=str(tmp_path))
    finish(first, log=printed.append)
    second, _ = quiet_setup("01_logit_distillation", "smoke", "fashion-mnist", seed=2, output_dir=str(tmp_path))
    finish(second, log=printed.append)
    again, _ = quiet_setup("00_baseline", "smoke", "fashion-mnist", seed=5, output_dir=str(tmp_path))
    entry = finish(again, log=printed.append)
    saved = json.loads((tmp_path / "results" / "fashion-mnist" / "notebooks.json").read_text())["notebooks"]
    assert list(saved) == ["00_baseline", "01_logit_distillation"]
    assert saved["00_baseline"] == entry and entry["seed"] == 5 and saved["01_logit_distillation"]["seed"] == 2
    assert set(entry) == {"notebook", "profile", "dataset", "seed", "device", "torch", "precision", "started",
                          "wall_seconds"}  # fmt: skip
    assert entry["wall_seconds"] >= 0 and entry["precision"] == again.precision
    match = WALL_TIME.search(printed[-1])
    assert match and match[2] == "smoke"


# --- Colab and Google Drive (google.colab faked) -------------------------------------------------------------


@pytest.fixture
def colab(monkeypatch, tmp_path):
    """A fake ``google.colab`` whose ``drive.mount`` creates MyDrive under a temporary mount point."""
    mount_point, calls = tmp_path / "drive", []

    def mount(path, **kwargs):
        calls.append(path)
        if fake.refuse:
            raise ValueError("mount failed")
        Path(path, "MyDrive").mkdir(parents=True, exist_ok=True)

    fake = types.SimpleNamespace(calls=calls, refuse=False, mount_point=mount_point)
    drive = types.ModuleType("google.colab.drive")
    drive.mount = mount
    colab_module = types.ModuleType("google.colab")
    colab_module.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab_module)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    if "google" not in sys.modules:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setattr(sys.modules["google"], "colab", colab_module, raising=False)
    monkeypatch.setattr(notebook, "DRIVE_MOUNT", str(mount_point))
    monkeypatch.setattr(notebook, "DRIVE_DIR", str(mount_point / "MyDrive" / "kd-cifar"))
    return fake


def test_outside_colab_nothing_is_mounted(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not in_colab()
    session, printed = quiet_setup("x", "full", "fashion-mnist")
    assert not session.drive and session.paths.results.is_relative_to(REPO_ROOT) and "Drive" not in printed


def test_colab_mounts_drive_and_writes_everything_there(colab):
    assert in_colab()
    session, printed = quiet_setup("00_baseline", "full", "fashion-mnist")
    drive_dir = colab.mount_point / "MyDrive" / "kd-cifar"
    assert colab.calls == [str(colab.mount_point)] and session.drive
    for path in (session.paths.results, session.paths.pictures, session.paths.checkpoints):
        assert drive_dir in path.parents
    assert session.cfg.checkpoint_dir == str(drive_dir / "checkpoints")  # so 01-04 find 00's teacher
    assert "-> Google Drive (MyDrive/kd-cifar)" in printed and str(colab.mount_point) not in printed


def test_colab_smoke_run_keeps_out_of_the_study_folder_and_output_dir_wins(colab, tmp_path):
    smoke, _ = quiet_setup("x", "smoke", "fashion-mnist")
    assert smoke.paths.results.is_relative_to(colab.mount_point / "MyDrive" / "kd-cifar" / "smoke")
    chosen, _ = quiet_setup("x", "full", "fashion-mnist", output_dir=str(tmp_path / "mine"))
    assert chosen.paths.results.is_relative_to(tmp_path / "mine")


def test_colab_without_drive_or_with_a_refused_mount_writes_locally(colab):
    session, _ = quiet_setup("x", "full", "fashion-mnist", use_drive=False)
    assert colab.calls == [] and not session.drive and session.paths.results.is_relative_to(REPO_ROOT)
    colab.refuse = True
    session, printed = quiet_setup("x", "full", "fashion-mnist")
    assert colab.calls and not session.drive and session.paths.results.is_relative_to(REPO_ROOT)
    assert "Google Drive not mounted (ValueError: mount failed)" in printed


# --- the repository URL, badges and install cells ------------------------------------------------------------


def test_every_notebook_agrees_with_the_repository_url():
    url = repository_url()
    assert url.startswith("https://github.com/")
    assert out_of_sync() == [], "run: python -m kd_utils.notebook sync"


def test_sync_rewrites_badges_and_install_cells_for_a_fork(tmp_path):
    folder = tmp_path / "notebooks"
    shutil.copytree(REPO_ROOT / "notebooks", folder)
    fork = "https://github.com/someone/kd-fork"
    assert out_of_sync(folder, fork) == [p.stem for p in sorted(folder.glob("*.ipynb"))]
    changed = sync(folder, fork)
    assert (
        len(changed) == len(list(folder.glob("*.ipynb")))
        and out_of_sync(folder, fork) == []
        and sync(folder, fork) == []
    )
    nb = json.loads((folder / "01_logit_distillation.ipynb").read_text())
    title = "".join(nb["cells"][0]["source"])
    assert "colab.research.google.com/github/someone/kd-fork/blob/main/notebooks/01_logit_distillation.ipynb" in title
    install = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert f'REPOSITORY = "{fork}"' in install and '"kd-fork"' in install


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[project]\nname = "x"\n', "no \\[project.urls\\] Repository"),
        ('[project.urls]\nRepository = "https://gitlab.com/a/b"\n', "Colab opens notebooks from GitHub"),
    ],
)
def test_repository_url_must_be_a_github_url(tmp_path, text, message):
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(ValueError, match=message):
        repository_url(tmp_path / "pyproject.toml")
    (tmp_path / "pyproject.toml").write_text('[project.urls]\nRepository = "https://github.com/a/b.git"\n')
    assert repository_url(tmp_path / "pyproject.toml") == "https://github.com/a/b"


def test_main_check_and_usage(capsys):
    assert notebook_files.main(["check"]) == 0
    for argv in (["bogus"], [], ["check", "notebooks"]):
        assert notebook_files.main(argv) == 2 and "usage:" in capsys.readouterr().err
