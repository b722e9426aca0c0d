"""Paired comparisons with labels alone, read from the records: which runs are grouped, which labels-only run
each is paired with (``RunRecord.pairing_key``), the paired gain with both 95% intervals (seeds only; seeds and
test images, ``evidence``), Holm's adjustment across the runs sharing a baseline, McNemar per seed, no verdict
for a pair trained on different machines, and the sentences and tables that state the verdicts.
"""

from __future__ import annotations

from .distill import STUDENT_METHODS
from .evidence import Evidence, PairGain
from .intervals import TwoLevelGain
from .records import RunRecord, read_records
from .stats import PairedGain, holm, mcnemar, mean_std

Runs = dict[str, RunRecord]  # one record per run name
Grouped = dict[str, dict[int, RunRecord]]  # every seed's record per run name

RUN_ORDER = ("teacher", "baseline", *STUDENT_METHODS, "final-baseline", "final")  # the notebooks' order of runs


def ordered(names) -> list[str]:
    """Run names in the study's order; names outside it (e.g. a sweep's "logit-tuned") after, as they came."""
    names = list(dict.fromkeys(names))
    return [n for n in RUN_ORDER if n in names] + [n for n in names if n not in RUN_ORDER]


def group_runs(records: list[RunRecord]) -> Grouped:
    """``{run name: {training seed: record}}``, the most recent record of each (name, seed) (later records win)."""
    latest: Grouped = {}
    for r in read_records(records):
        latest.setdefault(r.name, {})[r.seed] = r
    return {name: dict(sorted(latest[name].items())) for name in ordered(latest)}


def latest_runs(records: list[RunRecord]) -> Runs:
    """One record per run name, in the study's order: the latest record of its lowest seed."""
    return {name: seeds[min(seeds)] for name, seeds in group_runs(records).items()}


def label(name: str, record: RunRecord) -> str:
    return f"final ({record.method}, {record.epochs} ep)" if record.role == "final" else name


def per_class_gain_table(grouped: Grouped) -> str | None:
    """Per class, each student run's test F1 minus that of the labels-only run it pairs with (``reference_for``,
    same seed), mean over the common seeds: which classes a method helps and which it hurts. The first
    labels-only run's own F1 heads the table."""
    head = next((name for name, seeds in grouped.items() if first_record(seeds).labels_only), None)
    if head is None:
        return None
    classes = [row["class"] for row in first_record(grouped[head]).test["per_class"]]

    def f1(record: RunRecord, c: int) -> float:
        return record.test["per_class"][c]["f1"]

    lines = [
        "| run | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
        f"| {head} (F1) | " + " | ".join(
            f"{sum(f1(r, c) for r in grouped[head].values()) / len(grouped[head]):.3f}" for c in range(len(classes))
        ) + " |",
    ]  # fmt: skip
    for name, seeds in grouped.items():
        reference = reference_for(name, {n: list(g.values()) for n, g in grouped.items()})
        common = [s for s in seeds if reference is not None and s in grouped[reference]]
        if not common:
            continue
        deltas = [
            sum(f1(seeds[s], c) - f1(grouped[reference][s], c) for s in common) / len(common)
            for c in range(len(classes))
        ]
        lines.append(f"| {label(name, seeds[min(seeds)])} | " + " | ".join(f"{d:+.3f}" for d in deltas) + " |")
    return "\n".join(lines) if len(lines) > 3 else None


def first_record(seeds: dict[int, RunRecord]) -> RunRecord:
    return next(iter(seeds.values()))


VERDICTS = {  # PairedGain.verdict -> what the table and the conclusions say
    "gain": "beats labels alone",
    "loss": "worse than labels alone",
    "within noise": "within noise",
    "unadjusted gain": "above 0, but not after Holm's adjustment",
    "unadjusted loss": "below 0, but not after Holm's adjustment",
    "one seed": "one seed: no interval",
}


def comparison_conclusion(rows: list[dict]) -> str:
    """Which runs beat labels alone, which are within noise, which are worse and which cannot be judged (trained
    on other machines than their baseline), by the intervals over seeds and test images and Holm's p."""
    groups: dict[str, list[str]] = {v: [] for v in (*VERDICTS, "confounded")}
    for row in rows:
        if row["pair"] is not None:
            key = "confounded" if row["pair"].confound else row["gain"].verdict()
            groups[key].append(f"{label(row['name'], row['record'])} ({row['gain'].mean:+.4f})")
    parts = [
        f"beat labels alone (95% interval above 0, Holm p < 0.05): {', '.join(groups['gain']) or 'none'}",
        f"within noise (interval contains 0): {', '.join(groups['within noise']) or 'none'}",
        f"worse than labels alone: {', '.join(groups['loss']) or 'none'}",
    ]
    for key in ("unadjusted gain", "unadjusted loss", "one seed"):
        if groups[key]:
            parts.append(f"{VERDICTS[key]}: {', '.join(groups[key])}")
    if groups["confounded"]:
        parts.append(f"no verdict, trained on other machines than their baseline: {', '.join(groups['confounded'])}")
    return "; ".join(parts) + "."


def conclusion(
    runs: Runs, name: str, pair: PairGain | PairedGain | None = None, evidence: Evidence | None = None
) -> str:
    """One sentence reading the measured test F1 of run ``name`` against its labels-only run and the teacher.

    For ``name="baseline"`` it states the teacher-student gap that distillation sets out to close. With ``pair``
    (the paired difference over seeds, ``comparison_rows``' ``"pair"``) the verdict is its interval's; with one
    seed there is no interval, and the sentence says that one run cannot separate a gain from noise. Runs that
    trained on different machines get no verdict.
    """
    f1 = {n: r.test["f1"] for n, r in runs.items()}
    if name == "baseline":
        teacher, student = runs["teacher"], runs["baseline"]
        return (
            f"teacher ({teacher.params:,} parameters): test accuracy {teacher.test['accuracy']:.4f}, "
            f"macro F1 {f1['teacher']:.4f}; student alone ({student.params:,} parameters, "
            f"{teacher.params / student.params:.0f}x fewer): {student.test['accuracy']:.4f}, "
            f"{f1['baseline']:.4f}; a gap of {f1['teacher'] - f1['baseline']:+.4f} F1 for distillation to close."
        )
    reference = reference_for(name, {n: [r] for n, r in runs.items()}) or "baseline"  # else: the mix is named
    teacher = f"; the teacher scores {f1['teacher']:.4f}" if "teacher" in f1 else ""
    epochs = runs[name].epochs, runs[reference].epochs
    if epochs[0] != epochs[1]:
        teacher += (f"; the {reference} trained {epochs[1]} epochs and this run {epochs[0]}, so the difference mixes "
                    "the method with the longer schedule")  # fmt: skip
    evidence = evidence or Evidence(list(runs.values()))
    confound = pair.confound if isinstance(pair, PairGain) else evidence.confound([runs[name]], [runs[reference]])
    gain = pair.primary if isinstance(pair, PairGain) else pair
    machines = (
        f"; they trained on different machines ({confound}), so even many seeds would not separate the method from the machine"
        if confound
        else ""
    )
    if gain is None or gain.n < 2:
        diff = f1[name] - f1[reference]
        return (
            f"{label(name, runs[name])}: test macro F1 {f1[name]:.4f} vs {reference} {f1[reference]:.4f} "
            f"({diff:+.4f}) from one seed, which gives no interval: a single run cannot tell this difference from "
            f"seed-to-seed noise{machines}{teacher}."
        )
    return f"{label(name, runs[name])} vs {reference}: {gain_sentence(gain, confound)}{teacher}."


def gain_sentence(gain: PairedGain, confound: str | None = None) -> str:
    """The paired difference, its interval(s) and what they allow to say."""
    verdict = {
        "within noise": "within noise (the interval contains 0)",
        "gain": "a real gain (the interval excludes 0)",
        "loss": "a real loss (the interval excludes 0)",
    }.get(
        gain.verdict(),
        f"{VERDICTS[gain.verdict()]} (Holm p {gain.p_holm:.3f})" if gain.p_holm else VERDICTS[gain.verdict()],
    )
    if confound:
        verdict = f"no verdict: {confound}"
    what = "over seeds and test images" if isinstance(gain, TwoLevelGain) else "over seeds"
    return (
        f"paired macro-F1 difference {gain.mean:+.4f} over {gain.n} seeds, 95% interval {what} "
        f"[{gain.low:+.4f}, {gain.high:+.4f}]: {verdict}"
    )


# --- several seeds: paired comparison with the baseline ----------------------------------------------------


def reference_for(name: str, runs: dict[str, list[RunRecord]]) -> str | None:
    """The labels-only run that run ``name`` is compared with: the first whose records share its pairing keys
    (``RunRecord.pairing_key``: data stream, student, length, label budget); None for the teacher, a
    labels-only run, or a run without such a partner. ``runs`` maps run names to their records (one per seed)."""
    records = runs[name]
    if records[0].role == "teacher" or records[0].labels_only:
        return None
    keys = {r.pairing_key() for r in records}
    for candidate, others in runs.items():
        if candidate != name and others[0].labels_only and {r.pairing_key() for r in others} == keys:
            return candidate
    return None


NOT_COMPARED = ("teacher", "ablation")  # an ablation is read against its whole run (``ablation_rows``), not as a method


def comparison_rows(grouped: Grouped, evidence: Evidence | None = None) -> list[dict]:
    """Per student run but the ablations: mean and std of accuracy and F1 over seeds; against its labels-only run, the paired F1
    gain with the seed-only t-interval and the interval over seeds and test images, Holm-adjusted p-values
    (across the unconfounded runs sharing that baseline), McNemar per seed, and the confound if any."""
    evidence = evidence or Evidence([r for seeds in grouped.values() for r in seeds.values()])
    by_name = {name: list(seeds.values()) for name, seeds in grouped.items()}
    rows = []
    for name, seeds in grouped.items():
        if first_record(seeds).role in NOT_COMPARED:
            continue
        acc = mean_std([r.test["accuracy"] for r in seeds.values()])
        f1 = mean_std([r.test["f1"] for r in seeds.values()])
        row = {"name": name, "seeds": list(seeds), "accuracy": acc, "f1": f1, "reference": None, "gain": None,
               "pair": None, "mcnemar": [], "record": first_record(seeds)}  # fmt: skip
        reference = reference_for(name, by_name)
        pair = evidence.gain(seeds, grouped[reference]) if reference is not None else None
        if pair is not None:
            row.update(reference=reference, pair=pair, gain=pair.primary)
            row["mcnemar"] = [seed_mcnemar(seeds[s], grouped[reference][s]) for s in pair.seeds]
        rows.append(row)
    for reference in {r["reference"] for r in rows if r["reference"]}:
        family = [r for r in rows if r["reference"] == reference and not r["pair"].confound]
        adjusted = holm({r["name"]: r["gain"].p_value for r in family})
        for r in family:
            r["gain"].p_holm = adjusted[r["name"]]
    return rows


def verdict(row: dict) -> str:
    """What the table says of a run against its baseline: the confound, else the interval's verdict."""
    if row["pair"] is None:
        return ""
    return row["pair"].confound or VERDICTS[row["gain"].verdict()]


def seed_mcnemar(a: RunRecord, b: RunRecord) -> float | None:
    """McNemar p-value of two runs on the same test images (None when a record predates stored correctness)."""
    correct_a, correct_b = a.correct(), b.correct()
    if correct_a is None or correct_b is None:
        return None
    return mcnemar(correct_a, correct_b)["p_value"]


def _pm(stat: tuple[float, float | None]) -> str:
    mean, std = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def interval_text(gain: PairedGain | None) -> str:
    return "" if gain is None or gain.low is None else f"[{gain.low:+.4f}, {gain.high:+.4f}]"


def comparison_table(rows: list[dict]) -> str:
    """Markdown: mean ± sample std over seeds, the paired gain with both 95% intervals, Holm p, McNemar, verdict."""
    header = ("| run | seeds | accuracy | macro F1 | F1 gain vs its baseline | 95% CI, seeds only | 95% CI, seeds and "
              "test images | p (Holm) | McNemar p per seed | verdict |")  # fmt: skip
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        pair, mean, t, both, p = row["pair"], "", "", "", ""
        if pair is not None:
            mean, t, both = f"{pair.t.mean:+.4f}", interval_text(pair.t), interval_text(pair.combined)
            p = f"{row['gain'].p_holm:.3f}" if row["gain"].p_holm is not None else ""
        mc = ", ".join(f"{v:.3f}" for v in row["mcnemar"] if v is not None)
        name = label(row["name"], row["record"])
        lines.append(f"| {name} | {len(row['seeds'])} | {_pm(row['accuracy'])} | {_pm(row['f1'])} | {mean} | {t} | "
                     f"{both} | {p} | {mc} | {verdict(row)} |")  # fmt: skip
    return "\n".join(lines)


# --- ablations: a run against itself without one part --------------------------------------------------------
ABLATION_VERDICTS = {
    "gain": "the part adds F1",
    "loss": "the part costs F1",
    "within noise": "no difference shown",
    "unadjusted gain": "above 0, but not after Holm's adjustment",
    "unadjusted loss": "below 0, but not after Holm's adjustment",
    "one seed": "one seed: no interval",
}


def ablation_rows(grouped: Grouped, evidence: Evidence | None = None) -> list[dict]:
    """Per ablation run (role ``ablation``; ``extra["ablation"]`` names the run it takes a part from): the run's
    F1 minus the ablation's, paired by seed, with both intervals and Holm's p across the ablations."""
    evidence = evidence or Evidence([r for seeds in grouped.values() for r in seeds.values()])
    rows = []
    for name, seeds in grouped.items():
        about = first_record(seeds).extra.get("ablation") if first_record(seeds).role == "ablation" else None
        if not about or about.get("of") not in grouped:
            continue
        pair = evidence.gain(grouped[about["of"]], seeds)
        if pair is not None:
            rows.append({"name": name, "of": about["of"], "differs": about.get("differs", ""), "pair": pair,
                         "f1_of": mean_std([grouped[about["of"]][s].test["f1"] for s in pair.seeds]),
                         "f1": mean_std([seeds[s].test["f1"] for s in pair.seeds])})  # fmt: skip
    adjusted = holm({r["name"]: r["pair"].primary.p_value for r in rows if not r["pair"].confound})
    for r in rows:
        r["pair"].primary.p_holm = adjusted.get(r["name"])
    return rows


def ablation_table(rows: list[dict]) -> str:
    """Markdown: what the ablation removes, both runs' F1, the paired gain of the whole run over its ablation with
    both 95% intervals, Holm p and the verdict (a confound instead where the two trained on other machines)."""
    header = ("| run | its ablation | what differs | seeds | macro F1, run | macro F1, ablation | F1 gain of the part | "
              "95% CI, seeds only | 95% CI, seeds and test images | p (Holm) | verdict |")  # fmt: skip
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        pair = r["pair"]
        p = f"{pair.primary.p_holm:.3f}" if pair.primary.p_holm is not None else ""
        verdict = pair.confound or ABLATION_VERDICTS[pair.primary.verdict()]
        lines.append(f"| {r['of']} | {r['name']} | {r['differs']} | {len(pair.seeds)} | {_pm(r['f1_of'])} | "
                     f"{_pm(r['f1'])} | {pair.t.mean:+.4f} | {interval_text(pair.t)} | {interval_text(pair.combined)} "
                     f"| {p} | {verdict} |")  # fmt: skip
    return "\n".join(lines)
