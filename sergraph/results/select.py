"""Nested model selection and seed ensembles, built from finished cells of a study.

Both write a new label folder beside the study's variants (``<study>/<label>/seed-<s>/
fold-<XX>/{metrics.json,predictions.csv,config.yaml}``), so ``sergraph report`` tables it and
pairs it fold by fold with every other label, like any trained variant.

**Nested selection** (:func:`select_nested`): for every (seed, fold) cell, the candidate variant
with the highest *validation* UA (``best_val_ua``: the fold's validation speakers, drawn from its
training side) is chosen, and that variant's test predictions become the cell's. The choice is
made by :func:`choose`, which is handed only the whitelisted validation fields of each
candidate's ``metrics.json`` (:data:`VALIDATION_FIELDS`): test scores, test predictions and test
speakers' data never reach it. Candidates must share the cell's validation speakers, so that
their validation scores are comparable, and one evaluation protocol.

Selection runs over **all seeds** the candidates share and is reported against a fixed recipe
seed by seed (:func:`compare_per_seed`: pooled UA of the selection and of the reference over
the same folds, one row per seed): like with like. ``criterion="fold"`` is a less noisy inner
criterion than one seed's two validation speakers: per fold, the candidate with the best
validation UA *averaged over all seeds* is chosen, the same choice for every seed (still
validation speakers only; one seed's validation UA is a noisy estimate of a variant's quality).

**Seed ensemble** (:func:`ensemble_seeds`): for every fold, the class probabilities of all seeds
of one variant are averaged per utterance and the arg-max is the prediction; no choice is made
on any score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sergraph.console import log
from sergraph.io import atomic_write_text
from sergraph.metrics import BEST_VALIDATION, pooled_scores, primary, scores_from_labels
from sergraph.results.layout import (
    CellPaths,
    cell_dir,
    finished_cells,
    read_predictions,
    write_cell,
)

#: The only fields of a candidate's metrics.json that the selection rule sees.
VALIDATION_FIELDS = ("seed", "fold", "train_speakers", "val_speakers", BEST_VALIDATION)


ENSEMBLE_MARKER = "ENSEMBLE"


def _cells(root: Path) -> dict[tuple[int, int], tuple[Path, dict]]:
    """(seed, fold) -> (cell folder, its verified metrics) of every finished cell under ``root``."""
    return {
        (int(metrics["seed"]), int(metrics["fold"])): (cell, metrics)
        for cell, metrics in finished_cells(root)
    }


def ensemble_dir(variant_dir: str | Path) -> Path:
    """Where :func:`ensemble_seeds` writes by default: ``<study>/<variant>_seed_ensemble``."""
    variant_dir = Path(variant_dir)
    return variant_dir.with_name(variant_dir.name + "_seed_ensemble")


def validation_view(metrics: dict) -> dict:
    """The validation-side fields of one cell's metrics (see :data:`VALIDATION_FIELDS`)."""
    return {key: metrics.get(key) for key in VALIDATION_FIELDS}


def choose(candidates: dict[str, dict]) -> str:
    """The label with the best validation UA (the primary metric, in its direction: the
    highest); ties go to the first label given.

    Args:
        candidates: label -> :func:`validation_view` of that label's cell (one seed and fold).

    Raises:
        ValueError: when a candidate has no validation score, or the candidates were validated
            on different speakers (their scores would not be comparable).
    """
    speakers = {label: tuple(view["val_speakers"] or ()) for label, view in candidates.items()}
    if len(set(speakers.values())) != 1:
        raise ValueError(
            f"candidates were validated on different speakers {speakers}; nested selection "
            "compares validation UA on the same speakers only (leave out the variants that "
            "change folds.val_speakers)"
        )
    missing = [label for label, view in candidates.items() if view[BEST_VALIDATION] is None]
    if missing:
        raise ValueError(f"no validation score ({BEST_VALIDATION}) for {missing}: cannot select")
    judge = primary()
    return max(candidates, key=lambda label: judge.sort_key(candidates[label][BEST_VALIDATION]))


CRITERIA = ("cell", "fold")


def select_nested(
    study_dir: str | Path,
    candidates: list[str] | None = None,
    label: str = "nested",
    criterion: str = "cell",
    cross_data: bool = False,
) -> dict:
    """Write label ``label``: per cell, the candidate variant chosen on validation UA.

    Args:
        study_dir: folder of variant folders (``<study_dir>/<variant>/seed-*/fold-*/``).
        candidates: variant labels to choose from (default: every variant folder except
            ``label`` and seed ensembles).
        label: name of the new folder.
        criterion: ``cell``: per (seed, fold), the best validation UA of that seed; ``fold``:
            per fold, the best validation UA averaged over the seeds (see the module docstring).
        cross_data: also choose between candidates whose cells of a (seed, fold) scored other
            utterances or come from other data; each chosen cell then records what differed
            (``selection_cross_data``). Refused by default, naming what differs.

    Returns:
        ``{(seed, fold): chosen variant}`` for every cell that all candidates finished.
    """
    study_dir = Path(study_dir)
    if candidates is None:
        candidates = sorted(
            p.name
            for p in study_dir.iterdir()
            if p.is_dir()
            and p.name != label
            and finished_cells(p)
            and not (p / ENSEMBLE_MARKER).is_file()
        )
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}; choose one of {list(CRITERIA)}")
    if len(candidates) < 2:
        raise ValueError(f"nested selection needs at least 2 candidate variants; got {candidates}")
    cells = {name: _cells(study_dir / name) for name in candidates}
    shared = sorted(set.intersection(*(set(c) for c in cells.values())))
    if not shared:
        raise FileNotFoundError(f"no (seed, fold) cell is finished by all of {candidates}")
    left_out = sorted(set.union(*(set(c) for c in cells.values())) - set(shared))
    if left_out:
        log(
            f"nested selection over {len(shared)} (seed, fold) cells that every candidate "
            f"finished; left out {len(left_out)} that some did not: {left_out[:10]}"
        )
    protocols = {
        name: (cell[1].get("protocol") or {}).get("name", "unknown")
        for name in candidates
        for cell in cells[name].values()
    }
    if len(set(protocols.values())) > 1:
        raise ValueError(
            f"candidates were evaluated under different protocols {protocols}; select among "
            "variants of one protocol"
        )
    differing, unchecked = _data_differences(cells, candidates, shared)
    if differing and not cross_data:
        raise ValueError(
            "candidates scored other utterances or come from other data, so their cells are "
            f"not comparable: {'; '.join(differing)}. Select among variants of one data and "
            "scored set (or pass --cross-data to choose anyway, recorded in the output)"
        )
    if unchecked:
        log("note: some candidate cells recorded no data fingerprint; their data were not checked")
    fused = {
        name: any(cell[1].get("fusion") for cell in cells[name].values()) for name in candidates
    }
    if len(set(fused.values())) > 1:
        raise ValueError(
            f"candidates mix fused (model.fusion) and unfused variants {fused}: a fused cell's "
            "validation UA is a maximum over fusion weights on the same speakers, not comparable "
            "with an unfused one; select among one kind"
        )
    by_fold: dict[int, str] = {}
    if criterion == "fold":
        for fold in sorted({f for _, f in shared}):
            keys = [key for key in shared if key[1] == fold]
            views = {}
            for name in candidates:
                seeds = [validation_view(cells[name][key][1]) for key in keys]
                view = dict(seeds[0])
                scores = [v[BEST_VALIDATION] for v in seeds]
                view[BEST_VALIDATION] = None if None in scores else float(np.mean(scores))
                views[name] = view
            by_fold[fold] = choose(views)
    chosen = {}
    for key in shared:
        views = {name: validation_view(cells[name][key][1]) for name in candidates}
        pick = by_fold[key[1]] if criterion == "fold" else choose(views)
        chosen[key] = pick
        source, metrics = cells[pick][key]
        # The checkpoint stays with its variant: only the copied predictions are recorded.
        metrics = {key: value for key, value in metrics.items() if key != "files"}
        metrics["selected"] = pick
        metrics["selection_criterion"] = criterion
        metrics["selection_val_ua"] = {name: view[BEST_VALIDATION] for name, view in views.items()}
        if differing:
            metrics["selection_cross_data"] = differing
        target = study_dir / label / source.parent.name / source.name
        copy_config(source, target)
        write_cell(target, read_predictions(source), metrics)
    return chosen


def _data_differences(cells: dict, candidates: list[str], shared: list) -> tuple[list[str], bool]:
    """What differs between the candidates' cells of each shared (seed, fold), named by
    candidate (see :func:`sergraph.results.comparable.fold_differences`)."""
    from sergraph.results.comparable import fold_differences

    first = candidates[0]
    out, unchecked = [], False
    for name in candidates[1:]:
        what, missing = fold_differences(
            {key: cells[first][key][1].get("data") for key in shared},
            {key: cells[name][key][1].get("data") for key in shared},
        )
        unchecked |= missing
        out += [f"{first} vs {name}: {item}" for item in what]
    return out, unchecked


def ensemble_seeds(variant_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Average each fold's class probabilities over the seeds of one variant.

    Args:
        variant_dir: ``<study>/<variant>`` holding ``seed-*/fold-*/``.
        out_dir: default ``<study>/<variant>_seed_ensemble``; the ensemble is written as its
            ``seed-0/fold-XX`` cells.

    Returns:
        fold -> the seeds averaged.

    Raises:
        ValueError: when the seeds of a fold did not predict the same utterances.
    """
    variant_dir = Path(variant_dir)
    out_dir = Path(out_dir) if out_dir else ensemble_dir(variant_dir)
    by_fold: dict[int, list[tuple[Path, dict]]] = {}
    for (_seed, fold), cell in sorted(_cells(variant_dir).items()):
        by_fold.setdefault(fold, []).append(cell)
    if not by_fold:
        raise FileNotFoundError(f"no finished cells under {variant_dir}")
    used = {}
    for fold, members in by_fold.items():
        cells = [cell for cell, _ in members]
        frames = [read_predictions(cell) for cell in cells]
        first = frames[0]
        for cell, frame in zip(cells[1:], frames[1:], strict=True):
            if frame["utterance"].tolist() != first["utterance"].tolist():
                raise ValueError(
                    f"{CellPaths(cell).predictions} predicts other utterances than {cells[0]}"
                )
        metrics = members[0][1]
        classes = list(metrics["classes"])
        columns = [f"p_{name}" for name in classes]
        probabilities = np.mean([frame[columns].to_numpy(dtype=float) for frame in frames], axis=0)
        out = first[["utterance", "speaker", "true"]].copy()
        out["predicted"] = [classes[i] for i in probabilities.argmax(axis=1)]
        for i, column in enumerate(columns):
            out[column] = np.round(probabilities[:, i], 6)
        scores = scores_from_labels(
            out["true"].map(classes.index), out["predicted"].map(classes.index), len(classes)
        )
        seeds = [cell_metrics["seed"] for _, cell_metrics in members]
        keys = ("config_id", "model", "fold", "train_speakers", "val_speakers", "test_speakers")
        record = {key: metrics[key] for key in (*keys, "classes")}
        record |= {key: metrics[key] for key in ("protocol", "data") if key in metrics}
        record["provenance_members"] = [m.get("provenance") for _, m in members]
        record["provenance"] = _shared_provenance(record["provenance_members"])
        record |= {"seed": 0, "n_test": len(out), **scores, "ensemble_of_seeds": seeds}
        target = cell_dir(out_dir, 0, fold)
        copy_config(cells[0], target)
        write_cell(target, out, record)
        used[fold] = seeds
    atomic_write_text(out_dir / ENSEMBLE_MARKER, f"seed ensemble of {variant_dir.name}\n")
    return used


def copy_config(source: Path, target: Path) -> None:
    """The saved configuration of cell ``source`` (if it has one) into cell ``target``."""
    config = CellPaths(source).config
    if config.is_file():
        atomic_write_text(CellPaths(target).config, config.read_text())


def _shared_provenance(states: list) -> dict:
    """One provenance for a cell made from several: the commit when all share one (else
    ``several``), dirty when any was."""
    states = [state or {} for state in states]
    commits = {str(state.get("commit", "unknown")) for state in states}
    dirty = [state.get("dirty", "unknown") for state in states]
    commit = commits.pop() if len(commits) == 1 else "several"
    flag = "unknown" if "unknown" in dirty or commit == "unknown" else any(dirty)
    versions = {state.get("sergraph") for state in states}
    shared = {"commit": commit, "dirty": flag}
    return shared | (
        {"sergraph": versions.pop()} if len(versions) == 1 and None not in versions else {}
    )


def compare_per_seed(study_dir: str | Path, label: str, reference: str) -> pd.DataFrame:
    """Pooled UA (the primary metric) of ``label`` (a selection) and of ``reference`` (the fixed
    recipe), seed by seed over the folds both finished: ``seed, folds, ua_<label>,
    ua_<reference>, difference``.

    Raises:
        FileNotFoundError: when the two share no (seed, fold) cell.
    """
    study_dir = Path(study_dir)
    mine, theirs = _cells(study_dir / label), _cells(study_dir / reference)
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        raise FileNotFoundError(f"{label} and {reference} share no finished (seed, fold) cell")
    name = primary().name
    rows = []
    for seed in sorted({seed for seed, _ in shared}):
        keys = [key for key in shared if key[0] == seed]
        scores = []
        for cells in (mine, theirs):
            frame = pd.concat(read_predictions(cells[key][0]) for key in keys)
            classes = list(cells[keys[0]][1]["classes"])
            scores.append(pooled_scores(frame, classes)[name])
        rows.append(
            {
                "seed": seed,
                "folds": len(keys),
                f"{name}_{label}": scores[0],
                f"{name}_{reference}": scores[1],
                "difference": scores[0] - scores[1],
            }
        )
    return pd.DataFrame(rows)
