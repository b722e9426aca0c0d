"""One sweep over two workers on a real PostgreSQL server: the several-machines setup of ``--storage``.

The test makes a throwaway cluster with Debian's ``postgresql`` binaries (``initdb`` in a temporary folder, the
server on a unix socket in that folder, no TCP port), runs two ``sweep`` processes against it at once, one with a
plain ``postgresql://`` URL and one with ``postgresql+psycopg://``, and stops the server at the end. ``initdb``
refuses to run as root, so under root (CI) the cluster belongs to ``nobody``. It skips where the binaries or
psycopg are missing, except in CI (``CI`` set), where `make test` installs both and a skip would hide the test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")  # the sweep needs it

from test_sweep import assert_one_capped_study, load_study, two_workers

from kd_utils import storage as sweep_storage

SERVER_START_S = 60  # pg_ctl waits this long for the server to accept connections


def missing(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, which must run this test (`make postgres`)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI installs it with `make postgres` and `make setup`")
    pytest.skip(reason)


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH (a link followed), else Debian's newest
    /usr/lib/postgresql/<version>/bin (Debian puts neither on PATH)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database on a unix socket: its ``postgresql://`` URL (user ``kd``, trust auth)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        missing("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    try:
        import psycopg
    except ImportError:
        missing("psycopg not installed: pip install 'kd_utils[postgres]'")
    as_owner = []  # initdb and the server refuse root: run them as nobody, in a folder nobody owns
    folder = Path(tempfile.mkdtemp(prefix="kd-pg-"))  # not tmp_path: its parents are root's alone (0700)
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            missing("runuser (util-linux) not found: needed to run PostgreSQL as nobody under root")
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_owner = ["runuser", "-u", "nobody", "--"]
    data, log = folder / "data", folder / "server.log"

    def run(*cmd: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout[-1000:]}{done.stderr[-1000:]}"

    run(*as_owner, str(bin_dir / "initdb"), "-D", str(data), "-U", "kd", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-c listen_addresses='' -k {folder} -c fsync=off"  # a unix socket only; a throwaway cluster
    try:
        run(*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
            "-t", str(SERVER_START_S), "start")  # fmt: skip
        with psycopg.connect(host=str(folder), user="kd", dbname="postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE kd_sweeps")
        yield f"postgresql://kd@/kd_sweeps?host={folder}"
    finally:
        subprocess.run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, cwd=folder)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # two fresh interpreters import torch, plus a cluster: ~60 s on a busy 2-core machine
def test_two_workers_share_one_capped_study_on_postgresql(tmp_path, postgres_url):
    psycopg3 = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    outputs = two_workers(tmp_path, [["--storage", postgres_url], ["--storage", psycopg3]])
    assert_one_capped_study(load_study(postgres_url), tmp_path / "sweeps", outputs)
    if not sweep_storage.importable("psycopg2"):  # both forms opened the one database with psycopg 3
        assert sweep_storage.check_storage(postgres_url) == psycopg3
    heartbeat = load_study(psycopg3)._storage.get_heartbeat_interval()  # noqa: SLF001
    assert heartbeat == sweep_storage.HEARTBEAT_S  # Optuna's own heartbeat: a dead machine's trial is retried
