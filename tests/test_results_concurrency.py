"""Several processes appending to one results file at once: every record kept, the file always whole.

Before the file lock, 2 processes x 50 appends left 67 of 100 records, crashed on a shared ``.tmp`` name, and
with larger records left a file that no longer parsed.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp

import pytest

from kd_utils.results import append_run, load_runs

WORKERS, APPENDS = 4, 25


def record(worker: int, i: int) -> dict:
    """A run record of a few KB (a history of 30 epochs), tagged with who wrote it and in which order."""
    history = [{"epoch": e, "loss": 1 / (e + 1), "val_f1": e / 30, "lr": 0.05, "seconds": 1.25} for e in range(30)]
    return {
        "experiment": f"w{worker}",
        "name": f"w{worker}-{i}",
        "config": {"dataset": "synthetic", "teacher": "teacher_cnn", "student": "student_cnn", "epochs": i, "seed": 0},
        "history": history,
        "params": worker,
        "test": {"accuracy": 0.5, "precision": 0.4, "recall": 0.3, "f1": 0.2},
    }


def append_many(path: str, worker: int, barrier) -> None:
    barrier.wait()  # all start together, so the appends really overlap
    for i in range(APPENDS):
        append_run(path, record(worker, i))


def run_workers(path) -> None:
    # fork is quick (no re-import of torch in each child); spawn where there is no fork
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=append_many, args=(str(path), w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WORKERS


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_concurrent_appends_keep_every_record(tmp_path, suffix):
    path = tmp_path / f"results{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"runs": [], "notes": "kept"}))
    run_workers(path)
    if suffix == ".json":
        data = json.loads(path.read_text())  # valid JSON, whole
        assert data["notes"] == "kept"
        runs = data["runs"]
        assert len(json.dumps(runs[0])) > 2000  # records of a few KB, as in a real study
    else:
        with open(path, newline="") as f:
            runs = list(csv.DictReader(f))
    assert len(runs) == WORKERS * APPENDS
    assert sorted(r["name"] for r in runs) == sorted(f"w{w}-{i}" for w in range(WORKERS) for i in range(APPENDS))
    for w in range(WORKERS):  # each worker's own appends stay in the order it made them
        assert [r["name"] for r in runs if r["experiment"] == f"w{w}"] == [f"w{w}-{i}" for i in range(APPENDS)]
    assert load_runs(path) == runs
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".lock"]  # no temporary files
