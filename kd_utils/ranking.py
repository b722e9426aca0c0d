"""Which method beats which: every pair of runs in a family compared the same way as a method against labels
alone (paired by seed, the interval over seeds and test images, Holm across the family's pairs), the runs
ordered with those that cannot be told apart named as such, and where validation orders them otherwise.

A *family* is the runs compared with each other: the same pairing keys (data stream, student, length, label
budget), at least two seeds, no teacher. A pair trained on different machines gets no verdict (``evidence``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from .comparison import NOT_COMPARED, Grouped, first_record, gain_sentence, interval_text, label
from .evidence import Evidence, PairGain
from .stats import holm

LEVEL = 0.05  # a pair is told apart when its interval excludes 0 and its Holm-adjusted p is below this


@dataclass
class Pair:
    a: str  # the run with the higher mean test F1
    b: str
    gain: PairGain  # a - b

    @property
    def told_apart(self) -> bool | None:
        """True: ``a`` beats ``b``; False: cannot be told apart; None: no verdict (confounded or one seed)."""
        primary = self.gain.primary
        if self.gain.confound or primary.low is None:
            return None
        p = primary.p_holm if primary.p_holm is not None else primary.p_value
        return bool(primary.low > 0 and p < LEVEL)


@dataclass
class Family:
    names: list[str]  # ordered by mean test macro F1, best first
    pairs: list[Pair] = field(default_factory=list)
    test_f1: dict[str, float] = field(default_factory=dict)
    val_f1: dict[str, float] = field(default_factory=dict)

    def pair(self, x: str, y: str) -> Pair | None:
        return next((p for p in self.pairs if {p.a, p.b} == {x, y}), None)

    def apart_from(self, name: str, outcome: bool | None) -> list[str]:
        """The runs ``name``'s pairs end in ``outcome`` with (True: told apart, False: not, None: no verdict)."""
        others = [p.b if p.a == name else p.a for p in self.pairs if name in (p.a, p.b) and p.told_apart is outcome]
        return [n for n in self.names if n in others]

    def verdict(self, x: str, y: str) -> bool | None:
        pair = self.pair(x, y)
        return None if pair is None else pair.told_apart

    def top_group(self) -> list[str]:
        """The best run and every run no comparison shows to be worse than it (ties and no-verdicts included)."""
        best = self.names[0]
        return [best, *(n for n in self.names[1:] if self.verdict(best, n) is not True)]


def families(grouped: Grouped) -> list[list[str]]:
    """Run names compared with each other (same pairing keys, >= 2 seeds, neither the teacher nor an ablation), in
    ``grouped``'s order."""
    keyed: dict[frozenset, list[str]] = {}
    for name, seeds in grouped.items():
        if first_record(seeds).role in NOT_COMPARED or len(seeds) < 2:
            continue
        keyed.setdefault(frozenset(r.pairing_key() for r in seeds.values()), []).append(name)
    return [names for names in keyed.values() if len(names) > 1]


def rank(grouped: Grouped, evidence: Evidence | None = None) -> list[Family]:
    """Every family with all its pairs compared and Holm-adjusted over the pairs that get a verdict."""
    evidence = evidence or Evidence([r for seeds in grouped.values() for r in seeds.values()])
    out = []
    for names in families(grouped):

        def mean(name: str, metric: str) -> float:
            values = [r.test["f1"] if metric == "test" else r.best_val_f1 for r in grouped[name].values()]
            return sum(values) / len(values)

        test_f1 = {n: mean(n, "test") for n in names}
        val_f1 = {n: mean(n, "val") for n in names if all(r.best_val_f1 is not None for r in grouped[n].values())}
        ordered = sorted(names, key=lambda n: -test_f1[n])
        family = Family(ordered, test_f1=test_f1, val_f1=val_f1)
        for x, y in combinations(ordered, 2):  # x above y
            gain = evidence.gain(grouped[x], grouped[y])
            if gain is not None:
                family.pairs.append(Pair(x, y, gain))
        tested = [p for p in family.pairs if not p.gain.confound and p.gain.primary.p_value is not None]
        adjusted = holm({i: p.gain.primary.p_value for i, p in enumerate(tested)})
        for i, p in enumerate(tested):
            p.gain.primary.p_holm = adjusted[i]
        out.append(family)
    return out


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _names(names: list[str], grouped: Grouped) -> str:
    return ", ".join(label(n, first_record(grouped[n])) for n in names) or "-"


def ranking_table(family: Family, grouped: Grouped) -> str:
    """Markdown: the runs best first, their mean test and validation F1, and what each pair allows to say."""
    val_order = sorted(family.val_f1, key=lambda n: -family.val_f1[n])
    lines = [
        "| rank (test) | run | seeds | test macro F1 | val macro F1 (rank) | beats (Holm p < 0.05) | cannot be told "
        "apart from | no verdict: other machines |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(family.names, 1):
        val = f"{family.val_f1[name]:.4f} ({val_order.index(name) + 1})" if name in family.val_f1 else ""
        beats = [p.b for p in family.pairs if p.a == name and p.told_apart]
        lines.append(
            f"| {i} | {label(name, first_record(grouped[name]))} | {len(grouped[name])} | {family.test_f1[name]:.4f} | "
            f"{val} | {_names(beats, grouped)} | {_names(family.apart_from(name, False), grouped)} | "
            f"{_names(family.apart_from(name, None), grouped)} |"
        )
    return "\n".join(lines)


def order_disagreements(family: Family) -> list[tuple[str, str]]:
    """Pairs that test F1 orders one way and validation F1 the other (``(higher on test, higher on val)``)."""
    return [
        (p.a, p.b)
        for p in family.pairs
        if p.a in family.val_f1 and p.b in family.val_f1 and family.val_f1[p.b] > family.val_f1[p.a]
    ]


def findings(family: Family, grouped: Grouped) -> list[str]:
    """The family's verdicts as sentences: which pairs are told apart, which group leads, what is confounded,
    and where validation disagrees with test."""

    def n(name: str) -> str:
        return label(name, first_record(grouped[name]))

    lines = []
    apart = [p for p in family.pairs if p.told_apart]
    for p in apart:
        g = p.gain.primary
        lines.append(
            f"{n(p.a)} beats {n(p.b)}: {g.mean:+.4f} test macro F1, 95% interval over seeds and test images "
            f"{interval_text(g)}, Holm p {p_text(g.p_holm)}."
        )
    top = family.top_group()
    verdicts = [family.verdict(family.names[0], x) for x in top[1:]]
    if len(top) == 1:
        lines.append(f"{n(top[0])} leads: every other run of this comparison is shown to be worse.")
    else:
        ties = [x for x, v in zip(top[1:], verdicts) if v is False]
        unjudged = [x for x, v in zip(top[1:], verdicts) if v is None]
        text = f"{n(top[0])} has the highest mean test macro F1"
        if ties:
            text += f", but cannot be told apart from {', '.join(map(n, ties))}"
        if unjudged:
            text += f"{',' if ties else ''} and is not compared with {', '.join(map(n, unjudged))} (trained on other machines or one seed)"
        lines.append(text + ": the data name no single best run.")
    if not apart:
        lines.append("No pair of runs with a verdict is told apart.")
    confounded = [p for p in family.pairs if p.gain.confound]
    if confounded:
        classes = sorted({p.gain.confound.removeprefix("confounded: ") for p in confounded})
        lines.append(
            f"{len(confounded)} of {len(family.pairs)} pairs get no verdict because their runs trained on different "
            f"machines ({'; '.join(classes)})."
        )
    swapped = order_disagreements(family)
    if swapped:
        shown = ", ".join(f"{n(a)} above {n(b)}" for a, b in swapped[:6])
        more = f" and {len(swapped) - 6} more" if len(swapped) > 6 else ""
        lines.append(
            f"Validation and test disagree on the order of {len(swapped)} of {len(family.pairs)} pairs: test puts "
            f"{shown}{more}, validation the other way round."
        )
    return lines


def family_title(family: Family, grouped: Grouped) -> str:
    r = first_record(grouped[family.names[0]])
    labels = "all labels" if r.labeled_fraction >= 1 else f"{100 * r.labeled_fraction:g}% of the labels"
    seeds = sorted({s for n in family.names for s in grouped[n]})
    return f"{r.epochs} epochs, {labels}, seeds {', '.join(map(str, seeds))}"


def findings_text(rows: list[dict], families: list[Family], grouped: Grouped) -> str:
    """The verdicts as sentences the code writes: each run against labels alone, then each family's pairs."""
    lines = ["Against labels alone (each run paired by seed with the labels-only run of its length and budget):", ""]
    for row in rows:
        if row["pair"] is not None and row["gain"].n >= 2:
            lines.append(f"- {label(row['name'], row['record'])} vs {row['reference']}: "
                         f"{gain_sentence(row['gain'], row['pair'].confound)}.")  # fmt: skip
    for family in families:
        lines += ["", f"Between the runs of {family_title(family, grouped)}:", ""]
        lines += [f"- {line}" for line in findings(family, grouped)]
    return "\n".join(lines)


def pairs_table(family: Family, grouped: Grouped) -> str:
    """Markdown: every pair of the family with both 95% intervals, Holm's p and what it allows to say."""
    lines = [
        "| higher | lower | gain | 95% CI, seeds only | 95% CI, seeds and test images | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in family.pairs:
        g = p.gain.primary
        holm_p = p_text(g.p_holm) if g.p_holm is not None else ""
        verdict = p.gain.confound or {True: "told apart", False: "cannot be told apart", None: "one seed"}[p.told_apart]
        lines.append(
            f"| {label(p.a, first_record(grouped[p.a]))} | {label(p.b, first_record(grouped[p.b]))} | "
            f"{p.gain.t.mean:+.4f} | {interval_text(p.gain.t)} | {interval_text(p.gain.combined)} | {holm_p} | "
            f"{verdict} |"
        )
    return "\n".join(lines)
