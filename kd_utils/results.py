"""Results files: JSON ``{"runs": [...]}`` (the full record) or CSV (one flat row per run).

Every write appends the new run to what the file already holds and replaces the file atomically, so an
earlier result is never lost and a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

RESULT_SUFFIXES = (".json", ".csv")
CSV_FIELDS = (
    "experiment", "dataset", "teacher", "student", "accuracy", "precision", "recall", "f1",
    "best_epoch", "epochs", "params", "seconds", "seed", "labeled_fraction", "timestamp",
)  # fmt: skip


def check_results_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in RESULT_SUFFIXES:
        raise ValueError(f"unsupported results file '{path}'; use a {' or '.join(RESULT_SUFFIXES)} path")
    if path.exists():
        load_runs(path)  # refuse a corrupt file before any training, rather than overwrite it later
    return path


def load_runs(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "experiment" not in reader.fieldnames:
                    raise csv.Error("no header with an 'experiment' column")
                return list(reader)
        runs = json.loads(path.read_text())["runs"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"results file {path} is unreadable ({err}); move it away or pick another path") from None
    if not isinstance(runs, list):
        raise ValueError(f"results file {path} has no list under 'runs'; move it away or pick another path")
    return runs


def csv_row(run: dict) -> dict:
    cfg, test = run.get("config", {}), run.get("test", {})
    row = {**{k: cfg.get(k) for k in ("dataset", "teacher", "student", "epochs", "seed", "labeled_fraction")}}
    row.update({k: test.get(k) for k in ("accuracy", "precision", "recall", "f1")})
    row.update({k: run.get(k) for k in ("experiment", "best_epoch", "params", "seconds", "timestamp")})
    return {k: row.get(k) for k in CSV_FIELDS}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_run(path: str | Path, run: dict) -> None:
    """Append ``run`` to the results file at ``path`` (.json keeps everything, .csv the flat row)."""
    path = Path(path)
    runs = load_runs(path)
    if path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows([*runs, csv_row(run)])
        _write_atomic(path, buf.getvalue())
    else:
        _write_atomic(path, json.dumps({"runs": [*runs, run]}, indent=1) + "\n")
