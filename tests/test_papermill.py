"""A notebook run headless through papermill's Python API: the injected parameters take effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kd_utils.notebook import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_baseline.ipynb"  # the cheapest complete story: teacher and baseline only


@pytest.mark.slow
def test_papermill_parameters_reach_the_run(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    for variable in ENVIRONMENT:  # the KD_* variables would override the injected values
        monkeypatch.delenv(variable, raising=False)
    output_dir, executed = tmp_path / "out", tmp_path / "executed.ipynb"
    parameters = {"PROFILE": "smoke", "DATASET": "fashion-mnist", "OUTPUT_DIR": str(output_dir), "SEED": 1,
                  "EPOCHS": 1}  # fmt: skip
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters=parameters,
        cwd=str(tmp_path),
        progress_bar=False,
        kernel_name="python3",
    )
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "run info | profile: smoke | dataset: fashion-mnist | seed: 1 |" in text
    assert "notebook wall time: " in text and str(output_dir) not in text

    results = output_dir / "results" / "fashion-mnist"
    runs = json.loads((results / "runs.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["teacher", "baseline"]
    assert {r["config"]["train"]["seed"] for r in runs} == {1} and runs[1]["config"]["train"]["epochs"] == 1
    assert runs[0]["config"]["data"]["train_size"] == 2000  # the smoke slice
    entry = json.loads((results / "notebooks.json").read_text())["notebooks"]["00_baseline"]
    assert (entry["profile"], entry["dataset"], entry["seed"]) == ("smoke", "fashion-mnist", 1)
    assert (output_dir / "Pictures" / "fashion-mnist_00_baselines_curves.png").exists()
    assert any((output_dir / "checkpoints" / "teachers").iterdir())
