"""The study's figures and README tables, rendered from saved results alone.

``python -m kd_utils report`` re-renders every figure in ``Pictures/`` and every README block between
``<!-- results:<dataset>:start -->`` / ``<!-- results:<dataset>:end -->`` (the full table) and
``<!-- results:<dataset>:<section>:start/end -->`` (one experiment's table and conclusion, see ``SECTIONS``)
from ``results/<dataset>/runs.json``; a block whose run is missing is left as it is. The notebooks call the same ``FIGURES`` so the stored pictures and a
re-render are byte-identical (PNG written without volatile metadata).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib.pyplot as plt
from scipy import stats as sps

from . import plots
from .data import dataset_info
from .experiments import STUDENT_METHODS, decode_correct
from .results import load_runs
from .stats import PairedGain, holm, mcnemar, mean_std, paired_gain

RUN_ORDER = ("teacher", "baseline", *STUDENT_METHODS, "final-baseline", "final")


def run_name(record: dict) -> str:
    return record.get("name") or record["experiment"]


def record_seed(record: dict) -> int:
    """The training seed (nested config) or the one seed of older flat records."""
    config = record.get("config") or {}
    return config.get("train", {}).get("seed", config.get("seed", 0))


def record_epochs(record: dict) -> int | None:
    config = record.get("config") or {}
    return config.get("train", {}).get("epochs", config.get("epochs"))


def ordered(names) -> list[str]:
    """Run names in the study's order; names outside it (e.g. a sweep's "logit-tuned") after, as they came."""
    names = list(dict.fromkeys(names))
    return [n for n in RUN_ORDER if n in names] + [n for n in names if n not in RUN_ORDER]


def group_runs(records: list[dict]) -> dict[str, dict[int, dict]]:
    """``{run name: {seed: record}}``, the most recent record of each (name, seed) (later records win)."""
    latest: dict[str, dict[int, dict]] = {}
    for r in records:
        latest.setdefault(run_name(r), {})[record_seed(r)] = r
    return {name: dict(sorted(latest[name].items())) for name in ordered(latest)}


def latest_runs(records: list[dict]) -> dict[str, dict]:
    """One record per run name, in the study's order: the latest record of its lowest seed."""
    return {name: seeds[min(seeds)] for name, seeds in group_runs(records).items()}


def label(name: str, record: dict) -> str:
    return f"final ({record['experiment']}, {record_epochs(record)} ep)" if name == "final" else name


def metric_rows(runs: dict[str, dict]) -> list[dict]:
    """One row per run: its test metrics and ``gain_f1``, its F1 minus that of its ``reference_for`` (the
    labels-only run of the same length and label budget: the 70-epoch final run against ``final-baseline``);
    None for the teacher, a labels-only run, or a run without such a partner."""
    epochs = {name: {record_epochs(r)} for name, r in runs.items()}
    rows = []
    for name, r in runs.items():
        t = r["test"]
        paired = name != "teacher" and not is_labels_only(name)
        reference = reference_for(name, epochs) if paired else None
        gain = t["f1"] - runs[reference]["test"]["f1"] if reference is not None else None
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
    "04_final_curves": lambda runs: curves_figure(runs, ("baseline", "final-baseline", "final")),  # 70 ep vs 70 ep
    "metrics": metrics_figure,
    "per_class_f1": per_class_figure,
    "confusion_teacher": lambda runs: confusion_figure(runs, "teacher"),
    "confusion_final": lambda runs: confusion_figure(runs, "final"),
}


def methods_f1_figure(grouped: dict[str, dict[int, dict]]) -> plt.Figure | None:
    """Macro F1 of every student run, mean over seeds with its 95% t-interval (none for one seed)."""
    rows = []
    for name, seeds in grouped.items():
        if name == "teacher":
            continue
        values = [r["test"]["f1"] for r in seeds.values()]
        mean, std = mean_std(values)
        half = None if std is None else float(sps.t.ppf(0.975, len(values) - 1)) * std / len(values) ** 0.5
        rows.append((f"{label(name, seeds[min(seeds)])} (n={len(values)})", mean, half))
    if len(rows) < 2:
        return None
    some = {n: s[min(s)] for n, s in grouped.items()}
    return plots.interval_bars(rows, "test macro F1", figure_title(some, "macro F1, mean over seeds, 95% interval"))


def methods_per_class_figure(grouped: dict[str, dict[int, dict]]) -> plt.Figure | None:
    """Per-class test F1 of every student run (mean over seeds), one row per run."""
    students = {n: s for n, s in grouped.items() if n != "teacher"}
    if len(students) < 2:
        return None
    first = next(iter(next(iter(students.values())).values()))
    classes = [row["class"] for row in first["test"]["per_class"]]
    values = {label(n, s[min(s)]): [sum(r["test"]["per_class"][c]["f1"] for r in s.values()) / len(s)
                                    for c in range(len(classes))] for n, s in students.items()}  # fmt: skip
    some = {n: s[min(s)] for n, s in grouped.items()}
    return plots.per_class_heatmap(values, classes, figure_title(some, "per-class test F1, mean over seeds"))


def per_class_gain_table(grouped: dict[str, dict[int, dict]]) -> str | None:
    """Per class, each student run's test F1 minus its baseline's (same seed, same length), mean over the common
    seeds: which classes a method helps and which it hurts. The baseline's own F1 heads the table."""
    reference = grouped.get("baseline")
    if not reference:
        return None
    first = next(iter(reference.values()))
    classes = [row["class"] for row in first["test"]["per_class"]]
    lines = [
        "| run | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
        "| baseline (F1) | " + " | ".join(
            f"{sum(r['test']['per_class'][c]['f1'] for r in reference.values()) / len(reference):.3f}"
            for c in range(len(classes))
        ) + " |",
    ]  # fmt: skip
    for name, seeds in grouped.items():
        common = [s for s in seeds if s in reference]
        if name in ("teacher", "baseline") or not common:
            continue
        deltas = [
            sum(seeds[s]["test"]["per_class"][c]["f1"] - reference[s]["test"]["per_class"][c]["f1"] for s in common)
            / len(common)
            for c in range(len(classes))
        ]
        lines.append(f"| {label(name, seeds[min(seeds)])} | " + " | ".join(f"{d:+.3f}" for d in deltas) + " |")
    return "\n".join(lines) if len(lines) > 3 else None


VERDICTS = {  # PairedGain.verdict -> what the table and the conclusions say
    "gain": "beats labels alone",
    "loss": "worse than labels alone",
    "within noise": "within noise",
    "unadjusted gain": "above 0, but not after Holm's adjustment",
    "unadjusted loss": "below 0, but not after Holm's adjustment",
    "one seed": "one seed: no interval",
}


def comparison_conclusion(rows: list[dict]) -> str:
    """Which runs beat labels alone, which are within noise and which are worse, by their paired intervals and
    Holm-adjusted p-values."""
    groups: dict[str, list[str]] = {v: [] for v in VERDICTS}
    for row in rows:
        if row["gain"] is not None:
            groups[row["gain"].verdict()].append(f"{label(row['name'], row['record'])} ({row['gain'].mean:+.4f})")
    parts = [
        f"beat labels alone (95% interval above 0, Holm p < 0.05): {', '.join(groups['gain']) or 'none'}",
        f"within noise (interval contains 0): {', '.join(groups['within noise']) or 'none'}",
        f"worse than labels alone: {', '.join(groups['loss']) or 'none'}",
    ]
    for key in ("unadjusted gain", "unadjusted loss", "one seed"):
        if groups[key]:
            parts.append(f"{VERDICTS[key]}: {', '.join(groups[key])}")
    return "; ".join(parts) + "."


def compared_runs(records: list[dict], few_labels: bool = False) -> dict[str, dict[int, dict]]:
    """The student runs the method figures compare, grouped by name: every run of the baseline's length
    (not the final runs) on all labels, or, with ``few_labels``, those on a fraction of the labels."""
    chosen = [
        r for r in records
        if run_name(r).split("@")[0] not in ("teacher", "final", "final-baseline")
        and (labeled_fraction(r) < 1) == few_labels
    ]  # fmt: skip
    return group_runs(chosen)


def labeled_fraction(record: dict) -> float:
    """The fraction of training labels a run used (1 for records older than the setting)."""
    try:
        return float(config_value(record, "labeled_fraction"))
    except KeyError:
        return 1.0


def render_seed_figure(figure: str, records: list[dict], dataset: str, pictures: Path) -> plt.Figure | None:
    """Draw one of ``SEED_FIGURES`` from the records (all seeds) and save it under ``pictures``."""
    fig = SEED_FIGURES[figure](records)
    if fig is not None:
        plots.save_figure(fig, figure_path(pictures, dataset, figure))
    return fig


SEED_FIGURES: dict[str, Callable[[list[dict]], plt.Figure | None]] = {
    "methods_f1": lambda records: methods_f1_figure(compared_runs(records)),
    "methods_per_class_f1": lambda records: methods_per_class_figure(compared_runs(records)),
    "few_labels_f1": lambda records: methods_f1_figure(compared_runs(records, few_labels=True)),
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


def conclusion(runs: dict[str, dict], name: str, gain: PairedGain | None = None) -> str:
    """One sentence reading the measured test F1 of run ``name`` against the baseline and the teacher.

    For ``name="baseline"`` it states the teacher-student gap that distillation sets out to close. With
    ``gain`` (the paired difference over seeds) the verdict is its 95% interval's; with one seed there is no
    interval, and the sentence says that one run cannot separate a gain from noise.
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
    reference = "final-baseline" if name == "final" and "final-baseline" in f1 else "baseline"
    teacher = f"; the teacher scores {f1['teacher']:.4f}" if "teacher" in f1 else ""
    epochs = record_epochs(runs[name]), record_epochs(runs[reference])
    if epochs[0] != epochs[1]:
        teacher += (f"; the {reference} trained {epochs[1]} epochs and this run {epochs[0]}, so the difference mixes "
                    "the method with the longer schedule")  # fmt: skip
    if gain is None or gain.n < 2:
        diff = f1[name] - f1[reference]
        return (
            f"{label(name, runs[name])}: test macro F1 {f1[name]:.4f} vs {reference} {f1[reference]:.4f} "
            f"({diff:+.4f}) from one seed, which gives no interval: a single run cannot tell this difference from "
            f"seed-to-seed noise{teacher}."
        )
    return f"{label(name, runs[name])} vs {reference}: {gain_sentence(gain)}{teacher}."


def gain_sentence(gain: PairedGain) -> str:
    verdict = {
        "within noise": "within noise (the interval contains 0)",
        "gain": "a real gain (the interval excludes 0)",
        "loss": "a real loss (the interval excludes 0)",
    }.get(
        gain.verdict(),
        f"{VERDICTS[gain.verdict()]} (Holm p {gain.p_holm:.3f})" if gain.p_holm else VERDICTS[gain.verdict()],
    )
    return (
        f"paired macro-F1 difference {gain.mean:+.4f} over {gain.n} seeds, 95% interval "
        f"[{gain.low:+.4f}, {gain.high:+.4f}]: {verdict}"
    )


# --- several seeds: paired comparison with the baseline ----------------------------------------------------


def is_labels_only(name: str) -> bool:
    return name.split("@")[0] in ("baseline", "final-baseline")


def reference_for(name: str, epochs: dict[str, set[int]]) -> str | None:
    """The labels-only run a student run is paired with: the baseline of the same length and label budget.

    ``epochs`` maps each run name to the epoch counts of its records (one per seed).
    """
    suffix = name[name.index("@") :] if "@" in name else ""
    for candidate in (f"baseline{suffix}", f"final-baseline{suffix}"):
        if candidate in epochs and candidate != name and epochs[candidate] == epochs[name]:
            return candidate
    return None


def comparison_rows(grouped: dict[str, dict[int, dict]]) -> list[dict]:
    """Per student run: mean and std of accuracy and F1 over seeds, the paired F1 gain against its baseline
    with a 95% t-interval, Holm-adjusted p-values across the runs sharing a baseline, McNemar per seed."""
    epochs = {name: {record_epochs(r) for r in seeds.values()} for name, seeds in grouped.items()}
    rows = []
    for name, seeds in grouped.items():
        if name == "teacher":
            continue
        acc = mean_std([r["test"]["accuracy"] for r in seeds.values()])
        f1 = mean_std([r["test"]["f1"] for r in seeds.values()])
        row = {"name": name, "seeds": list(seeds), "accuracy": acc, "f1": f1, "reference": None, "gain": None,
               "mcnemar": [], "record": next(iter(seeds.values()))}  # fmt: skip
        reference = None if is_labels_only(name) else reference_for(name, epochs)
        if reference is not None:
            common = [s for s in seeds if s in grouped[reference]]
            if common:
                row["reference"] = reference
                row["gain"] = paired_gain([seeds[s]["test"]["f1"] for s in common],
                                          [grouped[reference][s]["test"]["f1"] for s in common])  # fmt: skip
                row["mcnemar"] = [seed_mcnemar(seeds[s], grouped[reference][s]) for s in common]
        rows.append(row)
    for reference in {r["reference"] for r in rows if r["reference"]}:
        family = [r for r in rows if r["reference"] == reference]
        adjusted = holm({r["name"]: r["gain"].p_value for r in family})
        for r in family:
            r["gain"].p_holm = adjusted[r["name"]]
    return rows


def seed_mcnemar(a: dict, b: dict) -> float | None:
    """McNemar p-value of two runs on the same test images (None when a record predates stored correctness)."""
    if "correct" not in a["test"] or "correct" not in b["test"]:
        return None
    n = sum(map(sum, a["test"]["confusion_matrix"]))
    return mcnemar(decode_correct(a["test"]["correct"], n), decode_correct(b["test"]["correct"], n))["p_value"]


def _pm(stat: tuple[float, float | None]) -> str:
    mean, std = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def comparison_table(rows: list[dict]) -> str:
    """Markdown: mean ± sample std over seeds, the paired gain with its 95% interval, Holm p, McNemar, verdict."""
    header = ("| run | seeds | accuracy | macro F1 | F1 gain vs its baseline [95% CI] | p (Holm) | McNemar p per seed "
              "| verdict |")  # fmt: skip
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        gain, verdict, interval, p = row["gain"], "", "", ""
        if gain is not None:
            interval = f"{gain.mean:+.4f}" + (f" [{gain.low:+.4f}, {gain.high:+.4f}]" if gain.low is not None else "")
            p = f"{gain.p_holm:.3f}" if gain.p_holm is not None else ""
            verdict = VERDICTS[gain.verdict()]
        mc = ", ".join(f"{v:.3f}" for v in row["mcnemar"] if v is not None)
        name = label(row["name"], row["record"])
        lines.append(f"| {name} | {len(row['seeds'])} | {_pm(row['accuracy'])} | {_pm(row['f1'])} | {interval} | {p} "
                     f"| {mc} | {verdict} |")  # fmt: skip
    return "\n".join(lines)


SECTIONS: dict[str, tuple[str, ...]] = {  # README block ``results:<dataset>:<section>`` -> the runs it compares
    "baselines": ("teacher", "baseline"),
    "logit": ("teacher", "baseline", "logit"),
    "hidden": ("teacher", "baseline", "hidden"),
    "regressor": ("teacher", "baseline", "regressor"),
    "final": ("teacher", "baseline", "logit", "hidden", "regressor", "final-baseline", "final"),
}


def provenance(runs: dict[str, dict], all_runs: list[dict] | None = None) -> str:
    """Where the numbers come from: dataset, split sizes, seeds, hardware, torch, and when the runs were recorded."""
    first = next(iter(runs.values()))
    sizes = first.get("data_sizes", {})
    envs = [r.get("environment", {}) for r in runs.values()]
    # a run resumed elsewhere names each machine that trained it, "<device>, torch <version>", joined by " + "
    parts = [part.split(", torch ") for e in envs for part in e.get("hardware", "unknown hardware").split(" + ")]
    hardware = " / ".join(dict.fromkeys(part[0] for part in parts))
    torch_versions = ", ".join(
        dict.fromkeys([*(e.get("torch", "?") for e in envs), *(p[1] for p in parts if len(p) > 1)])
    )
    dates = sorted(r["timestamp"][:10] for r in runs.values() if r.get("timestamp"))
    when = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "unknown")
    split = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    seeds = sorted({record_seed(r) for r in all_runs}) if all_runs else [record_seed(first)]
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return (
        f"Measured on {config_value(first, 'dataset')} ({split}), {seed_text}, "
        f"{hardware}, torch {torch_versions}; runs recorded {when}."
    )


def section(runs: dict[str, dict], key: str, gains: dict[str, PairedGain | None] | None = None) -> str | None:
    """A README section's table (lowest seed) and conclusion (over every seed); None while its run is missing."""
    names = SECTIONS[key]
    subject = "baseline" if key == "baselines" else names[-1]
    if subject not in runs or "baseline" not in runs:
        return None
    chosen = {n: runs[n] for n in names if n in runs}
    return f"{markdown_table(chosen)}\n\n{conclusion(chosen, subject, (gains or {}).get(subject))}"


def readme_blocks(records: list[dict], dataset: str) -> dict[str, str]:
    """Every README block this dataset's runs can fill: the full table (with its provenance), each section,
    and the comparison over seeds."""
    grouped = group_runs(records)
    runs = {name: seeds[min(seeds)] for name, seeds in grouped.items()}
    if not runs:
        return {}
    rows = comparison_rows(grouped)
    gains = {row["name"]: row["gain"] for row in rows}
    blocks = {f"results:{dataset}": f"{markdown_table(runs)}\n\n{provenance(runs, records)}"}
    for key in SECTIONS:
        body = section(runs, key, gains)
        if body is not None:
            blocks[f"results:{dataset}:{key}"] = body
    blocks[f"results:{dataset}:comparison"] = f"{comparison_table(rows)}\n\n{provenance(runs, records)}"
    per_class = per_class_gain_table(compared_runs(records))
    if per_class is not None:
        blocks[f"results:{dataset}:per-class"] = per_class
    return blocks


def sweep_table(sweeps_dir: str | Path, link_from: str | Path | None = None) -> str | None:
    """One row per sweep saved under ``sweeps_dir`` (``python -m kd_utils sweep``): its trials, what it searched,
    the setting it chose by validation macro F1, and that setting's test F1, read once after the choice.

    ``link_from`` (the README's folder) makes each method a link to its validation-F1 map.
    """
    rows = []
    for path in sorted(Path(sweeps_dir).glob("*.json")) if Path(sweeps_dir).is_dir() else []:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(saved, dict) or not {"trials", "space", "method"} <= saved.keys():
            continue  # a results file (the tuned run), not a sweep's trials
        done = [t for t in saved["trials"] if t["state"] == "COMPLETE"]
        best = next((t for t in done if t["number"] == saved.get("best_trial")), None)
        if best is None:
            continue
        scored = path.with_name(f"{path.stem}-best.json")  # the chosen trial's run, with its test metrics
        tuned = [r for r in load_runs(scored) if r.get("sweep", {}).get("trial") == best["number"]]
        test = f"{tuned[-1]['test']['f1']:.4f}" if tuned else "not scored yet"
        method = saved["method"]
        picture = path.with_suffix(".png")
        if link_from is not None and picture.exists():
            method = f"[{method}]({Path(os.path.relpath(picture.absolute(), link_from)).as_posix()})"
        chosen = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items())
        scores = [t["best_val_f1"] for t in done]
        hours = sum(t.get("seconds") or 0 for t in saved["trials"]) / 3600
        order = STUDENT_METHODS.index(saved["method"]) if saved["method"] in STUDENT_METHODS else len(STUDENT_METHODS)
        rows.append((order, f"| {method} | {len(done)} | {', '.join(f'{k} {v}' for k, v in saved['space'].items())} | "
                            f"{chosen} | {best['best_val_f1']:.4f} | {min(scores):.4f} – {max(scores):.4f} | {test} | "
                            f"{hours:.2f} |"))  # fmt: skip
    if not rows:
        return None
    header = ("| method | trials | searched | chosen by validation F1 | its val F1 | val F1 of the trials | its test F1 "
              "| trial hours |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    return "\n".join([header, *(row for _, row in sorted(rows, key=lambda r: r[0]))])


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


def notebook_times(results_dir: str | Path) -> str | None:
    """A table of the notebooks' stored runs (profile, dataset, device, precision, start, wall time), from the
    ``<results>/<dataset>/notebooks.json`` that each notebook's last cell writes."""
    rows = []
    for path in sorted(Path(results_dir).glob("*/notebooks.json")):
        entries = json.loads(path.read_text())
        entries = entries.get("notebooks", entries) if isinstance(entries, dict) else entries
        for e in sorted(entries if isinstance(entries, list) else entries.values(), key=lambda e: e["notebook"]):
            rows.append(
                f"| `{e['notebook']}` | {e['profile']} | {e['dataset']} | {e['device']} | {e['precision']} | "
                f"{e['started']} | {e['wall_seconds'] / 60:.1f} |"
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
) -> list[Path]:
    """Re-render every figure and README table from ``results_dir/<dataset>/runs.json``; returns the files written."""
    written, blocks = [], {}
    for runs_file in sorted(Path(results_dir).glob("*/runs.json")):
        dataset = runs_file.parent.name
        dataset_info(dataset)
        records = load_runs(runs_file)
        runs = latest_runs(records)
        written += render_samples(dataset, Path(pictures), data_dir)
        for figure in FIGURES:
            fig = render_figure(figure, runs, dataset, Path(pictures))
            if fig is not None:
                written.append(figure_path(Path(pictures), dataset, figure))
                plt.close(fig)
        for figure, draw in SEED_FIGURES.items():
            fig = draw(records)
            if fig is not None:
                written.append(plots.save_figure(fig, figure_path(Path(pictures), dataset, figure)))
                plt.close(fig)
        blocks.update(readme_blocks(records, dataset))
        sweeps = sweep_table(runs_file.parent / "sweeps", Path(results_dir).absolute().parent)  # README's folder
        if sweeps is not None:
            blocks[f"results:{dataset}:sweeps"] = sweeps
    times = notebook_times(results_dir)
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
