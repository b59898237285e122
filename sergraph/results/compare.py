"""Paired comparisons between the labels of a report: like with like, against a declared
reference.

A paired test compares two labels' per-fold UA (the primary metric,
:data:`sergraph.metrics.PRIMARY`; seeds averaged first) over the folds both have. The reference
is the label the experiment declares (key ``reference``) or the one the user names, never one
chosen by a test score; labels evaluated under different protocols are not paired unless asked
for, and then the test says so.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: Above this many labels only the comparisons against the reference label are tabulated.
MAX_LABELS_ALL_PAIRS = 8


def paired_test(
    first: dict,
    second: dict,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Paired comparison of two labels' per-fold scores (``first - second``).

    Args:
        first, second: fold key -> score (the primary metric averaged over seeds); only keys in
            both are paired.
        resamples: bootstrap resamples of the paired folds.
        seed: seed of the bootstrap.

    Returns:
        ``paired`` (number of folds in both), ``only_first``/``only_second`` (unpaired keys),
        ``differences``, ``mean_difference``, ``ci_low``/``ci_high`` (percentile bootstrap 95%
        interval of the mean difference), ``nonzero`` (differences that are not zero),
        ``p_value`` (two-sided Wilcoxon signed-rank, ``None`` when there is nothing to test) and
        ``note`` (why the test says little, or "").
    """
    from scipy.stats import wilcoxon

    shared = sorted(set(first) & set(second))
    differences = np.array([first[key] - second[key] for key in shared], dtype=float)
    # Seed-averaged scores reached by different summation orders can differ by an ulp; such a
    # difference is a tie, not evidence.
    differences[np.abs(differences) < 1e-12] = 0.0
    out = {
        "paired": len(shared),
        "only_first": sorted(set(first) - set(second)),
        "only_second": sorted(set(second) - set(first)),
        "differences": differences.tolist(),
        "mean_difference": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "nonzero": int(np.count_nonzero(differences)),
        "p_value": None,
        "note": "",
    }
    if not len(shared):
        out["note"] = "no fold in common: nothing to pair"
        return out
    out["mean_difference"] = float(differences.mean())
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(shared), size=(resamples, len(shared)))].mean(axis=1)
    out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    nonzero = out["nonzero"]
    if nonzero == 0:
        out["note"] = "all paired differences are zero: nothing to test"
        return out
    with warnings.catch_warnings():  # small-sample and tie warnings; the note says it plainly
        warnings.simplefilter("ignore")
        out["p_value"] = float(wilcoxon(differences, alternative="two-sided").pvalue)
    if nonzero < 6:
        # Zeros are dropped; with n nonzero differences of one sign the exact two-sided p is
        # 2 / 2**n, which is above 0.05 for n <= 5.
        out["note"] = (
            f"only {nonzero} nonzero difference(s): the signed-rank test cannot go below "
            f"p = {2.0 ** (1 - nonzero):.3g}, so it has no power at the 0.05 level"
        )
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (in their order): the i-th smallest
    of m is multiplied by m - i + 1, capped at 1, and made non-decreasing along the sorted
    order. Rejecting where the adjusted p < alpha keeps the family-wise error rate at alpha.

    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def is_family(test: dict) -> bool:
    """A comparison in the family that Holm's adjustment covers: a row against the reference
    that has a p-value (a comparison whose paired differences are all zero is not tested)."""
    return test["kind"].startswith("vs reference") and test.get("p_value") is not None


def add_holm(tests: list[dict]) -> None:
    """Set ``p_holm`` of every test: Holm-adjusted over the family (:func:`is_family`: the rows
    compared with the reference in this report), ``None`` outside it."""
    family = [test for test in tests if is_family(test)]
    for test, adjusted in zip(family, holm([t["p_value"] for t in family]), strict=True):
        test["p_holm"] = adjusted
    for test in tests:
        test.setdefault("p_holm", None)


def comparisons(
    collected: list[dict],
    reference: str | None,
    cross_protocol: bool = False,
    controls: dict[str, str] | None = None,
    cross_data: bool = False,
) -> tuple[
    list[dict], list[tuple[str, str]], list[tuple[str, str, list[str]]], list[tuple[str, str]]
]:
    """Every label against the declared ``reference`` and against its declared control
    (``controls``: label -> control label, see :func:`declared_controls`); also every other
    pair when there are few labels (all pairs when there is no reference).

    Labels of different protocols are not paired unless ``cross_protocol``; labels whose
    cells of a shared fold scored other utterances or come from other data
    (:func:`sergraph.results.comparable.fold_differences`) are not paired unless
    ``cross_data``. The test's ``kind`` says when either was asked for; its ``undeclared``
    lists the config keys the pair differs in that its variants do not declare. A
    cross-corpus label (its cells test another corpus than they trained on, see
    :func:`sergraph.results.comparable.corpus_evaluation`) is never paired with a
    within-corpus one, whatever the flags: their scores answer different questions.

    Returns:
        (the tests, each with ``p_holm``: see :func:`add_holm`; the pairs refused because
        their protocols differ, the pairs refused because their scored sets or data differ
        with what differs, the pairs refused because one is cross-corpus and the other not).
    """
    from sergraph.results.comparable import fold_differences, undeclared_differences

    by_label = {c["label"]: c for c in collected}
    labels = [c["label"] for c in collected]
    pairs = []
    if reference is not None:
        pairs += [(reference, label, "vs reference") for label in labels if label != reference]
    for label, control in (controls or {}).items():
        if label not in by_label or control not in by_label:
            continue
        # A - its control; a pair already there as "vs reference" is relabelled, not repeated
        pairs = [pair for pair in pairs if frozenset(pair[:2]) != frozenset((label, control))]
        pairs.append((label, control, "vs control"))
    others = [label for label in labels if label != reference]
    if len(labels) <= MAX_LABELS_ALL_PAIRS:
        done = {frozenset(pair[:2]) for pair in pairs}
        pairs += [
            (a, b, "pair")
            for a, b in itertools.combinations(others, 2)
            if frozenset((a, b)) not in done
        ]
    out, refused, refused_data, refused_corpus = [], [], [], []
    for a, b, kind in pairs:
        if by_label[a].get("cross_corpus", False) != by_label[b].get("cross_corpus", False):
            refused_corpus.append((a, b))
            continue
        protocols = by_label[a]["protocol"]["name"], by_label[b]["protocol"]["name"]
        if protocols[0] != protocols[1]:
            if not cross_protocol:
                refused.append((a, b))
                continue
            kind = f"{kind}, CROSS-PROTOCOL ({protocols[0]} vs {protocols[1]})"
        differing, unchecked = fold_differences(
            by_label[a].get("fold_data") or {}, by_label[b].get("fold_data") or {}
        )
        if differing:
            if not cross_data:
                refused_data.append((a, b, differing))
                continue
            kind = f"{kind}, CROSS-DATA"
        test = paired_test(by_label[a]["fold_scores"], by_label[b]["fold_scores"])
        test["cross_data"] = differing
        if unchecked:
            test["note"] = "; ".join(
                n for n in (test["note"], "data not recorded by some cells: not checked") if n
            )
        undeclared = undeclared_differences(by_label[a].get("config"), by_label[b].get("config"))
        out.append({"first": a, "second": b, "kind": kind, "undeclared": undeclared, **test})
    add_holm(out)
    return out, refused, refused_data, refused_corpus


def declared_reference(collected: list[dict]) -> str | None:
    """The baseline the labels' experiment file declares (key ``reference``), if one label of
    that name is here. Different declarations raise."""
    declared = {
        (item["config"] or {}).get("reference")
        for item in collected
        if (item["config"] or {}).get("reference")
    }
    if len(declared) > 1:
        raise ValueError(
            f"the labels declare different references {sorted(declared)}; give one with --reference"
        )
    if not declared:
        return None
    name = declared.pop()
    matches = [
        c["label"] for c in collected if c["label"] == name or c["label"].endswith(f"/{name}")
    ]
    return matches[0] if len(matches) == 1 else None


def declared_controls(collected: list[dict]) -> dict[str, str]:
    """Label -> its control label, as the labels' experiment file declares them (key
    ``controls``), for the pairs whose both labels are here (labels may carry a study prefix,
    ``study/label``)."""
    by_name: dict[str, list[str]] = {}
    for item in collected:
        by_name.setdefault(item["label"].rsplit("/", 1)[-1], []).append(item["label"])
    out = {}
    for item in collected:
        declared = (item["config"] or {}).get("controls") or {}
        name = item["label"].rsplit("/", 1)[-1]
        control = declared.get(name)
        if control is None:
            continue
        prefix = item["label"][: -len(name)]
        if f"{prefix}{control}" in by_name.get(control, []):
            out[item["label"]] = f"{prefix}{control}"
    return out
