"""--json, --quiet and --verbose on every command; progress bars only on a terminal; shell
completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli.app import app
from tests.conftest import ROOT, tiny_recipe

runner = CliRunner()

# Commands that print a result even with --quiet (their output is the product).
PRODUCT_COMMANDS = {"inspect", "schema", "init", "list", "report", "compare"}
COMMANDS = ["apply", "validate", "inspect", "schema", "init", "list", "gate", "report",
            "compare"]
BAR = "━"  # what rich's BarColumn draws


def _recipe(folder: Path, **sections: object) -> Path:
    # Fast: no latency timing; the apply runs here only test what is printed.
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(folder, report={"latency": False}, **sections)))
    return path


def _args(command: str, tmp_path: Path, run: Path) -> list[str]:
    recipe = _recipe(tmp_path)
    return {
        "apply": ["apply", str(recipe), "--out", str(tmp_path / "out")],
        "validate": ["validate", str(recipe)],
        "inspect": ["inspect", str(recipe)],
        "schema": ["schema"],
        "init": ["init", "--model", "cifar_resnet:resnet20", "--data", "digits"],
        "list": ["list"],
        "gate": ["gate", str(run)],
        "report": ["report", str(run)],
        "compare": ["compare", str(run), str(run / "report.json")],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_json_prints_one_object_and_nothing_else_on_stdout(command: str, tmp_path: Path,
                                                           finished_run: Path) -> None:
    result = runner.invoke(app, [*_args(command, tmp_path, finished_run), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert isinstance(data, dict) and data
    assert "DEBUG" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_quiet_prints_no_logs_and_only_the_product(command: str, tmp_path: Path,
                                                   finished_run: Path) -> None:
    result = runner.invoke(app, [*_args(command, tmp_path, finished_run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    if command in PRODUCT_COMMANDS:
        assert result.stdout.strip()
    else:
        assert result.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_verbose_adds_debug_logs_on_stderr_only(command: str, tmp_path: Path,
                                                finished_run: Path) -> None:
    args = _args(command, tmp_path, finished_run)
    plain = runner.invoke(app, args + (["--overwrite"] if command == "apply" else []))
    result = runner.invoke(app, [*args, "--verbose"] + (["--overwrite"] if command == "apply"
                                                         else []))
    assert plain.exit_code == result.exit_code == 0, result.output
    assert "DEBUG compress.cli.app: compress " in result.stderr
    assert "DEBUG" not in plain.stderr and "DEBUG" not in result.stdout


def test_quiet_and_verbose_together_is_bad_input() -> None:
    result = runner.invoke(app, ["list", "--quiet", "--verbose"])
    assert result.exit_code == 2 and "not both" in result.stderr


def test_json_errors_are_json_too(tmp_path: Path, finished_run: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml"), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert error["ok"] is False and error["exit_code"] == 2 and "missing.yaml" in error["error"]
    assert "missing.yaml" in result.stderr  # the sentence is on stderr as always


def test_json_gate_failure_exits_1_and_says_so(finished_run: Path) -> None:
    result = runner.invoke(app, ["gate", str(finished_run), "--min-macs-reduction", "0.99",
                                 "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["failed"] == 1
    failed = [g for g in data["gates"] if not g["passed"]]
    assert [g["name"] for g in failed] == ["min_macs_reduction"]
    assert "FAIL MACs reduction" in result.stderr


def test_quiet_apply_with_a_failing_gate_names_it_on_stderr(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, gates={"min_macs_reduction": 0.99})
    result = runner.invoke(app, ["apply", str(recipe), "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().startswith("gate FAIL: MACs reduction")


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_only_on_a_terminal(terminal: bool, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("compress.cli.output.stderr_is_terminal", lambda: terminal)
    recipe = _recipe(tmp_path, finetune={"epochs": 1, "max_steps": 40})
    result = runner.invoke(app, ["apply", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (BAR in result.stderr) is terminal
    assert "fine-tune" in result.stderr  # the bar's task name, or the fine-tune log line
    assert BAR not in result.stdout


def _compress_script() -> Path:
    script = Path(sys.executable).parent / "compress"
    if not script.is_file():
        pytest.skip("the compress console script is not installed next to this python")
    return script


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    return env


def test_shell_completion_completes_commands_and_options() -> None:
    script = str(_compress_script())
    done = subprocess.run([script], env=_env(_COMPRESS_COMPLETE="complete_bash",
                                             COMP_WORDS="compress ap", COMP_CWORD="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["apply"], done.stderr
    done = subprocess.run([script], env=_env(_COMPRESS_COMPLETE="complete_bash",
                                             COMP_WORDS="compress gate --min", COMP_CWORD="2"),
                          capture_output=True, text=True, timeout=120)
    assert set(done.stdout.split()) == {"--min-speedup", "--min-macs-reduction",
                                        "--min-baseline-accuracy"}


def test_install_completion_writes_the_bash_script(tmp_path: Path) -> None:
    done = subprocess.run([str(_compress_script()), "--install-completion", "bash"],
                          # The shell named on the command line, not the parent process's
                          # (CI runs the suite under sh, which typer would detect).
                          env=_env(HOME=str(tmp_path), SHELL="/bin/bash",
                                   _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    script = tmp_path / ".bash_completions" / "compress.sh"
    assert "_COMPRESS_COMPLETE=complete_bash" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
