"""The report's figures: every one renders, deterministically, with titles, scales and labels that read right."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from kd_utils import plots
from kd_utils.report import FIGURES, figure_path, figure_title, latest_runs, render_figure

CLASSES = ("cat", "dog", "ship")
DATASET = "toy-set"


STUDY_RUNS = ("teacher", "baseline", "logit", "hidden", "regressor", "final")  # the runs the figures draw


def flat_config(epochs: int) -> dict:
    return {"dataset": DATASET, "teacher": "big_net", "student": "small_net", "epochs": epochs, "seed": 0}


def nested_config(epochs: int) -> dict:
    """The layout the config is moving to: data settings under ``data``, training under ``train``."""
    return {"data": {"dataset": DATASET, "data_dir": "./data"}, "teacher": "big_net", "student": "small_net",
            "train": {"epochs": epochs}, "epochs": epochs, "seed": 0}  # fmt: skip


def record(name: str, f1: float, config=flat_config) -> dict:
    """A small record with every field the figures read; scores near ``f1`` (all well above 0)."""
    experiment = "logit" if name == "final" else name
    history = [
        {
            "epoch": e,
            "loss": 1.5 / e,
            "ce": 1.2 / e,
            "train_acc": f1 - 0.1 / e,
            "train_f1": f1 - 0.1 / e,
            "val_loss": 1.3 / e,
            "val_acc": f1 - 0.05 / e,
            "val_f1": f1 - 0.05 / e,
            "lr": 0.1 / e,
            "seconds": 2.0,
            "images_per_s": 500.0,
        }  # fmt: skip
        for e in (1, 2, 3)
    ]
    per_class = [
        {"class": c, "precision": f1 + d, "recall": f1 + d, "f1": f1 + d, "support": 100}
        for c, d in zip(CLASSES, (-0.04, 0.0, 0.03))
    ]
    confusion = [[90, 6, 4], [5, 92, 3], [2, 3, 95]]
    test = {"accuracy": f1 + 0.001, "precision": f1 + 0.002, "recall": f1, "f1": f1, "per_class": per_class,
            "confusion_matrix": confusion}  # fmt: skip
    return {"experiment": experiment, "name": name, "config": config(10 if name == "final" else 3),
            "history": [] if name == "teacher" else history, "test": test, "params": 1000, "seconds": 6.0}  # fmt: skip


def study(config=flat_config) -> dict[str, dict]:
    f1 = dict(zip(STUDY_RUNS, (0.94, 0.91, 0.92, 0.905, 0.915, 0.93)))
    return latest_runs([record(name, f1[name], config) for name in STUDY_RUNS])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def draw(name: str, runs: dict[str, dict]) -> plt.Figure:
    fig = FIGURES[name](runs)
    assert fig is not None, name
    return fig


def test_every_figure_renders_to_a_png_and_rerenders_to_the_same_bytes(tmp_path):
    runs = study()
    for folder in ("a", "b"):
        for name in FIGURES:
            plt.close(render_figure(name, runs, DATASET, tmp_path / folder))
    for name in FIGURES:
        first, second = figure_path(tmp_path / "a", DATASET, name), figure_path(tmp_path / "b", DATASET, name)
        assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert first.stat().st_size > 1000, name
        assert first.read_bytes() == second.read_bytes(), name


@pytest.mark.parametrize("config", [flat_config, nested_config], ids=["flat", "nested"])
def test_every_title_names_the_dataset_and_the_models(config):
    runs = study(config)
    for name in FIGURES:
        fig = draw(name, runs)
        titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
        title = next(t for t in titles if DATASET in t)
        assert "big_net" in title, (name, title)
        if name != "confusion_teacher":  # the teacher's own confusion names only the teacher's model
            assert "big_net → small_net" in title, (name, title)


def test_figure_title_format():
    runs = study()
    assert figure_title(runs, "test metrics (macro)") == "toy-set · big_net → small_net · test metrics (macro)"
    assert figure_title({"teacher": runs["teacher"]}, "x", wrap=True) == "toy-set · big_net\nx"


def test_metric_table_colours_span_the_scores_shown_and_the_colour_bar_says_so():
    fig = draw("metrics", study())
    table, colorbar = fig.axes
    # worst cell: hidden's recall/f1 0.905; best: the teacher's precision 0.94 + 0.002 (no far outlier to clip)
    assert table.collections[0].get_clim() == pytest.approx((0.905, 0.942))
    assert colorbar.get_ylabel().startswith("score: colour scale 0.905 to 0.942")
    assert "(range of the cells)" in colorbar.get_ylabel()
    ticks = colorbar.get_yticks()
    assert ticks[0] == pytest.approx(0.905) and ticks[-1] == pytest.approx(0.942)  # both ends are labelled
    texts = [t.get_text() for t in table.texts]
    assert "0.9050" in texts and "0.9410" in texts and all(len(t.split(".")[1]) == 4 for t in texts)


def test_zoom_limits_frames_the_data_within_zero_and_one():
    assert plots.zoom_limits([0.9, 0.95]) == pytest.approx((0.85, 1.0))
    assert plots.zoom_limits([0.62, 0.7]) == pytest.approx((0.57, 0.75))
    assert plots.zoom_limits([0.02, 0.5, float("nan")]) == pytest.approx((0.0, 0.55))
    with pytest.raises(ValueError, match="no finite score"):
        plots.zoom_limits([float("nan")])


def test_per_class_axis_is_zoomed_to_high_scores_and_says_it_does_not_start_at_zero():
    ax = draw("per_class_f1", study()).axes[0]
    low, high = ax.get_ylim()
    # lowest bar: hidden's 'cat' 0.905 - 0.04 = 0.865 -> 0.81; highest: teacher's 'ship' 0.97 -> capped at 1
    assert low == pytest.approx(0.81) and high == pytest.approx(1.0)
    assert ax.get_ylabel() == "f1 (axis starts at 0.81, not 0)"


def test_per_class_axis_starts_at_zero_when_a_score_is_low():
    rows = [{"class": c, "f1": f} for c, f in zip(CLASSES, (0.03, 0.5, 0.8))]
    ax = plots.per_class_chart({"run": rows}).axes[0]
    assert ax.get_ylim() == pytest.approx((0.0, 0.85)) and ax.get_ylabel() == "f1"


@pytest.mark.parametrize("name", ["confusion_teacher", "confusion_final"])
def test_confusion_tick_labels_end_under_their_columns(name):
    ax = draw(name, study()).axes[0]
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == list(CLASSES)
    assert all(t.get_ha() == "right" and t.get_rotation_mode() == "anchor" and t.get_rotation() == 45 for t in labels)
