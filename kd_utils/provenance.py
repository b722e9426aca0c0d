"""Where the report's numbers come from: the machines, seeds and dates of the runs, the sweeps that chose their
settings (validation F1 only; the test read once for the chosen one), and the notebook executions that made them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .comparison import Runs
from .distill import STUDENT_METHODS
from .records import RunRecord
from .results import load_records, read_json


def provenance(runs: Runs, all_runs: list[RunRecord] | None = None) -> str:
    """Where the numbers come from: dataset, split sizes, seeds, the machines that trained the runs, torch (of
    the evaluating machines and the training ones), and when the runs were recorded."""
    first = next(iter(runs.values()))
    sizes = first.get("data_sizes", {})
    segments = [s for r in runs.values() for s in r.trained_on]
    hardware = " / ".join(dict.fromkeys(s.hardware for s in segments))
    evaluated = [(r.get("environment") or {}).get("torch", "?") for r in runs.values()]
    torch_versions = ", ".join(dict.fromkeys([*evaluated, *(s.torch for s in segments if s.torch)]))
    dates = sorted(r.timestamp[:10] for r in runs.values() if r.timestamp)
    when = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "unknown")
    split = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    seeds = sorted({r.seed for r in all_runs}) if all_runs else [first.seed]
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return (
        f"Measured on {first.dataset} ({split}), {seed_text}, {hardware}, torch {torch_versions}; runs recorded {when}."
    )


def sweep_table(sweeps_dir: str | Path, link_from: str | Path | None = None) -> str | None:
    """One row per sweep saved under ``sweeps_dir`` (``python -m kd_utils sweep``): its trials, what it searched,
    the setting it chose by validation macro F1, and that setting's test F1, read once after the choice.

    ``link_from`` (the README's folder) makes each method a link to its validation-F1 map.
    """
    rows = []
    for path in sorted(Path(sweeps_dir).glob("*.json")) if Path(sweeps_dir).is_dir() else []:
        try:
            saved = read_json(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(saved, dict) or not {"trials", "space", "method"} <= saved.keys():
            continue  # a results file (the tuned run), not a sweep's trials
        try:
            row = _sweep_row(path, saved, link_from)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a trials file missing fields: left out (it renders nothing it cannot read)
        if row is not None:
            rows.append(row)
    if not rows:
        return None
    header = ("| method | trials | searched | chosen by validation F1 | its val F1 | val F1 of the trials | its test F1 "
              "| trial hours |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    return "\n".join([header, *(row for _, row in sorted(rows, key=lambda r: r[0]))])


def _sweep_row(path: Path, saved: dict, link_from) -> tuple[int, str] | None:
    """One sweep's row (its order among the methods, the markdown); None while no trial completed."""
    done = [t for t in saved["trials"] if t["state"] == "COMPLETE"]
    rerun = {t.get("rerun_of") for t in saved["trials"]}  # a trial trained again counts once, as its re-run
    pruned = [t for t in saved["trials"] if t["state"] == "PRUNED" and t["number"] not in rerun]
    best = next((t for t in done if t["number"] == saved.get("best_trial")), None)
    if best is None:
        return None
    scored = path.with_name(f"{path.stem}-best.json")  # the chosen trial's run, with its test metrics
    tuned = [r for r in load_records(scored) if (r.get("sweep") or {}).get("trial") == best["number"]]
    test = f"{tuned[-1].test['f1']:.4f}" if tuned else "not scored yet"
    method = saved["method"] + (" (v2)" if str(saved.get("study", "")).endswith("-v2") else "")  # protocol 2's
    picture = path.with_suffix(".png")
    if link_from is not None and picture.exists():
        method = f"[{method}]({Path(os.path.relpath(picture.absolute(), link_from)).as_posix()})"
    chosen = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items())
    scores = [t["best_val_f1"] for t in done]
    hours = sum(t.get("seconds") or 0 for t in saved["trials"]) / 3600
    order = STUDENT_METHODS.index(saved["method"]) if saved["method"] in STUDENT_METHODS else len(STUDENT_METHODS)
    trials = f"{len(done)}" + (f" + {len(pruned)} pruned" if pruned else "")
    return (order, f"| {method} | {trials} | {', '.join(f'{k} {v}' for k, v in saved['space'].items())} | "
                        f"{chosen} | {best['best_val_f1']:.4f} | {min(scores):.4f} – {max(scores):.4f} | {test} | "
                        f"{hours:.2f} |")  # fmt: skip


NOTEBOOK_FIELDS = ("notebook", "profile", "dataset", "device", "precision", "started", "wall_seconds")


def notebook_times(results_dir: str | Path) -> str | None:
    """A table of the notebooks' stored runs (profile, dataset, device, precision, start, wall time), from the
    ``<results>/<dataset>/notebooks.json`` that each notebook's last cell writes; an entry missing a field is
    left out and named under the table."""
    rows, skipped = [], []
    for path in sorted(Path(results_dir).glob("*/notebooks.json")):
        try:
            entries = read_json(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{path} is not readable JSON ({err}); restore it from git or delete it") from None
        entries = entries.get("notebooks", entries) if isinstance(entries, dict) else entries
        entries = entries if isinstance(entries, list) else list(entries.values()) if isinstance(entries, dict) else []
        complete = [e for e in entries if isinstance(e, dict) and all(k in e for k in NOTEBOOK_FIELDS)]
        skipped += [f"{path.parent.name}/{e.get('notebook', '?') if isinstance(e, dict) else repr(e)}"
                    for e in entries if not any(e is c for c in complete)]  # fmt: skip
        for e in sorted(complete, key=lambda e: str(e["notebook"])):
            rows.append(
                f"| `{e['notebook']}` | {e['profile']} | {e['dataset']} | {e['device']} | {e['precision']} | "
                f"{e['started']} | {float(e['wall_seconds']) / 60:.1f} |"
            )
    if not rows:
        return None
    header = "| notebook | profile | dataset | device | precision | started | wall time (min) |\n|---|---|---|---|---|---|---|"
    note = f"\n\n(left out, missing fields: {', '.join(skipped)})" if skipped else ""
    return "\n".join([header, *rows]) + note
