"""Like with like: which cells may be pooled, paired or chosen between, read from the data
record every cell's ``metrics.json`` holds (:mod:`sergraph.data.fingerprint`).

- **Pooled** (one label's summary): every cell of a label must come from one data: the same
  fold partition, the same utterances, labels and audio for every speaker, the same scored set
  for every seed of a fold. Otherwise :func:`check_pooled` refuses, naming the cells.
- **Paired** (``report``) and **chosen between** (``select``): two labels' cells of one fold
  must score the same utterances of the same data (:func:`fold_differences`). Otherwise the pair
  is refused, naming the differing items ("eval.enrollment 0.2 vs 0.5: scored sets differ",
  "labels differ for speaker(s) 03"), unless asked for (``--cross-data``: a deliberate
  cross-corpus comparison), and then the output says so.
- A pair whose configurations differ in keys other than those their variants declare gets a
  note listing them (:func:`undeclared_differences`).

Cells written before cells recorded their data cannot be checked; the output says so.
"""

from __future__ import annotations

from pathlib import Path

from sergraph.data.fingerprint import content_differences, differences

#: Configuration keys that never change a result or name the cell (left out of the config
#: difference note); prefixes end with a dot.
IGNORED_PREFIXES = ("logger.", "variants.", "grid.", "run.sources.", "slurm.", "controls.")
IGNORED_KEYS = ("run.label", "reference")


def check_pooled(root: Path, cells: list[tuple[Path, dict]]) -> None:
    """Refuse to pool the cells of one label that come from different data.

    Raises:
        ValueError: naming the label folder, two cells that differ and how.
    """
    recorded = [(cell, metrics["data"]) for cell, metrics in cells if metrics.get("data")]
    if len(recorded) < 2:
        return
    problems = []
    first_cell, first = recorded[0]
    for cell, data in recorded[1:]:
        if data.get("folds") != first.get("folds"):
            problems.append(
                f"{_name(cell, root)} and {_name(first_cell, root)} come from different fold "
                "partitions (speakers added or removed, or fold numbering shifted)"
            )
        what = content_differences(first, data, verb="differ for")
        what = [w for w in what if not w.startswith("speakers ")]  # other folds, other speakers
        if what:
            problems.append(f"{_name(cell, root)} vs {_name(first_cell, root)}: {'; '.join(what)}")
    by_fold: dict[int, tuple[Path, dict]] = {}
    for cell, metrics in cells:
        data = metrics.get("data")
        if not data:
            continue
        fold = int(metrics["fold"])
        if fold in by_fold and by_fold[fold][1].get("scored") != data.get("scored"):
            problems.append(
                f"{_name(cell, root)} and {_name(by_fold[fold][0], root)} scored different "
                "utterances"
            )
        by_fold.setdefault(fold, (cell, data))
    if problems:
        shown = "\n  ".join(problems[:10])
        raise ValueError(
            f"{root}: its cells come from different data and cannot be pooled:\n  {shown}\n"
            "Re-run the study with `sergraph train --rerun-changed` (the changed cells are "
            "computed again on the current data), or report the cells apart"
        )


#: How a within-corpus row is described (``evaluation`` of ``results.csv``).
WITHIN_CORPUS = "within-corpus"


def corpus_evaluation(records: list[dict]) -> tuple[bool, str]:
    """Whether a label's cells are cross-corpus (their ``metrics.json`` has
    ``evaluation.cross_corpus``: a cross-corpus study's cells and ``sergraph evaluate``'s) and
    which corpora, in words (``cross-corpus: a → b``; one entry per held-out corpus of a
    leave-one-corpus-out study), else ``(False, "within-corpus")``.
    """
    pairs: list[str] = []
    crossed = False
    for record in records:
        evaluation = record.get("evaluation") or {}
        if not evaluation.get("cross_corpus"):
            continue
        crossed = True
        trained = evaluation.get("train_corpora") or [
            (evaluation.get("bundle") or {}).get("trained_on", "?")
        ]
        pair = f"{' + '.join(map(str, trained))} → {evaluation.get('corpus', '?')}"
        if pair not in pairs:
            pairs.append(pair)
    if not crossed:
        return False, WITHIN_CORPUS
    return True, f"cross-corpus: {'; '.join(pairs)}"


def _name(cell: Path, root: Path) -> str:
    try:
        return cell.relative_to(root).as_posix()
    except ValueError:
        return str(cell)


def fold_differences(first: dict, second: dict) -> tuple[list[str], bool]:
    """What makes two labels' cells not comparable, over the folds both have.

    Args:
        first, second: fold key -> the data record of that label's cell of the fold
            (``None`` for a cell that recorded none).

    Returns:
        (the differing items in words, without repeats; whether some shared fold could not be
        checked because a cell recorded no data).
    """
    out: list[str] = []
    unchecked = False
    for key in sorted(set(first) & set(second)):
        a, b = first[key], second[key]
        if a is None or b is None:
            unchecked = True
            continue
        for item in differences(a, b):
            if item not in out:
                out.append(item)
    return out, unchecked


def flatten(node, prefix: str = "") -> dict:
    """A nested configuration as ``{"dotted.key": value}``."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in flat.items()}


def result_keys(config: dict) -> dict:
    """A configuration flattened to dotted keys, without those that never change a result."""
    from sergraph.config import RUNTIME_KEYS

    return {
        key: value
        for key, value in flatten(config).items()
        if key not in RUNTIME_KEYS
        and key not in IGNORED_KEYS
        and not key.startswith(IGNORED_PREFIXES)
    }


def declared_keys(config: dict) -> set[str]:
    """The keys a label's variant declares (its overrides in the experiment's ``variants``):
    ``a.b=v`` declares ``a.b`` and below, a group choice ``model=x`` the whole ``model``."""
    label = ((config.get("run") or {}).get("label")) or ""
    overrides = (config.get("variants") or {}).get(label) or []
    return {str(item).split("=", 1)[0] for item in overrides if "=" in str(item)}


def undeclared_differences(first: dict | None, second: dict | None) -> list[str]:
    """Keys in which two labels' configurations differ that neither label's variant declares
    (sorted; empty when a configuration is missing)."""
    if not first or not second:
        return []
    a, b = result_keys(first), result_keys(second)
    declared = declared_keys(first) | declared_keys(second)
    differing = {key for key in set(a) | set(b) if a.get(key, "<absent>") != b.get(key, "<absent>")}
    return sorted(
        key for key in differing if not any(key == d or key.startswith(f"{d}.") for d in declared)
    )
