"""Every malformed input in tests/bad_inputs/ exits 2 with one clear sentence, never a traceback.

Each corpus file is a recipe whose comment header says what must happen:

* ``# expect: FRAGMENT`` (one or more): text that must appear, exactly, in the ``error:`` line;
* ``# validate: 2`` when ``compress validate`` already catches it (same fragments), ``0`` when
  only ``compress apply`` can (it needs the model or the data);
* ``# setup: NAME``: a fixture the test writes into the run's temporary folder first (binary
  files are made here, never committed; see ``SETUPS``);
* ``# out: inside-file`` / ``is-file``: ``--out`` below, or at, an existing regular file;
* ``# apply: xfail REASON`` / ``skip REASON``: a known bug on the apply path, outside the files
  this corpus may fix (see each reason); xfail runs it strictly, skip does not run it (it hangs).

``{ROOT}`` (the repository) and ``{TMP}`` (the test's temporary folder, where the recipe is
written, so relative paths resolve there) are substituted in the recipe and the fragments.
Corpus recipes use the digits data and the quickstart CNN with tiny budgets and fail before
training, so the whole corpus runs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compress.cli.app import app
from tests.conftest import ROOT
from tests.hostile import error_line

CORPUS = ROOT / "tests" / "bad_inputs"
CASES = sorted(CORPUS.glob("*.yaml"))
QUICKSTART_CKPT = ROOT / "examples" / "quickstart" / "digits_cnn.safetensors"
RESULT_FILES = ("model.onnx", "model.safetensors", "report.json")

runner = CliRunner()


def _truncated_safetensors(tmp: Path) -> None:
    data = QUICKSTART_CKPT.read_bytes()
    (tmp / "truncated.safetensors").write_bytes(data[: len(data) // 2])


def _resnet20_safetensors(tmp: Path) -> None:
    from safetensors.torch import save_file

    from compress.models.cifar_resnet import cifar_resnet

    save_file(cifar_resnet("resnet20").state_dict(), str(tmp / "resnet20.safetensors"))


class _CallsPrint:
    """Unpickling this would call print(): weights_only loading must refuse it."""

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (print, ("this must never be printed",))


def _pickle_pt(tmp: Path) -> None:
    torch.save({"weight": torch.zeros(2), "payload": _CallsPrint()}, tmp / "pickle.pt")


def _truncated_pt(tmp: Path) -> None:
    path = tmp / "truncated.pt"
    torch.save({"weight": torch.zeros(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:4000])


def _garbage_pt(tmp: Path) -> None:
    (tmp / "garbage.pt").write_bytes(b"this is not a torch checkpoint\n" * 8)


def _empty_imagefolder(tmp: Path) -> None:
    for split in ("train", "test"):
        (tmp / "images" / split).mkdir(parents=True)


def _imagefolder_without_images(tmp: Path) -> None:
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp / "images" / split / cls
            folder.mkdir(parents=True)
            (folder / "README.txt").write_text("no images here\n")


SETUPS: dict[str, Callable[[Path], None]] = {
    "truncated.safetensors": _truncated_safetensors,
    "resnet20.safetensors": _resnet20_safetensors,
    "pickle.pt": _pickle_pt,
    "truncated.pt": _truncated_pt,
    "garbage.pt": _garbage_pt,
    "empty_imagefolder": _empty_imagefolder,
    "imagefolder_without_images": _imagefolder_without_images,
}


def _header(path: Path) -> dict[str, list[str]]:
    """The ``# key: value`` lines of the leading comment block."""
    meta: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(":")
        if sep and key in ("expect", "validate", "setup", "out", "apply"):
            meta.setdefault(key, []).append(value.strip())
    return meta


def _check_no_result(out: Path) -> None:
    """Nothing in the run folder may pass for a finished run."""
    if not out.is_dir():
        return
    for name in RESULT_FILES:
        found = [p for p in out.rglob(name) if "baseline" not in p.relative_to(out).parts]
        assert not found, f"a failed run left {found}"
    status = out / "status.json"
    if status.is_file():
        assert json.loads(status.read_text())["state"] != "done"


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 40
    for path in CASES:
        meta = _header(path)
        assert meta.get("expect"), f"{path.name}: no '# expect:' line"
        assert meta.get("validate") in (["0"], ["2"]), f"{path.name}: '# validate: 0|2' missing"
        for name in meta.get("setup", []):
            assert name in SETUPS, f"{path.name}: unknown setup {name!r}"
        assert meta.get("out", ["inside-file"])[0] in ("inside-file", "is-file"), path.name
        mode = meta.get("apply", ["xfail reason"])[0].split(" ", 1)
        assert mode[0] in ("xfail", "skip") and len(mode) == 2, f"{path.name}: apply needs a reason"


@pytest.mark.hostile
@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_bad_input_exits_2_with_one_sentence(case: Path, tmp_path: Path) -> None:
    meta = _header(case)

    def fill(text: str) -> str:
        return text.replace("{ROOT}", str(ROOT)).replace("{TMP}", str(tmp_path))

    for name in meta.get("setup", []):
        SETUPS[name](tmp_path)
    recipe = tmp_path / case.name
    recipe.write_text(fill(case.read_text(encoding="utf-8")), encoding="utf-8")
    fragments = [fill(f) for f in meta["expect"]]

    validated = runner.invoke(app, ["validate", str(recipe)])
    if meta["validate"] == ["2"]:
        assert validated.exit_code == 2, validated.output
        line = error_line(validated)
        for fragment in fragments:
            assert fragment in line, f"{fragment!r} not in {line!r}"
    else:  # documents what only a real run can catch
        assert validated.exit_code == 0, validated.output

    out_mode = (meta.get("out") or [""])[0]
    out = tmp_path / "run"
    if out_mode:
        blocker = tmp_path / "a_regular_file"
        blocker.write_text("not a folder\n")
        out = blocker / "run" if out_mode == "inside-file" else blocker
    apply_mode, _, reason = (meta.get("apply") or [""])[0].partition(" ")
    if apply_mode == "skip":
        pytest.skip(f"apply not run: {reason}")
    applied = runner.invoke(app, ["apply", str(recipe), "--out", str(out)])
    try:
        assert applied.exit_code == 2, applied.output
        line = error_line(applied)
        for fragment in fragments:
            assert fragment in line, f"{fragment!r} not in {line!r}"
    except AssertionError:
        if apply_mode == "xfail":
            pytest.xfail(f"known bug: {reason}")
        raise
    assert "this must never be printed" not in applied.output  # the pickle did not run
    # Strict: once the bug is fixed this fails, so the marker cannot outlive it.
    assert apply_mode != "xfail", f"fixed: remove '# apply: xfail' from {case.name}"
    if out_mode != "is-file":
        _check_no_result(out)
