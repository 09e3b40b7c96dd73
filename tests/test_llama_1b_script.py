"""benchmarks/llama_1b.py runs its tiny configuration (the 1.1B run is done by hand)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_llama_script_tiny(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "llama_1b.py"), "--tiny", "--heads", "0.5",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["heads_after"], result["kv_heads_after"]) == (4, 2)
    assert result["hf"]["saved"] and result["hf"]["parity"] < 1e-5
    assert result["onnx_parity"] < 1e-3 and result["shards"]
    assert result["peak_rss_gib"] > 0
