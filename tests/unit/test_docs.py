"""The documentation runs: the site builds in strict mode, and every shell or Python block of the
README and the docs is either run here or marked with the reason it cannot be.

A block is marked by the line before its fence: ``<!-- run -->`` (run by this test, in order
with the page's other runnable blocks, in an empty folder with its own feature cache) or
``<!-- not run: REASON -->`` (a GPU, a cluster, a licensed corpus, a long study, an install).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REPORTS = REPO / "docs" / "results" / "reports"
PAGES = [
    REPO / "README.md",
    *sorted(p for p in (REPO / "docs").rglob("*.md") if REPORTS not in p.parents),
]
COMMITTED_REPORTS = sorted(p.parent for p in REPORTS.glob("*/report.md"))
CODE = {"bash", "sh", "shell", "console", "python", "py"}
MARK = re.compile(r"<!--\s*(run|not run:\s*(?P<reason>.*?))\s*-->")


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str
    run: bool
    reason: str | None


def blocks(page: Path) -> list[Block]:
    found, lines = [], page.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^(\s*)```(\w*)", lines[index])
        if not fence:
            index += 1
            continue
        start, language = index, fence.group(2)
        index += 1
        body = []
        while index < len(lines) and not lines[index].strip().startswith("```"):
            body.append(lines[index][len(fence.group(1)) :])
            index += 1
        index += 1
        previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        mark = MARK.search(previous)
        found.append(
            Block(
                page,
                start + 1,
                language,
                "\n".join(body) + "\n",
                bool(mark) and mark.group(1) == "run",
                mark.group("reason") if mark else None,
            )
        )
    return found


def name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def test_every_shell_and_python_block_is_run_or_says_why_not():
    unmarked = [
        f"{name(b.page)}:{b.line}"
        for page in PAGES
        for b in blocks(page)
        if b.language in CODE and not b.run and not (b.reason or "").strip()
    ]
    assert not unmarked, (
        "blocks without <!-- run --> or <!-- not run: REASON --> before their fence: "
        + ", ".join(unmarked)
    )


def test_no_page_names_a_module_that_moved():
    moved = ("sergraph.runner", "sergraph.corpora", "fastdata", "sergraph.fastdata")
    for page in PAGES:
        text = page.read_text()
        for old in moved:
            assert not re.search(rf"\b{re.escape(old)}\b", text), f"{name(page)} names {old}"


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_the_site_builds_in_strict_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    # generated from the code at build time: the parser's verbs, the schema's keys and choices
    assert "sergraph train" in cli and "sergraph predict" in cli
    assert "eval.protocol" in config and "graph.k" in config and "transductive" in config


RUNNABLE = [page for page in PAGES if any(b.run for b in blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[name(p) for p in RUNNABLE])
def test_the_runnable_blocks_of_a_page_run(page, tmp_path):
    env = {
        **os.environ,
        "SERGRAPH_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    work = tmp_path / "work"
    work.mkdir()
    for number, block in enumerate(b for b in blocks(page) if b.run):
        if block.language in ("python", "py"):
            script = work / f"snippet_{number}.py"
            script.write_text(block.text)
            command = [sys.executable, str(script)]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", block.text]
        done = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, (
            f"{name(page)}:{block.line} failed (exit {done.returncode}):\n{block.text}\n"
            f"{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        )


def hooks():
    """``docs/hooks.py`` (not a package: the mkdocs hook file), imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("folder", COMMITTED_REPORTS, ids=[p.name for p in COMMITTED_REPORTS])
def test_a_committed_report_is_shown_with_its_own_numbers(folder):
    """The results page shows each committed report's rows as ``results.csv`` holds them, and
    those rows agree with the per-cell rows of ``folds.csv`` (mean over cells, recomputed here)."""
    import pandas as pd

    text = hooks().report_tables(folder.name)
    results = pd.read_csv(folder / "results.csv")
    cells = pd.read_csv(folder / "folds.csv")
    assert len(results) > 0 and "## Figures" not in text
    table = text.split("Paired comparisons", 1)[0].splitlines()  # the results table
    for row in results.itertuples():
        starts = (f"| {row.label} |", f"| {row.label} (reference) |")
        line = next(x for x in table if x.startswith(starts))
        assert f"| {100 * row.pooled_ua:.2f}" in line, (row.label, line)
        mine = cells[cells["label"] == row.label]
        assert len(mine) == row.cells
        assert mine["ua"].mean() == pytest.approx(row.ua_mean, abs=1e-12)
        assert mine["wa"].mean() == pytest.approx(row.wa_mean, abs=1e-12)


def test_a_report_missing_from_the_results_page_stops_the_build():
    with pytest.raises(FileNotFoundError, match="report.md, results.csv, folds.csv"):
        hooks().report_tables("no_such_report")


def test_the_readme_results_are_numbers_of_committed_reports():
    """Every figure of the README's results (two decimals: UA, std, difference) appears in a
    committed report, which the results page shows; none is retyped from elsewhere."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Results in short", 1)[1].split("\n## ", 1)[0]
    numbers = re.findall(r"(?<![\d.])\d{1,3}\.\d{2}(?!\d)", section)
    assert numbers, "the README's results section holds no figure"
    reports = "\n".join((folder / "report.md").read_text() for folder in COMMITTED_REPORTS)
    missing = sorted({n for n in numbers if n not in reports})
    assert not missing, f"README figures in no committed report: {missing}"
