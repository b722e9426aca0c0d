"""Where a sweep's workers share their Optuna study (``--storage``), and the heartbeat that lets a dead worker's
trials be retried.

Three kinds: a journal file (the default, ``<results-dir>/sweeps.journal``: processes on one machine, Optuna's
advice over SQLite for concurrent writers), a SQLite file (older studies; one writer at a time) and a database
URL (PostgreSQL/MySQL: several machines; the PostgreSQL driver is the ``postgres`` extra). ``check_storage``
turns a ``--storage`` value into the URL to open, or a one-line error, before anything is created;
``heartbeat_storage`` opens it with a heartbeat (Optuna's own on a database, ``JournalHeartbeatStorage`` on a
journal file, which Optuna 5.0 gives none), and ``heartbeats`` beats for ask/tell trials (packed sweeps).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat  # not exported: the interface RDBStorage implements
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from .runs import check_folder

SQLITE_TIMEOUT_S = 60  # workers wait this long for SQLite's write lock before failing
HEARTBEAT_S = 60  # a running trial writes a heartbeat this often ...
GRACE_S = 300  # ... and one silent this long belongs to a dead worker: failed and queued again (same settings)
JOURNAL_SUFFIXES = (".journal", ".log")  # a --storage path with one of these is a journal file
OPEN_ATTEMPTS = 3  # a fresh database opened by two machines at once: the one that loses the race tries again


def journal_path(url: str) -> Path | None:
    """The journal file a ``--storage`` value names: ``journal:///`` plus a path (relative, or absolute with a
    fourth slash, as ``sqlite:///``), or a plain path ending in .journal or .log; None for a database URL."""
    if url.startswith("journal:"):
        if not url.startswith("journal:///") or len(url) == len("journal:///"):
            raise ValueError(f"--storage {url}: write journal:///relative/path or journal:////absolute/path")
        return Path(url.removeprefix("journal:///"))
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return Path(url)
    return None


def check_storage(url: str) -> str:
    """The storage to open for ``--storage url``, checked before any folder or lock file is made (one-line
    ValueError): a journal file as ``journal:///`` plus its absolute path, whose folder must be writable; a
    database URL whose driver is installed (``postgresql://`` is opened with psycopg 3 when psycopg2, SQLAlchemy
    2.0's default, is missing)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    kinds = "a journal file (PATH.journal, journal:///PATH), sqlite:///PATH, postgresql://USER@HOST/DB or mysql://..."
    path = journal_path(url)
    if path is not None:
        if path.is_dir():
            raise ValueError(
                f"--storage {url}: is a folder; name the journal file in it, e.g. {path / 'sweeps.journal'}"
            )
        check_parent(url, path)
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise ValueError(f"--storage {url}: is not readable and writable; fix its permissions or give another file")
        return f"journal:///{path.resolve()}"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(f"--storage {url}: not a storage URL; give {kinds}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            check_parent(url, Path(parsed.database))
        return url
    if parsed.drivername == "postgresql" and not importable("psycopg2") and importable("psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # SQLAlchemy 2.0 would look for psycopg2
        url = "postgresql+psycopg" + url.removeprefix("postgresql")  # the rest as written (no re-quoting)
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError as err:
        if parsed.get_backend_name() == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg"):
            raise ValueError(f"--storage {url}: the PostgreSQL driver psycopg is not installed; "
                             "pip install 'kd_utils[postgres]'") from None  # fmt: skip
        raise ValueError(f"--storage {url}: the database driver is not installed ({err}); pip install it") from None
    except Exception:  # an unknown dialect
        raise ValueError(f"--storage {url}: unknown kind '{parsed.drivername}'; give {kinds}") from None
    return url


def check_parent(url: str, path: Path) -> None:
    """The folder of a storage file must be writable (or creatable): ``check_folder``'s error, naming the URL."""
    try:
        check_folder("--storage", path.parent)
    except ValueError as err:
        raise ValueError(f"--storage {url}: its folder {str(err).removeprefix('--storage ')}") from None


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """``heartbeat_storage(url)``, tried again when a fresh database is being set up by another machine at the same
    moment (``study_lock`` only guards workers that share ``--results-dir``)."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError  # a table or version row created twice

    for attempt in range(OPEN_ATTEMPTS):
        try:
            return heartbeat_storage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def heartbeat_storage(url: str, **kwargs) -> optuna.storages.BaseStorage:
    """The storage ``url`` names (as ``check_storage`` returns it) with a heartbeat on: a trial silent for
    ``GRACE_S`` is failed and queued again. A journal file gets ``JournalHeartbeatStorage``; a database URL
    Optuna's ``RDBStorage`` (``kwargs`` go to it)."""
    with warnings.catch_warnings():  # marked experimental since Optuna 2.8, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        path = journal_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)  # check_storage found it writable or creatable
            return JournalHeartbeatStorage(path, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                           heartbeat_stale_trial_callback=retry)  # fmt: skip
        if url.startswith("sqlite"):
            kwargs.setdefault("engine_kwargs", {"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                          heartbeat_stale_trial_callback=retry, **kwargs)  # fmt: skip


class JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage on one file (``JournalFileBackend``), with the heartbeat ``RDBStorage`` has and
    Optuna 5.0's ``JournalStorage`` lacks: each beat is the trial's system attribute ``HEARTBEAT_ATTR`` (this
    machine's clock: the file is shared by the processes of one machine), and a running trial whose last beat
    and start are both older than the grace period is stale (a retried trial inherits the beat of the one it
    replaces, hence its start too)."""

    HEARTBEAT_ATTR = "kd_heartbeat"

    def __init__(self, path: str | Path, heartbeat_interval: int, grace_period: int,
                 heartbeat_stale_trial_callback=None) -> None:  # fmt: skip
        super().__init__(JournalFileBackend(str(path)))
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, self.HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:  # failed as stale meanwhile: its tell will say so, not the beat
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        cutoff = time.time() - self._grace_period
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(self.HEARTBEAT_ATTR)
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            if beat is not None and max(beat, started) < cutoff:  # never beaten: not ours to judge (as RDBStorage)
                stale.append(trial._trial_id)  # noqa: SLF001
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._stale_callback


@contextmanager
def heartbeats(study: optuna.Study, trials: list[optuna.Trial]):
    """Record each trial's heartbeat every ``HEARTBEAT_S`` while the block runs (a dead worker's trials are then
    failed and queued again by the next worker, as ``study.optimize``'s are)."""
    storage = study._storage  # noqa: SLF001 - ask/tell trials have no public heartbeat
    if not hasattr(storage, "record_heartbeat") or storage.get_heartbeat_interval() is None:
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            for trial in trials:
                storage.record_heartbeat(trial._trial_id)  # noqa: SLF001
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
