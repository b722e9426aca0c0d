"""Classification metrics against hand-computed values; results files that only ever grow, atomically."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from kd_utils.metrics import classification_metrics
from kd_utils.results import CSV_FIELDS, append_run, check_results_path, load_runs

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
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no .tmp left behind


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
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


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
