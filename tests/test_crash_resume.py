"""Crash safety of real CLI runs: ``kill -9`` at random points and in the middle of a checkpoint or results
write, then ``--resume``, must end with the metrics of an uninterrupted run; a corrupt ``last.pt`` is refused
in one line.

The reference is ``python -m kd_utils run ...`` in a fresh interpreter. The runs that get killed are forked
from a launcher process that imported kd_utils once: a fresh interpreter spends ~5 s of this machine's ~8 s
run on imports, so random delays would mostly kill the import, and a dozen runs would not fit in a minute.
A forked run calls the same ``kd_utils.cli.main`` in its own process, killed by SIGKILL like any other; that
it matches the fresh interpreter's results exactly is checked first.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kd_utils.results import load_runs

pytestmark = [
    pytest.mark.slow,  # ~33 s of CPU: a fresh interpreter, the launcher's imports, 13 forked runs
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the launcher forks; SIGKILL is POSIX"),
]

ARGS = [
    "run", "--experiment", "logit", "--dataset", "synthetic", "--train-size", "200", "--val-size", "50",
    "--test-size", "50", "--batch-size", "32", "--epochs", "3", "--teacher-epochs", "2", "--no-progress",
    "--device", "cpu", "--precision", "fp32", "--checkpoint-dir", "CK", "--results-path", "R.json", "--resume",
]  # fmt: skip
NAMES = ("teacher", "baseline", "logit")
TEST_KEYS = ("accuracy", "precision", "recall", "f1", "per_class", "confusion_matrix", "predictions")
TIMING_KEYS = ("seconds", "images_per_s")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN_TIMEOUT_S = 120

# The launcher: reads one JSON request a line on stdin, answers one JSON line on stdout. {"cmd": "run"} forks
# a child that runs kd_utils.cli.main in `cwd` with stdout/stderr in files (optionally with os.replace made
# to SIGKILL the process on the nth call whose destination is named `kill_on.name`) and answers its pid;
# {"cmd": "wait"} reaps that child and answers its exit code (-9: killed). A child is reaped only on "wait",
# so its pid cannot be reused before the test is done killing it. EOF on stdin ends the launcher.
LAUNCHER = r"""
import json, os, signal, sys, time, traceback
import kd_utils.cli  # the whole package and torch, once
import torch

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # its first use imports torch._dynamo (~2 s)


def kill_on_replace(name, nth):
    real, calls = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == name:
            calls[0] += 1
            if calls[0] == nth:  # the temporary file is whole and fsynced; the rename never happens
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def child(req):
    os.chdir(req["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    # line-buffered, as on a terminal: what a killed run printed is in its log
    sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))
    if req.get("kill_on"):
        kill_on_replace(req["kill_on"]["name"], req["kill_on"]["nth"])
    try:
        code = kd_utils.cli.main(req["argv"], prog="python -m kd_utils")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wait(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)


for line in sys.stdin:
    req = json.loads(line)
    if req["cmd"] == "run":
        pid = os.fork()
        if pid == 0:
            child(req)
        answer = {"pid": pid}
    else:
        answer = {"status": wait(req["pid"], req["timeout"])}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
os._exit(0)  # skip torch's slow interpreter shutdown
"""


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float


class Launcher:
    """Client of the LAUNCHER process; every child it started is killed and reaped by ``close``."""

    def __init__(self, folder: Path):
        script = folder / "launcher.py"
        script.write_text(LAUNCHER)
        self.logs = folder / "logs"
        self.logs.mkdir()
        self.count = 0
        self.live: set[int] = set()
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
        )

    def _ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher exited with code {self.proc.wait()}")
        return json.loads(line)

    def start(self, cwd: Path, kill_on: dict | None = None) -> int:
        self.count += 1
        self.out, self.err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        pid = self._ask(cmd="run", argv=ARGS, cwd=str(cwd), stdout=str(self.out), stderr=str(self.err), kill_on=kill_on)
        self.live.add(pid["pid"])
        return pid["pid"]

    def wait(self, pid: int) -> Run:
        status = self._ask(cmd="wait", pid=pid, timeout=RUN_TIMEOUT_S)["status"]
        self.live.discard(pid)
        assert status != "timeout", f"run {pid} took over {RUN_TIMEOUT_S} s"
        return Run(status, self.out.read_text(), self.err.read_text(), 0.0)

    def run(self, cwd: Path, kill_on: dict | None = None) -> Run:
        t0 = time.perf_counter()
        result = self.wait(self.start(cwd, kill_on))
        result.seconds = time.perf_counter() - t0
        return result

    def close(self) -> None:
        for pid in list(self.live):
            os.kill(pid, signal.SIGKILL)
            self.wait(pid)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def outcome(runs: list[dict]) -> dict:
    """What a resumed study must reproduce: per run name, its last record's test metrics and timing-free history."""
    last = {r["name"]: r for r in runs}
    return {
        name: {
            "test": {k: r["test"][k] for k in TEST_KEYS},
            "history": [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in r["history"]],
            "best_epoch": r["best_epoch"],
        }
        for name, r in last.items()
    }


def temp_files(folder: Path) -> set[Path]:
    return set(folder.rglob("*.tmp"))


def check_intact(folder: Path, earlier: list[dict]) -> list[dict]:
    """Every file a kill may have hit is whole: the results file parses and still starts with the ``earlier``
    records, every checkpoint loads with ``weights_only=True``, every cached run record parses. Returns the
    records now in the results file."""
    runs = load_runs(folder / "R.json")
    assert runs[: len(earlier)] == earlier, "a kill lost or changed an earlier record"
    for path in sorted((folder / "CK").rglob("*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if path.parent.parent.name == "teacher_outputs":  # one teacher output of one epoch: a tensor
            assert isinstance(state, torch.Tensor) and torch.isfinite(state).all(), path
            continue
        assert isinstance(state, dict), path
        if path.name in ("last.pt", "best.pt"):
            assert {"model", "adapters", "epoch"} <= set(state), path
    for path in (folder / "CK").rglob("*.json"):
        json.loads(path.read_text())
    return runs


def last_epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    launcher = Launcher(tmp_path_factory.mktemp("launcher"))
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def reference(launcher, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted ``python -m kd_utils run`` in a fresh interpreter (while the launcher imports): its
    folder and outcome."""
    folder = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(
        [sys.executable, "-m", "kd_utils", *ARGS], cwd=folder, env=ENV, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = load_runs(folder / "R.json")
    assert [r["name"] for r in runs] == list(NAMES)
    assert not temp_files(folder)
    return folder, outcome(runs)


@pytest.fixture(scope="module")
def forked(launcher, reference, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted forked run: its folder and wall time (the scale of the random kills' delays)."""
    folder = tmp_path_factory.mktemp("forked")
    run = launcher.run(folder)
    assert run.code == 0, run.err
    return folder, run.seconds


def test_forked_run_matches_fresh_interpreter(forked, reference):
    runs = load_runs(forked[0] / "R.json")
    assert [r["name"] for r in runs] == list(NAMES)
    assert outcome(runs) == reference[1]
    # the reference learned something: the comparisons are not between untrained models
    assert reference[1]["teacher"]["test"]["accuracy"] > 0.5


def test_random_kills_then_resume_give_the_uninterrupted_metrics(launcher, reference, forked, tmp_path):
    rng = random.Random(7)  # delays 0.36, 0.22, 0.62, 0.16 x the run's time
    runs: list[dict] = []
    log = []  # (delay, exit code) per round, for the failure messages
    for _ in range(4):
        temps = temp_files(tmp_path)
        pid = launcher.start(tmp_path)
        delay = rng.uniform(0.1, 0.9) * forked[1]
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        run = launcher.wait(pid)
        log.append((round(delay, 2), run.code))
        if run.code == 0:  # a resumed run has less to do and may end before its delay
            break
        assert run.code == -signal.SIGKILL, run.err
        runs = check_intact(tmp_path, runs)
        assert len(temp_files(tmp_path) - temps) <= 1, "one kill interrupts at most one atomic write"
    assert log[0][1] == -signal.SIGKILL, f"the first run, from scratch, should be killed: {log}"
    temps = temp_files(tmp_path)
    if log[-1][1] != 0:
        run = launcher.run(tmp_path)
        assert run.code == 0, run.err
    # it writes no temporary file of its own, and may delete a killed write's leftover in a run it resumes
    # (``remove_stray_temporaries``): a subset, not equality, whichever write the random kills happened to cut
    assert temp_files(tmp_path) <= temps, "an uninterrupted run left a temporary file"
    assert outcome(check_intact(tmp_path, runs)) == reference[1], log


# Four crashes in a row, each inside an os.replace (the nth whose destination has that name, counted per
# process), each resumed by the next run. With what each run does in this study:
KILLS_INSIDE_WRITES = [
    ("last.pt", 2, "teacher"),  # the teacher's epoch 2: its best.pt already replaced, no run.json yet
    ("R.json", 1, None),  # the teacher's record, the first: there is no results file yet
    ("last.pt", 5, "logit"),  # baseline epochs 1-3, then the logit student's epoch 2 (teacher outputs stored)
    ("R.json", 3, None),  # the logit record, after the cached teacher's and baseline's (rewritten unchanged)
]


def test_kills_inside_writes_keep_the_old_files_and_resume_recovers(launcher, reference, tmp_path):
    runs: list[dict] = []
    left: set[Path] = set()
    expect_in_next_run = None
    for name, nth, resumed in KILLS_INSIDE_WRITES:
        killed = launcher.run(tmp_path, kill_on={"name": name, "nth": nth})
        assert killed.code == -signal.SIGKILL, killed.err
        if expect_in_next_run:
            assert expect_in_next_run in killed.out
        runs = check_intact(tmp_path, runs)
        (temp,) = temp_files(tmp_path) - left  # the cut write: whole, fsynced, never renamed
        left.add(temp)
        assert temp.name.startswith(f".{name}.")
        target = temp.parent / name
        if name == "last.pt":  # the old last.pt, one epoch behind, is what a resume finds
            assert last_epoch(temp) == last_epoch(target) + 1
            expect_in_next_run = f"resumed {resumed} from last.pt after epoch {last_epoch(target)}"
        else:  # the old results file, without the record being appended
            assert json.loads(temp.read_text())["runs"][:-1] == runs
            assert target.exists() == bool(runs)
            expect_in_next_run = None
    assert [r["name"] for r in runs] == ["teacher", "baseline"]  # resumed runs add no duplicate of a cached run

    run = launcher.run(tmp_path)
    assert run.code == 0, run.err
    assert "resumed logit from last.pt after epoch 3" in run.out
    remaining = temp_files(tmp_path)
    assert remaining <= left, "an uninterrupted run left a temporary file"
    assert not any(t.name.startswith(".R.json.") for t in remaining)  # the killed appends' leftovers: cleaned
    assert not any(t.name.startswith(".last.pt.") for t in remaining)  # and those of the runs since resumed
    assert outcome(check_intact(tmp_path, runs)) == reference[1]


@pytest.mark.parametrize(
    ("run_name", "damage"),
    [("teacher", "random"), ("logit", "truncate")],
)
def test_corrupt_last_pt_is_refused_in_one_line(launcher, reference, tmp_path, run_name, damage):
    shutil.copytree(reference[0] / "CK", tmp_path / "CK")
    shutil.copy(reference[0] / "R.json", tmp_path / "R.json")
    (last,) = (tmp_path / "CK").glob("teachers/*/last.pt" if run_name == "teacher" else f"runs/*-{run_name}-*/last.pt")
    size = last.stat().st_size
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[: size // 2])
    else:
        last.write_bytes(random.Random(0).randbytes(size))
    damaged, results = last.read_bytes(), (tmp_path / "R.json").read_bytes()

    run = launcher.run(tmp_path)
    assert run.code == 2, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    assert str(last.relative_to(tmp_path)) in lines[0]
    assert "delete it" in lines[0] and "best.pt" in lines[0]
    assert last.read_bytes() == damaged  # refused, never overwritten or removed
    assert "epoch" not in run.out  # nothing trained
    assert (tmp_path / "R.json").read_bytes() == results
