"""Classification metrics against hand-computed values; results files that only ever grow, atomically, and refuse
what is not a results file. (Several processes appending at once: test_results_concurrency.py.)"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import asdict

import pytest
import torch

from kd_utils.config import ExperimentConfig
from kd_utils.data import DataConfig
from kd_utils.metrics import classification_metrics
from kd_utils.records import RunRecord
from kd_utils.results import (
    CSV_FIELDS,
    append_run,
    atomic_write,
    check_results_path,
    csv_row,
    load_results,
    load_runs,
)
from kd_utils.runs import identity
from kd_utils.train import TrainConfig

# y_true / y_pred over 3 classes:
#   class a: predicted at 0, 5 (correct at 0); true at 0, 1 -> precision 1/2, recall 1/2, f1 1/2
#   class b: predicted at 1, 2, 3 (correct 2, 3); true at 2, 3 -> precision 2/3, recall 1, f1 4/5
#   class c: predicted at 4 (correct); true at 4, 5 -> precision 1, recall 1/2, f1 2/3
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]
CLASSES = ("a", "b", "c")


def test_classification_metrics_hand_values():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    per_class = {row["class"]: row for row in m["per_class"]}
    assert list(per_class) == list(CLASSES)
    assert per_class["a"]["precision"] == pytest.approx(1 / 2) and per_class["a"]["recall"] == pytest.approx(1 / 2)
    assert per_class["b"]["precision"] == pytest.approx(2 / 3) and per_class["b"]["f1"] == pytest.approx(4 / 5)
    assert per_class["c"]["recall"] == pytest.approx(1 / 2) and per_class["c"]["f1"] == pytest.approx(2 / 3)
    assert [row["support"] for row in m["per_class"]] == [2, 2, 2]
    # rows are the true class, columns the predicted class
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    json.dumps(m)  # plain Python types only, ready for the results file


def test_classification_metrics_accepts_tensors_and_unbalanced_support():
    m = classification_metrics(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]), ("x", "y"))
    assert [row["support"] for row in m["per_class"]] == [3, 1]
    assert m["confusion_matrix"] == [[2, 1], [0, 1]]
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx((2 / 3 + 1) / 2)


def test_classification_metrics_absent_class_scores_zero():
    m = classification_metrics([0, 1], [0, 1], ("a", "b", "never"))
    assert m["per_class"][2] == {"class": "never", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert m["accuracy"] == 1.0
    assert m["f1"] == pytest.approx(2 / 3)  # macro over every named class, the absent one included


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_record(name: str, accuracy: float = 0.5) -> dict:
    return {
        "experiment": name,
        "config": {"dataset": "synthetic", "student": "student_cnn", "teacher": "teacher_cnn", "epochs": 1, "seed": 0},
        "params": 123,
        "history": [{"epoch": 1, "loss": 1.0}],
        "best_epoch": 1,
        "seconds": 1.5,
        "test": {"accuracy": accuracy, "precision": 0.4, "recall": 0.3, "f1": 0.2},
        "timestamp": "2024-01-01T00:00:00",
    }


def test_append_run_json_keeps_earlier_runs(tmp_path):
    path = tmp_path / "sub" / "results.json"
    append_run(path, run_record("baseline"))
    append_run(path, run_record("logit", 0.7))
    runs = json.loads(path.read_text())["runs"]
    assert [r["experiment"] for r in runs] == ["baseline", "logit"]
    assert runs[1] == run_record("logit", 0.7)
    assert load_runs(path) == runs
    assert names(path.parent) == ["results.json", "results.json.lock"]  # no temporary file left behind


def test_append_run_csv_one_row_per_run(tmp_path):
    path = tmp_path / "results.csv"
    for name in ("teacher", "baseline", "hidden"):
        append_run(path, run_record(name))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["experiment"] for r in rows] == ["teacher", "baseline", "hidden"]
    assert tuple(rows[0]) == CSV_FIELDS
    assert rows[2]["accuracy"] == "0.5" and rows[2]["params"] == "123" and rows[2]["dataset"] == "synthetic"
    assert path.read_text().count("\n") == 4  # header + 3 rows
    assert names(tmp_path) == ["results.csv", "results.csv.lock"]


def test_append_run_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    append_run(path, run_record("baseline"))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("kd_utils.results.os.replace", crash)
    with pytest.raises(OSError):
        append_run(path, run_record("logit"))
    assert path.read_bytes() == before  # the earlier file is whole whatever happened to the new one
    assert names(tmp_path) == ["results.json", "results.json.lock"]


def test_check_results_path(tmp_path):
    assert check_results_path(tmp_path / "r.json") == tmp_path / "r.json"
    assert check_results_path(str(tmp_path / "r.csv")) == tmp_path / "r.csv"
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        check_results_path(tmp_path / "r.txt")
    assert not (tmp_path / "r.txt").exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"rows": []}', '{"runs": 5}', ""])
def test_check_results_path_refuses_a_corrupt_json(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="r.json"):
        check_results_path(path)
    with pytest.raises(ValueError):
        append_run(path, run_record("baseline"))
    assert path.read_text() == content  # never overwritten


# ---------------------------------------------------------------------------------------------- atomic_write
def test_atomic_write_bytes_and_str(tmp_path):
    path = tmp_path / "a" / "b" / "ck.pt"
    assert atomic_write(path, b"\x00\x01binary") == path  # parent folders created
    assert path.read_bytes() == b"\x00\x01binary"
    atomic_write(path, "näive text\n")
    assert path.read_bytes() == "näive text\n".encode()
    assert names(path.parent) == ["ck.pt"]
    with pytest.raises(TypeError, match="BytesIO.*getvalue"):
        atomic_write(path, io.BytesIO(b"x"))


def test_atomic_write_permissions_as_open_would_give_and_kept_on_replace(tmp_path):
    reference = tmp_path / "ref"
    reference.write_text("x")  # what a plain open() gives under this umask
    atomic_write(tmp_path / "new", "x")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)
    os.chmod(tmp_path / "new", 0o640)
    atomic_write(tmp_path / "new", "y")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640


def test_atomic_write_has_no_shared_temporary_name(tmp_path):
    path = tmp_path / "results.json"
    (tmp_path / "results.json.tmp").mkdir()  # the old fixed temporary name, now taken: must not matter
    atomic_write(path, "{}")
    assert path.read_text() == "{}"


@pytest.mark.parametrize("target", ["os.fsync", "os.replace", "os.chmod"])
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_leaves_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch, target, error):
    path = tmp_path / "ck.pt"
    path.write_bytes(b"old checkpoint")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(f"kd_utils.results.{target}", fail)
    with pytest.raises(type(error)):
        atomic_write(path, b"new checkpoint" * 1000)
    assert path.read_bytes() == b"old checkpoint"
    assert names(tmp_path) == ["ck.pt"]


def test_atomic_write_failure_midway_through_the_write(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text('{"runs": []}')

    class HalfWriter:
        """A file object whose write puts half the bytes on disk, then fails, as a full disk would."""

        def __init__(self, fd, mode):
            self.f = open(fd, mode)  # closed in __exit__

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError("No space left on device")

    monkeypatch.setattr("kd_utils.results.os.fdopen", HalfWriter)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "x" * 10_000)
    assert path.read_text() == '{"runs": []}'
    assert names(tmp_path) == ["r.json"]


# ---------------------------------------------------------------------------------------------- JSON keys, validation
def test_append_run_keeps_unknown_top_level_keys(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"notes": "teacher from the March study", "runs": [], "meta": {"machine": "h100"}}))
    append_run(path, run_record("baseline"))
    data = json.loads(path.read_text())
    assert list(data) == ["notes", "runs", "meta"]  # order kept too
    assert data["notes"] == "teacher from the March study" and data["meta"] == {"machine": "h100"}
    assert load_results(path) == data
    assert [r["experiment"] for r in load_runs(path)] == ["baseline"]


GOOD = run_record("baseline")
MALFORMED_JSON = {
    "runs of ints": ('{"runs": [1, 2, 3]}', "run 0 is a int, not a mapping"),
    "run without config and test": ('{"runs": [{"experiment": "x"}]}', "run 0 has no 'config' mapping"),
    "second run without test": (
        json.dumps({"runs": [GOOD, {"experiment": "x", "config": {}}]}),
        "run 1 has no 'test' mapping",
    ),
    "metric not a number": (
        json.dumps({"runs": [GOOD, GOOD, {**GOOD, "test": {**GOOD["test"], "f1": "high"}}]}),
        r"run 2 has no number under test\['f1'\]",
    ),
    "missing metric": (json.dumps({"runs": [{**GOOD, "test": {"accuracy": 0.5}}]}), r"test\['precision'\]"),
    "experiment not a string": (json.dumps({"runs": [{**GOOD, "experiment": 3}]}), "run 0 has no 'experiment'"),
    "list at top level": ("[1, 2]", "holds a JSON list, not an object"),
    "runs not a list": ('{"runs": 5}', "no list under 'runs' \\(got int\\)"),
    "no runs key": ('{"rows": []}', "no list under 'runs'"),
    "not JSON": ("{not json", "is not readable JSON"),
    "empty": ("", "is not readable JSON"),
}


@pytest.mark.parametrize("case", list(MALFORMED_JSON))
def test_malformed_json_refused_in_one_line_naming_file_and_run(tmp_path, case):
    content, needle = MALFORMED_JSON[case]
    path = tmp_path / "r.json"
    path.write_text(content)
    for call in (load_runs, check_results_path, lambda p: append_run(p, run_record("logit"))):
        with pytest.raises(ValueError, match=needle) as info:
            call(path)
        message = str(info.value)
        assert str(path) in message and "move it away or pick another --results-path" in message
        assert "\n" not in message
    assert path.read_text() == content  # never overwritten


def test_append_run_refuses_an_invalid_record_before_writing(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"cannot append to .*r\.json: the run has no 'test' mapping"):
        append_run(path, {"experiment": "x", "config": {}})
    assert not path.exists()


def test_directory_as_results_path_refused(tmp_path):
    folder = tmp_path / "results.json"
    folder.mkdir()
    for call in (load_runs, check_results_path, lambda p: append_run(p, run_record("logit"))):
        with pytest.raises(ValueError, match=r"results\.json is a directory; give a \.json or \.csv file"):
            call(folder)
    with pytest.raises(ValueError, match="is a directory"):
        check_results_path(tmp_path)  # a folder without a suffix: the directory is the problem, not the suffix
    assert names(tmp_path) == ["results.json"]


def test_check_results_path_refuses_parent_file_and_unwritable_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"lies under .*file, which is a file, not a folder"):
        check_results_path(tmp_path / "file" / "sub" / "r.json")
    assert check_results_path(tmp_path / "new" / "deeper" / "r.json")  # folders to be created: fine
    assert names(tmp_path) == ["file"]  # the check created nothing
    monkeypatch.setattr("kd_utils.results.os.access", lambda path, mode: False)  # as for a non-root user
    with pytest.raises(ValueError, match=rf"folder {tmp_path} is not writable; fix its permissions"):
        check_results_path(tmp_path / "new" / "r.json")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_check_results_path_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        with pytest.raises(ValueError, match="not writable"):
            check_results_path(folder / "r.json")
    finally:
        folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------- CSV
FLAT = {"dataset": "cifar10", "teacher": "teacher_cnn", "student": "student_cnn", "epochs": 3, "teacher_epochs": 15,
        "seed": 1, "labeled_fraction": 0.1 + 0.2, "precision": "auto"}  # fmt: skip
NESTED = asdict(ExperimentConfig(
    data=DataConfig(dataset="cifar10", labeled_fraction=0.1 + 0.2), train=TrainConfig(epochs=3, seed=1),
    teacher_epochs=15,
))  # a real record's config: the training seed under "train", the split's (0) under "data"  # fmt: skip


@pytest.mark.parametrize("train_seed, split_seed", [(1, 2), (2, 1)])
def test_csv_seed_is_the_training_seed_not_the_split_seed(tmp_path, train_seed, split_seed):
    """Before RunRecord, csv_row searched the nested config breadth first and found data.seed (the split's)."""
    cfg = ExperimentConfig(data=DataConfig(dataset="synthetic", seed=split_seed), train=TrainConfig(seed=train_seed))
    test = {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    stored = {"experiment": "logit", "name": "logit", "config": asdict(cfg), "test": test, "params": 1, "seconds": 1.0}
    identified = {**stored, **identity("logit", "logit", "method", cfg, ())}  # the layout train_experiment writes
    for record in (stored, identified):
        row = csv_row(record)
        assert (row["seed"], row["split_seed"]) == (train_seed, split_seed)
    path = tmp_path / "r.csv"
    append_run(path, RunRecord.from_dict(identified))
    with open(path, newline="") as f:
        assert [(r["seed"], r["split_seed"], r["role"]) for r in csv.DictReader(f)] == [
            (str(train_seed), str(split_seed), "method")
        ]


@pytest.mark.parametrize("config", [FLAT, NESTED], ids=["flat", "nested"])
def test_csv_rows_teacher_epochs_and_six_significant_digits(tmp_path, config):
    def record(experiment, name):
        test = {"accuracy": 0.44000000000000006, "precision": 1 / 3, "recall": 0.5, "f1": 2 / 3}
        return {**run_record(experiment), "name": name, "config": config, "test": test, "seconds": 12.3456789}

    row = csv_row(record("teacher", "teacher"))
    assert row["epochs"] == 15 and row["accuracy"] == 0.44 and row["precision"] == 0.333333
    assert row["seconds"] == 12.3457 and row["labeled_fraction"] == 0.3 and row["params"] == 123
    path = tmp_path / "r.csv"
    for experiment, name in [("teacher", "teacher"), ("baseline", "baseline"), ("logit", "final")]:
        append_run(path, record(experiment, name))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["experiment"], r["name"], r["epochs"]) for r in rows] == [
        ("teacher", "teacher", "15"),
        ("baseline", "baseline", "3"),
        ("logit", "final", "3"),
    ]
    assert {r["dataset"] for r in rows} == {"cifar10"} and {r["seed"] for r in rows} == {"1"}
    assert rows[0]["accuracy"] == "0.44" and rows[0]["f1"] == "0.666667" and rows[0]["labeled_fraction"] == "0.3"
    assert rows[0]["precision"] == "0.333333"  # the test metric, not the config's autocast "precision"
    assert rows[0]["seconds"] == "12.3457"
    assert load_runs(path) == rows


def test_csv_teacher_without_teacher_epochs_falls_back_to_epochs():
    assert csv_row(run_record("teacher"))["epochs"] == 1


def test_csv_written_before_the_name_column_still_appends_and_keeps_extra_columns(tmp_path):
    path = tmp_path / "r.csv"
    old_fields = [f for f in CSV_FIELDS if f != "name"] + ["comment"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_fields, lineterminator="\n")
        writer.writeheader()
        writer.writerow({**{k: "" for k in old_fields}, "experiment": "teacher", "accuracy": "0.9", "precision": "0.9",
                         "recall": "0.9", "f1": "0.9", "comment": "hand-made"})  # fmt: skip
    append_run(path, {**run_record("baseline"), "name": "baseline"})
    rows = load_runs(path)
    assert [(r["experiment"], r["name"], r["comment"]) for r in rows] == [
        ("teacher", "", "hand-made"),
        ("baseline", "baseline", ""),
    ]


MALFORMED_CSV = {
    "not a results csv": ("a,b\n1,2\n", "without the column\\(s\\) experiment, dataset"),
    "empty": ("", "is empty, with no CSV header"),
    "row too long": (
        ",".join(CSV_FIELDS) + "\n" + ",".join(["x"] + ["0.5"] * len(CSV_FIELDS)) + "\n",
        "run 0 has more",
    ),
    "row too short": (",".join(CSV_FIELDS) + "\nbaseline,final\n", "run 0 has fewer cells"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CSV))
def test_malformed_csv_refused(tmp_path, case):
    content, needle = MALFORMED_CSV[case]
    path = tmp_path / "r.csv"
    path.write_text(content)
    for call in (load_runs, check_results_path, lambda p: append_run(p, run_record("logit"))):
        with pytest.raises(ValueError, match=needle) as info:
            call(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_text() == content


def test_csv_row_with_a_non_number_metric_refused(tmp_path):
    path = tmp_path / "r.csv"
    append_run(path, run_record("teacher"))
    append_run(path, run_record("baseline"))
    path.write_text(
        path.read_text().replace(
            "baseline,baseline,synthetic,teacher_cnn,student_cnn,0.5",
            "baseline,baseline,synthetic,teacher_cnn,student_cnn,high",
        )
    )
    with pytest.raises(ValueError, match="run 1 has 'high' under accuracy, not a number"):
        load_runs(path)


def test_append_run_waits_for_the_lock_and_fails_clearly(tmp_path, monkeypatch):
    from filelock import FileLock

    path = tmp_path / "r.json"
    monkeypatch.setattr("kd_utils.results.LOCK_TIMEOUT_S", 0.2)
    with FileLock(str(path) + ".lock"):  # another writer holds it
        with pytest.raises(TimeoutError, match=r"another process has held .*r\.json\.lock for over 0.2 s"):
            append_run(path, run_record("baseline"))
    assert not path.exists()
    append_run(path, run_record("baseline"))  # released: goes through
    assert len(load_runs(path)) == 1
