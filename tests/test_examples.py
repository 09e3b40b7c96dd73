"""Every example runs (tiny settings), so none can rot."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_prune_your_own_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples/prune_your_own_model.py"),
                           "--epochs", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and (tmp_path / "model.safetensors").is_file()


def test_train_quickstart_model_script(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/train_quickstart_model.py"),
                           "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "eval top-1" in proc.stdout
