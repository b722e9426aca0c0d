"""The study's figures and README tables, rendered from saved results alone.

``python -m kd_utils report`` re-renders every figure in ``Pictures/`` and every README block between
``<!-- results:<dataset>:start -->`` / ``<!-- results:<dataset>:end -->`` (the full table) and
``<!-- results:<dataset>:<section>:start/end -->`` (one experiment's table and conclusion, see ``SECTIONS``)
from ``results/<dataset>/runs.json``; a block whose run is missing is left as it is. The notebooks call the same ``FIGURES`` so the stored pictures and a
re-render are byte-identical (PNG written without volatile metadata).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats as sps

from . import plots
from .claims import claim_rows, claims_table
from .comparison import (  # noqa: F401 - the notebooks read the comparison through the report
    VERDICTS,
    Grouped,
    Runs,
    ablation_rows,
    ablation_table,
    comparison_conclusion,
    comparison_rows,
    comparison_table,
    conclusion,
    first_record,
    gain_sentence,
    group_runs,
    label,
    latest_runs,
    ordered,
    per_class_gain_table,
    reference_for,
)
from .datasets import dataset_info
from .evidence import Evidence, stored_test_labels
from .protocol import STUDY_SEEDS, SWEEP_DATASET
from .provenance import notebook_times, provenance, sweep_table  # noqa: F401 - read through the report
from .ranking import family_title, findings_text, pairs_table, rank, ranking_table
from .records import RunRecord, read_records
from .results import atomic_write, load_records
from .stats import mean_std
from .teacher_choice import teacher_choice_table


def metric_rows(runs: Runs) -> list[dict]:
    """One row per run: its test metrics and ``gain_f1``, its F1 minus that of its ``reference_for`` (the
    labels-only run it pairs with: the 70-epoch final run against ``final-baseline``); None for the teacher, a
    labels-only run, or a run without such a partner."""
    rows = []
    for name, r in runs.items():
        t = r.test
        reference = reference_for(name, {n: [run] for n, run in runs.items()})
        gain = t["f1"] - runs[reference].test["f1"] if reference is not None else None
        rows.append({"name": label(name, r), **{k: t[k] for k in plots.METRICS}, "gain_f1": gain, "record": r})
    return rows


def _distinct(runs: Runs, key: str) -> str:
    """The runs' ``key`` field, each value once in run order, joined by ' / ' (one value in a consistent study)."""
    return " / ".join(dict.fromkeys(str(getattr(r, key)) for r in runs.values()))


def figure_title(runs: Runs, what: str, wrap: bool = False) -> str:
    """``"<dataset> · <teacher> → <student> · <what>"``; a figure of the teacher alone names only its model.

    ``wrap`` puts ``what`` on a second line, for figures narrower than the one-line title.
    """
    models = (
        _distinct(runs, "teacher_arch")
        if list(runs) == ["teacher"]
        else f"{_distinct(runs, 'teacher_arch')} → {_distinct(runs, 'student_arch')}"
    )
    sep = "\n" if wrap else " · "
    return f"{_distinct(runs, 'dataset')} · {models}{sep}{what}"


def curves_figure(runs: Runs, names: tuple[str, ...]) -> plt.Figure | None:
    """Curves of ``names`` overlaid; None unless the last (the run the figure is about) has a history."""
    if names[-1] not in runs or not runs[names[-1]].history:
        return None
    shown = {n: runs[n] for n in names if n in runs and runs[n].history}
    chosen = {label(n, r): r.history for n, r in shown.items()}
    title = figure_title(shown, f"training curves: {' vs '.join(chosen)}")
    return plots.training_curves(chosen, title=title)


def metrics_figure(runs: Runs) -> plt.Figure | None:
    return plots.metric_table(metric_rows(runs), title=figure_title(runs, "test metrics (macro)")) if runs else None


def per_class_figure(runs: Runs) -> plt.Figure | None:
    if not runs:
        return None
    chosen = {label(n, r): r.test["per_class"] for n, r in runs.items()}
    return plots.per_class_chart(chosen, "f1", title=figure_title(runs, "per-class F1 on the test set"))


def confusion_figure(runs: Runs, name: str) -> plt.Figure | None:
    if name not in runs:
        return None
    r = runs[name]
    classes = [row["class"] for row in r.test["per_class"]]
    title = figure_title({name: r}, f"{label(name, r)}: confusion (row-normalised)", wrap=True)
    return plots.confusion_heatmap(r.test["confusion_matrix"], classes, title=title)


FIGURES: dict[str, Callable[[dict[str, dict]], plt.Figure | None]] = {
    "00_baselines_curves": lambda runs: curves_figure(runs, ("teacher", "baseline")),
    "01_logit_curves": lambda runs: curves_figure(runs, ("baseline", "logit")),
    "02_hidden_curves": lambda runs: curves_figure(runs, ("baseline", "hidden")),
    "03_regressor_curves": lambda runs: curves_figure(runs, ("baseline", "regressor")),
    "04_final_curves": lambda runs: curves_figure(runs, ("baseline", "final-baseline", "final")),  # 70 ep vs 70 ep
    "metrics": metrics_figure,
    "per_class_f1": per_class_figure,
    "confusion_teacher": lambda runs: confusion_figure(runs, "teacher"),
    "confusion_final": lambda runs: confusion_figure(runs, "final"),
}


def methods_f1_figure(grouped: Grouped) -> plt.Figure | None:
    """Macro F1 of every student run, mean over seeds with its 95% t-interval (none for one seed)."""
    rows, kinds = [], []
    for name, seeds in grouped.items():
        if first_record(seeds).role == "teacher":
            continue
        values = [r.test["f1"] for r in seeds.values()]
        mean, std = mean_std(values)
        half = None if std is None else float(sps.t.ppf(0.975, len(values) - 1)) * std / len(values) ** 0.5
        rows.append((f"{label(name, seeds[min(seeds)])} (n={len(values)})", mean, half))
        kinds.append("labels only" if first_record(seeds).labels_only else "distilled")
    if len(rows) < 2:
        return None
    some = {n: s[min(s)] for n, s in grouped.items()}
    title = figure_title(some, "macro F1, mean over seeds, 95% interval")
    return plots.interval_bars(rows, "test macro F1", title, kinds=kinds)


def methods_per_class_figure(grouped: Grouped) -> plt.Figure | None:
    """Per-class test F1 of every student run (mean over seeds), one row per run."""
    students = {n: s for n, s in grouped.items() if n != "teacher"}
    if len(students) < 2:
        return None
    first = next(iter(next(iter(students.values())).values()))
    classes = [row["class"] for row in first.test["per_class"]]
    values = {label(n, s[min(s)]): [sum(r.test["per_class"][c]["f1"] for r in s.values()) / len(s)
                                    for c in range(len(classes))] for n, s in students.items()}  # fmt: skip
    some = {n: s[min(s)] for n, s in grouped.items()}
    return plots.per_class_heatmap(values, classes, figure_title(some, "per-class test F1, mean over seeds"))


def compared_runs(records: list[RunRecord], few_labels: bool = False) -> Grouped:
    """The student runs the method figures compare, grouped by name: every baseline and method run (not the
    teacher, not notebook 04's long runs) on all labels, or, with ``few_labels``, those on a fraction of them."""
    chosen = [
        r for r in read_records(records) if r.role in ("baseline", "method") and (r.labeled_fraction < 1) == few_labels
    ]
    return group_runs(chosen)


def render_seed_figure(figure: str, records: list[RunRecord], dataset: str, pictures: Path) -> plt.Figure | None:
    """Draw one of ``SEED_FIGURES`` from the records (all seeds) and save it under ``pictures``."""
    fig = SEED_FIGURES[figure](read_records(records))
    if fig is not None:
        plots.save_figure(fig, figure_path(pictures, dataset, figure))
    return fig


SEED_FIGURES: dict[str, Callable[[list[RunRecord]], plt.Figure | None]] = {
    "methods_f1": lambda records: methods_f1_figure(compared_runs(records)),
    "methods_per_class_f1": lambda records: methods_per_class_figure(compared_runs(records)),
    "few_labels_f1": lambda records: methods_f1_figure(compared_runs(records, few_labels=True)),
}


def figure_path(pictures: Path, dataset: str, figure: str) -> Path:
    return Path(pictures) / f"{dataset}_{figure}.png"


def render_figure(figure: str, runs: Runs, dataset: str, pictures: Path) -> plt.Figure | None:
    """Draw one named figure from the runs and save it under ``pictures``; None when its runs are missing."""
    fig = FIGURES[figure](runs)
    if fig is not None:
        plots.save_figure(fig, figure_path(pictures, dataset, figure))
    return fig


def markdown_table(runs: Runs) -> str:
    header = "| run | accuracy | precision | recall | F1 | F1 gain vs baseline | best epoch | params | train s | s to target val acc |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in metric_rows(runs):
        r = row.pop("record")
        gain = f"{row['gain_f1']:+.4f}" if row["gain_f1"] is not None else ""
        ttt = r.get("time_to_target") or {}
        to_target = f"{ttt['seconds']:.0f} (≥{ttt['target']:.2f})" if ttt.get("seconds") is not None else ""
        best = r.best_epoch if r.best_epoch is not None else ""
        lines.append(
            f"| {row['name']} | {row['accuracy']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} | "
            f"{row['f1']:.4f} | {gain} | {best} | {r.params:,} | {r.seconds:.0f} | {to_target} |"
        )
    return "\n".join(lines)


SECTIONS: dict[str, tuple[str, ...]] = {  # README block ``results:<dataset>:<section>`` -> the runs it compares
    "baselines": ("teacher", "baseline"),
    "logit": ("teacher", "baseline", "logit"),
    "hidden": ("teacher", "baseline", "hidden"),
    "regressor": ("teacher", "baseline", "regressor"),
    "final": ("teacher", "baseline", "logit", "hidden", "regressor", "final-baseline", "final"),
}


def section(runs: Runs, key: str, pairs: dict | None = None, evidence: Evidence | None = None) -> str | None:
    """A README section's table (lowest seed) and conclusion (over every seed); None while its run is missing."""
    names = SECTIONS[key]
    subject = "baseline" if key == "baselines" else names[-1]
    if subject not in runs or "baseline" not in runs or (key == "baselines" and "teacher" not in runs):
        return None
    chosen = {n: runs[n] for n in names if n in runs}
    return f"{markdown_table(chosen)}\n\n{conclusion(chosen, subject, (pairs or {}).get(subject), evidence)}"


def readme_blocks(records: list[RunRecord], dataset: str, labels: np.ndarray | None = None) -> dict[str, str]:
    """Every README block this dataset's runs can fill: the full table (with its provenance), each section,
    the comparison with labels alone, the ranking of each family of runs, and the findings in sentences.
    ``labels``: the test labels, for records that predate storing them (``test-labels.json``)."""
    grouped = group_runs(records)
    runs = {name: seeds[min(seeds)] for name, seeds in grouped.items()}
    if not runs:
        return {}
    evidence = Evidence(read_records(records), labels)
    rows = comparison_rows(grouped, evidence)
    pairs = {row["name"]: row["pair"] for row in rows}
    blocks = {f"results:{dataset}": f"{markdown_table(runs)}\n\n{provenance(runs, records)}"}
    for key in SECTIONS:
        body = section(runs, key, pairs, evidence)
        if body is not None:
            blocks[f"results:{dataset}:{key}"] = body
    blocks[f"results:{dataset}:comparison"] = f"{comparison_table(rows)}\n\n{provenance(runs, records)}"
    families = rank(grouped, evidence)
    if families:
        blocks[f"results:{dataset}:ranking"] = "\n\n".join(
            f"**{family_title(f, grouped)}**\n\n{ranking_table(f, grouped)}" for f in families
        )
        blocks[f"results:{dataset}:pairs"] = "\n\n".join(
            f"**{family_title(f, grouped)}**\n\n{pairs_table(f, grouped)}" for f in families
        )
    blocks[f"results:{dataset}:findings"] = findings_text(rows, families, grouped)
    ablations = ablation_rows(grouped, evidence)
    if ablations:
        blocks[f"results:{dataset}:ablations"] = ablation_table(ablations)
    per_class = per_class_gain_table(compared_runs(records))
    if per_class is not None:
        blocks[f"results:{dataset}:per-class"] = per_class
    return blocks


def pairwise_figure(records: list[RunRecord], labels: np.ndarray | None = None) -> plt.Figure | None:
    """The largest family's pairwise gains (row minus column), with the verdict of each pair."""
    grouped = group_runs(records)
    families = rank(grouped, Evidence(read_records(records), labels))
    if not families:
        return None
    family = max(families, key=lambda f: len(f.names))
    names = family.names
    gains = np.zeros((len(names), len(names)))
    verdicts = np.full((len(names), len(names)), np.nan)
    for p in family.pairs:
        i, j = names.index(p.a), names.index(p.b)
        gains[i, j], gains[j, i] = p.gain.primary.mean, -p.gain.primary.mean
        v = p.told_apart
        if v is not None:
            verdicts[i, j], verdicts[j, i] = (1, -1) if v else (0, 0)
    shown = [label(n, first_record(grouped[n])) for n in names]
    some = {n: first_record(grouped[n]) for n in names}
    title = figure_title(some, f"pairwise test macro F1 gains, {family_title(family, grouped)}", wrap=True)
    return plots.pairwise_matrix(shown, gains, verdicts, title)


def replace_block(text: str, key: str, body: str) -> str:
    """Replace what stands between ``<!-- key:start -->`` and ``<!-- key:end -->`` (markers kept)."""
    pattern = re.compile(rf"(<!-- {re.escape(key)}:start -->\n).*?(<!-- {re.escape(key)}:end -->)", re.S)
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render_samples(dataset: str, pictures: Path, data_dir: str | Path = "data", per_class: int = 8) -> list[Path]:
    """Per-class sample grids of the train and test splits (the first images of each class), when the
    dataset is on disk; nothing when it is not (the report never downloads)."""
    from .datasets import load_dataset

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


def check_report_paths(results_dir: Path, pictures: Path, readme: Path | None) -> None:
    """One-line errors for paths the report cannot use, before anything is drawn."""
    if not results_dir.is_dir():
        raise ValueError(f"--results-dir {results_dir}: not a folder; give the folder that holds <dataset>/runs.json")
    if pictures.exists() and not pictures.is_dir():
        raise ValueError(f"--pictures-dir {pictures}: is a file, not a folder")
    if readme is not None and readme.exists() and not readme.is_file():
        raise ValueError(f"--readme {readme}: not a regular file; give the README whose results blocks are rewritten")


def render_report(
    results_dir: str | Path = "results",
    pictures: str | Path = "Pictures",
    readme: str | Path | None = "README.md",
    data_dir: str | Path = "data",
) -> list[Path]:
    """Re-render every figure and README table from ``results_dir/<dataset>/runs.json``; returns the files written.

    Everything is drawn first, into a staging folder beside ``pictures``; only when all of it rendered are the
    figures moved into place and the README rewritten (each atomically), so a bad input (one line,
    ``ValueError``) leaves every file as it was.
    """
    results_dir, pictures = Path(results_dir), Path(pictures)
    readme = Path(readme) if readme is not None else None
    check_report_paths(results_dir, pictures, readme)
    pictures.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=pictures))
    try:
        blocks = {}
        for runs_file in sorted(results_dir.glob("*/runs.json")):
            try:
                blocks.update(render_dataset(runs_file, results_dir, staging, data_dir))
            except (KeyError, TypeError, IndexError, AttributeError, ZeroDivisionError) as err:
                raise ValueError(
                    f"cannot render {runs_file}: a record lacks what the report reads ({type(err).__name__}: {err}); "
                    "fix or remove that record"
                ) from None
        times = notebook_times(results_dir)
        if times is not None:
            blocks["notebook-times"] = times
        progress = study_progress(results_dir)
        if progress is not None:
            blocks["study-progress"] = progress
        text = readme.read_text() if readme is not None and readme.exists() else None
        new = text
        for key, body in blocks.items() if text is not None else ():
            new = replace_block(new, key, body)
        written = []
        for staged in sorted(staging.iterdir()):
            os.replace(staged, pictures / staged.name)  # same folder tree: an atomic rename
            written.append(pictures / staged.name)
        if new != text:
            written.append(atomic_write(readme, new))
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def study_progress(results_dir: Path) -> str | None:
    """The re-run's job log (``study run``), when there is one: jobs done, where, how long; what is left."""
    from .study_run import PROGRESS, Progress, status  # lazy: the trainer loads only where a re-run is in progress

    progress = Progress(results_dir / SWEEP_DATASET / PROGRESS)
    return status(progress) if progress.jobs_file.exists() else None


def render_dataset(runs_file: Path, results_dir: Path, pictures: Path, data_dir: str | Path) -> dict[str, str]:
    """Draw one dataset's figures into ``pictures`` and return its README blocks."""
    dataset = runs_file.parent.name
    dataset_info(dataset)
    records = load_records(runs_file)
    runs = latest_runs(records)
    render_samples(dataset, pictures, data_dir)
    for figure in FIGURES:
        fig = render_figure(figure, runs, dataset, pictures)
        if fig is not None:
            plt.close(fig)
    for figure, draw in SEED_FIGURES.items():
        fig = draw(records)
        if fig is not None:
            plots.save_figure(fig, figure_path(pictures, dataset, figure))
            plt.close(fig)
    labels = stored_test_labels(results_dir, dataset)
    fig = pairwise_figure(records, labels)
    if fig is not None:
        plots.save_figure(fig, figure_path(pictures, dataset, "pairwise"))
        plt.close(fig)
    blocks = readme_blocks(records, dataset, labels)
    rerun = runs_file.parent / "study-v2" / "runs.json"  # the re-made study's records (`study run`)
    if rerun.exists():
        rerun_records = load_records(rerun)
        rows = claim_rows(
            group_runs(rerun_records),
            evidence=Evidence(read_records(rerun_records), labels),
            planned_seeds=len(STUDY_SEEDS),
        )
        blocks[f"results:{dataset}:claims"] = claims_table(rows)
    archived = [r for path in sorted(runs_file.parent.glob("archive/*.json")) for r in load_records(path)]
    teachers = teacher_choice_table([*archived, *records])  # the recipes tried, some in earlier studies' files
    if teachers is not None:
        blocks[f"results:{dataset}:teacher"] = teachers
    sweeps = sweep_table(runs_file.parent / "sweeps", results_dir.absolute().parent)  # links from the README's folder
    if sweeps is not None:
        blocks[f"results:{dataset}:sweeps"] = sweeps
    return blocks
