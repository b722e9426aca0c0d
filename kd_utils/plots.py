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
from matplotlib.ticker import MaxNLocator
from torch import Tensor

METRICS = ("accuracy", "precision", "recall", "f1")


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


def metric_table(
    rows: list[dict], columns: Sequence[str] = METRICS, title: str = "", ax=None, vmin: float | None = None
) -> plt.Figure:
    """A table of runs (rows, by ``name``) and metrics (columns), rendered as a heatmap with values and a colour bar.

    The colour runs from ``vmin`` to 1, with ``vmin = max(0, worst - 0.05)`` by default (``zoom_limits``): the top
    is pinned at the perfect score, so a colour says how far a cell is from 1, not where it ranks among the rows.
    Stretching min..max over the full map (seaborn's default) painted a 0.03 spread from white to navy as if it
    were the whole scale; here 0.03 is about a fifth of it. The 0.05 margin (ten times the ~0.005 single-seed
    noise in macro F1) keeps the worst run visibly coloured instead of reading as zero.
    """
    values = np.array([[row[c] for c in columns] for row in rows], dtype=float)  # (runs, metrics)
    vmin = zoom_limits(values)[0] if vmin is None else vmin
    fig, ax = _figure_and_axes(ax, (1.6 * len(columns) + 3, 0.5 * len(rows) + 1.2))
    sns.heatmap(values, annot=True, fmt=".4f", cmap="Blues", vmin=vmin, vmax=1.0, ax=ax,
                cbar_kws={"label": f"score (colour scale {vmin:.2f} to 1)"},
                xticklabels=list(columns), yticklabels=[row["name"] for row in rows])  # fmt: skip
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
    matrix, class_names: Sequence[str], normalize: bool = True, title: str = "", ax=None
) -> plt.Figure:
    """Confusion matrix (rows: true class, columns: predicted); ``normalize`` divides each row by its total."""
    m = np.asarray(matrix, dtype=float)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure_and_axes(ax, (7, 6))
    sns.heatmap(m, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", square=True, cbar=False, ax=ax,
                xticklabels=class_names, yticklabels=class_names, annot_kws={"fontsize": 7})  # fmt: skip
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    # rotated about its right end: each label ends under its column (a centred one ends to the right of it)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.tick_params(axis="y", rotation=0)  # seaborn turns row labels vertical when few classes leave room
    fig.tight_layout()
    return fig


def interval_bars(rows: list[tuple[str, float, float | None]], xlabel: str, title: str = "", ax=None) -> plt.Figure:
    """Horizontal bars of ``(name, mean, half width of the 95% interval or None)``, error bars where known.

    The axis is zoomed like ``per_class_chart`` (the label says where it starts) and a dashed line marks the
    first row (the labels-only baseline), so a bar whose interval crosses it shows no reliable difference.
    """
    fig, ax = _figure_and_axes(ax, (7, 0.45 * len(rows) + 1.2))
    names = [r[0] for r in rows]
    means = np.array([r[1] for r in rows])
    errors = np.array([r[2] if r[2] is not None else 0.0 for r in rows])
    y = np.arange(len(rows))[::-1]
    ax.barh(y, means, xerr=errors, color=sns.color_palette("tab10", len(rows)), capsize=3, height=0.6)
    low, high = zoom_limits(np.concatenate([means - errors, means + errors]), margin=0.01)
    ax.axvline(means[0], color="0.3", linestyle="--", linewidth=1)
    ax.set_yticks(y, names)
    label = xlabel if low == 0 else f"{xlabel} (axis starts at {low:.2f}, not 0)"
    ax.set(xlim=(low, high), xlabel=label, title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def per_class_heatmap(values: dict[str, list[float]], classes: Sequence[str], title: str = "", ax=None) -> plt.Figure:
    """Runs (rows) x classes (columns), each cell that run's mean per-class F1, with a colour bar.

    The colour scale spans the data's range (``zoom_limits``), so the few-hundredths differences between
    methods show; each cell is annotated with its value.
    """
    names = list(values)
    matrix = np.array([values[n] for n in names])
    fig, ax = _figure_and_axes(ax, (max(8, len(classes) * 0.95), 0.45 * len(names) + 1.8))
    low, high = zoom_limits(matrix.ravel(), margin=0.0)
    sns.heatmap(matrix, annot=True, fmt=".3f", cmap="viridis", vmin=low, vmax=high, xticklabels=classes,
                yticklabels=names, ax=ax, cbar_kws={"label": "F1"}, annot_kws={"fontsize": 7})  # fmt: skip
    ax.set_xticklabels(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    ax.set(title=title)
    fig.tight_layout()
    return fig
