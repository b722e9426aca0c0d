"""The exit contract, probe by probe: input that used to get past the up-front checks (and end in a traceback,
or in exit 2 only after work) is now refused before anything is loaded or written, in one line with exit 2;
``report`` and ``sweep`` keep the same contract. Each test is one of the failures found by a hostile user."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest

from kd_utils import cli, results
from kd_utils.cli import main

FAST = ["--dataset", "synthetic", "--train-size", "200", "--val-size", "50", "--test-size", "50", "--batch-size",
        "32", "--epochs", "1", "--teacher-epochs", "1", "--no-progress", "--device", "cpu", "--precision", "fp32",
        "--allow-weak-teacher"]  # fmt: skip


def call(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, tmp_path, *args: str, command: str = "run") -> str:
    """Run ``command`` with ``args``: exit 2, one line on stderr, no traceback, nothing written; the line."""
    results_path, checkpoints = tmp_path / "out" / "r.json", tmp_path / "out" / "ckpt"
    extra = ["--results-path", str(results_path)] if "--results-path" not in args and command == "run" else []
    extra += ["--checkpoint-dir", str(checkpoints)] if "--checkpoint-dir" not in args and command == "run" else []
    code, _, err = call(capsys, command, *args, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not results_path.exists() and not checkpoints.exists()
    return lines[0]


# --- values that passed validation and failed later ------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "fitnets", "--hint-level", "99"], "--hint-level 99: the student has stages 0 to"),
        (["--temperature", "1e300"], "--temperature 1e+300: must be in (0, 1000]"),
        (["--experiment", "dist", "--dist-temperature", "1e300"], "--dist-temperature 1e+300: must be in (0, 1000]"),
        (["--experiment", "hidden", "--spatial-size", "100000"], "--spatial-size 100000: larger than the smallest"),
        (["--momentum", "0"], "--momentum 0.0: must be > 0 with sgd (Nesterov momentum)"),
        (["--seed", "18446744073709551616"], "--seed 18446744073709551616: must be in [0, 4294967295]"),
        (["--split-seed=-1"], "--split-seed -1: must be in [0, 4294967295]"),
        (["--seeds", "0", "-3"], "--seed -3: must be in [0, 4294967295]"),
        (["--checkpoint-dir", ""], "--checkpoint-dir '': give the folder"),
        (["--config", ""], "--config '': give a TOML file"),
    ],
)
def test_values_out_of_range_are_refused_before_any_work(capsys, tmp_path, args, message):
    assert message in refused(capsys, tmp_path, *FAST, *args)


def test_a_model_that_cannot_take_the_images_is_named_before_training(capsys, tmp_path):
    pytest.importorskip("timm")
    line = refused(capsys, tmp_path, *FAST, "--student", "timm:vit_tiny_patch16_224")
    assert "--student timm:vit_tiny_patch16_224: cannot take 3x16x16 images" in line


# --- --config TOML ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "toml, message",
    [
        ('experiment = "nonsense"', "--experiment 'nonsense': choose from:"),
        ("experiment = 7", "'experiment = 7' has the wrong type"),
        ('experiment = ["logit", "dkd"]', '\'experiment = ["logit", "dkd"]\' has the wrong type'),
        ("seeds = 5", "'seeds = 5' has the wrong type"),
        ("seeds = [1.5]", "'seeds = [1.5]' has the wrong type"),
        ('seeds = ["a", "b"]', "has the wrong type; expected a list of seeds"),
        ("final-epochs = 0", "'final-epochs = 0' has the wrong type"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(capsys, tmp_path, toml, message):
    config = tmp_path / "c.toml"
    config.write_text(toml + "\n")
    assert message in refused(capsys, tmp_path, *FAST, "--config", str(config))


def test_results_path_is_a_config_key_as_the_readme_says(tmp_path):
    from kd_utils.config import read_toml

    config = tmp_path / "c.toml"
    config.write_text('results-path = "runs/x.json"\nepochs = 2\n')
    assert read_toml(config) == {"results-path": "runs/x.json", "epochs": 2}


# --- paths -------------------------------------------------------------------------------------------------
def test_a_checkpoint_dir_or_tensorboard_dir_that_is_a_file_is_refused(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "--checkpoint-dir" in refused(capsys, tmp_path, *FAST, "--checkpoint-dir", str(blocker))
    pytest.importorskip("tensorboard")
    assert "--tensorboard" in refused(capsys, tmp_path, *FAST, "--tensorboard", str(blocker))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_checkpoint_dir_is_refused(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        assert "not writable" in refused(capsys, tmp_path, *FAST, "--checkpoint-dir", str(folder / "ckpt"))
    finally:
        folder.chmod(0o755)


def test_a_fifo_as_results_path_is_refused_instead_of_hanging(capsys, tmp_path):
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(capsys, tmp_path, *FAST, "--results-path", str(fifo))


def test_a_fifo_in_a_cifar_folder_is_refused_instead_of_hanging(tmp_path):
    from kd_utils.datasets import read_cifar_batch

    os.mkfifo(tmp_path / "data_batch_1")
    with pytest.raises(ValueError, match="not a regular file"):
        read_cifar_batch(tmp_path / "data_batch_1", b"labels", 10, "CIFAR-10")


def test_a_symlinked_results_path_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "real" / "runs.json"
    target.parent.mkdir()
    target.write_text('{"runs": []}\n')
    link = tmp_path / "link.json"
    link.symlink_to(target)
    run = {"experiment": "baseline", "config": {}, "test": {"accuracy": 1, "precision": 1, "recall": 1, "f1": 1}}
    results.append_run(link, run)
    assert link.is_symlink() and len(json.loads(target.read_text())["runs"]) == 1


def test_a_killed_writers_temporary_file_is_cleaned_on_the_next_append(tmp_path):
    path = tmp_path / "r.json"
    stray = tmp_path / ".r.json.abc123.tmp"
    stray.write_text("half a file")
    run = {"experiment": "baseline", "config": {}, "test": {"accuracy": 1, "precision": 1, "recall": 1, "f1": 1}}
    results.append_run(path, run)
    assert not stray.exists() and len(results.load_runs(path)) == 1


# --- files that load but do not fit ------------------------------------------------------------------------
def test_a_malicious_pickle_as_teacher_checkpoint_is_one_line(tmp_path):
    """In a real process: torch's warning about the refused pickle used to come first, three lines in all."""
    import subprocess
    import sys

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    cmd = [sys.executable, "-m", "kd_utils", "run", *FAST, "--teacher-checkpoint", str(evil), "--results-path",
           str(tmp_path / "r.json"), "--checkpoint-dir", str(tmp_path / "c")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "teacher weights" in done.stderr and not (tmp_path / "pwned").exists()


# --- strict JSON -------------------------------------------------------------------------------------------
def test_nan_in_a_results_file_is_refused_not_written_back(capsys, tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"runs": [{"experiment": "x", "config": {}, "test": {"accuracy": NaN, "precision": 1, '
                    '"recall": 1, "f1": 1}}]}')  # fmt: skip
    before = path.read_text()
    line = refused(capsys, tmp_path, *FAST, "--results-path", str(path))
    assert "NaN is not JSON" in line and path.read_text() == before
    with pytest.raises(ValueError, match="NaN or infinite"):
        results.strict_json({"f1": float("nan")})


# --- disk full, Ctrl-C ----------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.json"))

    monkeypatch.setattr(cli, "run_study", full)
    code, _, err = call(capsys, "run", *FAST, "--results-path", str(tmp_path / "r.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err


# --- report ---------------------------------------------------------------------------------------------------
def baseline_only_results(tmp_path: Path, capsys) -> Path:
    results_dir = tmp_path / "results"
    code, _, err = call(capsys, "run", *FAST, "--experiment", "baseline", "--results-path",
                        str(results_dir / "synthetic" / "runs.json"), "--checkpoint-dir", str(tmp_path / "c"))  # fmt: skip
    assert code == 0, err
    return results_dir


def test_report_renders_the_results_of_a_baseline_run(capsys, tmp_path):
    results_dir = baseline_only_results(tmp_path, capsys)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:synthetic:start -->\n<!-- results:synthetic:end -->\n")
    code, _, err = call(capsys, "report", "--results-dir", str(results_dir), "--pictures-dir", str(tmp_path / "p"),
                        "--readme", str(readme))  # fmt: skip
    assert code == 0, err
    assert "| baseline |" in readme.read_text()


@pytest.mark.parametrize("bad", ["pictures", "readme", "results"])
def test_report_refuses_bad_paths_before_drawing_anything(capsys, tmp_path, bad):
    file, folder = tmp_path / "a-file", tmp_path / "a-folder"
    file.write_text("x")
    folder.mkdir()
    args = {"results": ["--results-dir", str(file)], "pictures": ["--pictures-dir", str(file)],
            "readme": ["--readme", str(folder)]}[bad]  # fmt: skip
    defaults = ["--results-dir", str(tmp_path), "--pictures-dir", str(tmp_path / "p"), "--readme", str(tmp_path / "R")]
    line = refused(capsys, tmp_path, *defaults, *args, command="report")
    assert line.startswith("python -m kd_utils: error: --")
    assert not (tmp_path / "p").exists()


def test_report_leaves_out_a_notebooks_entry_missing_fields(tmp_path):
    from kd_utils.provenance import notebook_times

    (tmp_path / "d").mkdir()
    good = {"notebook": "00_a", "profile": "full", "dataset": "d", "device": "cpu", "precision": "bf16",
            "started": "now", "wall_seconds": 60}  # fmt: skip
    (tmp_path / "d" / "notebooks.json").write_text(
        json.dumps({"notebooks": {"00_a": good, "01_b": {"notebook": "01_b"}}})
    )
    table = notebook_times(tmp_path)
    assert "| `00_a` |" in table and "(left out, missing fields: d/01_b)" in table


def test_report_on_a_record_without_per_class_metrics_is_one_line_and_writes_nothing(capsys, tmp_path):
    results_dir = tmp_path / "results" / "synthetic"
    results_dir.mkdir(parents=True)
    record = {"experiment": "baseline", "name": "baseline", "config": {"train": {"seed": 0, "epochs": 1}},
              "test": {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}, "params": 1, "seconds": 1.0,
              "history": [{"epoch": 1}]}  # fmt: skip
    (results_dir / "runs.json").write_text(
        json.dumps({"runs": [record, {**record, "name": "logit", "experiment": "logit"}]})
    )
    line = refused(capsys, tmp_path, "--results-dir", str(tmp_path / "results"), "--pictures-dir",
                   str(tmp_path / "p"), "--readme", str(tmp_path / "README.md"), command="report")  # fmt: skip
    assert "cannot render" in line
    assert not any((tmp_path / "p").glob("*.png"))


# --- sweep ------------------------------------------------------------------------------------------------------
SWEEP = ["sweep", "--method", "logit", "--dataset", "synthetic", "--train-size", "200", "--val-size", "50",
         "--test-size", "50", "--batch-size", "32", "--epochs", "1", "--teacher-epochs", "1", "--no-progress",
         "--device", "cpu", "--precision", "fp32", "--allow-weak-teacher"]  # fmt: skip


def test_a_bad_storage_url_is_refused_before_any_folder_is_made(capsys, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "sweeps"
    code, _, err = call(capsys, *SWEEP, "--storage", "nonsense://", "--results-dir", str(out), "--checkpoint-dir",
                        str(tmp_path / "c"))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--storage nonsense://" in err
    assert not out.exists()


def test_a_sweep_whose_every_trial_diverges_exits_3_with_one_line(capsys, tmp_path):
    pytest.importorskip("optuna")
    code, _, err = call(capsys, *SWEEP, "--trials", "2", "--param", "lr=1e20:1e30:log",
                        "--results-dir", str(tmp_path / "s"), "--checkpoint-dir", str(tmp_path / "c"))  # fmt: skip
    assert code == 3 and len(err.strip().splitlines()) == 1 and "every trial of study" in err, err


def test_resume_replaces_the_cached_records_instead_of_appending_them_again(capsys, tmp_path):
    path = tmp_path / "r.json"
    for _ in range(2):
        code, _, err = call(capsys, "run", *FAST, "--experiment", "baseline", "--resume", "--results-path",
                            str(path), "--checkpoint-dir", str(tmp_path / "c"))  # fmt: skip
        assert code == 0, err
    assert [r["name"] for r in results.load_runs(path)] == ["baseline"]


# --- checkpoints that load but do not fit ---------------------------------------------------------------------
def run_folder(args: list[str], experiment: str = "baseline") -> Path:
    """The run folder the CLI would use for ``args`` (the same parser, the same config)."""
    from kd_utils.cli import get_args_parser
    from kd_utils.flags import config_from_args
    from kd_utils.runs import run_dir

    return run_dir(config_from_args(get_args_parser().parse_args(["run", *args])), experiment)


def trained_last_pt(capsys, tmp_path) -> Path:
    ckpt = tmp_path / "c"
    code, _, err = call(capsys, "run", *FAST, "--experiment", "baseline", "--epochs", "2", "--results-path",
                        str(tmp_path / "first.json"), "--checkpoint-dir", str(ckpt))  # fmt: skip
    assert code == 0, err
    return run_folder([*FAST, "--epochs", "2", "--checkpoint-dir", str(ckpt)]) / "last.pt"


def test_another_architectures_last_pt_is_refused_before_any_record(capsys, tmp_path):
    import shutil

    source = trained_last_pt(capsys, tmp_path)
    other = [*FAST, "--epochs", "2", "--student", "teacher_cnn", "--checkpoint-dir", str(tmp_path / "c")]
    target = run_folder(other) / "last.pt"
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    line = refused(capsys, tmp_path, *other, "--experiment", "baseline", "--resume")
    assert "does not fit this run's model" in line and str(target) in line


@pytest.mark.parametrize("tamper", ["extra key", "string epoch"])
def test_a_last_pt_with_a_foreign_layout_is_refused(capsys, tmp_path, tamper):
    import torch

    last = trained_last_pt(capsys, tmp_path)
    (last.parent / "run.json").unlink()  # not a finished cached baseline: --resume reads last.pt
    state = torch.load(last, weights_only=True)
    if tamper == "extra key":
        state["extra"] = 1
    else:
        state["epoch"] = "2"
    torch.save(state, last)
    args = [*FAST, "--epochs", "2", "--checkpoint-dir", str(tmp_path / "c"), "--experiment", "baseline", "--resume"]
    code, _, err = call(capsys, "run", *args, "--results-path", str(tmp_path / "second.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ("unknown keys extra" if tamper == "extra key" else "malformed epoch") in err
    assert not (tmp_path / "second.json").exists()


def test_a_forged_uint8_dtype_with_object_flags_is_refused():
    """The allowed ``numpy.dtype`` global lets a pickle set a uint8 descriptor's flags (``__setstate__``) so it
    claims to hold objects; such an array is refused as a CIFAR batch even though no code ran."""
    import numpy as np

    from kd_utils.datasets import cifar_batch_problem

    forged = np.dtype("u1", False, True)
    forged.__setstate__((3, "|", None, None, None, -1, -1, 63))
    assert forged == np.uint8 and forged.hasobject
    data = np.zeros((2, 3072), np.uint8).view(forged)
    assert "forged descriptor" in cifar_batch_problem({b"data": data, b"labels": [0, 1]}, b"labels", 10)


def test_a_batch_larger_than_the_data_counts_the_images_it_trained_on():
    """images/s is images over seconds: a batch of 100,000 on 200 images trains 200 an epoch, not 100,000."""
    import torch

    from kd_utils.data import TensorLoader
    from kd_utils.datasets import DATASETS
    from kd_utils.train import epoch_images

    images, labels = torch.zeros(200, 3, 16, 16, dtype=torch.uint8), torch.zeros(200, dtype=torch.long)
    for batch, train, expected in ((100_000, True, 200), (64, True, 192), (64, False, 200)):
        loader = TensorLoader(images, labels, DATASETS["synthetic"], batch, "cpu", train=train)
        assert epoch_images(loader) == expected == sum(len(y) for _, y in loader)


def test_a_sweep_trials_file_missing_fields_is_left_out_of_the_table(tmp_path):
    from kd_utils.provenance import sweep_table

    (tmp_path / "a-seed0.json").write_text(json.dumps({"trials": [{"number": 0}], "space": {}, "method": "logit"}))
    assert sweep_table(tmp_path) is None  # nothing it can read: no table, no traceback


def test_a_killed_checkpoint_writers_temporary_file_is_cleaned_by_the_next_fit(
    small_splits, tiny_train_config, tmp_path
):
    import torch

    from kd_utils.distill import build_distiller
    from kd_utils.models import build_model
    from kd_utils.train import fit

    stray = tmp_path / ".last.pt.k1ll3d.tmp"
    stray.write_bytes(b"half a checkpoint")
    torch.manual_seed(0)
    fit(build_distiller("baseline", build_model("student_cnn")), small_splits, tiny_train_config, tmp_path)
    assert not stray.exists() and (tmp_path / "last.pt").exists()
