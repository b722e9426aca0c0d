"""The study's figures and README tables, rendered from saved results alone.

``python -m kd_utils report`` re-renders every figure in ``Pictures/`` and every README block between
``<!-- results:<dataset>:start -->`` / ``<!-- results:<dataset>:end -->`` (the full table) and
``<!-- results:<dataset>:<section>:start/end -->`` (one experiment's table and conclusion, see ``SECTIONS``)
from ``results/<dataset>/runs.json``; a block whose run is missing is left as it is. The notebooks call the same ``FIGURES`` so the stored pictures and a
re-render are byte-identical (PNG written without volatile metadata).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib.pyplot as plt

from . import plots
from .data import dataset_info
from .results import load_runs

RUN_ORDER = ("teacher", "baseline", "logit", "hidden", "regressor", "final")


def run_name(record: dict) -> str:
    return record.get("name") or record["experiment"]


def latest_runs(records: list[dict]) -> dict[str, dict]:
    """The most recent record of each run name, in the study's order (later records win)."""
    latest = {run_name(r): r for r in records}
    return {name: latest[name] for name in RUN_ORDER if name in latest}


def label(name: str, record: dict) -> str:
    return f"final ({record['experiment']}, {record['config']['epochs']} ep)" if name == "final" else name


def metric_rows(runs: dict[str, dict]) -> list[dict]:
    baseline = runs.get("baseline", {}).get("test", {}).get("f1")
    rows = []
    for name, r in runs.items():
        t = r["test"]
        gain = t["f1"] - baseline if baseline is not None and name not in ("teacher", "baseline") else None
        rows.append({"name": label(name, r), **{k: t[k] for k in plots.METRICS}, "gain_f1": gain, "record": r})
    return rows


def config_value(record: dict, key: str):
    """``record["config"][key]``, looked up at the top level first, then in nested mappings (depth first).

    The config moves from flat keys (``config["dataset"]``) to nested ones (``config["data"]["dataset"]``); the
    figures read both, so records saved before and after the change render alike.

    Raises:
        KeyError: naming ``key`` and the config's top-level keys, when no level holds it.
    """

    def find(mapping: Mapping):
        if key in mapping:
            return True, mapping[key]
        for value in mapping.values():
            if isinstance(value, Mapping):
                found, result = find(value)
                if found:
                    return True, result
        return False, None

    config = record.get("config") or {}
    found, value = find(config)
    if not found:
        raise KeyError(f"no '{key}' in the config of run '{run_name(record)}' (top-level keys: {sorted(config)})")
    return value


def _distinct(runs: dict[str, dict], key: str) -> str:
    """The runs' ``key`` values, each once in run order, joined by ' / ' (one value in a consistent study)."""
    return " / ".join(dict.fromkeys(str(config_value(r, key)) for r in runs.values()))


def figure_title(runs: dict[str, dict], what: str, wrap: bool = False) -> str:
    """``"<dataset> · <teacher> → <student> · <what>"``; a figure of the teacher alone names only its model.

    ``wrap`` puts ``what`` on a second line, for figures narrower than the one-line title.
    """
    models = (
        _distinct(runs, "teacher")
        if list(runs) == ["teacher"]
        else f"{_distinct(runs, 'teacher')} → {_distinct(runs, 'student')}"
    )
    sep = "\n" if wrap else " · "
    return f"{_distinct(runs, 'dataset')} · {models}{sep}{what}"


def curves_figure(runs: dict[str, dict], names: tuple[str, ...]) -> plt.Figure | None:
    """Curves of ``names`` overlaid; None unless the last (the run the figure is about) has a history."""
    if not runs.get(names[-1], {}).get("history"):
        return None
    shown = {n: runs[n] for n in names if n in runs and runs[n]["history"]}
    chosen = {label(n, r): r["history"] for n, r in shown.items()}
    title = figure_title(shown, f"training curves: {' vs '.join(chosen)}")
    return plots.training_curves(chosen, title=title)


def metrics_figure(runs: dict[str, dict]) -> plt.Figure | None:
    return plots.metric_table(metric_rows(runs), title=figure_title(runs, "test metrics (macro)")) if runs else None


def per_class_figure(runs: dict[str, dict]) -> plt.Figure | None:
    if not runs:
        return None
    chosen = {label(n, r): r["test"]["per_class"] for n, r in runs.items()}
    return plots.per_class_chart(chosen, "f1", title=figure_title(runs, "per-class F1 on the test set"))


def confusion_figure(runs: dict[str, dict], name: str) -> plt.Figure | None:
    if name not in runs:
        return None
    r = runs[name]
    classes = [row["class"] for row in r["test"]["per_class"]]
    title = figure_title({name: r}, f"{label(name, r)}: confusion (row-normalised)", wrap=True)
    return plots.confusion_heatmap(r["test"]["confusion_matrix"], classes, title=title)


FIGURES: dict[str, Callable[[dict[str, dict]], plt.Figure | None]] = {
    "00_baselines_curves": lambda runs: curves_figure(runs, ("teacher", "baseline")),
    "01_logit_curves": lambda runs: curves_figure(runs, ("baseline", "logit")),
    "02_hidden_curves": lambda runs: curves_figure(runs, ("baseline", "hidden")),
    "03_regressor_curves": lambda runs: curves_figure(runs, ("baseline", "regressor")),
    "04_final_curves": lambda runs: curves_figure(runs, ("baseline", "final")),
    "metrics": metrics_figure,
    "per_class_f1": per_class_figure,
    "confusion_teacher": lambda runs: confusion_figure(runs, "teacher"),
    "confusion_final": lambda runs: confusion_figure(runs, "final"),
}


def figure_path(pictures: Path, dataset: str, figure: str) -> Path:
    return Path(pictures) / f"{dataset}_{figure}.png"


def render_figure(figure: str, runs: dict[str, dict], dataset: str, pictures: Path) -> plt.Figure | None:
    """Draw one named figure from the runs and save it under ``pictures``; None when its runs are missing."""
    fig = FIGURES[figure](runs)
    if fig is not None:
        plots.save_figure(fig, figure_path(pictures, dataset, figure))
    return fig


def markdown_table(runs: dict[str, dict]) -> str:
    header = "| run | accuracy | precision | recall | F1 | F1 gain vs baseline | best epoch | params | train s | s to target val acc |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in metric_rows(runs):
        r = row.pop("record")
        gain = f"{row['gain_f1']:+.4f}" if row["gain_f1"] is not None else ""
        ttt = r.get("time_to_target") or {}
        to_target = f"{ttt['seconds']:.0f} (≥{ttt['target']:.2f})" if ttt.get("seconds") is not None else ""
        best = r.get("best_epoch") if r.get("best_epoch") is not None else ""
        lines.append(
            f"| {row['name']} | {row['accuracy']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} | "
            f"{row['f1']:.4f} | {gain} | {best} | {r['params']:,} | {r['seconds']:.0f} | {to_target} |"
        )
    return "\n".join(lines)


NOISE_F1 = 0.005  # single-seed differences in macro F1 below this are read as noise (see benchmarks/README.md)


def conclusion(runs: dict[str, dict], name: str) -> str:
    """One sentence reading the measured test F1 of run ``name`` against the baseline and the teacher.

    For ``name="baseline"`` it states the teacher-student gap that distillation sets out to close.
    """
    f1 = {n: r["test"]["f1"] for n, r in runs.items()}
    if name == "baseline":
        teacher, student = runs["teacher"], runs["baseline"]
        return (
            f"teacher ({teacher['params']:,} parameters): test accuracy {teacher['test']['accuracy']:.4f}, "
            f"macro F1 {f1['teacher']:.4f}; student alone ({student['params']:,} parameters, "
            f"{teacher['params'] / student['params']:.0f}x fewer): {student['test']['accuracy']:.4f}, "
            f"{f1['baseline']:.4f}; a gap of {f1['teacher'] - f1['baseline']:+.4f} F1 for distillation to close."
        )
    gain = f1[name] - f1["baseline"]
    verdict = (
        f"within single-seed noise (|gain| < {NOISE_F1}), so this run shows no reliable difference"
        if abs(gain) < NOISE_F1
        else ("a gain larger than single-seed noise" if gain > 0 else "a loss larger than single-seed noise")
    )
    teacher = f"; the teacher scores {f1['teacher']:.4f}" if "teacher" in f1 else ""
    return (
        f"{label(name, runs[name])}: test macro F1 {f1[name]:.4f} vs baseline {f1['baseline']:.4f} "
        f"({gain:+.4f}), {verdict}{teacher}."
    )


SECTIONS: dict[str, tuple[str, ...]] = {  # README block ``results:<dataset>:<section>`` -> the runs it compares
    "baselines": ("teacher", "baseline"),
    "logit": ("teacher", "baseline", "logit"),
    "hidden": ("teacher", "baseline", "hidden"),
    "regressor": ("teacher", "baseline", "regressor"),
    "final": RUN_ORDER,
}


def provenance(runs: dict[str, dict]) -> str:
    """Where the numbers come from: dataset, split sizes, hardware, torch, and when the runs were recorded."""
    first = next(iter(runs.values()))
    sizes = first.get("data_sizes", {})
    envs = [r.get("environment", {}) for r in runs.values()]
    hardware = " / ".join(dict.fromkeys(e.get("hardware", "unknown hardware") for e in envs))
    torch_versions = ", ".join(dict.fromkeys(e.get("torch", "?") for e in envs))
    dates = sorted(r["timestamp"][:10] for r in runs.values() if r.get("timestamp"))
    when = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "unknown")
    split = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    return (
        f"Measured on {first['config']['dataset']} ({split}), seed {first['config']['seed']}, "
        f"{hardware}, torch {torch_versions}; runs recorded {when}."
    )


def section(runs: dict[str, dict], key: str) -> str | None:
    """A README section's table and conclusion; None while the run it is about is missing."""
    names = SECTIONS[key]
    subject = "baseline" if key == "baselines" else names[-1]
    if subject not in runs or "baseline" not in runs:
        return None
    chosen = {n: runs[n] for n in names if n in runs}
    return f"{markdown_table(chosen)}\n\n{conclusion(chosen, subject)}"


def readme_blocks(runs: dict[str, dict], dataset: str) -> dict[str, str]:
    """Every README block this dataset's runs can fill: the full table (with its provenance) and each section."""
    blocks = {f"results:{dataset}": f"{markdown_table(runs)}\n\n{provenance(runs)}"} if runs else {}
    for key in SECTIONS:
        body = section(runs, key)
        if body is not None:
            blocks[f"results:{dataset}:{key}"] = body
    return blocks


def replace_block(text: str, key: str, body: str) -> str:
    """Replace what stands between ``<!-- key:start -->`` and ``<!-- key:end -->`` (markers kept)."""
    pattern = re.compile(rf"(<!-- {re.escape(key)}:start -->\n).*?(<!-- {re.escape(key)}:end -->)", re.S)
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render_samples(dataset: str, pictures: Path, data_dir: str | Path = "data", per_class: int = 8) -> list[Path]:
    """Per-class sample grids of the train and test splits (the first images of each class), when the
    dataset is on disk; nothing when it is not (the report never downloads)."""
    from .data import load_dataset

    info = dataset_info(dataset)
    written = []
    for split, train in (("train", True), ("test", False)):
        try:
            images, labels = load_dataset(dataset, data_dir, train=train)
        except FileNotFoundError:
            return written
        fig = plots.sample_grid(images, labels, info.classes, per_class, title=f"{dataset} {split} samples")
        written.append(plots.save_figure(fig, figure_path(pictures, dataset, f"samples_{split}")))
        plt.close(fig)
    return written


WALL_TIME = re.compile(r"notebook wall time: (\d+) s \| profile: ([\w-]+)")
RUN_INFO = re.compile(r"run info \| profile: (\w+) \| dataset: ([\w-]+) \|.*device: ([^|]+)\|.*started: ([^\n]+)")
PRECISION = re.compile(r"run info \|.*\| precision: (\w+) \|")


def notebook_times(notebooks: str | Path) -> str | None:
    """A table of each committed notebook's stored run: profile, dataset, device, precision, start, wall time."""
    rows = []
    for path in sorted(Path(notebooks).glob("*.ipynb")):
        texts = [o.get("text", "") for c in json.loads(path.read_text())["cells"] for o in c.get("outputs", [])]
        text = "".join(t if isinstance(t, str) else "".join(t) for t in texts)
        info, wall = RUN_INFO.search(text), WALL_TIME.search(text)
        if info and wall:
            profile, dataset, device, started = (g.strip() for g in info.groups())
            precision = next((m[1] for m in PRECISION.finditer(text)), "?")  # older run-info lines lack it
            rows.append(
                f"| `{path.stem}` | {profile} | {dataset} | {device} | {precision} | {started} | {int(wall[1]) / 60:.1f} |"
            )
    if not rows:
        return None
    header = "| notebook | profile | dataset | device | precision | started | wall time (min) |\n|---|---|---|---|---|---|---|"
    return "\n".join([header, *rows])


def render_report(
    results_dir: str | Path = "results",
    pictures: str | Path = "Pictures",
    readme: str | Path | None = "README.md",
    data_dir: str | Path = "data",
    notebooks: str | Path | None = "notebooks",
) -> list[Path]:
    """Re-render every figure and README table from ``results_dir/<dataset>/runs.json``; returns the files written."""
    written, blocks = [], {}
    for runs_file in sorted(Path(results_dir).glob("*/runs.json")):
        dataset = runs_file.parent.name
        dataset_info(dataset)
        runs = latest_runs(load_runs(runs_file))
        written += render_samples(dataset, Path(pictures), data_dir)
        for figure in FIGURES:
            fig = render_figure(figure, runs, dataset, Path(pictures))
            if fig is not None:
                written.append(figure_path(Path(pictures), dataset, figure))
                plt.close(fig)
        blocks.update(readme_blocks(runs, dataset))
    times = notebook_times(notebooks) if notebooks is not None else None
    if times is not None:
        blocks["notebook-times"] = times
    if readme is not None and Path(readme).exists():
        text = Path(readme).read_text()
        new = text
        for key, body in blocks.items():
            new = replace_block(new, key, body)
        if new != text:
            Path(readme).write_text(new)
            written.append(Path(readme))
    return written
