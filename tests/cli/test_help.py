"""compress/cli/help.py: `--version`, help screens without typer's type placeholders, `init
--help` naming every source, and "did you mean" for a misspelt key or name."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import compress
from compress.cli.app import app
from tests.conftest import ROOT

runner = CliRunner()
COMMANDS = sorted(info.name or info.callback.__name__.rstrip("_")
                  for info in app.registered_commands)
# What typer prints unless told otherwise: {recipe}, <bool>, <path>, <list[str]>, <float> ...
PLACEHOLDER = re.compile(r"\{[a-z_]+\}|<(bool|path|text|str|int|float|list\[[a-z]+\])>")


def test_version_prints_the_package_version_and_exits_0() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"compress {compress.__version__}\n"
    # The installed entry point too (python -m compress is what the `compress` script runs).
    proc = subprocess.run([sys.executable, "-m", "compress", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"compress {compress.__version__}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_names_values_in_capitals_without_type_placeholders(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = runner.invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert PLACEHOLDER.search(result.stdout) is None, PLACEHOLDER.search(result.stdout)
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    if command in ("apply", "validate", "inspect"):
        assert usage.rstrip().endswith("[OPTIONS] RECIPE")
    if command == "compare":
        assert usage.rstrip().endswith("[OPTIONS] RUNS...")


def test_init_help_lists_every_model_source_and_dataset() -> None:
    from compress.data import DATASETS
    from compress.models import MODEL_SOURCES

    text = " ".join(runner.invoke(app, ["init", "--help"], env={"COLUMNS": "200"}).stdout.split())
    for name in [*MODEL_SOURCES.names(), *DATASETS.names()]:
        assert re.search(rf"(?<![\w_]){re.escape(name)}\b", text), name
    for form in ("huggingface:", "text:", "text_lm:", "imagefolder:", "python:"):
        assert form in text


@pytest.mark.parametrize(("override", "suggestion"), [
    ("finetune.epohcs=2", "unknown key 'finetune.epohcs' (did you mean 'epochs'?)"),
    ("data.source=digit", "unknown dataset 'digit' (did you mean 'digits'?)"),
    ("schedule.kind=one_shot", "unknown schedule 'one_shot' (did you mean 'one-shot'?)"),
])
def test_a_misspelt_key_or_name_gets_a_suggestion(override: str, suggestion: str) -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "recipes" / "quickstart.yaml"),
                                 "--set", override])
    assert result.exit_code == 2 and suggestion in result.stderr
    assert "Traceback" not in result.output
