"""What the previous README (the 2026-11-26 study, protocol 1) claimed, checked against the re-made study's records:
each claim is a pair of runs and the verdict it stated; the re-run's records give the pair's gain with the
interval over seeds and test images (Holm-adjusted across the claims), and the claim held, changed or fell.

    held     the re-run gives the verdict the claim stated
    changed  the direction stands but the verdict does not (a gain only before Holm's adjustment; a pair said to
             be indistinguishable now told apart)
    fell     a stated gain or loss is within noise now, or reversed

While a pair has fewer seeds than the study plans, its verdict is marked "interim, k of n seeds": more seeds
narrow the interval and can turn it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .comparison import Grouped
from .evidence import Evidence
from .stats import holm


@dataclass(frozen=True)
class Claim:
    text: str  # the claim, as the previous README made it
    said: str  # its numbers there
    a: str  # the run that was said to win (an fnmatch pattern over the re-run's run names)
    b: str  # the run it was compared with
    verdict: str  # what was claimed of a - b: gain | loss | within noise


PROTOCOL_1 = (
    Claim("plain logit KD beats labels alone", "logit-tuned +0.0046", "logit-tuned", "baseline", "gain"),
    Claim("DIST beats labels alone, by the most", "dist-tuned +0.0091", "dist-tuned", "baseline", "gain"),
    Claim("logit KD with a regressor beats labels alone", "+0.0072", "logit+regressor-tuned", "baseline", "gain"),
    Claim("FitNets beats labels alone", "+0.0063", "fitnets-tuned", "baseline", "gain"),
    Claim("hidden-state imitation does not beat labels alone", "-0.0007", "hidden-tuned", "baseline", "within noise"),
    Claim("attention transfer is worse than labels alone", "-0.0029", "at-tuned", "baseline", "loss"),
    Claim(
        "the learned regressor adds to the logit loss",
        "logit+regressor-tuned +0.0072 vs logit-tuned +0.0046",
        "logit+regressor-tuned",
        "logit+regressor-no-regressor",
        "gain",
    ),  # fmt: skip
    Claim("DIST beats plain logit KD", "ranking: beats", "dist-tuned", "logit-tuned", "gain"),
    Claim("DIST beats hidden-state imitation", "ranking: beats", "dist-tuned", "hidden-tuned", "gain"),
    Claim("DIST beats attention transfer", "ranking: beats", "dist-tuned", "at-tuned", "gain"),
    Claim(
        "DIST and logit KD with a regressor cannot be told apart",
        "ranking: tie",
        "dist-tuned",
        "logit+regressor-tuned",
        "within noise",
    ),  # fmt: skip
    Claim("DIST and FitNets cannot be told apart", "ranking: tie", "dist-tuned", "fitnets-tuned", "within noise"),
    Claim("the long logit-KD run beats a labels-only run as long", "+0.0041", "final", "final-baseline", "gain"),
    Claim(
        "at 1% of the labels, distillation gains most",
        "dist-tuned@1%labels +0.1789",
        "*-tuned@1%labels",
        "baseline@1%labels",
        "gain",
    ),  # fmt: skip
)

SIGN = {"gain": 1, "loss": -1, "within noise": 0}


def find_run(pattern: str, grouped: Grouped) -> str | None:
    """The first run name matching ``pattern`` (the all-label teacher's students, not the ``-semi`` variant)."""
    return next((n for n in grouped if fnmatch.fnmatchcase(n, pattern) and "-semi" not in n), None)


def claim_rows(
    grouped: Grouped, claims=PROTOCOL_1, evidence: Evidence | None = None, planned_seeds: int | None = None
) -> list[dict]:
    """Per claim: the re-run's pair (names, seeds), its gain and interval, and held / changed / fell (or why
    there is no verdict yet); a verdict over fewer seeds than ``planned_seeds`` reads "interim, k of n seeds" (a
    "no verdict" stays as it is)."""
    evidence = evidence or Evidence([r for seeds in grouped.values() for r in seeds.values()])
    rows = []
    for claim in claims:
        a, b = find_run(claim.a, grouped), find_run(claim.b, grouped)
        pair = evidence.gain(grouped[a], grouped[b]) if a and b else None
        rows.append({"claim": claim, "a": a, "b": b, "pair": pair})
    adjusted = holm({i: r["pair"].primary.p_value for i, r in enumerate(rows) if r["pair"] and not r["pair"].confound})
    for i, row in enumerate(rows):
        if i in adjusted:
            row["pair"].primary.p_holm = adjusted[i]
        row["outcome"] = outcome(row["claim"], row["pair"])
        seeds = len(row["pair"].seeds) if row["pair"] else 0
        if planned_seeds and 0 < seeds < planned_seeds and not row["outcome"].startswith("no verdict"):
            row["outcome"] = f"interim, {seeds} of {planned_seeds} seeds: {row['outcome']}"
    return rows


def outcome(claim: Claim, pair) -> str:
    if pair is None:
        return "not run yet"
    if pair.confound:
        return f"no verdict: {pair.confound}"
    now = pair.primary.verdict()
    if now == "one seed":
        return "no verdict: one seed"
    stated, sign = SIGN[claim.verdict], SIGN.get(now)
    if sign is None:  # above or below 0 only before Holm's adjustment
        return "changed: " + now
    if sign == stated:
        return "held"
    if stated == 0:
        return f"changed: now a {now}"
    return "fell: within noise" if sign == 0 else "fell: reversed"


def claims_table(rows: list[dict]) -> str:
    """Markdown: the claim, its protocol-1 numbers, the re-run's pair and gain with the interval over seeds and
    test images, Holm's p across the claims, and what became of the claim."""
    lines = ["| previous claim | it said | re-run pair | seeds | F1 gain | 95% CI, seeds and test images | p (Holm) | "
             "now |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        claim, pair = row["claim"], row["pair"]
        pair_name = f"{row['a'] or claim.a} vs {row['b'] or claim.b}"
        if pair is None:
            lines.append(f"| {claim.text} | {claim.said} | {pair_name} | | | | | {row['outcome']} |")
            continue
        gain = pair.primary
        ci = f"[{gain.low:+.4f}, {gain.high:+.4f}]" if gain.low is not None else ""
        p = f"{gain.p_holm:.3f}" if gain.p_holm is not None else ""
        lines.append(f"| {claim.text} | {claim.said} | {pair_name} | {len(pair.seeds)} | {gain.mean:+.4f} | {ci} | "
                     f"{p} | {row['outcome']} |")  # fmt: skip
    return "\n".join(lines)
