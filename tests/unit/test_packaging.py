"""The README's commands are the ones CI and users run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart, flags=re.S)


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1].strip() in ci


def test_quickstart_installs_cpu_torch_first_and_runs_the_main_job():
    run = readme_commands()[0]
    assert run.index("torch==2.13.0") < run.index("pip install -e .")
    assert "sergraph train" in run


def test_configs_ship_with_the_package():
    from sergraph.config import config_dir

    assert (config_dir() / "default.yaml").is_file()
    for group in ("data", "model", "trainer", "experiment"):
        assert list((config_dir() / group).glob("*.yaml")), group
