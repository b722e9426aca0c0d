"""Static checks of every committed notebook (the nbval run in `make test` executes them).

The stored outputs may come from either profile: the smoke outputs committed after a change to the setup, or
a full-profile execution of the study. Either way they must come from one clean top-to-bottom run. The one
exception: cells added for protocol 2's re-run (tagged ``rerun-pending``) stay unexecuted, without outputs, while
the stored execution is protocol 1's (its records still in results/fashion-mnist/runs.json); `make study` runs them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import is_protocol_1_records  # the Makefile's hash of the stored records

from kd_utils.notebook_files import PENDING_TAG as PENDING

nbformat = pytest.importorskip("nbformat")  # jupyter's: absent on a bare GPU machine, where the rest still runs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["00_baseline", "01_logit_distillation", "02_hidden_state_imitation", "03_feature_regressor", "04_final_run",
            "05_method_comparison"]  # fmt: skip
RUN_INFO = re.compile(
    r"run info \| profile: (\w+) \| dataset: ([\w-]+) \| seed: \d+ \| device: [^|]+\|.*precision: \w+"
)
WALL_TIME = re.compile(r"notebook wall time: \d+ s \| profile: (\w+)")
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|content|Users|var|private)/")
PARAMETERS = {"PROFILE": "full", "DATASET": "cifar10", "SEED": 0, "EPOCHS": None, "PRECISION": "auto",
              "OUTPUT_DIR": None, "USE_DRIVE": True, "DATA_DIR": None}  # fmt: skip


def test_the_six_notebooks_exist():
    assert [nb.stem for nb in NOTEBOOKS] == EXPECTED


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def output_text(cell) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
        parts.append(out.get("data", {}).get("text/markdown", ""))
        parts.extend(out.get("traceback", []))
    return "".join("".join(p) if isinstance(p, list) else p for p in parts)


def recorded_run(nb) -> tuple[str, str] | None:
    for cell in code_cells(nb):
        match = RUN_INFO.search(output_text(cell))
        if match:
            return match.group(1), match.group(2)
    return None


def read(path):
    return nbformat.read(path, as_version=4)


def protocol_1_execution_stored() -> bool:
    """True while results/fashion-mnist/runs.json is protocol 1's (the SHA-256 the Makefile's move checks): the
    stored notebooks are that study's execution until `make study` re-executes them on the re-run."""
    return is_protocol_1_records(ROOT / "results" / "fashion-mnist" / "runs.json")


def pending(cell) -> bool:
    return PENDING in cell.metadata.get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_and_ran_top_to_bottom(path):
    nb = read(path)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "colab.research.google.com/github/" in first.source and f"notebooks/{path.name}" in first.source
    checked = [c for c in code_cells(nb) if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) >= 2, "at least two cells whose output nbval compares"
    assert all(c.get("outputs") for c in checked), "checked cells need stored outputs to compare against"
    for cell in code_cells(nb):
        if cell.execution_count is None:  # a cell the stored execution predates: only protocol 2's, before the re-run
            assert pending(cell), "stored outputs come from a top-to-bottom run"
            assert protocol_1_execution_stored(), f"the re-run's execution left a {PENDING} cell unrun"
            assert not cell.get("outputs"), "an unexecuted cell has no outputs"
            continue
        assert not pending(cell), f"a cell that ran keeps no {PENDING} tag (`python -m kd_utils.notebook strip`)"
        assert not [o for o in cell.get("outputs", []) if o.output_type == "error"], cell.source[:80]
    counts = [c.execution_count for c in code_cells(nb) if c.execution_count is not None]
    assert counts == list(range(1, len(counts) + 1)), "one clean run, top to bottom"
    assert recorded_run(nb) is not None, "the run-info line names the profile and dataset of the stored run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_holds_plain_literals_and_setup_comes_next(path):
    cells = code_cells(read(path))
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill injects its values after it)"
    values = {}
    for statement in ast.parse(cells[tagged[0]].source).body:
        assert isinstance(statement, ast.Assign | ast.AnnAssign), ast.unparse(statement)
        target = statement.targets[0] if isinstance(statement, ast.Assign) else statement.target
        values[target.id] = ast.literal_eval(statement.value)  # raises on anything but a literal
    assert values == PARAMETERS
    following = cells[tagged[0] + 1].source
    assert f'setup("{path.stem}", {", ".join(PARAMETERS)})' in following, "the next cell applies the KD_* overrides"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_the_parameters_with_their_types(path):
    papermill = pytest.importorskip("papermill")
    params = papermill.inspect_notebook(str(path))
    types = {name: p["inferred_type_name"] for name, p in params.items()}
    assert types == {"PROFILE": "str", "DATASET": "str", "SEED": "int", "EPOCHS": "int|None", "PRECISION": "str",
                     "OUTPUT_DIR": "str|None", "USE_DRIVE": "bool", "DATA_DIR": "str|None"}  # fmt: skip
    assert all(p["help"] for p in params.values()), "every parameter has a one-line help"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_ends_with_its_wall_time(path):
    nb = read(path)
    last = code_cells(nb)[-1]
    match = WALL_TIME.search(output_text(last))
    assert match, output_text(last)
    assert match.group(1) == recorded_run(nb)[0], "the wall time belongs to the run the run-info line names"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_name_no_absolute_path(path):
    for cell in code_cells(read(path)):
        found = ABSOLUTE_PATH.search(output_text(cell))
        assert found is None, f"absolute path in the output of: {cell.source[:80]!r}"


def test_all_notebooks_store_the_same_run():
    runs = {recorded_run(read(p)) for p in NOTEBOOKS}
    assert len(runs) == 1, f"stored outputs come from different runs: {runs}"
