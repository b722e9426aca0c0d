"""Verdicts that count the test set: the comparison with labels alone shows both intervals, a pair trained on
different machines gets no verdict, every pair of methods is ranked with its ties, and the findings are
sentences the code writes from those numbers."""

from __future__ import annotations

import zlib
from dataclasses import asdict

import numpy as np
import pytest
import torch

from kd_utils.comparison import ablation_rows, ablation_table, comparison_rows, comparison_table, group_runs
from kd_utils.config import ExperimentConfig
from kd_utils.data import DataConfig
from kd_utils.evidence import Evidence
from kd_utils.metrics import classification_metrics
from kd_utils.ranking import findings, order_disagreements, rank, ranking_table
from kd_utils.records import RunRecord, Segment, encode_correct, encode_predictions
from kd_utils.report import readme_blocks
from kd_utils.runs import identity
from kd_utils.train import TrainConfig

N, K = 2000, 3
LABELS = np.random.default_rng(0).integers(0, K, N)
DIFFICULTY = np.random.default_rng(1).random(N)  # a method with error rate r gets the hardest images wrong
CPU = Segment("cpu: AMD EPYC, 2 cores", "2.14.1", "bfloat16")
GPU = Segment("cuda: NVIDIA H200", "2.14.1", "bfloat16")


def run(name, seed, error_rate, machine=CPU, val=0.9, store_labels=True):
    """A record as train_experiment writes it, for a classifier wrong on a fraction ``error_rate`` of the images
    (mostly the hardest ones, a few per seed at random)."""
    rng = np.random.default_rng(zlib.crc32(f"{name}-{seed}".encode()))
    predictions = LABELS.copy()
    wrong = (DIFFICULTY > 1 - error_rate) ^ (rng.random(N) < 0.02)
    predictions[wrong] = (LABELS[wrong] + 1) % K
    test = classification_metrics(torch.tensor(LABELS), torch.tensor(predictions), ("a", "b", "c"))
    test["predictions"] = encode_predictions(torch.tensor(predictions))
    test["correct"] = encode_correct(torch.tensor(predictions == LABELS))
    if store_labels:
        test["labels"] = encode_predictions(torch.tensor(LABELS))
    role = "baseline" if name == "baseline" else "method"
    cfg = ExperimentConfig(data=DataConfig(dataset="synthetic"), train=TrainConfig(seed=seed, epochs=15))
    stored = {**identity(role if role == "baseline" else name, name, role, cfg, (machine,)), "config": asdict(cfg),
              "test": test, "params": 1, "seconds": 1.0, "best_val_f1": val, "best_epoch": 15}  # fmt: skip
    return RunRecord.from_dict(stored)


def study(machines=None):
    machines = machines or {}
    rates = {"baseline": 0.20, "good": 0.10, "also-good": 0.106, "bad": 0.30}
    return [run(n, s, r + 0.003 * s, machines.get(n, CPU), val=1 - r) for n, r in rates.items() for s in range(3)]


def test_the_comparison_shows_both_intervals_and_the_wider_one_decides():
    rows = {r["name"]: r for r in comparison_rows(group_runs(study()))}
    good = rows["good"]["pair"]
    assert good.confound is None and good.combined is not None
    assert good.combined.low < good.t.low  # the test images widen the interval
    assert rows["good"]["gain"] is good.combined and good.combined.p_holm is not None
    table = comparison_table(list(rows.values()))
    assert "95% CI, seeds only" in table and "95% CI, seeds and test images" in table
    line = next(x for x in table.splitlines() if x.startswith("| good |"))
    assert f"[{good.t.low:+.4f}, {good.t.high:+.4f}]" in line and f"[{good.combined.low:+.4f}," in line
    assert "beats labels alone" in line


def test_a_pair_trained_on_different_machines_gets_no_verdict():
    records = study({"good": GPU})
    rows = {r["name"]: r for r in comparison_rows(group_runs(records))}
    assert rows["good"]["pair"].confound == (
        "confounded: cpu: AMD EPYC, 2 cores bfloat16 vs cuda: NVIDIA H200 bfloat16"
    )
    line = next(x for x in comparison_table(list(rows.values())).splitlines() if x.startswith("| good |"))
    assert line.endswith("| confounded: cpu: AMD EPYC, 2 cores bfloat16 vs cuda: NVIDIA H200 bfloat16 |")
    assert rows["good"]["gain"].p_holm is None  # not one of the tests Holm adjusts for
    assert rows["bad"]["gain"].p_holm is not None and rows["bad"]["pair"].confound is None


def test_a_segment_without_precision_takes_what_its_hardware_and_setting_recorded_elsewhere():
    records = study()
    unknown = run("good", 0, 0.1, Segment(CPU.hardware, CPU.torch, None))
    evidence = Evidence([*records, unknown])
    assert evidence.machine_classes(unknown) == ("cpu: AMD EPYC, 2 cores bfloat16",)
    alone = Evidence([unknown])
    assert alone.machine_classes(unknown) == ("cpu: AMD EPYC, 2 cores auto, not recorded",)


def test_labels_from_the_results_folder_are_used_only_where_they_fit_the_records():
    record = run("good", 0, 0.1, store_labels=False)
    assert Evidence([record]).resampled_f1(record) is None  # nothing to resample with
    assert Evidence([record], LABELS).resampled_f1(record) is not None
    assert Evidence([record], (LABELS + 1) % K).labels(record) is None  # contradicts the stored correctness


def test_every_pair_is_ranked_with_ties_named_and_validation_disagreements_said():
    grouped = group_runs(study())
    (family,) = rank(grouped)
    assert set(family.names[:2]) == {"good", "also-good"} and family.names[2:] == ["baseline", "bad"]
    assert family.pair("good", "bad").told_apart is True
    assert family.pair("good", "also-good").told_apart is False  # 0.6% apart on 2,000 images: a tie
    assert family.top_group() == family.names[:2]
    holm = [p.gain.primary.p_holm for p in family.pairs]
    assert all(h is not None and h >= p.gain.primary.p_value for h, p in zip(holm, family.pairs))
    table = ranking_table(family, grouped)
    first, second = family.names[:2]
    assert f"| 1 | {first} | 3 |" in table and second in table.splitlines()[2]
    text = " ".join(findings(family, grouped))
    assert f"{first} has the highest mean test macro F1, but cannot be told apart from {second}" in text
    assert "good beats bad" in text
    family.val_f1["bad"] = 2.0  # validation now puts the worst first
    assert ("good", "bad") in order_disagreements(family)
    assert "Validation and test disagree on the order" in " ".join(findings(family, grouped))


def test_the_report_writes_the_ranking_and_the_findings_blocks():
    blocks = readme_blocks(study({"bad": GPU}), "synthetic")
    assert "| rank (test) | run |" in blocks["results:synthetic:ranking"]
    text = blocks["results:synthetic:findings"]
    assert "- good vs baseline: paired macro-F1 difference" in text and "over seeds and test images" in text
    assert "- bad vs baseline:" in text and "no verdict: confounded" in text
    assert "pairs get no verdict because their runs trained on different machines" in text


@pytest.mark.parametrize("seed", [0, 1])
def test_a_run_of_one_seed_is_named_and_gets_no_interval(seed):
    records = [r for r in study() if r.name != "good" or r.seed == seed]
    rows = {r["name"]: r for r in comparison_rows(group_runs(records))}
    assert rows["good"]["gain"].low is None and "one seed" in comparison_table(list(rows.values()))
    assert "good" not in rank(group_runs(records))[0].names  # a single seed is not ranked


def ablation(name, of, seed, error_rate, machine=CPU):
    record = run(name, seed, error_rate, machine)
    record.role = "ablation"
    record.extra["ablation"] = {"of": of, "differs": "the regressor term"}
    return record


def test_an_ablation_is_read_as_the_part_it_removes_with_both_intervals():
    records = study() + [ablation("good-no-part", "good", s, 0.20 + 0.003 * s) for s in range(3)]
    records += [ablation("bad-no-part", "bad", s, 0.30 + 0.003 * s, GPU if s == 2 else CPU) for s in range(3)]
    rows = {r["name"]: r for r in ablation_rows(group_runs(records))}
    assert set(rows) == {"good-no-part", "bad-no-part"}
    part = rows["good-no-part"]["pair"]
    assert part.seeds == [0, 1, 2] and part.t.mean > 0.05 and part.combined.low > 0  # "good" minus its ablation
    table = ablation_table(list(rows.values()))
    assert "| good | good-no-part | the regressor term | 3 |" in table and "the part adds F1" in table
    assert "confounded: " in table.splitlines()[-1]  # one seed of "bad-no-part" trained on the H200
    blocks = readme_blocks(records, "synthetic")
    assert blocks["results:synthetic:ablations"] == table
    grouped = group_runs(records)  # an ablation is no method: not a row against labels alone, not ranked
    assert {r["name"] for r in comparison_rows(grouped)} == {r["name"] for r in comparison_rows(group_runs(study()))}
    assert not {"good-no-part", "bad-no-part"} & {n for family in rank(grouped) for n in family.names}


def test_each_previous_claim_is_read_as_held_changed_or_fell():
    from kd_utils.claims import Claim, claim_rows, claims_table

    claims = (
        Claim("good beats labels alone", "+0.10", "good", "baseline", "gain"),
        Claim("bad beats labels alone", "+0.01", "bad", "baseline", "gain"),
        Claim("good and also-good cannot be told apart", "tie", "good", "also-good", "within noise"),
        Claim("good beats bad", "beats", "go*", "bad", "gain"),
        Claim("missing beats labels alone", "+0.02", "missing", "baseline", "gain"),
        Claim("bad beats labels alone on other machines", "", "bad", "baseline", "loss"),
        Claim("good and bad cannot be told apart", "tie", "good", "bad", "within noise"),
    )
    records = study({"bad": GPU})
    rows = claim_rows(group_runs(records), claims[:5])
    assert [r["outcome"] for r in rows] == ["held", "no verdict: confounded: cpu: AMD EPYC, 2 cores bfloat16 vs "
                                            "cuda: NVIDIA H200 bfloat16", "held", "no verdict: confounded: cpu: AMD "
                                            "EPYC, 2 cores bfloat16 vs cuda: NVIDIA H200 bfloat16", "not run yet"]  # fmt: skip
    rows = claim_rows(group_runs(study()), claims)
    assert [r["outcome"] for r in rows] == ["held", "fell: reversed", "held", "held", "not run yet", "held",
                                            "changed: now a gain"]  # fmt: skip
    assert rows[3]["a"] == "good" and "| good beats bad | beats | good vs bad | 3 |" in claims_table(rows)
    rows = claim_rows(group_runs(study()), claims[:2], planned_seeds=5)  # the study plans 5 seeds; 3 are in
    assert [r["outcome"] for r in rows] == ["interim, 3 of 5 seeds: held", "interim, 3 of 5 seeds: fell: reversed"]
    assert claim_rows(group_runs(study()), claims[4:5], planned_seeds=5)[0]["outcome"] == "not run yet"
    confounded = claim_rows(group_runs(records), claims[1:2], planned_seeds=5)[0]["outcome"]
    assert confounded.startswith("no verdict: confounded")  # no "interim" before a verdict there is not
