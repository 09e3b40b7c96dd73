"""benchmarks/llama_1b.py runs its tiny configuration (the 1.1B run is done by hand) and writes
a result file with its provenance and the config before and after pruning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_llama_script_tiny(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "llama_1b.py"), "--tiny", "--heads", "0.5",
           "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "llama_1b-tiny.json").read_text())
    assert (result["heads_after"], result["kv_heads_after"]) == (4, 2)
    # The model's config before pruning, not the pruned one under the model's name.
    assert result["config_before"]["num_attention_heads"] == 8
    assert result["config_after"]["num_attention_heads"] == 4
    assert result["hf"]["saved"] and result["hf"]["parity"] < 1e-5
    assert result["onnx_parity"] < 1e-3 and result["shards"]
    assert result["peak_rss_mib"]["self"] > 0
    assert result["command"].startswith("python benchmarks/llama_1b.py --tiny")
    assert len(result["code"]["files_sha256"]) == 64 and result["run"]["wall_s"] > 0
    assert result["machine"]["cores"] >= 1 and "cpu_flags" in result["machine"]


def test_llama_script_tiny_prunes_hidden_size_and_blocks(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "llama_1b.py"), "--tiny", "--hidden", "0.25",
           "--blocks", "1", "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "llama_1b-tiny.json").read_text())
    before, after = result["config_before"], result["config_after"]
    assert (before["hidden_size"], before["num_hidden_layers"]) == (64, 2)
    assert (after["hidden_size"], after["num_hidden_layers"]) == (48, 1)
    assert result["proof_max_abs_diff"] is not None and result["proof_max_abs_diff"] < 1e-4
    assert result["hf"]["saved"] and result["hf"]["parity"] < 1e-5
    assert result["onnx_parity"] < 1e-3
    assert (result["hidden_removed"], result["blocks_removed"]) == (0.25, 1)
