"""The console is for people: notes, one line per cell and the result table; library chatter
goes to the study's log file unless -v asks for it on the console too."""

from __future__ import annotations

from tests.cli import run_cli as sergraph

SMALL = [
    "data.options.n_speakers=3",
    "data.options.n_per_class=3",
    "folds.only=[0]",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "model.params.num_layers=1",
]
# Messages Lightning prints on every fit, test and checkpoint load.
CHATTER = ("GPU available", "TPU available", "Restoring states", "Loaded model weights")


def test_default_console_is_quiet_and_the_log_file_keeps_the_chatter(env, tmp_path):
    result = sergraph(["train", *SMALL, f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if any(text in line for text in CHATTER)]
    assert any("not speech" in line for line in lines)  # the synthetic-data notice stays
    cell_lines = [line for line in lines if line.startswith("lstm_gin seed 0 fold-00 test")]
    assert len(cell_lines) == 1 and "UA" in cell_lines[0]
    # notes, the corpus line, the cell line, the wall time: nothing else
    assert len(lines) <= 5, lines
    log = (tmp_path / "synthetic" / "sergraph.log").read_text()
    assert "GPU available" in log and "Restoring states" in log
    assert "lstm_gin seed 0 fold-00 test" in log  # every console note is kept too


def test_verbose_shows_library_messages_on_the_console(env, tmp_path):
    result = sergraph(["train", "-v", *SMALL, f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPU available" in result.stderr


def test_a_study_in_workers_prints_each_note_once_and_logs_their_chatter(env, tmp_path):
    # two cells side by side (run.parallel=2): the workers plan the study again, and their
    # notes and Lightning's messages go to the study's log file, not to the console again
    args = [*SMALL, "folds.only=[0,1]", "graph.max_nodes=10", "run.parallel=2"]
    result = sergraph(["train", *args, f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if any(text in line for text in CHATTER)]
    longer = [line for line in lines if "are longer than the" in line]
    assert len(longer) == 1, lines
    assert sum(line.startswith("lstm_gin seed 0 fold-0") for line in lines) == 2
    assert any(line.startswith("cells at a time: 2 (run.parallel=2)") for line in lines)
    log = (tmp_path / "synthetic" / "sergraph.log").read_text()
    assert log.count("Restoring states") >= 2  # each worker's test of its best checkpoint
    # another configuration in the same folder: the note of its own folder, once
    again = sergraph(["train", *args, "graph.k=2", f"run.out_dir={tmp_path}"], env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    moved = [line for line in again.stderr.splitlines() if "holds another configuration" in line]
    assert len(moved) == 1, again.stderr[-3000:]
