"""Fuzzing ``compress gate``'s input: whatever report.json holds, the gate ends in exit 0 or 1
(gates checked, one line each) or exit 2 with one ``error:`` sentence, never a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_json import FUZZ, as_text, json_values, mutated
from tests.gates.test_gate import make_report
from tests.hostile import error_line, invoke

_REPORT = make_report()
_REPORT["steps"].append({**_REPORT["steps"][0], "step": 2, "max_abs_diff": None,
                         "proof": "not proven"})

_FLAGS = [[], ["--min-speedup", "1.0"], ["--require-proof", "--max-size-mb", "5"]]


def _check_gate(data: bytes, flags: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "report.json").write_bytes(data)
        result = invoke(["gate", folder, *flags])
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        error_line(result)  # exactly one sentence
    else:
        lines = result.stdout.splitlines()
        assert lines and all(ln.startswith(("PASS ", "FAIL ")) for ln in lines[:-1]), lines
        assert not result.stderr.startswith("error:")


@FUZZ
@given(report=mutated(_REPORT), flags=st.sampled_from(_FLAGS))
def test_a_mutated_report_is_checked_or_refused(report: Any, flags: list[str]) -> None:
    _check_gate(json.dumps(report).encode(), flags)


@FUZZ
@given(data=as_text(st.one_of(json_values, mutated(_REPORT))), flags=st.sampled_from(_FLAGS))
def test_any_json_or_damaged_text_is_checked_or_refused(data: bytes, flags: list[str]) -> None:
    _check_gate(data, flags)
