"""Stored notebooks carry no widget state: ``python -m kd_utils.notebook strip`` removes the saved widget models
(``metadata.widgets``) and the widget views of tqdm's bars, keeping each bar's final text; ``check`` reports a
notebook that still carries them."""

from __future__ import annotations

import json

import pytest

from kd_utils import notebook_files as notebook
from kd_utils.notebook import REPO_ROOT
from kd_utils.notebook_files import WIDGET_VIEW, carrying_widgets, strip, widget_state

BAR_TEXT = ["epoch 3/3: 100%|##########| 47/47 [00:02<00:00, 21.3it/s]"]  # as nbformat writes text: lines
STORED = [
    *sorted((REPO_ROOT / "notebooks").glob("*.ipynb")),
    *sorted((REPO_ROOT / "checkpoints" / "notebooks").glob("*.ipynb")),
]


def with_widgets() -> dict:
    """A notebook as Jupyter saves one after tqdm.auto bars: widget models in the metadata, views in outputs
    (text as lists of lines, the layout nbformat writes)."""
    bar = {
        "output_type": "display_data",
        "metadata": {},
        "data": {WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0}, "text/plain": BAR_TEXT},
    }
    bare = {"output_type": "display_data", "metadata": {}, "data": {WIDGET_VIEW: {"model_id": "def"}}}
    printed = {"output_type": "stream", "name": "stdout", "text": ["baseline test: accuracy 0.91\n"]}
    cells = [
        {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": ["# title"]},
        {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1, "source": ["train()"],
         "outputs": [bar, printed, bare]},
    ]  # fmt: skip
    state = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}, "version_major": 2}}
    kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    metadata = {"kernelspec": kernelspec, "widgets": state}
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def test_strip_removes_widget_state_and_keeps_the_text(tmp_path, capsys):
    path = tmp_path / "run.ipynb"
    path.write_text(json.dumps(with_widgets()))
    assert widget_state(with_widgets()) == 3 and carrying_widgets([tmp_path]) == [path]
    assert notebook.main(["strip", str(path)]) == 0
    assert "stripped widget state and spent re-run tags from" in capsys.readouterr().out
    nb = json.loads(path.read_text())
    assert widget_state(nb) == 0 and "widgets" not in nb["metadata"] and nb["metadata"]["kernelspec"]
    outputs = nb["cells"][1]["outputs"]
    assert [o["output_type"] for o in outputs] == ["display_data", "stream"]  # the bare widget view is gone
    assert outputs[0]["data"] == {"text/plain": BAR_TEXT}  # the bar's final text stays
    assert outputs[1] == with_widgets()["cells"][1]["outputs"][1]
    assert [c["id"] for c in nb["cells"]] == ["m1", "c1"] and nb["cells"][1]["execution_count"] == 1
    written = path.read_text()
    assert strip([tmp_path]) == [] and path.read_text() == written  # nothing left: not rewritten
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.reads(written, as_version=4))
    assert written == nbformat.writes(nbformat.reads(written, as_version=4)) + "\n"  # nbformat's own layout


def test_strip_drops_the_rerun_tag_of_cells_that_ran_only(tmp_path):
    nb = with_widgets()
    del nb["metadata"]["widgets"]
    nb["cells"][1]["outputs"] = []
    nb["cells"][1]["metadata"] = {"tags": [notebook.PENDING_TAG, "parameters"]}
    unrun = {"cell_type": "code", "id": "c2", "metadata": {"tags": [notebook.PENDING_TAG]}, "execution_count": None,
             "source": ["later()"], "outputs": []}  # fmt: skip
    ran = {**unrun, "id": "c3", "metadata": {"tags": [notebook.PENDING_TAG]}, "execution_count": 2}
    nb["cells"] += [unrun, ran]
    path = tmp_path / "run.ipynb"
    path.write_text(json.dumps(nb))
    assert strip([path]) == [path]
    cells = json.loads(path.read_text())["cells"]
    assert [c["metadata"] for c in cells[1:]] == [{"tags": ["parameters"]}, {"tags": [notebook.PENDING_TAG]}, {}]
    assert strip([path]) == []  # an unexecuted cell keeps its tag: nothing to strip


def test_strip_refuses_what_is_not_a_notebook(tmp_path, capsys):
    assert notebook.main(["strip", str(tmp_path / "missing.ipynb")]) == 2
    assert "not a notebook (.ipynb) file or a folder" in capsys.readouterr().err


def test_check_reports_a_notebook_with_widget_state(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "00_x.ipynb").write_text(json.dumps(with_widgets()))
    monkeypatch.setattr(notebook, "out_of_sync", lambda: [])
    monkeypatch.setattr(notebook, "carrying_widgets", lambda: carrying_widgets([folder]))
    assert notebook.main(["check"]) == 1
    assert "00_x: carries widget state; run python -m kd_utils.notebook strip" in capsys.readouterr().out


@pytest.mark.parametrize("path", STORED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_stored_notebooks_carry_no_widget_state(path):
    assert widget_state(json.loads(path.read_text(encoding="utf-8"))) == 0, "run: python -m kd_utils.notebook strip"


@pytest.mark.parametrize("path", STORED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_stored_notebooks_are_in_the_layout_strip_and_sync_write(path):
    """Rewriting a stored notebook changes only what it means to change (nbconvert wrote them: same layout)."""
    text = path.read_text(encoding="utf-8")
    assert json.dumps(json.loads(text), sort_keys=True, indent=1, ensure_ascii=False) + "\n" == text


def test_the_stored_study_notebooks_are_read():
    assert len([p for p in STORED if p.parent == REPO_ROOT / "notebooks"]) == 6
