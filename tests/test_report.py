"""The report re-renders figures and README tables from saved results, deterministically."""

from __future__ import annotations

import filecmp
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from kd_utils.cli import main
from kd_utils.config import ExperimentConfig
from kd_utils.data import DataConfig
from kd_utils.records import RunRecord, Segment, encode_correct
from kd_utils.report import (
    FIGURES,
    SEED_FIGURES,
    compared_runs,
    comparison_rows,
    comparison_table,
    group_runs,
    latest_runs,
    markdown_table,
    metric_rows,
    notebook_times,
    per_class_gain_table,
    provenance,
    replace_block,
)
from kd_utils.runs import identity
from kd_utils.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny synthetic study written the way the notebooks write it: results/<dataset>/runs.json."""
    root = tmp_path_factory.mktemp("study")
    args = ["run", "--experiment", "all", "--dataset", "synthetic", "--epochs", "1", "--teacher-epochs", "2",
            "--device", "cpu", "--no-progress", "--checkpoint-dir", str(root / "ck"),
            "--results-path", str(root / "results" / "synthetic" / "runs.json")]  # fmt: skip
    assert main(args) == 0
    return root


def test_report_renders_every_figure_and_table_twice_identically(study, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:synthetic:start -->\nold\n<!-- results:synthetic:end -->\ntail\n")
    args = ["report", "--results-dir", str(study / "results"), "--pictures-dir", str(tmp_path / "a"),
            "--readme", str(readme)]  # fmt: skip
    assert main(args) == 0
    first_readme = readme.read_text()
    assert "old" not in first_readme and "| logit |" in first_readme and first_readme.endswith("tail\n")
    assert "Measured on synthetic (train " in first_readme and "seed 0, cpu" in first_readme
    pictures = sorted(p.name for p in (tmp_path / "a").iterdir())
    # the synthetic study has no final run and no few-label runs: every other figure, plus the sample grids
    expected = {f"synthetic_{f}.png" for f in (*FIGURES, *SEED_FIGURES) if "final" not in f and "few" not in f} | {
        "synthetic_samples_train.png",
        "synthetic_samples_test.png",
    }
    assert set(pictures) == expected
    assert main([*args[:4], str(tmp_path / "b"), *args[5:]]) == 0
    assert readme.read_text() == first_readme
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", pictures, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(pictures)


def test_report_fills_each_section_block_and_leaves_blocks_of_missing_runs(study, tmp_path):
    blocks = "".join(f"<!-- results:synthetic:{k}:start -->\nold {k}\n<!-- results:synthetic:{k}:end -->\n"
                     for k in ("baselines", "logit", "regressor", "final"))  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(blocks)
    args = ["report", "--results-dir", str(study / "results"), "--pictures-dir", str(tmp_path / "p"),
            "--readme", str(readme)]  # fmt: skip
    assert main(args) == 0
    text = readme.read_text()
    logit = text.split("results:synthetic:logit:start -->")[1].split("<!--")[0]
    assert "| logit |" in logit and "| regressor |" not in logit and "logit: test macro F1" in logit
    assert "a gap of" in text.split("results:synthetic:baselines:start -->")[1].split("<!--")[0]
    assert "old final" in text and "old logit" not in text  # the synthetic study has no final run


def test_latest_run_of_each_name_wins():
    def record(name, f1):
        test = {"accuracy": f1, "precision": f1, "recall": f1, "f1": f1, "per_class": [], "confusion_matrix": []}
        return {"experiment": name, "name": name, "config": {"epochs": 1}, "test": test, "params": 1, "seconds": 1.0}

    runs = latest_runs([record("baseline", 0.5), record("logit", 0.6), record("baseline", 0.7)])
    assert list(runs) == ["baseline", "logit"] and runs["baseline"].test["f1"] == 0.7
    table = markdown_table(runs)
    assert "| logit | 0.6000 |" in table and "-0.1000" in table


def test_method_figures_compare_runs_of_one_length_and_labels_apart():
    def record(name, seed, fraction=1.0):
        test = {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "per_class": [], "confusion_matrix": []}
        config = {"train": {"seed": seed, "epochs": 1}, "data": {"labeled_fraction": fraction}}
        return {"experiment": name.split("@")[0], "name": name, "config": config, "test": test}

    records = [record(n, s) for n in ("teacher", "baseline", "logit", "logit-tuned", "final", "final-baseline")
               for s in (0, 1)]  # fmt: skip
    records += [record(f"{n}@10%labels", s, 0.1) for n in ("baseline", "dkd-tuned") for s in (0, 1)]
    records.append({**record("baseline", 2), "config": {"epochs": 1, "seed": 2}})  # an old flat record: all labels
    assert {n: sorted(s) for n, s in compared_runs(records).items()} == {
        "baseline": [0, 1, 2],
        "logit": [0, 1],
        "logit-tuned": [0, 1],
    }
    assert list(compared_runs(records, few_labels=True)) == ["baseline@10%labels", "dkd-tuned@10%labels"]


def test_per_class_gains_are_paired_by_seed_and_averaged():
    def record(name, seed, f1s):
        per_class = [{"class": c, "f1": f} for c, f in zip(("a", "b"), f1s)]
        return {"name": name, "experiment": name, "config": {"train": {"seed": seed}}, "test": {"per_class": per_class}}

    grouped = group_runs([
        record("baseline", 0, (0.5, 0.8)), record("baseline", 1, (0.7, 0.8)),
        record("logit", 0, (0.6, 0.7)), record("logit", 1, (0.9, 0.8)), record("logit", 2, (0.0, 0.0)),
    ])  # fmt: skip
    table = per_class_gain_table(grouped).splitlines()
    assert table[0] == "| run | a | b |"
    assert table[2] == "| baseline (F1) | 0.600 | 0.800 |"
    assert table[3] == "| logit | +0.150 | -0.050 |"  # seed 2 has no baseline: left out
    assert per_class_gain_table(group_runs([record("logit", 0, (0.5, 0.5))])) is None


def test_replace_block_keeps_markers_and_ignores_missing_ones():
    text = "a\n<!-- k:start -->\nx\n<!-- k:end -->\nb"
    assert replace_block(text, "k", "new") == "a\n<!-- k:start -->\nnew\n<!-- k:end -->\nb"
    assert replace_block(text, "other", "new") == text


def test_committed_results_reproduce_the_committed_figures_and_readme(tmp_path):
    """`python -m kd_utils report` on the committed results leaves Pictures/ and README.md unchanged."""
    if not list((ROOT / "results").glob("*/runs.json")):
        pytest.skip("no committed results/<dataset>/runs.json yet")
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    assert main(["report", "--results-dir", str(ROOT / "results"), "--pictures-dir", str(tmp_path / "pics"),
                 "--readme", str(readme), "--data-dir", str(ROOT / "data")]) == 0  # fmt: skip
    assert readme.read_text() == (ROOT / "README.md").read_text()
    for png in (tmp_path / "pics").iterdir():
        assert filecmp.cmp(png, ROOT / "Pictures" / png.name, shallow=False), png.name


def test_notebook_times_table_reads_what_the_notebooks_saved(tmp_path):
    entry = {"notebook": "00_a", "profile": "full", "dataset": "fashion-mnist", "device": "cpu: Xeon",
             "precision": "bfloat16", "started": "2026-11-23 18:13 UTC", "wall_seconds": 1500.0}  # fmt: skip
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "notebooks.json").write_text(json.dumps({"notebooks": {"00_a": entry}}))
    table = notebook_times(tmp_path)
    assert (
        table.splitlines()[2]
        == "| `00_a` | full | fashion-mnist | cpu: Xeon | bfloat16 | 2026-11-23 18:13 UTC | 25.0 |"
    )
    assert notebook_times(tmp_path / "missing") is None


def seeded_record(name, seed, f1, epochs=15, correct=None, fraction=1.0, method=None, trained_on=()):
    """A record in the layout ``train_experiment`` writes (identity fields beside ``asdict(ExperimentConfig)``)."""
    test = {"accuracy": f1, "precision": f1, "recall": f1, "f1": f1, "confusion_matrix": [[5, 0], [0, 5]],
            "per_class": [{"class": "a", "f1": f1}, {"class": "b", "f1": f1}]}  # fmt: skip
    if correct is not None:
        test["correct"] = encode_correct(torch.tensor(correct))
    base = name.split("@")[0]
    method = "baseline" if base.endswith("baseline") else (method or base)
    role = base if base in ("teacher", "baseline", "final", "final-baseline") else "method"
    cfg = ExperimentConfig(data=DataConfig(dataset="synthetic", labeled_fraction=fraction),
                           train=TrainConfig(seed=seed, epochs=epochs), teacher="t", student="s")  # fmt: skip
    return RunRecord.from_dict({**identity(method, name, role, cfg, tuple(trained_on)), "config": asdict(cfg),
                                "test": test, "params": 1, "seconds": 1.0})  # fmt: skip


def test_comparison_pairs_seeds_and_reads_intervals():
    base = [0.80, 0.82, 0.81]
    records = [seeded_record("baseline", s, f) for s, f in enumerate(base)]
    records += [seeded_record("logit", s, f + 0.02 + 0.001 * s) for s, f in enumerate(base)]  # +0.02 each seed
    records += [seeded_record("hidden", s, f + d) for s, (f, d) in enumerate(zip(base, (0.01, -0.01, 0.0)))]
    rows = {r["name"]: r for r in comparison_rows(group_runs(records))}
    logit, hidden = rows["logit"]["gain"], rows["hidden"]["gain"]
    assert logit.n == 3 and logit.mean == pytest.approx(0.021) and logit.low > 0 and not logit.within_noise
    assert hidden.mean == pytest.approx(0.0, abs=1e-12) and hidden.within_noise
    assert logit.p_holm == pytest.approx(min(1.0, 2 * logit.p_value))  # the smaller of two p-values, times 2
    table = comparison_table(list(rows.values()))
    assert (
        "| logit | 3 | 0.8310 ± 0.0105 |" in table
    )  # 0.820, 0.841, 0.832: sample std 0.01054 and "beats labels alone" in table and "within noise" in table


def test_final_is_paired_with_the_baseline_of_its_length_and_mcnemar_reads_correctness():
    records = [seeded_record("baseline", 0, 0.8), seeded_record("final-baseline", 0, 0.81, epochs=70,
               correct=[1, 1, 0, 0, 1, 1, 1, 1, 1, 1]), seeded_record("final", 0, 0.9, epochs=70,
               correct=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0])]  # fmt: skip
    row = {r["name"]: r for r in comparison_rows(group_runs(records))}["final"]
    assert row["reference"] == "final-baseline" and row["gain"].mean == pytest.approx(0.09)
    assert row["gain"].within_noise is None  # one seed: no interval
    assert row["mcnemar"] == [pytest.approx(1.0)]  # 2 vs 1 discordant images: exact binomial p = 1


def test_label_budgets_are_paired_only_within_their_budget():
    records = [seeded_record("baseline", s, 0.80) for s in range(2)]
    records += [seeded_record("baseline@10%labels", s, 0.60 + 0.01 * s, fraction=0.1) for s in range(2)]
    records += [seeded_record("logit@10%labels", s, 0.70 + 0.01 * s, fraction=0.1) for s in range(2)]
    rows = {r["name"]: r for r in comparison_rows(group_runs(records))}
    few = rows["logit@10%labels"]
    assert few["reference"] == "baseline@10%labels"
    assert few["gain"].mean == pytest.approx(0.10) and few["gain"].n == 2
    assert rows["baseline@10%labels"]["gain"] is None  # a labels-only run is a reference, not a method


def test_labels_suffix_names_the_budget():
    from kd_utils.runs import labels_suffix

    assert labels_suffix("logit", 1.0) == "logit"
    assert labels_suffix("baseline", 0.1) == "baseline@10%labels"
    assert labels_suffix("final", 0.01) == "final@1%labels"


def test_provenance_names_each_machine_once_also_for_resumed_runs():
    gpu, cpu = Segment("cuda: NVIDIA H200", "2.11.0+cu130", "bfloat16"), Segment("cpu: AMD EPYC, 2 cores", "2.14.1")
    runs = {"a": seeded_record("logit", 0, 0.9, trained_on=(gpu, cpu)),  # resumed on the CPU
            "b": seeded_record("baseline", 0, 0.8, trained_on=(Segment("cuda: NVIDIA H200", "2.14.1"),))}  # fmt: skip
    for r in runs.values():
        r.extra["environment"] = {"torch": "2.14.1"}  # the machine that evaluated them
    assert f"seed 0, cuda: NVIDIA H200 / {cpu.hardware}, torch 2.14.1, 2.11.0+cu130;" in provenance(runs)


def test_provenance_reads_the_machines_of_every_stored_layout():
    """The nested layout (before RunRecord) kept the machines in ``environment["hardware"]``, "a + b" when resumed."""
    stored = seeded_record("logit", 0, 0.9).to_dict()
    del stored["trained_on"], stored["role"], stored["seed"]
    stored["environment"] = {"hardware": "cuda: NVIDIA H200, torch 2.11.0 + cpu: AMD EPYC, 2 cores", "torch": "2.14.1",
                             "precision": "bfloat16", "evaluated_on": "cpu: AMD EPYC, 2 cores, torch 2.14.1"}  # fmt: skip
    record = RunRecord.from_dict(stored)
    assert [s.label() for s in record.trained_on] == [
        "cuda: NVIDIA H200, torch 2.11.0",
        "cpu: AMD EPYC, 2 cores, torch 2.14.1",
    ]
    assert record.seed == 0 and record.role == "method"
    assert [s.precision for s in record.trained_on] == [None, "bfloat16"]  # the evaluating machine's, where it trained
    assert "cuda: NVIDIA H200 / cpu: AMD EPYC, 2 cores, torch 2.14.1, 2.11.0;" in provenance({"logit": record})


def test_final_curves_draw_the_baseline_of_the_same_length_beside_the_short_one():
    history = [{"epoch": 1, "ce": 1.0, "val_loss": 1.1, "train_f1": 0.5, "val_f1": 0.4}]
    runs = {name: seeded_record(name, 0, 0.8, epochs=70 if "final" in name else 15, method="logit")
            for name in ("baseline", "final-baseline", "final")}  # fmt: skip
    for r in runs.values():
        r.history = history
    fig = FIGURES["04_final_curves"](runs)
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any(t.startswith("final-baseline") for t in legend) and any(t.startswith("baseline ") for t in legend)
    assert any(t.startswith("final (logit, 70 ep)") for t in legend)
    del runs["final"]
    assert FIGURES["04_final_curves"](runs) is None  # nothing to draw without the final run


def test_table_gain_pairs_each_run_with_the_labels_only_run_of_its_length():
    runs = {name: seeded_record(name, 0, f1, epochs=epochs) for name, f1, epochs in (
        ("teacher", 0.95, 40), ("baseline", 0.90, 15), ("logit", 0.92, 15), ("final-baseline", 0.93, 70),
        ("final", 0.94, 70))}  # fmt: skip
    runs["final"].method = "logit"
    gains = {row["name"]: row["gain_f1"] for row in metric_rows(runs)}
    assert gains["logit"] == pytest.approx(0.02)
    assert gains["final (logit, 70 ep)"] == pytest.approx(0.01)  # against final-baseline, not 0.04 vs 15 epochs
    assert gains["teacher"] is gains["baseline"] is gains["final-baseline"] is None
    del runs["final-baseline"]
    assert metric_rows(runs)[-1]["gain_f1"] is None  # no 70-epoch partner: no mixed-schedule gain
