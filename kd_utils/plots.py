"""Figures for the study. Each function takes ``ax=None`` (or makes its own figure), returns the Figure,
never calls ``plt.show()``; ``save_figure`` writes a PNG without volatile metadata, so re-rendering the
same results gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.colors import ListedColormap, PowerNorm
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from seaborn.utils import relative_luminance
from torch import Tensor

METRICS = ("accuracy", "precision", "recall", "f1")

# What a row of ``interval_bars`` is -> (colour, legend text). Colour says what kind of run a row is, so a reader
# sees at a glance which points are the labels-only references; "reference" / "compared" are the defaults when
# the caller names no kinds (the reference rows, then every other row).
KIND_STYLES = {
    "teacher": ("black", "teacher"),
    "labels only": ("0.55", "labels only (no teacher)"),
    "distilled": ("tab:blue", "distilled from the teacher"),
    "reference": ("0.55", "reference run"),
    "compared": ("tab:blue", "compared run"),
}
ONE_SEED_LABEL = "one seed: no interval"
REFERENCE_STYLES = ("--", ":", "-.")  # one dash pattern per reference line, so their legend entries differ
# Blues without its near-white end: the lowest value on a min-to-max scale still reads as a colour, not a blank
SCORE_CMAP = ListedColormap(plt.get_cmap("Blues")(np.linspace(0.12, 1.0, 256)), name="scores")


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save as PNG with no timestamp or software tag (deterministic bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def _figure_and_axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def sample_grid(
    images: Tensor, labels: Tensor, class_names: Sequence[str], per_class: int = 8, title: str = ""
) -> plt.Figure:
    """A grid with one row per class and ``per_class`` images of that class (the first ones found)."""
    k = len(class_names)
    fig, axes = plt.subplots(k, per_class, figsize=(per_class * 0.9, k * 0.95), squeeze=False)
    for c, name in enumerate(class_names):
        idx = (labels == c).nonzero().flatten()[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
            if j < len(idx):
                img = images[idx[j]].permute(1, 2, 0).numpy()  # (H, W, C)
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(histories: dict[str, list[dict]], title: str = "") -> plt.Figure:
    """Cross-entropy and macro F1 per epoch, train (solid) vs validation (dashed), one colour per run.

    Train figures are measured on the augmented batches while the weights move, so they lag validation.
    """
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 4))
    palette = sns.color_palette("tab10", len(histories))
    for color, (name, history) in zip(palette, histories.items()):
        epochs = [row["epoch"] for row in history]
        ax_loss.plot(epochs, [row["ce"] for row in history], color=color, label=f"{name} train CE")
        ax_loss.plot(epochs, [row["val_loss"] for row in history], color=color, ls="--", label=f"{name} val CE")
        ax_f1.plot(epochs, [row["train_f1"] for row in history], color=color, label=f"{name} train F1")
        ax_f1.plot(epochs, [row["val_f1"] for row in history], color=color, ls="--", label=f"{name} val F1")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (solid: train, dashed: val)")
    ax_f1.set(xlabel="epoch", ylabel="score", title="macro F1 (solid: train, dashed: val)")
    for ax in (ax_loss, ax_f1):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def zoom_limits(values, margin: float = 0.05, ceiling: float = 1.0) -> tuple[float, float]:
    """Limits that frame scores in [0, ``ceiling``] around the data: ``(max(0, min - margin), min(ceiling,
    max + margin))``, the lower one rounded down to 0.01 so that it reads as a round tick.

    Raises:
        ValueError: when ``values`` holds no finite number (nothing to frame).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError(f"no finite score to frame in {values!r}; pass at least one number")
    low = max(0.0, np.floor(round((v.min() - margin) * 100, 6)) / 100)
    return float(low), float(min(ceiling, v.max() + margin))


def value_range(values) -> tuple[float, float, bool, bool]:
    """The colour scale of a heatmap: ``(low, high, clipped_low, clipped_high)``, the range of the finite values
    with far outliers clipped, so that the colours spread over the bulk of what the table shows.

    ``low = max(min, q1 - 3 IQR)`` and ``high = min(max, q3 + 3 IQR)`` (Tukey's "far out" fences): with no far
    outlier this is just min to max. One 0.75 few-labels run among 0.91-0.95 runs would otherwise take 80% of the
    scale and paint the rest one colour; clipped, it takes the lightest colour and its number still reads in its
    cell. A one-valued table gets +-0.005 (the single-seed noise in macro F1) so the scale has a width.

    Raises:
        ValueError: when ``values`` holds no finite number.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError(f"no finite value to scale in {values!r}; pass at least one number")
    low, high = float(v.min()), float(v.max())
    if low == high:
        return low - 0.005, high + 0.005, False, False
    q1, q3 = np.percentile(v, [25, 75])
    fence_low, fence_high = q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)
    clipped_low, clipped_high = bool(low < fence_low), bool(high > fence_high)
    return float(max(low, fence_low)), float(min(high, fence_high)), clipped_low, clipped_high


def _scale_note(low: float, high: float, clipped_low: bool, clipped_high: bool) -> str:
    """What the colour bar says about its range."""
    notes = ["range of the cells" if not (clipped_low or clipped_high) else "range of the cells, far outliers clipped"]
    if clipped_low:
        notes.append(f"below {low:.3f}: lightest")
    if clipped_high:
        notes.append(f"above {high:.3f}: darkest")
    return "; ".join(notes)


def _extend(clipped_low: bool, clipped_high: bool) -> str:
    """The colour bar's arrow ends: one at each clipped end."""
    return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (clipped_low, clipped_high), "both"
    )


def _label_scale(ax, what: str, low: float, high: float, how: str) -> None:
    """Tick the heatmap's colour bar at its two ends (and three steps between) and say what the scale is."""
    colorbar = ax.collections[0].colorbar
    colorbar.set_ticks(np.linspace(low, high, 5))
    colorbar.ax.yaxis.set_major_formatter("{x:.3f}")
    colorbar.set_label(f"{what}: colour scale {low:.3f} to {high:.3f}\n({how})")


def _contrast(a, b) -> float:
    """WCAG contrast ratio of two colours (1 to 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def _readable_annotations(ax) -> None:
    """Write each cell's number in whichever of near-black and white contrasts more with the cell.

    Seaborn switches to white only below luminance 0.41, which leaves white on mid blues at a contrast near 2;
    picking the better of the two keeps every cell at 3.9 or more.
    """
    cells = ax.collections[0].get_facecolors()
    for text, cell in zip(ax.texts, cells):
        text.set_color(max(("0.1", "white"), key=lambda c: _contrast(c, cell)))


def metric_table(
    rows: list[dict],
    columns: Sequence[str] = METRICS,
    title: str = "",
    ax=None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> plt.Figure:
    """A table of runs (rows, by ``name``) and metrics (columns), rendered as a heatmap with values and a colour bar.

    The colour runs from the lowest to the highest value shown, far outliers clipped (``value_range``; ``vmin`` /
    ``vmax`` override), and the colour bar states the range and any clipping. A scale pinned at 1 with a 0.05
    margin put a 0.75 few-labels run at its bottom and left every other run, 0.91 to 0.95, in one dark blue;
    spread over the cells, colour ranks the runs and the printed numbers give the sizes. Seaborn writes each
    number dark on light cells and white on dark ones.
    """
    values = np.array([[row[c] for c in columns] for row in rows], dtype=float)  # (runs, metrics)
    low, high, clipped_low, clipped_high = value_range(values)
    if vmin is not None or vmax is not None:
        low, high = low if vmin is None else vmin, high if vmax is None else vmax
        clipped_low, clipped_high = bool(np.nanmin(values) < low), bool(np.nanmax(values) > high)
        how = "set by the caller"
    else:
        how = _scale_note(low, high, clipped_low, clipped_high)
    fig, ax = _figure_and_axes(ax, (1.6 * len(columns) + 3, 0.5 * len(rows) + 1.2))
    sns.heatmap(values, annot=True, fmt=".4f", cmap=SCORE_CMAP, vmin=low, vmax=high, ax=ax,
                cbar_kws={"extend": _extend(clipped_low, clipped_high)},
                xticklabels=list(columns), yticklabels=[row["name"] for row in rows])  # fmt: skip
    _label_scale(ax, "score", low, high, how)
    _readable_annotations(ax)
    ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def per_class_chart(per_class: dict[str, list[dict]], metric: str = "f1", title: str = "", ax=None) -> plt.Figure:
    """Grouped bars: one group per class, one bar per run, height = that class's ``metric``.

    The value axis is zoomed to the data (``zoom_limits``: 0.05 below the lowest bar to 0.05 above the highest,
    capped at 1) because the runs differ by a few hundredths, which a 0-1 axis squeezes flat. When the axis does
    not start at 0 the y label says so, since bar lengths are then not proportional to the scores.
    """
    names = list(per_class)
    classes = [row["class"] for row in per_class[names[0]]]
    fig, ax = _figure_and_axes(ax, (max(8, len(classes) * 0.9), 4))
    width = 0.8 / len(names)
    x = np.arange(len(classes))
    for i, (name, color) in enumerate(zip(names, sns.color_palette("tab10", len(names)))):
        ax.bar(
            x + i * width - 0.4 + width / 2, [row[metric] for row in per_class[name]], width, label=name, color=color
        )
    low, high = zoom_limits([row[metric] for rows in per_class.values() for row in rows])
    ax.set_xticks(x, classes, rotation=30, ha="right", rotation_mode="anchor")
    ylabel = metric if low == 0 else f"{metric} (axis starts at {low:.2f}, not 0)"
    ax.set(ylabel=ylabel, ylim=(low, high), title=title or f"per-class {metric}")
    ax.legend(fontsize=8, ncol=min(6, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_heatmap(
    matrix, class_names: Sequence[str], normalize: bool = True, title: str = "", ax=None, gamma: float = 0.5
) -> plt.Figure:
    """Confusion matrix (rows: true class, columns: predicted); ``normalize`` divides each row by its total.

    The colour is ``value ** gamma`` over 0 to 1 (0 to the largest count without ``normalize``): the square root
    by default, so a 0.05 confusion is a fifth of the way up the scale instead of a twentieth and the off-diagonal
    mass shows beside the ~0.9 diagonal; ``gamma=1`` gives a linear scale. The colour bar names the scale.
    """
    m = np.asarray(matrix, dtype=float)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    top = 1.0 if normalize else max(float(m.max()), 1.0)
    fig, ax = _figure_and_axes(ax, (7.8, 6))
    scale = "linear" if gamma == 1 else ("square-root" if gamma == 0.5 else f"power {gamma:g}")
    what = "fraction of the true class" if normalize else "count"
    sns.heatmap(m, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", square=True, ax=ax,
                norm=PowerNorm(gamma, vmin=0.0, vmax=top), cbar_kws={"label": f"{what} ({scale} colour scale)"},
                xticklabels=class_names, yticklabels=class_names, annot_kws={"fontsize": 7})  # fmt: skip
    _readable_annotations(ax)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    # rotated about its right end: each label ends under its column (a centred one ends to the right of it)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.tick_params(axis="y", rotation=0)  # seaborn turns row labels vertical when few classes leave room
    fig.tight_layout()
    return fig


def _reference_rows(n: int, kinds: list[str], reference) -> list[int]:
    """The rows whose mean gets a reference line: ``reference`` (an index or indices), else the rows of kind
    "labels only" or "reference" (none when no row is)."""
    if reference is None:
        chosen = [i for i, k in enumerate(kinds) if k in ("labels only", "reference")]
    else:
        chosen = [reference] if isinstance(reference, int) else list(reference)
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"reference rows {bad} out of range; choose indices from 0 to {n - 1}")
    return sorted(set(chosen))


def interval_bars(
    rows: list[tuple[str, float, float | None]],
    xlabel: str,
    title: str = "",
    ax=None,
    kinds: Sequence[str] | None = None,
    reference: int | Sequence[int] | None = None,
) -> plt.Figure:
    """Points with error bars, one row per ``(name, mean, half width of the 95% interval or None)``.

    A dot marks the mean and a horizontal bar its interval; a row without one (a single seed) gets a hollow dot and
    no bar, and the legend says "one seed: no interval". Points, not bars: the axis is zoomed to the intervals
    (a few hundredths wide), and a bar's length from a cut axis would exaggerate the gaps. Each row's mean and
    interval are also printed at the right. Colour is the row's kind (``kinds``, one of ``KIND_STYLES`` per row;
    by default the reference rows are "reference" and the rest "compared"), explained in the legend.

    A dashed line marks the mean of each ``reference`` row (default: the "labels only" rows when ``kinds`` is
    given, else the first row) and runs down the rows below it up to the next reference, so a row is read against its own labels-only run
    (each label budget of the few-labels figure against its baseline). Each line has its legend entry.

    Raises:
        ValueError: for ``kinds`` of the wrong length or an unknown kind, or a ``reference`` row out of range.
    """
    n = len(rows)
    names = [r[0] for r in rows]
    means = np.array([r[1] for r in rows], dtype=float)
    halves = [r[2] for r in rows]
    if kinds is None:
        refs = _reference_rows(n, [], 0 if reference is None else reference)
        kinds = ["reference" if i in refs else "compared" for i in range(n)]
    else:
        kinds = list(kinds)
        if len(kinds) != n:
            raise ValueError(f"{len(kinds)} kinds for {n} rows; give one kind per row")
        unknown = sorted({k for k in kinds if k not in KIND_STYLES})
        if unknown:
            raise ValueError(f"unknown kind {unknown[0]!r}; choose from: {', '.join(KIND_STYLES)}")
        refs = _reference_rows(n, kinds, reference)

    owns_figure = ax is None
    fig, ax = _figure_and_axes(ax, (7, 0.4 * n + 1.6))
    y = np.arange(n)[::-1]  # the first row on top
    for i in range(n):
        colour = KIND_STYLES[kinds[i]][0]
        if halves[i] is None:
            ax.plot(means[i], y[i], "o", ms=7, mfc="white", mec=colour, mew=1.5, zorder=3)
        else:
            ax.errorbar(means[i], y[i], xerr=halves[i], fmt="o", ms=7, color=colour, elinewidth=1.5, capsize=4,
                        zorder=3)  # fmt: skip
    # each reference line covers its own row and the rows below it, up to the next reference (the first one also
    # covers any rows above it)
    lines = []
    for j, r in enumerate(refs):
        first = 0 if j == 0 else r
        last = refs[j + 1] - 1 if j + 1 < len(refs) else n - 1
        lines.append(ax.vlines(means[r], y[last] - 0.45, y[first] + 0.45, colors="0.3",
                               linestyles=REFERENCE_STYLES[j % len(REFERENCE_STYLES)], linewidth=1, zorder=1,
                               label=f"mean of {names[r]}"))  # fmt: skip

    # x limits: every interval whole, plus a tenth of the span on each side (not past 0 or 1 unless data is)
    ends = np.array([[m - (h or 0.0), m + (h or 0.0)] for m, h in zip(means, halves)])
    lo, hi = float(ends.min()), float(ends.max())
    pad = max(0.1 * (hi - lo), 0.002)
    ax.set_xlim(min(lo, max(0.0, lo - pad)), max(hi, min(1.0, hi + pad)))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))  # a few round ticks; the exact values are printed at the right
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_yticks(y, names)
    for i in range(n):  # the numbers, in a column just right of the axis
        text = f"{means[i]:.4f}" + ("" if halves[i] is None else f" ± {halves[i]:.4f}")
        ax.annotate(text, (1.0, y[i]), xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)

    handles = [Line2D([], [], ls="none", marker="o", ms=7, color=KIND_STYLES[k][0], label=KIND_STYLES[k][1])
               for k in dict.fromkeys(kinds)]  # fmt: skip
    if any(h is None for h in halves):
        handles.append(Line2D([], [], ls="none", marker="o", ms=7, mfc="white", mec="0.2", mew=1.5,
                              label=ONE_SEED_LABEL))  # fmt: skip
    handles += lines
    if owns_figure:  # below the axes, in room made for it, so it covers no point
        rows_needed = -(-len(handles) // 2)
        legend_height = 0.2 * rows_needed + 0.05  # inches
        height = fig.get_figheight() + legend_height
        fig.set_figheight(height)
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    else:
        ax.legend(handles=handles, fontsize=8)
    return fig


def per_class_heatmap(values: dict[str, list[float]], classes: Sequence[str], title: str = "", ax=None) -> plt.Figure:
    """Runs (rows) x classes (columns), each cell that run's mean per-class F1, with a colour bar.

    The colour scale runs from the lowest to the highest cell, far outliers clipped (``value_range``), so the
    few-hundredths differences between methods show, and the colour bar states the range; each cell is annotated
    with its value.
    """
    names = list(values)
    matrix = np.array([values[n] for n in names])  # (runs, classes)
    fig, ax = _figure_and_axes(ax, (max(8, len(classes) * 0.95), 0.45 * len(names) + 1.8))
    low, high, clipped_low, clipped_high = value_range(matrix)
    sns.heatmap(matrix, annot=True, fmt=".3f", cmap="viridis", vmin=low, vmax=high, xticklabels=classes,
                yticklabels=names, ax=ax, annot_kws={"fontsize": 7},
                cbar_kws={"extend": _extend(clipped_low, clipped_high)})  # fmt: skip
    _label_scale(ax, "F1", low, high, _scale_note(low, high, clipped_low, clipped_high))
    _readable_annotations(ax)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    ax.set(title=title)
    fig.tight_layout()
    return fig


def pairwise_matrix(
    names: Sequence[str], gains: np.ndarray, verdicts: np.ndarray, title: str = "", ax=None
) -> plt.Figure:
    """Pairwise gains, row minus column, as a diverging heatmap centred on 0 (blue: the row is better).

    ``verdicts[i, j]``: 1 when the row beats the column (interval over seeds and test images above 0, Holm p <
    0.05), -1 when the column beats the row, 0 when they cannot be told apart, NaN when there is no verdict (the
    two trained on different machines): those cells are hatched grey and show no number of a comparison.
    """
    n = len(names)
    fig, ax = _figure_and_axes(ax, (1.0 + 0.62 * n, 0.8 + 0.5 * n))
    shown = np.where(np.isnan(verdicts), np.nan, gains)
    limit = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
    image = ax.imshow(shown, cmap="RdBu", vmin=-limit, vmax=limit)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if np.isnan(verdicts[i, j]):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.85", hatch="//", edgecolor="0.6"))
                continue
            mark = "*" if verdicts[i, j] != 0 else ""
            ax.text(j, i, f"{gains[i, j] * 100:+.2f}{mark}", ha="center", va="center", fontsize=7,
                    fontweight="bold" if mark else "normal")  # fmt: skip
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    bar = fig.colorbar(image, ax=ax, fraction=0.04)
    bar.set_label("row minus column, test macro F1 (x 100 in the cells)")
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", label="* told apart (Holm p < 0.05)"),
        plt.Rectangle((0, 0), 1, 1, facecolor="0.85", hatch="//", edgecolor="0.6", label="no verdict: other machines"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    return fig
