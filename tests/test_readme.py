"""The README's tour works by copy-paste: its shell blocks run, in order, in a copy of the
repository (slow: it prunes, fine-tunes and times real models)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Tour subsections whose shell blocks this test runs, in README order.
TOUR = ("The quickstart", "Your own torchvision model")


def tour_blocks(readme: str) -> list[tuple[str, str]]:
    """(subsection, script) for every ```bash block under the tour's listed subsections."""
    tour = readme.split("\n## A short tour\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for part in tour.split("\n### ")[1:]:
        title, _, body = part.partition("\n")
        if title.strip() in TOUR:
            blocks += [(title.strip(), b) for b in re.findall(r"```bash\n(.*?)```", body, re.S)]
    return blocks


def test_the_tour_has_its_commands() -> None:
    blocks = tour_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {title for title, _ in blocks} == set(TOUR)
    text = "\n".join(script for _, script in blocks)
    for needed in ("compress apply recipes/quickstart.yaml", "compress init --model "
                   "torchvision:resnet18", "examples/make_tour_model.py",
                   "examples/serve_onnx.py"):
        assert needed in text
    for path in re.findall(r"python (\S+\.py)", text):
        assert (ROOT / path).is_file(), path


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
def test_the_tour_runs_as_pasted(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy")
    repo = tmp_path / "compress"
    _copy_of_the_repository(repo)
    bin_dir = tmp_path / "bin"  # what `source .venv/bin/activate` gives: compress and python
    bin_dir.mkdir()
    for name, command in (("compress", f'"{sys.executable}" -m compress.cli.app'),
                          ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "COMPRESS_CACHE": str(tmp_path / "cache")}
    for title, script in tour_blocks((repo / "README.md").read_text(encoding="utf-8")):
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, f"{title}:\n{script}\n{proc.stdout}\n{proc.stderr}"
    for run in ("runs/quickstart", "runs/resnet18-macs50"):
        assert json.loads((repo / run / "status.json").read_text())["state"] == "done"
        assert (repo / run / "model.onnx").is_file()
