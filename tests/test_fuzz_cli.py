"""A fuzzer that holds the exit contract (``KD_FUZZ_EXAMPLES`` draws, 150 in ``make test``): hypothesis draws ``run`` argument lists and ``--config`` files (valid
and invalid values for every flag, wrong types, paths of every kind) and every draw must end in exit 0, 2 or 3;
on 2 with exactly one line on stderr and the results file and checkpoint folder as they were; never with a
traceback (in-process, an exception that escapes ``main`` fails the test)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kd_utils.cli import main
from kd_utils.config import FLAGS

# flags whose size drives the run's cost: drawn small, or invalid
COSTLY = {"epochs", "teacher-epochs", "train-size", "val-size", "test-size", "batch-size", "hint-epochs"}
SKIPPED = {
    "device",
    "download",
    "data-dir",
    "progress",
    "compile",
    "results-path",
    "checkpoint-dir",
    "tensorboard",
    "teacher-checkpoint",
    "student-checkpoint",
    "resume",
    "dataset",
    "log-every",
}  # drawn apart or fixed
BASE = ["--dataset", "synthetic", "--no-progress", "--device", "cpu", "--allow-weak-teacher", "--train-size", "120",
        "--val-size", "40", "--test-size", "40", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "40"]  # fmt: skip

ODD_TEXT = st.sampled_from(["", "none", "nan", "-1", "1e999", "x", "0", "1,2,x", "🦜", "9" * 30])


def value_for(flag) -> st.SearchStrategy[str]:
    """Text for a flag's value: mostly plausible values of its type, sometimes out of range or not a value."""
    kind, name = flag.type, flag.name
    if name in COSTLY:
        good = st.integers(1, 3).map(str) if "epochs" in name else st.sampled_from(["20", "40", "60"])
        return st.one_of(good, st.integers(-5, 0).map(str), ODD_TEXT)
    if kind.startswith("int"):
        return st.one_of(st.integers(-3, 12).map(str), st.integers(-(2**70), 2**70).map(str), ODD_TEXT)
    if kind.startswith("float"):
        floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
        return st.one_of(st.floats(0, 5).map(repr), floats.map(repr), st.sampled_from(["1e300", "-0.0"]), ODD_TEXT)
    if kind.startswith("tuple"):
        return st.one_of(st.lists(st.floats(-1, 3), min_size=1, max_size=5).map(lambda v: ",".join(map(str, v))),
                         ODD_TEXT)  # fmt: skip
    return st.one_of(st.sampled_from(["cosine", "mse", "pool", "sgd", "adamw", "onecycle", "fp32", "bf16", "auto",
                                      "student_cnn", "teacher_cnn", "timm:nosuch", "tv:resnet18"]), ODD_TEXT)  # fmt: skip


@st.composite
def flag_args(draw) -> list[str]:
    """A few flags with drawn values (booleans as --x / --no-x)."""
    names = draw(st.lists(st.sampled_from(sorted(set(FLAGS) - SKIPPED)), max_size=4, unique=True))
    args = []
    for name in names:
        flag = FLAGS[name]
        if flag.type == "bool":
            args.append(draw(st.sampled_from([f"--{name}", f"--no-{name}"])))
        else:
            args += [f"--{name}", draw(value_for(flag))]
    return args


TOML_VALUES = st.one_of(st.integers(-3, 5), st.floats(allow_nan=False, width=32), st.booleans(),
                        st.sampled_from(['"logit"', '"nonsense"', '"baseline"', '""', "[1, 2]", '["a"]', "[1.5]",
                                         "[]"]))  # fmt: skip


@st.composite
def toml_text(draw) -> str:
    keys = draw(st.lists(st.sampled_from(["experiment", "seeds", "final-epochs", "temperature", "alpha", "seed",
                                          "epochs", "lr", "no_such_key", "feature-kind", "level-weights"]),
                         max_size=3, unique=True))  # fmt: skip
    lines = []
    for key in keys:
        value = draw(TOML_VALUES)
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines) + "\n" + draw(st.sampled_from(["", "= broken", "[section]\nx = 1"]))


EXITS: Counter = Counter()  # exit codes seen, so the last test can tell the fuzzer reached training too
PATH_KINDS = ("new", "folder", "garbage", "valid-empty", "fifo", "symlink")


def make_path(root: Path, kind: str, suffix: str) -> Path:
    path = root / f"results-{kind}{suffix}"
    if kind == "folder":
        path.mkdir()
    elif kind == "garbage":
        path.write_text("not json at all")
    elif kind == "valid-empty":
        path.write_text('{"runs": []}\n')
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        target = root / f"target{suffix}"
        target.write_text('{"runs": []}\n' if suffix == ".json" else "")
        path.symlink_to(target)
    return path


def snapshot(path: Path) -> object:
    if path.is_dir():
        return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))
    if path.is_file():
        return path.read_bytes()
    return "fifo" if path.exists() else None


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("KD_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])  # fmt: skip
@given(
    experiment=st.sampled_from(["baseline", "logit", "dkd", "hidden", "fitnets", "teacher", "2", "nonsense"]),
    flags=flag_args(),
    config=st.one_of(st.none(), toml_text()),
    results_kind=st.sampled_from(["new"] * 6 + list(PATH_KINDS)),  # mostly a path a run can use
    suffix=st.sampled_from([".json"] * 4 + [".csv", ".txt"]),
    checkpoint_kind=st.sampled_from(["new"] * 5 + ["file"]),
)
def test_every_drawn_command_line_keeps_the_exit_contract(
    capsys, experiment, flags, config, results_kind, suffix, checkpoint_kind
):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results_path = make_path(root, results_kind, suffix if results_kind != "folder" else "")
        checkpoints = root / "ckpt"
        if checkpoint_kind == "file":
            checkpoints.write_text("in the way")
        argv = ["run", *BASE, "--experiment", experiment, *flags, "--results-path", str(results_path),
                "--checkpoint-dir", str(checkpoints)]  # fmt: skip
        if config is not None:
            (root / "c.toml").write_text(config)
            argv += ["--config", str(root / "c.toml")]
        before = snapshot(results_path), snapshot(checkpoints)
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own one-line errors
            code = exc.code
        err = capsys.readouterr().err
        EXITS[code] += 1
        assert code in (0, 2, 3), (argv, err)
        assert "Traceback" not in err, (argv, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1, (argv, err)
            assert (snapshot(results_path), snapshot(checkpoints)) == before, argv


@pytest.mark.slow
def test_the_fuzzer_reached_both_refusals_and_finished_runs():
    """Runs after the fuzzer (file order): a contract that only ever saw refusals would test little."""
    if not EXITS:
        pytest.skip("the fuzzer did not run in this session (-k or -x)")
    print(f"fuzzer exit codes: {dict(sorted(EXITS.items()))}")
    assert EXITS[2] >= 10 and EXITS[0] >= 10, dict(EXITS)
