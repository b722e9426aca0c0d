"""The teacher is chosen on validation accuracy alone: among the recipes tried (``TEACHER_CANDIDATES``), the one
whose recorded teacher scored highest on the validation split; the test accuracy is shown beside it, never read
by the choice. Reads records only, so the report renders the choice without the trainer."""

from __future__ import annotations

from collections.abc import Sequence

from .records import RunRecord

# the recipes tried for the all-label teacher (seed 0): the first study's and the stored study's; the one with the
# higher validation accuracy is STUDY_TEACHER (tests/test_study_run.py checks it against the records)
TEACHER_CANDIDATES = (
    {"teacher_epochs": 15, "teacher_random_erasing": 0.0},
    {"teacher_epochs": 40, "teacher_random_erasing": 0.5},
)


def teacher_recipe(record: RunRecord) -> dict:
    """A teacher record's recipe, in ``TEACHER_CANDIDATES``' keys."""
    return {"teacher_epochs": record.epochs, "teacher_random_erasing": record.config.get("teacher_random_erasing", 0.0)}


def selected_val_accuracy(record: RunRecord) -> float:
    """Validation accuracy of the epoch the run kept (its best validation F1), the teacher's selection score."""
    return next(h["val_acc"] for h in record.history if h["epoch"] == record.best_epoch)


def teacher_candidates(records: Sequence[RunRecord]) -> list[tuple[dict, RunRecord]]:
    """The latest all-label teacher record of each ``TEACHER_CANDIDATES`` recipe among ``records``."""
    found: dict[str, tuple[dict, RunRecord]] = {}
    for r in records:
        recipe = teacher_recipe(r) if r.role == "teacher" and r.labeled_fraction == 1.0 else None
        if recipe in TEACHER_CANDIDATES:
            found[repr(recipe)] = (recipe, r)
    return [found[repr(c)] for c in TEACHER_CANDIDATES if repr(c) in found]


def choose_teacher(records: Sequence[RunRecord]) -> dict:
    """The candidate recipe whose teacher has the highest validation accuracy (the test set plays no part)."""
    candidates = teacher_candidates(records)
    if not candidates:
        raise ValueError("no teacher record of any TEACHER_CANDIDATES recipe; train them first")
    return max(candidates, key=lambda c: selected_val_accuracy(c[1]))[0]


def teacher_choice_table(records: Sequence[RunRecord]) -> str | None:
    """Markdown: each candidate recipe's validation accuracy (what chose) and test accuracy (shown, not used)."""
    candidates = teacher_candidates(records)
    if not candidates:
        return None
    chosen = choose_teacher(records)
    lines = ["| teacher recipe (seed 0) | validation accuracy (chose) | test accuracy (not used) | trained | chosen |",
             "|---|---|---|---|---|"]  # fmt: skip
    for recipe, r in candidates:
        erasing = recipe["teacher_random_erasing"]
        name = f"{r.teacher_arch}, {recipe['teacher_epochs']} epochs" + (
            f", random erasing {erasing:g}" if erasing else ""
        )
        lines.append(f"| {name} | {selected_val_accuracy(r):.4f} | {r.test['accuracy']:.4f} | "
                     f"{(r.timestamp or '?')[:10]} | {'**yes**' if recipe == chosen else 'no'} |")  # fmt: skip
    return "\n".join(lines)
