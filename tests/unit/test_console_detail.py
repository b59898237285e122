"""console.detail: a cell's details go to the log file, and to the console only with -v."""

from __future__ import annotations

from sergraph import console


def test_detail_goes_to_the_log_file_and_to_the_console_only_when_verbose(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    log_file = console.attach_log_file(tmp_path / "sergraph.log")
    try:
        console.detail("fold-00: fused with the SVM, weight 0.7")
        assert capsys.readouterr().err == ""
        monkeypatch.setenv(console.VERBOSE_ENV, "1")
        console.detail("fold-01: fused with the SVM, weight 0.2")
        assert capsys.readouterr().err == "fold-01: fused with the SVM, weight 0.2\n"
    finally:
        console.detach_log_file()
    text = log_file.read_text()
    assert "fold-00: fused with the SVM, weight 0.7" in text
    assert "fold-01: fused with the SVM, weight 0.2" in text
