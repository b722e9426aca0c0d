"""Static checks of every committed notebook (the nbval run in `make test` executes them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from kd_utils.report import RUN_ORDER, run_name

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["00_baseline", "01_logit_distillation", "02_hidden_state_imitation", "03_feature_regressor", "04_final_run"]
RUN_INFO = re.compile(r"run info \| profile: (\w+) \| dataset: ([\w-]+) \|")


def test_the_five_notebooks_exist():
    assert [nb.stem for nb in NOTEBOOKS] == EXPECTED


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def recorded_run(nb) -> tuple[str, str] | None:
    for cell in code_cells(nb):
        for out in cell.get("outputs", []):
            match = RUN_INFO.search(out.get("text", ""))
            if match:
                return match.group(1), match.group(2)
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_and_complete(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert "colab.research.google.com/github/" in first.source and f"notebooks/{path.name}" in first.source
    assert sum("parameters" in c.metadata.get("tags", []) for c in code_cells(nb)) == 1
    checked = [c for c in code_cells(nb) if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) >= 2, "at least two cells whose output nbval compares"
    assert all(c.get("outputs") for c in checked), "checked cells need stored outputs to compare against"
    for cell in code_cells(nb):
        assert cell.execution_count is not None, "stored outputs come from a top-to-bottom run"
        assert not [o for o in cell.get("outputs", []) if o.output_type == "error"], cell.source[:80]
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), "one clean run, top to bottom"
    assert recorded_run(nb) is not None, "the run-info cell must print the profile and dataset of the stored run"


def test_all_notebooks_store_the_same_full_profile_run():
    runs = {recorded_run(nbformat.read(p, as_version=4)) for p in NOTEBOOKS}
    assert len(runs) == 1, f"stored outputs come from different runs: {runs}"
    profile, dataset = runs.pop()
    assert profile == "full", f"committed notebooks must hold a full-profile run, not '{profile}'"
    runs_file = ROOT / "results" / dataset / "runs.json"
    assert runs_file.exists(), "the run's results are committed beside it"
    names = {run_name(r) for r in json.loads(runs_file.read_text())["runs"]}
    assert set(RUN_ORDER) <= names, f"the full study records every run; missing: {set(RUN_ORDER) - names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_ends_with_its_wall_time(path):
    last = code_cells(nbformat.read(path, as_version=4))[-1]
    text = "".join(o.get("text", "") for o in last.get("outputs", []))
    assert re.match(r"notebook wall time: \d+ s \| profile: full", text), text
