"""The README works by copy-paste: every code block, in order, in a fresh copy of the repository.

``bash`` blocks run (``bash -e``), ``python`` blocks run, ``yaml`` blocks parse, ``text`` blocks
are output or a synopsis. A block the walk cannot run says so just above itself with
``<!-- readme-test: skip: REASON -->``; the set-up block is marked ``setup`` (the walk runs in
the environment the tests run in: ``compress`` and ``python`` on PATH). The walk is slow (it
prunes, fine-tunes and times real models, with the fine-tunes capped to a few steps); the
fast checks below keep the blocks honest in ``make test``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

LANGUAGES = {"bash", "python", "yaml", "text"}
MARK = re.compile(r"<!-- readme-test: (setup|skip: (?P<why>[^>]+?)) -->\s*$")
# The walk's only change to what the README says: fine-tunes stop after a few steps.
SMALL_BUDGET = ["finetune.max_steps=20"]


@dataclass(frozen=True)
class Block:
    line: int  # where the block starts in README.md (1-based), for messages
    language: str
    code: str
    mark: str  # "", "setup" or "skip: reason"


def readme_blocks(readme: str) -> list[Block]:
    """Every fenced code block, in order, with the readme-test mark just above it (if any)."""
    blocks, lines, i = [], readme.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.search(above)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                            mark.group(1) if mark else ""))
        i = end + 1
    return blocks


def _blocks() -> list[Block]:
    return readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))


def _commands(script: str) -> list[list[str]]:
    """The simple commands of a bash block (continuations joined, comments dropped)."""
    joined = script.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        out += [words[: words.index(">")] if ">" in words else words] if words else []
    return out


# -- fast: in make test ---------------------------------------------------------------------

def test_every_block_has_a_known_language_and_every_skip_a_reason() -> None:
    blocks = _blocks()
    assert blocks, "README.md has no code blocks"
    for b in blocks:
        assert b.language in LANGUAGES, f"README.md:{b.line}: block language {b.language!r}"
    assert sum(b.mark == "setup" for b in blocks) == 1
    skipped = [b for b in blocks if b.mark.startswith("skip")]
    assert all(len(b.mark) > len("skip: ") + 10 for b in skipped)  # a reason, not a word
    assert len(skipped) <= 2, [b.line for b in skipped]  # the walk runs nearly everything


def test_blocks_parse_and_their_commands_exist() -> None:
    from compress.cli.app import app

    commands = {info.name or info.callback.__name__.rstrip("_")
                for info in app.registered_commands}
    ran = [b for b in _blocks() if not b.mark]
    for b in ran:
        where = f"README.md:{b.line}"
        if b.language == "python":
            ast.parse(b.code, filename=where)
        elif b.language == "yaml":
            assert isinstance(yaml.safe_load(b.code), dict), where
        elif b.language == "bash":
            for words in _commands(b.code):
                if words[0] == "compress":
                    assert words[1] in commands or words[1].startswith("--"), (where, words)
                elif words[0] == "python":
                    assert (ROOT / words[1]).is_file(), (where, words)
                else:
                    assert words[0] in {"cat", "ls", "make"}, (where, words)
    bash = "\n".join(b.code for b in ran if b.language == "bash")
    for needed in ("compress apply recipes/quickstart.yaml", "compress init --model "
                   "torchvision:resnet18", "examples/make_tour_model.py",
                   "examples/serve_onnx.py", "compress gate runs/quickstart"):
        assert needed in bash


def _cli_options() -> dict[str, set[str]]:
    """Each subcommand's option names (and the top level's, under ""), from the CLI itself."""
    import typer

    from compress.cli.app import app

    group = typer.main.get_command(app)

    def names(params: list) -> set[str]:
        return {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}

    options = {name: names(cmd.params) for name, cmd in group.commands.items()}
    options[""] = names(group.params)
    return options


def _readme_command_lines() -> list[tuple[int, list[str]]]:
    """(README line, words) of every `compress ...` line: in bash blocks (comments dropped) and
    in the Commands synopsis (its indented lines continue the command above)."""
    found = []
    for b in _blocks():
        if b.language == "bash":
            found += [(b.line, w) for w in _commands(b.code) if w[0] == "compress"]
        elif b.language == "text" and b.code.startswith("compress "):
            for line in b.code.splitlines():
                words = line.split("#", 1)[0].replace("[", " ").replace("]", " ").split()
                if line.startswith("compress "):
                    found.append((b.line, words))
                elif words and found:
                    found[-1][1].extend(words)
    return found


def test_every_compress_command_in_the_readme_names_real_subcommands_and_options() -> None:
    options = _cli_options()
    lines = _readme_command_lines()
    assert len(lines) >= 15, lines  # the synopsis and the tour
    seen = set()
    for line, words in lines:
        sub = "" if words[1].startswith("-") else words[1]
        assert sub in options, f"README.md:{line}: no command {sub!r} in {' '.join(words)}"
        seen.add(sub)
        for word in words[1 if not sub else 2:]:
            flag = word.split("=", 1)[0].rstrip(",")
            if re.fullmatch(r"--?[a-z][a-z0-9-]*", flag):
                assert flag in options[sub], f"README.md:{line}: compress {sub} has no {flag}"
    assert seen >= set(options) - {""}, sorted(set(options) - seen)  # every command documented


def test_the_tour_outputs_are_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text()
    bash = "\n".join(b.code for b in _blocks() if b.language == "bash")
    for written in ("my-images", "my-resnet18.safetensors", "my-recipe.yaml", "gates.xml",
                    "gates.md"):
        assert written in bash
        proc = subprocess.run(["git", "check-ignore", "-q", written], cwd=ROOT)
        if (ROOT / ".git").exists():
            assert proc.returncode == 0, f"{written} is not in .gitignore:\n{ignored}"


# -- slow: the whole walk ---------------------------------------------------------------------

def _copy_of_the_repository(dest: Path) -> None:
    """Tracked and new (not ignored) files only: what a fresh clone of this tree holds."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())


def _shims(bin_dir: Path) -> None:
    """What `source .venv/bin/activate` gives: `compress` and `python` of this environment;
    `compress apply` gets the small fine-tune budget."""
    bin_dir.mkdir()
    sets = " ".join(f"--set {s}" for s in SMALL_BUDGET)
    (bin_dir / "compress").write_text(
        f'#!/bin/sh\nif [ "$1" = apply ]; then exec "{sys.executable}" -m compress.cli.app '
        f'"$@" {sets}; fi\nexec "{sys.executable}" -m compress.cli.app "$@"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)


@pytest.mark.slow
def test_every_readme_block_runs_in_order_in_a_fresh_copy(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy")
    repo = tmp_path / "compress"
    _copy_of_the_repository(repo)
    shared = ROOT.parent / "shared"
    if shared.is_dir():  # the README's ../shared, beside the copy as beside the checkout
        (tmp_path / "shared").symlink_to(shared.resolve())
    _shims(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "COMPRESS_CACHE": str(tmp_path / "cache")}
    ran = 0
    for b in readme_blocks((repo / "README.md").read_text(encoding="utf-8")):
        if b.mark or b.language in ("text", "yaml"):
            continue
        command = ["bash", "-e", "-c", b.code] if b.language == "bash" else \
            [sys.executable, "-c", b.code]
        proc = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=3600)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in output, \
            f"README.md:{b.line} ({b.language}):\n{b.code}\n{output[-4000:]}"
        ran += 1
    assert ran >= 5
    for run in ("runs/quickstart", "runs/resnet18-macs50"):
        assert json.loads((repo / run / "status.json").read_text())["state"] == "done"
        assert (repo / run / "model.onnx").is_file()
    # What the tour leaves in the checkout is ignored: `git status` would show nothing new.
    for name in ("my-images", "my-resnet18.safetensors", "my-recipe.yaml", "gates.xml"):
        assert (repo / name).exists(), name
