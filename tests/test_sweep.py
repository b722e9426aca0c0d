"""``sweep`` end to end on tiny synthetic data: trials chosen on validation, the test set read once at the end,
grids run exactly their points, workers share one study (journal file, SQLite; PostgreSQL in
tests/test_sweep_postgres.py), and a bad ``--param`` or ``--storage`` fails before any training."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE
from types import SimpleNamespace

import pytest
import torch

from kd_utils import cli, report, search

optuna = pytest.importorskip("optuna")  # the sweep needs it; tests/test_cli.py checks the one line without it

from kd_utils import storage as sweep_storage
from kd_utils import sweep
from kd_utils.config import ExperimentConfig
from kd_utils.distill import STUDENT_METHODS
from kd_utils.train import device_name

SMALL = [
    "--dataset", "synthetic", "--train-size", "200", "--val-size", "50", "--test-size", "50", "--epochs", "1",
    "--teacher-epochs", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--no-progress",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]
WIRED = "sweep" in cli.get_args_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
MAIN = cli.main if WIRED else sweep.main  # through the CLI once the lead has added the subcommand
ENTRY = ["-m", "kd_utils"] if WIRED else ["-c", "import sys; from kd_utils.sweep import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """Checkpoints shared by this module's sweeps: the teacher is trained once."""
    return tmp_path_factory.mktemp("checkpoints")


def run_sweep_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = MAIN(["sweep", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tpe_sweep_chooses_on_validation_and_tests_the_chosen_run_once(capsys, ckpt, tmp_path):
    results = tmp_path / "sweeps"
    args = ["--method", "logit", "--trials", "3", "--results-dir", str(results), "--checkpoint-dir", str(ckpt), *SMALL]
    code, out, err = run_sweep_cli(capsys, *args)
    assert code == 0, err
    name = "synthetic-logit-seed0"
    saved = json.loads((results / f"{name}.json").read_text())
    trials = saved["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and {t["state"] for t in trials} == {"COMPLETE"}
    for t in trials:
        assert "test" not in t and "test_last" not in t  # trials never read the test split
        assert 1 <= t["params"]["temperature"] <= 10 and 0.1 <= t["params"]["alpha"] <= 1
        assert t["best_epoch"] == 1 and t["val_f1"] == [t["best_val_f1"]]
    best = max(trials, key=lambda t: (t["best_val_f1"], -t["number"]))
    assert saved["best_trial"] == best["number"]

    runs = json.loads((results / f"{name}-best.json").read_text())["runs"]
    assert len(runs) == 1
    record = runs[0]
    assert record["name"] == "logit-tuned" and record["sweep"]["trial"] == best["number"]
    assert set(record["test"]) >= {"accuracy", "f1"} and "test_last" in record
    assert record["config"]["distill"]["temperature"] == best["params"]["temperature"]
    # the chosen trial's run was loaded back, not trained again: same validation curve, same training time
    assert [row["val_f1"] for row in record["history"]] == best["val_f1"]
    assert record["best_val_f1"] == best["best_val_f1"] and record["seconds"] == best["seconds"]
    assert (results / f"{name}.png").stat().st_size > 0
    assert (results / "sweeps.journal").exists() and not (results / "sweeps.db").exists()  # the default storage

    replay = next(line for line in out.splitlines() if line.startswith("replay: ")).removeprefix("replay: ")
    replayed = cli.config_from_args(cli.get_args_parser().parse_args(shlex.split(replay)[3:]))
    assert replayed.distill.temperature == best["params"]["temperature"]
    assert replayed.distill.alpha == best["params"]["alpha"] and replayed.train.epochs == 1

    code, out, err = run_sweep_cli(capsys, *[a if a != "3" else "0" for a in args])  # --trials 0: finish only
    assert code == 0, err
    assert len(json.loads((results / f"{name}-best.json").read_text())["runs"]) == 1  # not appended twice

    # the report's sweeps table: the chosen setting, its validation F1, the trials' range and the test F1 read once
    table = report.sweep_table(results, link_from=tmp_path).splitlines()
    assert len(table) == 3 and table[0].startswith("| method | trials |")
    scores = [t["best_val_f1"] for t in trials]
    assert table[2].startswith(f"| [logit](sweeps/{name}.png) | 3 | temperature 1:10:log, alpha 0.1:1.0 | ")
    assert (
        f"| {best['best_val_f1']:.4f} | {min(scores):.4f} – {max(scores):.4f} | {record['test']['f1']:.4f} |"
        in table[2]
    )
    assert f"temperature {best['params']['temperature']:.3g}" in table[2]


def test_grid_sweep_runs_exactly_the_listed_values(capsys, ckpt, tmp_path):
    results = tmp_path / "sweeps"
    code, out, err = run_sweep_cli(
        capsys, "--method", "logit", "--sampler", "grid", "--param", "temperature=2,4", "--results-dir",
        str(results), "--checkpoint-dir", str(ckpt), "--alpha", "0.5", *SMALL,
    )  # fmt: skip
    assert code == 0, err
    trials = json.loads((results / "synthetic-logit-seed0.json").read_text())["trials"]
    assert sorted(t["params"]["temperature"] for t in trials) == [2.0, 4.0]
    assert all(t["params"].keys() == {"temperature"} and t["state"] == "COMPLETE" for t in trials)
    record = json.loads((results / "synthetic-logit-seed0-best.json").read_text())["runs"][0]
    assert record["config"]["distill"]["alpha"] == 0.5  # fixed flags stay fixed


def load_study(storage: str, name: str = "synthetic-logit-seed0") -> optuna.Study:
    """The study a sweep left in ``storage`` (a journal file's path or a database URL), opened as a worker would."""
    return optuna.load_study(
        study_name=name, storage=sweep_storage.heartbeat_storage(sweep_storage.check_storage(storage))
    )


def two_workers(tmp_path: Path, storages: list[list[str]], timeout: float = 240) -> list[tuple[str, str]]:
    """Two ``sweep`` processes started together (``--trials 3``, ``--max-trials 4``), each with its ``--storage``
    flags (none: the default), sharing a results and a checkpoint folder; their (stdout, stderr) once both end."""
    args = [
        "sweep", "--method", "logit", "--trials", "3", "--max-trials", "4", "--results-dir", str(tmp_path / "sweeps"),
        "--checkpoint-dir", str(tmp_path / "ckpt"), *SMALL,
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, *ENTRY, *args, *storage], cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE, text=True
        )  # fmt: skip
        for storage in storages
    ]
    outputs = [w.communicate(timeout=timeout) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    return outputs


def assert_one_capped_study(study: optuna.Study, results: Path, outputs: list[tuple[str, str]]) -> None:
    """What two workers of ``two_workers`` must leave: trial numbers unique, exactly 4 live trials (0-3, every
    other one skipped over the cap), trials from both workers, the teacher trained once, the choice scored once."""
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each number once
    live = sweep.counted_trials(study)
    assert sorted(t.number for t in live) == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in live)
    assert all("skipped" in t.user_attrs for t in trials if t not in live)  # the rest: over --max-trials, untrained
    assert len({t.user_attrs["worker"] for t in live}) == 2  # both workers ran trials (3 each at most)
    assert sum("loaded cached run" in out for out, _ in outputs) == 1  # the teacher was trained once
    runs = json.loads((results / "synthetic-logit-seed0-best.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["sweep"]["complete_trials"] == 4  # scored once, after the last trial
    best = max(live, key=lambda t: (t.value, -t.number))
    assert runs[0]["sweep"]["trial"] == best.number


@pytest.mark.slow  # two fresh interpreters import torch: ~15 s on an idle 2-core machine, more under load
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_worker_processes_share_one_capped_study(tmp_path, kind):
    """The default journal file (processes on one machine) and, as older studies use, a SQLite file."""
    storage = str(tmp_path / "sweeps" / "sweeps.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    flags = [] if kind == "journal" else ["--storage", storage]
    outputs = two_workers(tmp_path, [flags, flags])
    assert_one_capped_study(load_study(storage), tmp_path / "sweeps", outputs)


@pytest.mark.parametrize(("kind", "pack"), [("journal", "1"), ("journal", "2"), ("sqlite", "1")])
def test_a_trial_left_running_by_a_dead_worker_is_failed_and_rerun(capsys, ckpt, tmp_path, monkeypatch, kind, pack):
    """Every storage kind beats and retries: the default journal file (trial by trial, and packed: the heartbeats
    of ``run_packed_trials``) and a SQLite file (Optuna's own heartbeat)."""
    monkeypatch.setattr(sweep_storage, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweep_storage, "GRACE_S", 1)
    results = tmp_path / "sweeps"
    storage = str(results / "sweeps.journal") if kind == "journal" else f"sqlite:///{results / 'sweeps.db'}"
    args = ["--method", "logit", "--results-dir", str(results), "--checkpoint-dir", str(ckpt), "--pack", pack,
            *([] if kind == "journal" else ["--storage", storage]), *SMALL]  # fmt: skip
    assert run_sweep_cli(capsys, *args, "--trials", "0")[0] == 0  # creates the study, runs nothing
    study = load_study(storage)
    dead = study.ask()  # a worker starts a trial, sends one heartbeat, then is killed
    space = {p.name: p for p in sweep.plan_sweep(cli.get_args_parser().parse_args(["sweep", *args])).space}
    values = {name: space[name].suggest(dead) for name in ("temperature", "alpha")}
    study._storage.record_heartbeat(dead._trial_id)  # noqa: SLF001
    time.sleep(2.5)

    code, out, err = run_sweep_cli(capsys, *args, "--trials", "2", "--max-trials", "2")
    assert code == 0, err
    trials = load_study(storage).trials
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and states[1:].count("COMPLETE") == 2  # the stale trial no longer counts as live
    assert trials[1].params == values  # its settings were queued again and ran first
    assert [t.user_attrs.get("pack") for t in trials[1:]] == [int(pack)] * 2
    runs = json.loads((results / "synthetic-logit-seed0-best.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["sweep"]["complete_trials"] == 2  # scored: nothing is left running


def test_a_trial_cut_by_ctrl_c_is_queued_again_once_with_its_settings(capsys, ckpt, tmp_path, monkeypatch):
    """A session's deadline (SIGINT) fails the running trial in Optuna; its settings come back as the next trial,
    queued once however many workers open the study afterwards, and the default stays the default."""
    results = tmp_path / "sweeps"
    args = ["--method", "logit", "--results-dir", str(results), "--checkpoint-dir", str(ckpt), *SMALL]
    real = sweep.train_experiment

    def cut(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "train_experiment", cut)
    code, _, err = run_sweep_cli(capsys, *args, "--trials", "3")
    assert code == 130 and "interrupted" in err
    storage = str(results / "sweeps.journal")
    trials = load_study(storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["default"] is True
    monkeypatch.setattr(sweep, "train_experiment", real)
    assert run_sweep_cli(capsys, *args, "--trials", "0")[0] == 0  # another worker opens it: nothing queued twice
    assert len(load_study(storage).trials) == 2
    code, _, err = run_sweep_cli(capsys, *args, "--trials", "2", "--max-trials", "2")
    assert code == 0, err
    trials = load_study(storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["retry_history"] == [0]


def test_a_journal_trial_is_stale_only_when_both_its_beat_and_its_start_are_old(tmp_path):
    storage = sweep_storage.JournalHeartbeatStorage(tmp_path / "s.journal", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    ids = lambda: storage._get_stale_trial_ids(study._study_id)  # noqa: E731, SLF001
    silent, beating = study.ask(), study.ask()
    attr = sweep_storage.JournalHeartbeatStorage.HEARTBEAT_ATTR
    storage.set_trial_system_attr(beating._trial_id, attr, time.time() - 120)  # noqa: SLF001 - a beat 2 min old
    assert ids() == []  # started a moment ago
    time.sleep(1.5)
    assert ids() == [beating._trial_id]  # noqa: SLF001 - the silent one never beat: not judged (as RDBStorage)
    retried = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, system_attrs={attr: time.time() - 120})
    study.add_trial(retried)  # as RetryHeartbeatStaleTrialCallback queues it: the old beat comes along
    fresh = study.ask()  # ... and it starts now: not stale before its own first beat
    assert fresh.number == 2 and ids() == [beating._trial_id]  # noqa: SLF001
    storage.record_heartbeat(beating._trial_id)  # noqa: SLF001
    assert ids() == []
    study.tell(beating, 0.5)
    storage.record_heartbeat(beating._trial_id)  # noqa: SLF001 - a late beat of a finished trial is ignored
    assert silent.number == 0 and study.trials[1].state.name == "COMPLETE"


def test_the_storage_forms_and_what_optuna_opens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths are resolved once, from the folder the worker starts in
    journal = f"journal:///{tmp_path}"
    assert sweep_storage.check_storage("sweeps.journal") == f"{journal}/sweeps.journal"
    assert sweep_storage.check_storage("runs/s.log") == f"{journal}/runs/s.log"
    assert sweep_storage.check_storage("journal:///runs/s") == f"{journal}/runs/s"  # relative, as sqlite:///
    assert sweep_storage.check_storage(f"journal:///{tmp_path}/s") == f"{journal}/s"  # absolute: a fourth slash
    assert sweep_storage.check_storage("sqlite:///s.db") == "sqlite:///s.db"
    opened = sweep_storage.heartbeat_storage(sweep_storage.check_storage("s.journal"))
    assert (
        isinstance(opened, sweep_storage.JournalHeartbeatStorage)
        and opened.get_heartbeat_interval() == sweep_storage.HEARTBEAT_S
    )
    assert (tmp_path / "s.journal").exists()


def test_a_plain_postgresql_url_uses_psycopg_3_when_psycopg2_is_missing(monkeypatch):
    pytest.importorskip("psycopg")
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as on a machine with only kd_utils[postgres]
    url = "postgresql://kd:secret@db.example:5433/kd?host=/tmp/s"
    assert sweep_storage.check_storage(url) == "postgresql+psycopg://kd:secret@db.example:5433/kd?host=/tmp/s"


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("nonsense://", "--storage nonsense://: unknown kind 'nonsense'; give a journal file"),
        ("sweeps.db", "--storage sweeps.db: not a storage URL; give a journal file (PATH.journal"),
        ("journal://s.journal", "write journal:///relative/path or journal:////absolute/path"),
        ("FILE/s.journal", "--storage FILE/s.journal: its folder FILE: is a file, not a folder"),
        ("FILE", "--storage FILE: not a storage URL"),
        (
            "postgresql://kd@db.example/kd",
            "the PostgreSQL driver psycopg is not installed; pip install 'kd_utils[postgres]'",
        ),
        ("postgresql+psycopg://kd@db.example/kd", "psycopg is not installed; pip install 'kd_utils[postgres]'"),
    ],
)
def test_bad_storage_exits_2_with_one_line_before_any_folder(capsys, tmp_path, monkeypatch, storage, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # neither PostgreSQL driver installed
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    results, ckpt = tmp_path / "sweeps", tmp_path / "ckpt"
    code, out, err = run_sweep_cli(capsys, "--method", "logit", "--storage", storage, "--results-dir", str(results),
                                   "--checkpoint-dir", str(ckpt), *SMALL)  # fmt: skip
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not results.exists() and not ckpt.exists()  # no folder, no lock, no journal


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: a read-only folder needs another user")
def test_a_journal_in_a_read_only_folder_is_refused(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable"):
        sweep_storage.check_storage(str(folder / "s.journal"))


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("nope=1:2", "--param nope=1:2: unknown setting 'nope'; choose from: alpha, temperature"),
        ("temperature=-1:2", "--param temperature=-1:2: --temperature -1.0: must be in (0, 1000]"),
        ("alpha=0.5:2", "--param alpha=0.5:2: --alpha 2.0: must be in [0, 1]"),
        ("temperature=2:1", "low < high"),
        ("temperature=0:2:log", "a log range needs low > 0"),
        ("spatial_size=1.5:3", "'1.5' is not an int"),
        ("feature_kind=cosine,l1", "--feature-kind l1: choose from"),
        ("level_weights=1,2", "fix it with --level-weights"),
        ("temperature", "expected NAME=SPEC"),
    ],
)
def test_bad_param_exits_2_with_one_line_before_any_work(capsys, tmp_path, param, message):
    results, ckpt = tmp_path / "sweeps", tmp_path / "ckpt"
    args = ["--method", "logit", "--param", param, "--results-dir", str(results), "--checkpoint-dir", str(ckpt)]
    code, out, err = run_sweep_cli(capsys, *args, *SMALL)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not results.exists() and not ckpt.exists()  # nothing trained, nothing written


def test_search_space_defaults_grids_and_caps():
    cfg = ExperimentConfig()
    assert search.parse_param("at_weight=1:100:log").grid() == (1.0, 10.0, 100.0)
    assert search.parse_param("spatial_size=1:4").grid() == (1, 2, 4)  # int ranges stay ints
    assert search.parse_param("feature_kind=cosine,mse").choices == ("cosine", "mse")
    for method in search.SEARCH_SPACES:  # every default space passes the config's own checks
        assert search.search_space(method, cfg)
    short = ExperimentConfig(train=cfg.train.__class__(epochs=2))
    hint = next(p for p in search.search_space("fitnets", short) if p.name == "hint_epochs")
    assert hint.choices == (1, 2)  # capped at the run's epochs
    assert set(search.SEARCH_SPACES) == set(STUDENT_METHODS)  # one registry: kd_utils.distill


def test_packed_sweep_trains_trials_as_one_network_with_unique_numbers_and_one_scoring(capsys, ckpt, tmp_path):
    results = tmp_path / "sweeps"
    args = ["--method", "logit", "--trials", "3", "--max-trials", "3", "--pack", "2", "--results-dir", str(results),
            "--checkpoint-dir", str(ckpt), *SMALL]  # fmt: skip
    code, out, err = run_sweep_cli(capsys, *args)
    assert code == 0, err
    name = "synthetic-logit-seed0"
    trials = json.loads((results / f"{name}.json").read_text())["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and {t["state"] for t in trials} == {"COMPLETE"}
    assert [t["pack"] for t in trials] == [2, 2, 1]  # trials 0 and 1 as one pack; the third alone
    runs = json.loads((results / f"{name}-best.json").read_text())["runs"]
    best = max(trials, key=lambda t: (t["best_val_f1"], -t["number"]))
    assert len(runs) == 1 and runs[0]["sweep"]["trial"] == best["number"]
    # the chosen trial's packed checkpoints were loaded back by an ordinary run: the same validation curve
    assert [row["val_f1"] for row in runs[0]["history"]] == best["val_f1"]
    beats = [t.system_attrs.get(sweep_storage.JournalHeartbeatStorage.HEARTBEAT_ATTR) for t in load_study(
        str(results / "sweeps.journal")).trials]  # fmt: skip
    assert all(beats), beats  # each packed trial beat on the default journal storage (heartbeats())
    code, _, err = run_sweep_cli(capsys, *args)  # the cap holds: a second worker's trials are all skipped
    assert code == 0, err
    assert len(json.loads((results / f"{name}.json").read_text())["trials"]) == 3


def test_a_pruner_stops_trials_at_the_epoch_it_says(capsys, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "make_pruner", lambda plan: optuna.pruners.ThresholdPruner(upper=-1.0))
    results = tmp_path / "sweeps"  # a pruner that stops every trial after its first epoch: two of three
    args = ["--method", "logit", "--trials", "2", "--pruner", "median", "--results-dir", str(results),
            "--checkpoint-dir", str(ckpt), *[a if a != "1" else "2" for a in SMALL]]  # fmt: skip
    code, out, err = run_sweep_cli(capsys, *args)
    assert code == 0, err
    trials = json.loads((results / "synthetic-logit-seed0.json").read_text())["trials"]
    assert {t["state"] for t in trials} == {"PRUNED"} and all(len(t["val_f1"]) == 1 for t in trials)
    assert "pruned after epoch 1" in out


def test_pruned_trials_count_towards_the_cap_so_a_sweep_is_its_trials_however_it_is_cut(capsys, ckpt, tmp_path,
                                                                                        monkeypatch):  # fmt: skip
    """A pruner that stops every trial: ``--max-trials 2`` still trains 2 trials (a third is skipped), where a cap
    on complete trials alone would have trained all 4 of this worker's, and a next worker trains none."""
    monkeypatch.setattr(sweep, "make_pruner", lambda plan: optuna.pruners.ThresholdPruner(upper=-1.0))
    results = tmp_path / "sweeps"
    args = ["--method", "logit", "--pruner", "median", "--max-trials", "2", "--results-dir", str(results),
            "--checkpoint-dir", str(ckpt), *[a if a != "1" else "2" for a in SMALL]]  # fmt: skip
    for _ in range(2):
        code, out, err = run_sweep_cli(capsys, *args, "--trials", "4")
        assert code == 0, err
    study = load_study(str(results / "sweeps.journal"))
    counted = sweep.counted_trials(study)
    assert [(t.number, t.state.name) for t in counted] == [(0, "PRUNED"), (1, "PRUNED")]
    assert all("skipped" in t.user_attrs for t in study.trials[2:])  # any later trial was skipped, untrained


def test_the_pruners_are_none_and_optunas_median_from_a_third_of_the_epochs():
    plan = SimpleNamespace(pruner="median", cfg=SimpleNamespace(train=SimpleNamespace(epochs=15)))
    pruner = sweep.make_pruner(plan)
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert pruner._n_warmup_steps == 5  # noqa: SLF001  # epochs 1-4 are never pruned: epoch 1 ranks settings badly
    assert [sweep.warmup_epochs(e) for e in (1, 2, 3, 15, 70)] == [1, 1, 1, 5, 23]
    assert isinstance(sweep.make_pruner(SimpleNamespace(pruner="none")), optuna.pruners.NopPruner)


def test_a_rerun_trial_replaces_the_one_it_trains_again(capsys, ckpt, tmp_path):
    results = tmp_path / "sweeps"
    args = ["--method", "logit", "--results-dir", str(results), "--checkpoint-dir", str(ckpt), *SMALL]
    assert run_sweep_cli(capsys, *args, "--trials", "2")[0] == 0
    study = load_study(str(results / "sweeps.journal"))
    sweep.rerun(study, 1, "pruned under an older rule")
    assert [t.number for t in sweep.counted_trials(study)] == [0, 2]  # trial 2 stands for trial 1
    with pytest.raises(ValueError, match="trial 2 is WAITING: only a complete or pruned trial is re-run"):
        sweep.rerun(study, 2, "again")
    code, _, err = run_sweep_cli(capsys, *args, "--trials", "4", "--max-trials", "2")
    assert code == 0, err
    rows = json.loads((results / "synthetic-logit-seed0.json").read_text())["trials"]
    trained = [r for r in rows if r["state"] == "COMPLETE"]
    assert [r["number"] for r in trained] == [0, 1, 2] and trained[2]["params"] == trained[1]["params"]
    assert trained[2]["rerun_of"] == 1 and trained[2]["rerun_why"] == "pruned under an older rule"
    assert all(r["state"] == "PRUNED" for r in rows[3:])  # the cap of 2 counted the re-run once: the rest skipped


def test_trial_zero_is_the_default_setting_and_tpe_starts_after_a_third(capsys, ckpt, tmp_path):
    results = tmp_path / "sweeps"
    args = ["--method", "logit", "--trials", "3", "--results-dir", str(results), "--checkpoint-dir", str(ckpt), *SMALL]
    code, _, err = run_sweep_cli(capsys, *args)
    assert code == 0, err
    saved = json.loads((results / "synthetic-logit-seed0.json").read_text())
    first = saved["trials"][0]
    defaults = ExperimentConfig().distill
    assert first["params"] == {"temperature": defaults.temperature, "alpha": defaults.alpha} and first["default"]
    assert saved["default_trial"] == 0 and saved["startup_trials"] == 1  # 3 trials: a third
    assert not any(t["default"] for t in saved["trials"][1:])
    assert {t["machine"] for t in saved["trials"]} == {f"{device_name(torch.device('cpu'))} float32"}
    best = max(t["best_val_f1"] for t in saved["trials"])
    assert best >= first["best_val_f1"]  # the chosen setting is never worse than the default on validation


def test_a_default_outside_the_range_is_not_enqueued(capsys, ckpt, tmp_path):
    results = tmp_path / "sweeps"
    args = ["--method", "logit", "--trials", "1", "--param", "temperature=5:9", "--results-dir", str(results),
            "--checkpoint-dir", str(ckpt), *SMALL]  # fmt: skip
    assert run_sweep_cli(capsys, *args)[0] == 0
    saved = json.loads((results / "synthetic-logit-seed0.json").read_text())
    assert saved["default_trial"] == "not enqueued: temperature outside the searched range"
    assert 5 <= saved["trials"][0]["params"]["temperature"] <= 9


def test_the_validation_map_shows_where_pruned_trials_went_and_labels_log_axes_sparsely():
    """Complete trials are coloured by F1, pruned ones drawn as crosses at their settings (two settings) or ticks
    along the bottom (one), never with an F1; a log axis over 1..10 labels 1 2 3 5 10, not every minor tick."""
    import matplotlib

    matplotlib.use("Agg")
    space = [search.parse_param("temperature=1:10:log"), search.parse_param("alpha=0.1:1.0")]

    def row(number, state, temperature, alpha, f1):
        return {"number": number, "state": state, "params": {"temperature": temperature, "alpha": alpha},
                "best_val_f1": f1}  # fmt: skip

    rows = [row(0, "COMPLETE", 4.0, 0.9, 0.91), row(1, "COMPLETE", 2.0, 0.5, 0.93), row(2, "PRUNED", 8.0, 0.2, None),
            row(3, "PRUNED", 1.5, 0.7, None), row(4, "FAIL", 3.0, 0.3, None)]  # fmt: skip
    fig = sweep.validation_map(rows, space, ["temperature", "alpha"])
    ax = fig.axes[0]
    by_label = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert by_label["pruned (2)"] == [[8.0, 0.2], [1.5, 0.7]]  # the cut (FAIL) trial is not drawn
    assert by_label["chosen"] == [[2.0, 0.5]]
    assert [len(offsets) for label, offsets in by_label.items() if label.startswith("_")] == [2]  # the F1 points
    fig.canvas.draw()
    shown = {t.get_text() for t in ax.xaxis.get_ticklabels(minor=True) + ax.xaxis.get_ticklabels() if t.get_text()}
    assert {"2", "3", "5"} <= shown and not shown & {"4", "6", "7", "8", "9"}

    fig = sweep.validation_map(rows, space[:1], ["temperature"])
    by_label = {c.get_label(): c.get_offsets().tolist() for c in fig.axes[0].collections}
    assert [x for x, _ in by_label["pruned (2)"]] == [8.0, 1.5]  # ticks in axes coordinates along the bottom
    assert by_label["chosen"] == [[2.0, 0.93]]
