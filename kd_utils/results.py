"""Results files: JSON ``{"runs": [...]}`` (the full record) or CSV (one flat row per run).

Every append reads, extends and rewrites the file under a file lock (``<path>.lock``), so runs appended by
several processes at once are all kept; the rewrite is atomic (``atomic_write``), so an earlier result is never
lost and a crash never leaves half a file. A file that is not a results file is refused on read, naming the
first bad run, rather than overwritten.

``atomic_write`` is the package's one atomic-write helper: checkpoints and records are written through it too.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .records import RunRecord, read_records, same_run

RESULT_SUFFIXES = (".json", ".csv")
METRICS = ("accuracy", "precision", "recall", "f1")  # what every run's "test" mapping must hold, as numbers
CSV_FIELDS = (
    "experiment", "name", "dataset", "teacher", "student", "accuracy", "precision", "recall", "f1",
    "best_epoch", "epochs", "params", "seconds", "seed", "labeled_fraction", "timestamp", "role", "split_seed",
)  # fmt: skip
CSV_LATER_FIELDS = ("name", "role", "split_seed")  # columns added after the first release: older CSVs lack them
CSV_REQUIRED = tuple(f for f in CSV_FIELDS if f not in CSV_LATER_FIELDS)
SIGNIFICANT_DIGITS = 6  # CSV floats: 0.44000000000000006 -> 0.44
LOCK_TIMEOUT_S = 300.0  # an append takes well under a second; minutes of waiting means a stuck process
FIX = "move it away or pick another --results-path"


# ---------------------------------------------------------------------------------------------- atomic write
def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Replace ``path`` by ``data`` so that any reader sees the whole old file or the whole new one.

    The bytes go to a temporary file with a unique name in the same folder (same file system, so the rename is
    atomic; unique, so concurrent writers never share it), are flushed and fsynced, then ``os.replace``d over
    ``path``; the folder is fsynced too, where the OS allows, so the rename itself survives a power cut. If
    anything fails the temporary file is removed and ``path`` is as it was. A str is written as UTF-8. The new
    file keeps the permissions of the one it replaces (else the usual ``0o666 & ~umask``).

    Args:
        path: the file to write; its parent folders are created.
        data: the whole new content, e.g. ``buf.getvalue()`` of an ``io.BytesIO`` that ``torch.save`` wrote.

    Returns:
        ``path`` as a ``Path``.
    """
    if isinstance(data, str):
        payload = data.encode("utf-8")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)
    else:
        raise TypeError(f"atomic_write takes bytes or str, got {type(data).__name__}; pass e.g. buf.getvalue()")
    path = Path(path)
    if path.is_symlink():  # write through to the link's target; replacing the link would orphan its target
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a stray temporary file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def remove_stray_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left (``.<name>.*.tmp``); call it only while no
    other writer of ``path`` can run (under the results file's lock, or in a run folder only its run writes)."""
    removed = []
    for stray in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        with contextlib.suppress(OSError):
            stray.unlink()
            removed.append(stray)
    return removed


def _new_file_mode(path: Path) -> int:
    """Permissions for the replacement: the old file's, else what ``open(path, "w")`` would give.

    mkstemp creates files readable by their owner only; without this every save would silently tighten them.
    """
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o7777
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (setting it races with other threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """fsync a folder so a rename in it is durable; some systems (Windows) cannot open a folder: skip there."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- validation
def _refused(path: Path, what: str) -> ValueError:
    return ValueError(f"results file {path} {what}; {FIX}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def strict_json(data: Any, **kwargs) -> str:
    """JSON text of ``data``; NaN and Infinity (not JSON, though Python writes them) raise ``ValueError``."""
    try:
        return json.dumps(data, allow_nan=False, **kwargs)
    except ValueError:
        raise ValueError(
            "a value to be written is NaN or infinite, which JSON cannot hold; nothing was written"
        ) from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_json(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and -Infinity (Python's extension, which no JSON reader takes)."""
    return json.loads(text, parse_constant=_refuse_constant)


def run_problem(run: Any) -> str | None:
    """What makes ``run`` unfit for a results file (one short phrase), or None when it is a valid record.

    A record needs ``experiment`` (str), ``config`` (mapping) and ``test`` (mapping holding a number under each
    of ``METRICS``): what the report and the CSV row read.
    """
    if not isinstance(run, Mapping):
        return f"is a {type(run).__name__}, not a mapping"
    if not isinstance(run.get("experiment"), str):
        return "has no 'experiment' string"
    for key in ("config", "test"):
        if not isinstance(run.get(key), Mapping):
            return f"has no '{key}' mapping"
    for metric in METRICS:
        if not _is_number(run["test"].get(metric)):
            return f"has no number under test['{metric}'] (got {run['test'].get(metric)!r})"
    return None


def validate_results(data: Any, path: str | Path) -> dict:
    """``data`` itself when it is an object with a list of valid runs under "runs", else a one-line ValueError."""
    if not isinstance(data, dict):
        raise _refused(Path(path), f"holds a JSON {type(data).__name__}, not an object with a list under 'runs'")
    if not isinstance(data.get("runs"), list):
        raise _refused(Path(path), f"has no list under 'runs' (got {type(data.get('runs')).__name__})")
    for i, run in enumerate(data["runs"]):
        problem = run_problem(run)
        if problem is not None:
            raise _refused(Path(path), f"is malformed: run {i} {problem}")
    return data


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows (as strings) of a CSV results file, checked: the expected columns, one cell per column."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise _refused(path, f"is unreadable ({err})") from None
    if not header:
        raise _refused(path, "is empty, with no CSV header")
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise _refused(path, f"has a CSV header without the column(s) {', '.join(missing)}")
    for i, row in enumerate(rows):
        if None in row:
            problem = "has more cells than the header has columns"
        elif any(v is None for v in row.values()):
            problem = "has fewer cells than the header has columns"
        elif not row["experiment"]:
            problem = "has no experiment"
        else:
            problem = next((f"has {row[m]!r} under {m}, not a number" for m in METRICS if not _is_float(row[m])), None)
        if problem:
            raise _refused(path, f"is malformed: run {i} {problem}")
    return list(header), rows


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_results(path: str | Path) -> dict:
    """The whole results object ``{"runs": [...], ...}``, validated, unknown top-level keys included.

    A file that does not exist yet gives ``{"runs": []}``; a CSV file gives ``{"runs": rows}`` with each row a
    dict of strings, as ``csv.DictReader`` reads it.

    Raises:
        ValueError: one line naming the file, the index of the first bad run and what is wrong with it.
    """
    path = Path(path)
    _check_not_directory(path)
    if not path.exists():
        return {"runs": []}
    if path.suffix == ".csv":
        return {"runs": _read_csv(path)[1]}
    try:
        data = read_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise _refused(path, f"is not readable JSON ({err})") from None
    return validate_results(data, path)


def load_runs(path: str | Path) -> list[dict]:
    """The validated list of runs in ``path`` (``[]`` when it does not exist yet); see ``load_results``."""
    return load_results(path)["runs"]


def load_records(path: str | Path) -> list[RunRecord]:
    """Every run in a JSON results file as a ``RunRecord`` (``[]`` when it does not exist yet): how the package
    reads runs. A CSV file holds only flat rows, not records, and is refused."""
    path = Path(path)
    if path.suffix == ".csv":
        raise ValueError(f"results file {path} is a CSV of flat rows; records (and the report) need the .json file")
    try:
        return read_records(load_runs(path))
    except ValueError as err:
        raise _refused(path, f"is malformed: {err}") from None


def check_results_path(path: str | Path) -> Path:
    """``path`` as a Path if a run can append to it, else a one-line ValueError; creates nothing.

    Called before any training, so a bad path costs seconds rather than a lost study: refused are a directory,
    a suffix other than .json/.csv, a nearest existing parent that is a file or is not writable, and an
    existing file that is not a valid results file (it would be refused, not overwritten, after training).
    """
    path = Path(path)
    _check_not_directory(path)
    _check_suffix(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders below it are created on the first append
    if not folder.is_dir():
        raise ValueError(f"results path {path} lies under {folder}, which is a file, not a folder; {FIX}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"results path {path}: folder {folder} is not writable; fix its permissions or {FIX}")
    if path.exists() and not path.is_file():
        raise ValueError(f"results path {path} is not a regular file (a FIFO, device or socket); {FIX}")
    if path.exists():
        load_results(path)
    return path


def _check_not_directory(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"results path {path} is a directory; give a .json or .csv file, e.g. {path / 'runs.json'}")


def _check_suffix(path: Path) -> None:
    if path.suffix not in RESULT_SUFFIXES:
        raise ValueError(f"unsupported results file '{path}'; use a {' or '.join(RESULT_SUFFIXES)} path")


# ---------------------------------------------------------------------------------------------- CSV rows
def round_significant(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """A float rounded to ``digits`` significant digits, ``float(f"{x:.{digits}g}")``; anything else as is."""
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def csv_row(record: RunRecord | Mapping) -> dict:
    """The flat CSV row of a run, keyed by ``CSV_FIELDS``: read through ``RunRecord``, so ``seed`` is the training
    seed (``split_seed`` the data split's) and a teacher's ``epochs`` its own; every float keeps
    ``SIGNIFICANT_DIGITS``."""
    r = record if isinstance(record, RunRecord) else RunRecord.from_dict(record)
    test = r.test or {}
    row = {
        "experiment": r.method, "name": r.name, "dataset": r.dataset, "teacher": r.teacher_arch,
        "student": r.student_arch, **{k: test.get(k) for k in METRICS}, "best_epoch": r.best_epoch,
        "epochs": r.epochs, "params": r.params, "seconds": r.seconds, "seed": r.seed,
        "labeled_fraction": r.labeled_fraction, "timestamp": r.timestamp, "role": r.role, "split_seed": r.split_seed,
    }  # fmt: skip
    return {k: round_significant(row.get(k)) for k in CSV_FIELDS}


# ---------------------------------------------------------------------------------------------- append
def _appended(path: Path, run: Mapping, replace_same_run: bool) -> str:
    """The new content of ``path`` with ``run`` added: the JSON object keeps every other key; CSV its columns.
    With ``replace_same_run`` the last stored record of the same run (``records.same_run``) is replaced in place."""
    if path.suffix == ".csv":
        header, rows = _read_csv(path) if path.exists() else (list(CSV_FIELDS), [])
        fields = [*CSV_FIELDS, *(c for c in header if c not in CSV_FIELDS)]  # unknown columns kept, at the end
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows([*rows, csv_row(run)])
        return buf.getvalue()
    data = load_results(path)
    runs = list(data["runs"])
    match = next((i for i in reversed(range(len(runs))) if same_run(runs[i], run)), None) if replace_same_run else None
    if match is None:
        runs.append(run)
    elif not run.get("cached"):  # a cached run loaded again is the stored one: the earlier record stays as it was
        runs[match] = run
    return strict_json({**data, "runs": runs}, indent=1) + "\n"


def append_run(path: str | Path, run: RunRecord | Mapping, replace_same_run: bool = False) -> None:
    """Append ``run`` to the results file at ``path`` (.json keeps the whole record, .csv the flat row).

    ``replace_same_run`` (notebooks, ``run_study``, ``compare_methods``): a record of the same run already
    stored (same method, name, training seed and shaping settings: ``RunRecord.run_identity``) is replaced in
    place, so a re-run never duplicates records, or kept as it is when the new one is that run loaded from the
    cache (``cached``); earlier duplicates, if any, stay. JSON files only (a CSV row holds too
    little of a run to tell two runs apart).

    Safe with several processes appending at once: the read-modify-write happens under ``FileLock(path +
    ".lock")`` and the file is replaced atomically. The lock file stays (deleting it would let two processes
    hold two different locks); the OS drops the lock itself when its holder dies.

    Raises:
        ValueError: ``run`` is not a valid record, or the file is not a results file (it is left untouched).
        TimeoutError: another process held the lock for ``LOCK_TIMEOUT_S`` seconds.
    """
    path = Path(path)
    _check_not_directory(path)
    _check_suffix(path)
    if replace_same_run and path.suffix != ".json":
        raise ValueError(
            f"cannot save a record to {path}: replacing the record of the same run needs a .json results file "
            "(a CSV row holds too little of a run to match it); append to it without replacing"
        )
    run = run.to_dict() if isinstance(run, RunRecord) else run
    problem = run_problem(run)
    if problem is not None:
        raise ValueError(f"cannot append to {path}: the run {problem}")
    if path.exists() and not path.is_file():
        raise ValueError(f"results path {path} is not a regular file (a FIFO, device or socket); {FIX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            remove_stray_temporaries(path)
            atomic_write(path, _appended(path, run, replace_same_run))
    except Timeout:
        raise TimeoutError(
            f"results file {path}: another process has held {lock.lock_file} for over {LOCK_TIMEOUT_S:g} s; "
            f"stop it if it is stuck, or {FIX}"
        ) from None
