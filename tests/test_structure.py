"""The package's shape: no import cycle, the report apart from the trainer, every stored record readable as a
``RunRecord``, and the CLI's endings (Ctrl-C, optional packages) as one line."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import is_protocol_1_records  # the Makefile's hash of the stored records

from kd_utils import cli
from kd_utils.records import LABELS_ONLY, ROLES, RunRecord
from kd_utils.report import group_runs, reference_for
from kd_utils.results import load_records
from kd_utils.study_run import restore_sigint
from kd_utils.tensorboard_log import event_folder

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kd_utils"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports when it is imported (top level; imports inside functions are
    lazy by intent: they run when a feature is used, not when the module loads)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports never run
                continue
        graph[path.stem] = deps - {path.stem}
    return graph


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_module_imports_itself_through_another():
    graph = import_graph()
    cycles = sorted(m for m in graph if m in closure(graph, m) and m != "__init__")
    assert cycles == [], f"import cycles through: {cycles}"


def test_the_report_and_the_sweep_flags_load_without_the_trainer_or_optuna():
    graph = import_graph()
    assert not {"runs", "teacher", "study", "train", "sweep"} & closure(graph, "report")
    assert "sweep" not in closure(graph, "cli")  # optuna loads only when a sweep runs
    assert "cli" not in closure(graph, "sweep") and "cli" not in closure(graph, "study")


def test_every_stored_record_reads_as_a_run_record():
    """Every layout stored in this repository (results/**: the study, its sweeps, the archive) reads through
    the one reader, with the fields the report pairs on."""
    files = [p for p in (ROOT / "results").rglob("*.json") if "runs" in json.loads(p.read_text())]
    assert len(files) >= 3  # the study, the archive, the sweeps' tuned records
    for path in files:
        records = load_records(path)
        assert records, path
        for r in records:
            assert r.role in ROLES and isinstance(r.seed, int) and isinstance(r.split_seed, int), (path, r.name)
            assert 0 < r.labeled_fraction <= 1 and r.epochs >= 1 and r.trained_on, (path, r.name)
    study = load_records(ROOT / "results" / "fashion-mnist" / "runs.json")
    grouped = {name: list(seeds.values()) for name, seeds in group_runs(study).items()}
    for name, records in grouped.items():  # every method run of the study has its labels-only partner
        if records[0].role in ("method", "final"):
            partner = reference_for(name, grouped)
            assert partner is not None, name
            assert grouped[partner][0].role in LABELS_ONLY
            assert grouped[partner][0].labeled_fraction == records[0].labeled_fraction
            assert grouped[partner][0].epochs == records[0].epochs


def test_a_record_round_trips_through_its_stored_form():
    stored = load_records(ROOT / "results" / "fashion-mnist" / "runs.json")[-1]
    again = RunRecord.from_dict(json.loads(json.dumps(stored.to_dict())))
    assert again == stored


def test_tensorboard_folders_are_new_for_every_run_and_session(tmp_path):
    first = event_folder(tmp_path, "logit", 1)
    first.mkdir(parents=True)
    second = event_folder(tmp_path, "logit", 1)  # a replay in the same second
    assert second != first and second.name.startswith(first.name) and not second.exists()
    assert first.name.startswith("logit-seed1-")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_study", interrupted)
    code = cli.main(["run", "--dataset", "synthetic", "--results-path", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == cli.INTERRUPTED == 130
    assert err.strip().splitlines() == [
        "python -m kd_utils: error: interrupted; finished runs are saved, --resume continues the others"
    ]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_sigint_during_a_real_run_leaves_what_finished(tmp_path):
    """SIGINT (Ctrl-C) while a student trains: exit 130, one line on stderr, the finished runs' records kept."""
    results = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "kd_utils", "run", "--experiment", "logit", "--dataset", "synthetic",
           "--epochs", "40", "--teacher-epochs", "1", "--device", "cpu", "--no-progress", "--allow-weak-teacher",
           "--checkpoint-dir", str(tmp_path / "ckpt"), "--results-path", str(results)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore_sigint
    )  # a suite started from a background shell ignores SIGINT
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait for the distilled student's first epoch: teacher and baseline are saved
        if line.startswith("logit epoch") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)  # generous: on a loaded 2-core machine the unwinding run is slow
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "python -m kd_utils: error: interrupted; finished runs are saved, --resume continues the others"
    ]
    assert [r.role for r in load_records(results)] == ["teacher", "baseline"]


def protocol_1_records() -> Path:
    """The stored study's records (protocol 1): results/fashion-mnist/runs.json until `make study` files them
    under archive/ for the re-run's, checked by the SHA-256 the Makefile's move checks."""
    archived = ROOT / "results" / "fashion-mnist" / "archive" / "protocol-1-runs.json"
    path = archived if archived.exists() else ROOT / "results" / "fashion-mnist" / "runs.json"
    assert is_protocol_1_records(path), path
    return path


def test_the_stored_study_runs_keep_their_checkpoint_folders():
    """Run folders are named by a hash of the settings that shape a run; adding a setting at a value that
    changes nothing (``DistillConfig.shaping_dict``) must not rename them, or the notebooks would retrain."""
    from dataclasses import replace
    from types import SimpleNamespace

    from kd_utils.config import from_dict
    from kd_utils.runs import run_dir

    for r in load_records(protocol_1_records()):
        if r.role == "teacher":
            continue
        cfg = replace(from_dict(r.config), checkpoint_dir=str(ROOT / "checkpoints"))  # recorded in another clone
        teacher = SimpleNamespace(weights_hash=r.teacher["weights_sha256"]) if r.method != "baseline" else None
        found = (run_dir(cfg, r.method, teacher) / "last.pt").exists()
        # few-label runs of the stored study (protocol 1: every epoch walked all images) must never be resumed or
        # reloaded as runs of protocol 2 (data.FEW_LABEL_PROTOCOL); every other run keeps its folder
        assert found == (r.labeled_fraction >= 1), (r.name, r.seed)
