"""The CLI's plain-text tables: one line per finished run, and the summary table after ``run``."""

from __future__ import annotations

from collections.abc import Sequence

from .records import RunRecord


def format_metrics(record: RunRecord) -> str:
    """One line: the run, its seed and its test metrics (logged as each run finishes)."""
    t = record.test
    cached = " (cached)" if record.get("cached") else ""
    warning = " | DID NOT LEARN (validation accuracy stayed at chance)" if record.get("did_not_learn") else ""
    return (
        f"{record.name}{cached} seed {record.seed} test: accuracy {t['accuracy']:.4f} precision {t['precision']:.4f} "
        f"recall {t['recall']:.4f} f1 {t['f1']:.4f} | params {record.params:,} | {record.seconds:.1f}s{warning}"
    )


def summary_rows(records: Sequence[RunRecord]) -> list[dict]:
    """One row per run with its F1 gain over the labels-only run it pairs with (same ``pairing_key``, same seed)."""
    baselines = {(r.pairing_key(), r.seed): r.test["f1"] for r in records if r.labels_only}
    rows = []
    for r in records:
        t = r.test
        base = baselines.get((r.pairing_key(), r.seed))
        gain = t["f1"] - base if base is not None and r.role != "teacher" and not r.labels_only else None
        rows.append({
            "run": r.name, "seed": r.seed, "accuracy": t["accuracy"], "precision": t["precision"],
            "recall": t["recall"], "f1": t["f1"], "gain_f1": gain, "best_epoch": r.best_epoch, "params": r.params,
            "seconds": r.seconds, "note": "did not learn" if r.get("did_not_learn") else "",
        })  # fmt: skip
    return rows


def format_run_table(records: Sequence[RunRecord]) -> str:
    """The table ``run`` prints at its end: test metrics and the gain over the paired baseline, per run."""
    header = (
        f"{'run':<16} {'seed':>4} {'accuracy':>8} {'precision':>9} {'recall':>7} {'f1':>7} {'gain f1':>8} "
        f"{'best ep':>7} {'params':>10} {'seconds':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for row in summary_rows(records):
        gain = f"{row['gain_f1']:+.4f}" if row["gain_f1"] is not None else "-"
        best = str(row["best_epoch"]) if row["best_epoch"] is not None else "-"
        lines.append(
            f"{row['run']:<16} {row['seed']:>4} {row['accuracy']:>8.4f} {row['precision']:>9.4f} "
            f"{row['recall']:>7.4f} {row['f1']:>7.4f} {gain:>8} {best:>7} {row['params']:>10,} "
            f"{row['seconds']:>8.1f}  {row['note']}"
        )
    return "\n".join(lines)
