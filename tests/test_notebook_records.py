"""A notebook run again stores each run's record once: ``append_run(..., replace_same_run=True)`` replaces the record of the same run
(same experiment, name, training seed and shaping settings) instead of appending a duplicate, and stays safe
with several processes saving at once."""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import asdict, fields, replace

import pytest

from kd_utils import added_settings
from kd_utils.config import ExperimentConfig
from kd_utils.notebook import setup
from kd_utils.records import NOT_SHAPING, RunRecord, run_settings, same_run
from kd_utils.results import append_run, load_results, load_runs
from kd_utils.runs import DATA_KEYS, TRAIN_KEYS
from kd_utils.train import TrainConfig


def save_record(path, record):
    append_run(path, record, replace_same_run=True)


def record(experiment="baseline", name=None, f1=0.5, **changes) -> dict:
    """A valid run record whose config is ``ExperimentConfig`` with ``changes`` ({"train.seed": 1, ...})."""
    cfg = ExperimentConfig()
    for key, value in changes.items():
        section, _, attr = key.rpartition(".")
        if section:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{attr: value})})
        else:
            cfg = replace(cfg, **{attr: value})
    run = {"experiment": experiment, "config": asdict(cfg), "test": {"accuracy": f1, "precision": f1, "recall": f1,
                                                                       "f1": f1}}  # fmt: skip
    return run if name is None else {**run, "name": name}


def test_saving_the_same_runs_again_keeps_one_record_each_the_latest(tmp_path):
    path = tmp_path / "results" / "runs.json"
    for _ in range(2):  # notebook 00 twice: the teacher, then the baseline
        save_record(path, record("teacher", "teacher"))
        save_record(path, record("baseline", "baseline"))
    rerun = record("baseline", "baseline", f1=0.6, resume=False, checkpoint_dir="/elsewhere", tensorboard="tb",
                   **{"data.data_dir": "/mnt/data", "train.progress": False, "train.log_every": 5})  # fmt: skip
    save_record(path, {**rerun, "cached": True})  # the same run loaded from its cache: the stored record stays
    runs = load_runs(path)
    assert [r["name"] for r in runs] == ["teacher", "baseline"] and runs[1]["test"]["f1"] == 0.5
    save_record(path, rerun)  # the same run trained again: its record replaces the stored one, in place
    runs = load_runs(path)
    assert [r["name"] for r in runs] == ["teacher", "baseline"]  # order kept
    assert runs[1]["test"]["f1"] == 0.6 and runs[1]["config"]["data"]["data_dir"] == "/mnt/data"


@pytest.mark.parametrize(
    "other",
    [
        record("baseline", "baseline", **{"train.seed": 1}),  # another training seed
        record("baseline", "baseline", **{"train.lr": 0.1}),  # another setting that shapes training
        record("baseline", "baseline", **{"data.labeled_fraction": 0.1}),
        record("baseline", "baseline", **{"data.test_size": 1000}),  # tested on fewer images: other test numbers
        record("baseline", "final-baseline"),  # another name
        record("logit", "baseline"),  # another experiment under the same name
    ],
    ids=["seed", "lr", "labeled-fraction", "test-size", "name", "experiment"],
)
def test_another_seed_setting_or_name_is_another_run(tmp_path, other):
    path = tmp_path / "runs.json"
    save_record(path, record("baseline", "baseline"))
    save_record(path, other)
    assert len(load_runs(path)) == 2


def test_a_record_read_back_from_json_matches_the_one_in_memory():
    """Tuples come back from JSON as lists; field order and unshaping fields do not matter."""
    in_memory = record("hidden", "hidden", **{"distill.level_weights": (1.0, 0.5)})
    stored = json.loads(json.dumps({**in_memory, "config": dict(reversed(in_memory["config"].items()))}))
    assert stored["config"]["distill"]["level_weights"] == [1.0, 0.5] and same_run(stored, in_memory)
    unnamed = {k: v for k, v in in_memory.items() if k != "name"}
    assert same_run(unnamed, {**in_memory, "name": "hidden"})  # no name: the experiment names the run
    flat = {"experiment": "x", "config": {"epochs": 3, "seed": 0, "data_dir": "/a", "resume": True}}
    assert run_settings(flat["config"]) == {"epochs": 3, "seed": 0}  # an old flat config


def test_what_does_not_shape_a_run_is_what_names_no_checkpoint():
    """The dropped train fields are exactly those ``run_dir`` leaves out, and none of the data keys it uses."""
    added = set(added_settings.TRAIN)  # in a folder's name only off their old value (train.added_settings)
    assert set(NOT_SHAPING["train"]) == {f.name for f in fields(TrainConfig)} - set(TRAIN_KEYS) - added
    assert not set(NOT_SHAPING["data"]) & set(DATA_KEYS)
    assert set(NOT_SHAPING[""]) <= {f.name for f in fields(ExperimentConfig)}


def test_other_keys_of_the_file_are_kept_and_bad_inputs_refused(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"runs": [record()], "notes": "kept"}))
    save_record(path, record(f1=0.7))
    assert load_results(path) == {"runs": [json.loads(json.dumps(record(f1=0.7)))], "notes": "kept"}  # tuples: lists
    with pytest.raises(ValueError, match=r"runs\.csv: replacing the record of the same run needs a \.json"):
        save_record(tmp_path / "runs.csv", record())
    assert not (tmp_path / "runs.csv").exists()
    with pytest.raises(ValueError, match="the run has no 'test' mapping"):
        save_record(path, {"experiment": "baseline", "config": {}})
    broken = tmp_path / "broken.json"
    broken.write_text('{"runs": [{"experiment": 1}]}')
    with pytest.raises(ValueError, match="is malformed: run 0"):
        save_record(broken, record())
    assert broken.read_text() == '{"runs": [{"experiment": 1}]}'


def test_a_run_record_value_is_stored_as_its_dict(tmp_path):
    path = tmp_path / "runs.json"
    save_record(path, record("logit", "logit"))  # stored before records were typed
    typed = RunRecord.from_dict(record("logit", "logit", f1=0.8))
    save_record(path, typed)
    assert load_runs(path) == [json.loads(json.dumps(typed.to_dict()))]  # as stored: tuples become lists


def test_a_notebook_run_twice_saves_each_record_once(tmp_path):
    for _ in range(2):
        session = setup("00_baseline", "smoke", "synthetic", output_dir=str(tmp_path), environ={}, log=None)
        run = {"experiment": "baseline", "name": "baseline", "config": asdict(session.cfg),
               "test": {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}}  # fmt: skip
        assert session.save(run) is run
        session.save({**run, "experiment": "teacher", "name": "teacher"})
    assert [r["name"] for r in load_runs(session.paths.results)] == ["baseline", "teacher"]


WORKERS, SAVES = 4, 10


def save_many(path: str, worker: int, barrier) -> None:
    barrier.wait()  # all start together, so the saves really overlap
    for i in range(SAVES):
        save_record(path, record("shared", "shared", f1=i / SAVES))  # one run every worker re-saves
        save_record(path, record(f"w{worker}", f"w{worker}-{i}"))  # and runs of its own


def test_concurrent_saves_keep_every_run_once(tmp_path):
    path = tmp_path / "runs.json"
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=save_many, args=(str(path), w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    names = [r["name"] for r in load_runs(path)]
    assert sorted(names) == sorted(["shared", *(f"w{w}-{i}" for w in range(WORKERS) for i in range(SAVES))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.json", "runs.json.lock"]  # no temporary files


def test_a_record_without_the_fields_added_since_is_the_same_run_as_one_at_their_old_values():
    """A stored record lacks the fields added after it (step schedule, Nesterov switch, DKD warm-up, logit
    standardization); a re-run at their old values replaces it instead of adding a duplicate."""
    new = record("dkd", "dkd")
    old = json.loads(json.dumps(new))
    for section, added in (("train", added_settings.TRAIN), ("distill", added_settings.DISTILL)):
        for name in added:
            old["config"][section].pop(name, None)
    assert same_run(old, new)
    changed = json.loads(json.dumps(new))
    changed["config"]["train"]["nesterov"] = False
    assert not same_run(old, changed)
