"""The Markdown of ``report.md``: the results table, the protocol and provenance notes and the
paired comparisons (see :func:`sergraph.results.report.write_report`)."""

from __future__ import annotations

import math

from sergraph.metrics import METRICS, definitions, primary
from sergraph.metrics import percent as _percent
from sergraph.results.comparable import WITHIN_CORPUS
from sergraph.results.compare import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from sergraph.results.summary import NOT_RECORDED


def _fold_list(keys: list[tuple[int, str]]) -> str:
    return ", ".join(f"{fold} ({speakers})" for fold, speakers in keys)


#: The level below which a paired test's difference is called significant.
SIGNIFICANCE = 0.05


def significance_words(test: dict) -> str:
    """What a paired test allows one to say, in words: "significant" only where the Wilcoxon
    p < :data:`SIGNIFICANCE`, Holm-adjusted where the test is one of the family of comparisons
    with the reference (``p_holm``); a bootstrap interval that excludes 0 is not a conclusion
    the test does not back."""
    p, adjusted = test.get("p_value"), test.get("p_holm")
    if adjusted is not None:  # one of a family of comparisons with the reference
        if adjusted < SIGNIFICANCE:
            return f"significant (Holm p < {SIGNIFICANCE})"
        if p < SIGNIFICANCE:
            return (
                f"not significant after Holm's correction (p < {SIGNIFICANCE}, Holm p ≥ "
                f"{SIGNIFICANCE})"
            )
    if p is not None and p < SIGNIFICANCE:
        return f"significant (p < {SIGNIFICANCE})"
    low, high = test.get("ci_low", math.nan), test.get("ci_high", math.nan)
    excludes_zero = not math.isnan(low) and (low > 0 or high < 0)
    if excludes_zero:
        return (
            f"not significant (p ≥ {SIGNIFICANCE}); the bootstrap interval excludes 0, which the "
            "paired test does not back"
        )
    return f"not significant (p ≥ {SIGNIFICANCE})" if p is not None else "not tested"


def _family_words(tests: list[dict]) -> str:
    """What the Holm column adjusts for, in words (the family and its size)."""
    family = sum(1 for test in tests if test.get("p_holm") is not None)
    if not family:
        return (
            "– (Holm's adjustment covers the comparisons with a declared reference; "
            "there is none with a p-value here)."
        )
    return (
        f"the p adjusted by Holm's step-down method for the family of the {family} "
        "comparison(s) with the reference in this report that have a p (family-wise error "
        "rate); pairs outside that family (controls, other pairs) are not adjusted (–)."
    )


def format_report(
    name: str,
    collected: list[dict],
    reference: str | None,
    tests: list[dict],
    figures: list[str],
    same_folds: bool = True,
    unfinished: list[str] = (),
    refused: list[tuple[str, str]] = (),
    refused_data: list[tuple[str, str, list[str]]] = (),
    refused_corpus: list[tuple[str, str]] = (),
) -> str:
    rows = [item["row"] for item in collected]
    shown = primary().display
    lines = [
        f"# {name}: speaker-held-out results (%)",
        "",
        "| label | model | protocol | folds × seeds | "
        + "".join(f"{m.display} mean ± std | " for m in METRICS.values())
        + "".join(f"pooled {m.display} | " for m in METRICS.values())
        + "provenance |",
        "| --- | --- | --- | ---: |" + " ---: |" * (2 * len(METRICS)) + " --- |",
    ]
    for row in rows:
        cells = f"{row['folds']} × {row['seeds']}"
        if not row["complete"]:
            cells += f" ({row['cells']} cells, incomplete"
            if row.get("missing"):
                cells += f"; missing {row['missing'].replace(' ', ', ')}"
            cells += ")"
        label = f"{row['label']} (reference)" if row["label"] == reference else row["label"]
        protocol = row["protocol"]
        if row.get("evaluation", WITHIN_CORPUS) != WITHIN_CORPUS:
            protocol = f"{protocol}; {row['evaluation'].replace('cross-corpus', 'CROSS-CORPUS')}"
        lines.append(
            f"| {label} | {row['model']} | {protocol} | {cells} | "
            + "".join(f"{_percent(row[f'{n}_mean'], row[f'{n}_std'])} | " for n in METRICS)
            + "".join(f"{_percent(row[f'pooled_{n}'], row[f'pooled_{n}_std'])} | " for n in METRICS)
            + f"{row['provenance']} |"
        )
    n_folds = max(row["folds"] for row in rows)
    lines += [
        "",
        f"A gap of a few points between two rows over {n_folds} speaker folds is often noise "
        "(compare it with the fold-to-fold std and the paired tests below), not a ranking.",
        "",
    ]
    incomplete = [row["label"] for row in rows if not row["complete"]]
    if incomplete:
        lines += [
            f"INCOMPLETE: {', '.join(incomplete)} lack(s) some fold x seed cells, so their "
            "numbers are not final and not comparable with complete rows; finish them with "
            "`sergraph train` (same command) before reporting.",
            "",
        ]
    notes = sorted({item["protocol"]["note"] for item in collected})
    lines += ["Protocols:"] + [f"- {note}." for note in notes] + [""]
    changed = [(item["label"], item["changed_sources"]) for item in collected]
    changed = [(label, files) for label, files in changed if files]
    if changed:
        lines += ["WARNING: config files changed since their cells ran:"]
        lines += [f"- {label}: {'; '.join(files)}" for label, files in changed] + [""]
    if unfinished:
        lines += [f"No finished fold yet, so not in the table: {', '.join(unfinished)}.", ""]
    if not same_folds:
        lines += [
            "The labels do not cover the same folds, so their rows average over different "
            "test speakers; the paired comparisons below use shared folds only.",
            "",
        ]
    lines += [
        f"{definitions()}. "
        "Mean ± std: over all fold × seed cells (sample std). Pooled: each metric over all test "
        "predictions of a seed, averaged over seeds (± sample std over seeds when there are "
        "several). Provenance: 'clean @ commit' when every cell of the row ran from that one "
        "commit of a clean tree. No row is marked best: a reference is declared (experiment key "
        "`reference` or --reference), never chosen by a test score. Machine-readable: "
        "results.csv, folds.csv (fractions).",
        "",
    ]
    if any(row[f"{n}_mean"] is None for row in rows for n in METRICS):
        lines += [NOT_RECORDED, ""]
    lines += [
        f"## Paired comparisons ({shown} per fold, seeds averaged first)",
        "",
        f"Reference: {reference}."
        if reference
        else "No reference declared (experiment key `reference` or --reference): pairs only.",
        "",
    ]
    if refused:
        pairs = ", ".join(f"{a} / {b}" for a, b in refused)
        lines += [
            f"Not compared, their protocols differ (--cross-protocol to test anyway): {pairs}.",
            "",
        ]
    if refused_corpus:
        pairs = ", ".join(f"{a} / {b}" for a, b in refused_corpus)
        lines += [
            "Never compared, one is cross-corpus (tested on another corpus than it trained on) "
            f"and the other within-corpus (no flag pairs them): {pairs}.",
            "",
        ]
    if refused_data:
        lines += [
            "Not compared, their scored sets or data differ (--cross-data to test anyway, e.g. "
            "a deliberate cross-corpus comparison):",
            *[f"- {a} / {b}: {'; '.join(what)}" for a, b, what in refused_data],
            "",
        ]
    if not tests:
        lines += [
            "One label only: nothing to compare." if len(rows) == 1 else "No pair to compare.",
            "",
        ]
    else:
        lines += [
            f"Δ {shown} = A − B in points over the folds both labels have; 95% CI: percentile "
            f"bootstrap of the mean over folds ({BOOTSTRAP_RESAMPLES} resamples, seed "
            f"{BOOTSTRAP_SEED}); p: two-sided Wilcoxon signed-rank test (zero differences "
            f"dropped), as computed; Holm p: {_family_words(tests)} With few folds the "
            "bootstrap interval is too narrow and the test is weak: a difference is called "
            f"significant only where p < {SIGNIFICANCE} (the Holm p, where there is one), "
            f"and an interval that excludes 0 while p ≥ {SIGNIFICANCE} is no evidence of a "
            "difference.",
            "",
            f"| A | B | folds paired | Δ {shown} | 95% CI | Wilcoxon p | Holm p | note |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |",
        ]
        for test in tests:
            notes = [significance_words(test)]
            notes += [test["note"]] if test["note"] else []
            if test.get("cross_data"):
                notes.insert(0, f"CROSS-DATA: {'; '.join(test['cross_data'])}")
            if "CROSS-PROTOCOL" in test["kind"]:
                notes.insert(0, test["kind"].split(", ")[1])
            if test.get("undeclared"):
                notes.append(
                    "configs also differ in keys their variants do not declare: "
                    + ", ".join(test["undeclared"])
                )
            if test["kind"].startswith("vs control"):
                notes.insert(0, "B is A's declared control")
            if test["only_first"]:
                notes.append(f"unpaired, only in {test['first']}: {_fold_list(test['only_first'])}")
            if test["only_second"]:
                notes.append(
                    f"unpaired, only in {test['second']}: {_fold_list(test['only_second'])}"
                )
            has_ci = not math.isnan(test["ci_low"])
            lines.append(
                f"| {test['first']} | {test['second']} | {test['paired']} | "
                + (f"{100 * test['mean_difference']:+.2f}" if has_ci else "–")
                + " | "
                + (
                    f"[{100 * test['ci_low']:+.2f}, {100 * test['ci_high']:+.2f}]"
                    if has_ci
                    else "–"
                )
                + " | "
                + (f"{test['p_value']:.3g}" if test["p_value"] is not None else "–")
                + " | "
                + (f"{test['p_holm']:.3g}" if test.get("p_holm") is not None else "–")
                + f" | {'; '.join(notes)} |"
            )
        lines.append("")
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)
