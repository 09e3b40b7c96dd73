"""The README works by copy-paste: every shell and Python block runs, in README order, in a copy
of the repository (slow: it prunes, fine-tunes and times real models); the blocks that cannot run
here are named with the reason, and the command synopsis is checked against the CLI itself."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from compress.cli.app import app
from tests.conftest import ROOT

# Sections whose ```bash / ```python blocks are not run by the walk, and why. Every other such
# block runs; a new section with a block must be added to one side or the other.
NOT_RUN = {
    "Set up": "make install: the walk runs inside the environment it creates",
    "Commands": "a synopsis with placeholders; test_the_synopsis_matches_the_cli checks it",
    "GPUs and several processes": "four processes; tests/finetune/test_distributed.py runs two",
}
RUNNABLE = ("bash", "python")


def readme_blocks(readme: str) -> list[tuple[str, str, str]]:
    """(section title, language, body) of every fenced block, in order.

    >>> readme_blocks("## A\\n```bash\\nls\\n```\\n### B\\n```text\\nx\\n```\\n")
    [('A', 'bash', 'ls\\n'), ('B', 'text', 'x\\n')]
    """
    blocks, section = [], ""
    for m in re.finditer(r"^#{2,3} (.*?)$|^```(\w*)\n(.*?)^```", readme, re.M | re.S):
        if m.group(1) is not None:
            section = m.group(1).strip()
        else:
            blocks.append((section, m.group(2), m.group(3)))
    return blocks


def walk(readme: str) -> list[tuple[str, str, str]]:
    """The blocks the walk runs, in order."""
    return [b for b in readme_blocks(readme) if b[1] in RUNNABLE and b[0] not in NOT_RUN]


README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_block_is_run_or_named_with_its_reason() -> None:
    sections = {s for s, lang, _ in readme_blocks(README) if lang in RUNNABLE}
    assert set(NOT_RUN) <= sections, set(NOT_RUN) - sections  # a stale exclusion
    ran = walk(README)
    text = "\n".join(body for _, _, body in ran)
    for needed in ("compress apply recipes/quickstart.yaml", "compress init --model "
                   "torchvision:resnet18", "examples/make_tour_model.py",
                   "examples/serve_onnx.py", "compress apply recipes/minilm-sst2.yaml",
                   "compress push", "compress gate", "compress.apply("):
        assert needed in text, needed
    for path in re.findall(r"python (\S+\.py)", text):
        assert (ROOT / path).is_file(), path


def _synopsis() -> list[tuple[str, list[str]]]:
    """(subcommand, --options) per `compress SUB` line of the Commands block."""
    body = next(b for s, _, b in readme_blocks(README) if s == "Commands")
    lines: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        code = line.split("#", 1)[0]
        m = re.match(r"compress (\w+)", code.strip())
        if m:
            lines.append((m.group(1), []))
        if lines:  # continuation lines carry options of the command above them
            lines[-1][1].extend(o for o in re.findall(r"(--[a-z][a-z-]*)", code)
                                if o != "--version")
    return lines


def _cli_options() -> dict[str, set[str]]:
    """Every subcommand's option names (``--flag``, ``-f``, ``--no-flag``), read from the CLI."""
    group = typer.main.get_command(app)
    return {name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)
                   if o.startswith("-")}
            for name, cmd in group.commands.items()}


def test_the_synopsis_matches_the_cli() -> None:
    runner = CliRunner()
    synopsis = _synopsis()
    assert len(synopsis) >= 9
    options = _cli_options()
    for command, flags in synopsis:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, f"compress {command}: {result.output}"
        for option in flags:
            assert option in options[command], f"compress {command} has no {option}"
    assert runner.invoke(app, ["--version"]).exit_code == 0


def _compress_lines(script: str) -> list[list[str]]:
    """The words of each `compress ...` command of a bash block (continuations joined,
    comments and redirections dropped)."""
    lines = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        words = words[: words.index(">")] if ">" in words else words
        lines += [words] if words[:1] == ["compress"] else []
    return lines


def test_every_compress_command_in_the_shell_blocks_names_real_options() -> None:
    # The synopsis is checked above; these are the lines people paste, in any section.
    options = _cli_options()
    lines = [(s, w) for s, lang, body in readme_blocks(README)
             if lang == "bash" and s != "Commands" for w in _compress_lines(body)]
    assert {w[1] for _, w in lines} >= {"apply", "init", "validate", "push", "gate"}, lines
    for section, words in lines:
        assert words[1] in options, f"{section}: no command {words[1]!r}: {' '.join(words)}"
        for word in words[2:]:
            flag = word.split("=", 1)[0]
            if re.fullmatch(r"--?[a-z][a-z0-9-]*", flag):
                assert flag in options[words[1]], f"{section}: compress {words[1]} has no {flag}"


def test_the_tour_outputs_are_ignored_by_git() -> None:
    # What the walk (and a new user) leaves in the checkout does not show in `git status`.
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    shell = "\n".join(body for _, lang, body in readme_blocks(README) if lang == "bash")
    python = "\n".join(body for _, lang, body in readme_blocks(README) if lang == "python")
    for written in ("my-images", "my-resnet18.safetensors", "my-recipe.yaml", "gates.xml",
                    "gates.md", "runs/quickstart", "out/my_model", "runs/quickstart-api"):
        assert written in shell + python, written
        proc = subprocess.run(["git", "check-ignore", "-q", written], cwd=ROOT)
        assert proc.returncode == 0, f"{written} is not ignored by .gitignore"


def _copy_of_the_repository(dest: Path) -> None:
    """Tracked and new (not ignored) files only: what a fresh clone of this tree holds."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())


@pytest.mark.slow
def test_the_readme_runs_as_pasted(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy")
    repo = tmp_path / "compress"
    _copy_of_the_repository(repo)
    (tmp_path / "shared").symlink_to((ROOT.parent / "shared").resolve())  # ../shared as here
    bin_dir = tmp_path / "bin"  # what `source .venv/bin/activate` gives: compress and python
    bin_dir.mkdir()
    for name, command in (("compress", f'"{sys.executable}" -m compress.cli.app'),
                          ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "COMPRESS_CACHE": str(tmp_path / "cache")}
    for section, lang, body in walk((repo / "README.md").read_text(encoding="utf-8")):
        argv = ["bash", "-e", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=3600)
        said = f"{section}:\n{body}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        assert proc.returncode == 0, said
        assert "Traceback (most recent call last)" not in proc.stdout + proc.stderr, said
    for run in ("runs/quickstart", "runs/resnet18-macs50", "runs/minilm-sst2",
                "runs/quickstart-api"):
        assert json.loads((repo / run / "status.json").read_text())["state"] == "done", run
        assert (repo / run / "model.onnx").is_file()
    assert (repo / "runs/minilm-sst2/hf/README.md").is_file()  # the tour's headline output
    assert (repo / "gates.xml").is_file() and (repo / "out/my_model").is_dir()
