"""Figures that do not exaggerate: intervals as points on a zoomed axis, colours with a stated meaning, every
reference line in the legend, heatmap colour scales taken from the values shown and numbers that stay legible."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import PowerNorm, same_color
from matplotlib.container import ErrorbarContainer

from kd_utils import plots

ROWS = [("baseline (n=3)", 0.90, 0.010), ("logit (n=3)", 0.93, 0.020), ("hidden (n=1)", 0.95, None)]
KINDS = ["labels only", "distilled", "distilled"]
GREY, BLUE = plots.KIND_STYLES["labels only"][0], plots.KIND_STYLES["distilled"][0]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def reference_lines(ax) -> list[LineCollection]:
    return [c for c in ax.collections if c.get_label().startswith("mean of ")]


def error_bars(ax) -> dict[float, tuple[float, float]]:
    """``{row y: (left end, right end)}`` of every drawn error bar."""
    bars = {}
    for container in ax.containers:
        (segment,) = container.lines[2][0].get_segments()  # the x error bar: one segment from mean - h to mean + h
        bars[float(segment[0, 1])] = (float(segment[0, 0]), float(segment[1, 0]))
    return bars


def test_intervals_are_points_with_error_bars_and_a_single_seed_gets_a_hollow_point_and_no_bar():
    ax = plots.interval_bars(ROWS, "macro F1", kinds=KINDS).axes[0]
    assert not ax.patches  # no bars: a bar's length from a cut axis would exaggerate the gaps
    bars = error_bars(ax)  # rows are drawn top down: y = 2, 1, 0
    assert bars == {2.0: pytest.approx((0.89, 0.91)), 1.0: pytest.approx((0.91, 0.95))}
    assert 0.0 not in bars  # the single-seed row has no interval, not a zero-width one
    (hollow,) = [line for line in ax.lines if line.get_ydata()[0] == 0.0]
    assert same_color(hollow.get_markerfacecolor(), "white") and hollow.get_xdata()[0] == pytest.approx(0.95)
    assert plots.ONE_SEED_LABEL in legend_texts(ax.figure)


def test_no_hollow_point_entry_when_every_row_has_an_interval():
    fig = plots.interval_bars(ROWS[:2], "macro F1", kinds=KINDS[:2])
    assert plots.ONE_SEED_LABEL not in legend_texts(fig)


def test_interval_colours_follow_the_kind_of_run_and_the_legend_names_each_kind():
    ax = plots.interval_bars(ROWS, "macro F1", kinds=KINDS).axes[0]
    baseline, logit = ax.containers
    assert same_color(baseline.lines[0].get_color(), GREY) and same_color(logit.lines[0].get_color(), BLUE)
    (hollow,) = [line for line in ax.lines if line.get_ydata()[0] == 0.0]
    assert same_color(hollow.get_markeredgecolor(), BLUE)  # a one-seed distilled run: still the distilled colour
    texts = legend_texts(ax.figure)
    assert plots.KIND_STYLES["labels only"][1] in texts and plots.KIND_STYLES["distilled"][1] in texts
    assert plots.KIND_STYLES["teacher"][1] not in texts  # only the kinds drawn


def test_without_kinds_the_first_row_is_the_reference_as_before():
    ax = plots.interval_bars(ROWS, "macro F1").axes[0]
    (line,) = reference_lines(ax)
    assert line.get_segments()[0][0, 0] == pytest.approx(0.90)
    assert same_color(ax.containers[0].lines[0].get_color(), plots.KIND_STYLES["reference"][0])
    assert {"reference run", "compared run", "mean of baseline (n=3)"} <= set(legend_texts(ax.figure))


def test_each_reference_line_has_a_legend_entry_and_spans_the_rows_it_is_compared_with():
    rows = [("baseline@10%", 0.88, 0.002), ("dist@10%", 0.93, 0.004), ("baseline@1%", 0.74, 0.02),
            ("dist@1%", 0.92, 0.002)]  # fmt: skip
    kinds = ["labels only", "distilled", "labels only", "distilled"]
    ax = plots.interval_bars(rows, "macro F1", kinds=kinds).axes[0]
    ten, one = reference_lines(ax)
    assert {"mean of baseline@10%", "mean of baseline@1%"} <= set(legend_texts(ax.figure))
    (x, y0), (_, y1) = ten.get_segments()[0]
    assert x == pytest.approx(0.88) and sorted((y0, y1)) == pytest.approx([2 - 0.45, 3 + 0.45])  # rows 0-1 (y 3, 2)
    (x, y0), (_, y1) = one.get_segments()[0]
    assert x == pytest.approx(0.74) and sorted((y0, y1)) == pytest.approx([0 - 0.45, 1 + 0.45])  # rows 2-3 (y 1, 0)
    assert ten.get_linestyle() != one.get_linestyle()  # their legend entries can be told apart


def test_interval_axis_holds_every_interval_whole_and_prints_the_numbers():
    rows = [("a", 0.97, 0.04), ("b", 0.90, 0.001), ("c", 0.99, None)]  # a t-interval may pass 1
    ax = plots.interval_bars(rows, "macro F1").axes[0]
    low, high = ax.get_xlim()
    assert low <= 0.90 - 0.001 and high >= 0.97 + 0.04
    assert low > 0.5  # zoomed: points, not bars, so the axis need not start at 0
    texts = {t.get_text() for t in ax.texts}
    assert {"0.9700 ± 0.0400", "0.9000 ± 0.0010", "0.9900"} <= texts


def test_interval_figure_on_a_given_axes_puts_its_legend_there():
    fig, ax = plt.subplots()
    assert plots.interval_bars(ROWS, "macro F1", ax=ax, kinds=KINDS) is fig
    assert not fig.legends and "mean of baseline (n=3)" in legend_texts(fig)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": ["distilled"]}, "1 kinds for 3 rows"),
        ({"kinds": ["labels only", "student", "distilled"]}, "unknown kind 'student'; choose from: teacher"),
        ({"reference": 3}, r"reference rows \[3\] out of range; choose indices from 0 to 2"),
    ],
)
def test_interval_figure_names_a_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plots.interval_bars(ROWS, "macro F1", **kwargs)


def test_interval_figure_saves_to_the_same_bytes_twice(tmp_path):
    paths = [plots.save_figure(plots.interval_bars(ROWS, "macro F1", kinds=KINDS), tmp_path / f"{i}.png")
             for i in (1, 2)]  # fmt: skip
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_value_range_is_min_to_max_and_clips_only_far_outliers():
    assert plots.value_range([0.91, 0.93, 0.95]) == pytest.approx((0.91, 0.95, False, False))
    low, high, clipped_low, clipped_high = plots.value_range([0.75, *np.linspace(0.91, 0.95, 20)])
    q1, q3 = np.percentile([0.75, *np.linspace(0.91, 0.95, 20)], [25, 75])
    assert low == pytest.approx(q1 - 3 * (q3 - q1)) and 0.75 < low < 0.91 and clipped_low
    assert high == pytest.approx(0.95) and not clipped_high
    assert plots.value_range([0.5, 0.5]) == pytest.approx((0.495, 0.505, False, False))
    with pytest.raises(ValueError, match="no finite value"):
        plots.value_range([float("nan")])


def metric_rows(scores: dict[str, float]) -> list[dict]:
    return [{"name": n, **{m: f + 0.001 * i for i, m in enumerate(plots.METRICS)}} for n, f in scores.items()]


def assert_numbers_contrast_with_their_cells(ax):
    cells = ax.collections[0].get_facecolors()
    assert len(ax.texts) == len(cells)
    for text, cell in zip(ax.texts, cells):
        ratio = plots._contrast(text.get_color(), cell)
        assert ratio >= 3.8, (text.get_text(), ratio)
        assert ratio == max(plots._contrast(c, cell) for c in ("0.1", "white"))


def test_metric_table_clips_a_far_outlier_and_says_so_on_the_colour_bar():
    scores = {"teacher": 0.95, **{f"run{i}": 0.91 + 0.004 * i for i in range(8)}, "few labels": 0.75}
    table, colorbar = plots.metric_table(metric_rows(scores)).axes
    low, high = table.collections[0].get_clim()
    assert 0.75 < low < 0.91 and high == pytest.approx(0.953)  # top: the teacher's 0.95 + 0.003
    assert table.collections[0].colorbar.extend == "min"
    assert f"below {low:.3f}: lightest" in colorbar.get_ylabel()
    assert_numbers_contrast_with_their_cells(table)


def test_metric_table_keeps_a_scale_the_caller_sets():
    table, colorbar = plots.metric_table(metric_rows({"a": 0.9, "b": 0.95}), vmin=0.8, vmax=1.0).axes
    assert table.collections[0].get_clim() == pytest.approx((0.8, 1.0))
    assert "set by the caller" in colorbar.get_ylabel()


def test_per_class_heatmap_colours_span_the_cells_and_the_colour_bar_says_so():
    values = {"baseline": [0.87, 0.99, 0.77], "logit": [0.88, 0.99, 0.79]}
    heat, colorbar = plots.per_class_heatmap(values, ["shirt", "bag", "coat"]).axes
    assert heat.collections[0].get_clim() == pytest.approx((0.77, 0.99))
    assert colorbar.get_ylabel().startswith("F1: colour scale 0.770 to 0.990")
    assert_numbers_contrast_with_their_cells(heat)


def test_confusion_uses_a_square_root_scale_so_small_confusions_show():
    matrix = [[90, 5, 5], [1, 98, 1], [10, 0, 90]]
    heat, colorbar = plots.confusion_heatmap(matrix, ["a", "b", "c"]).axes
    norm = heat.collections[0].norm
    assert isinstance(norm, PowerNorm) and norm.gamma == 0.5 and (norm.vmin, norm.vmax) == (0.0, 1.0)
    assert norm(0.05) == pytest.approx(0.05**0.5)  # a 5% confusion sits ~a fifth of the way up, not a twentieth
    assert "square-root colour scale" in colorbar.get_ylabel()
    assert_numbers_contrast_with_their_cells(heat)
    linear = plots.confusion_heatmap(matrix, ["a", "b", "c"], gamma=1.0).axes
    assert "linear colour scale" in linear[1].get_ylabel()


def test_no_plot_draws_a_line_the_legend_does_not_explain():
    """Every line and line collection a figure draws, other than error bars, is named in its legend (the reference
    lines above all): the interval figure, the per-class chart and the training curves."""
    figures = [
        plots.interval_bars(ROWS, "macro F1", kinds=KINDS),
        plots.per_class_chart({"a": [{"class": "x", "f1": 0.9}, {"class": "y", "f1": 0.8}]}),
        plots.training_curves({"a": [{"epoch": 1, "ce": 1.0, "val_loss": 1.1, "train_f1": 0.5, "val_f1": 0.4}]}),
    ]
    for fig in figures:
        texts = legend_texts(fig)
        for ax in fig.axes:
            in_error_bars = {id(a) for c in ax.containers if isinstance(c, ErrorbarContainer)
                             for a in (c.lines[0], *c.lines[1], *c.lines[2])}  # fmt: skip
            hollow = [line for line in ax.lines if same_color(line.get_markerfacecolor(), "white")]
            for artist in [*ax.lines, *ax.collections]:
                if id(artist) in in_error_bars:
                    continue
                if artist in hollow:
                    assert plots.ONE_SEED_LABEL in texts
                else:
                    assert artist.get_label() in texts, artist.get_label()
