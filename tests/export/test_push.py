"""`compress push`: what it would upload (`--dry-run`, no network), and the runs it refuses.
The upload itself needs the network and a token and is not run here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compress.export.push import plan_push, push_run
from tests.hf_models import tiny_text_run
from tests.hostile import assert_refused, invoke


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_text_run(tmp_path_factory.mktemp("push"))


def test_dry_run_lists_hf_with_its_card_and_optionally_the_onnx_file(run: Path) -> None:
    names = [name for _, name in plan_push(run)]
    assert names == sorted(p.relative_to(run / "hf").as_posix()
                           for p in (run / "hf").rglob("*") if p.is_file())
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(names)
    assert [name for _, name in plan_push(run, onnx=True)] == [*names, "onnx/model.onnx"]
    result = invoke(["push", str(run), "me/tiny-bert", "--onnx", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done["files"] == [*names, "onnx/model.onnx"] and done["dry_run"] is True
    assert done["bytes"] == sum(p.stat().st_size for p, _ in plan_push(run, onnx=True))
    human = invoke(["push", str(run), "me/tiny-bert", "--dry-run"])
    assert human.exit_code == 0 and "  README.md\n" in human.stdout
    assert f"would upload {len(names)} files" in human.stdout


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _not_done(run: Path) -> None:
    (run / "status.json").write_text(json.dumps({"state": "interrupted"}))


def _gate_failed(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    report["gates"] = [{"name": "max_accuracy_drop", "passed": False, "measured": 9.0,
                        "threshold": 1.0, "comparison": "<=", "message": "x"}]
    report["status"] = "gate_failed"
    (run / "report.json").write_text(json.dumps(report))


def _no_hf(run: Path) -> None:
    shutil.rmtree(run / "hf")


@pytest.mark.hostile
@pytest.mark.parametrize("damage, fragment, forced", [
    (_not_done, "is not a finished run (state: interrupted)", True),
    (_gate_failed, "failed its gates (max_accuracy_drop); pass --force", True),
    (_no_hf, "has no hf/ folder", False),
])
def test_refusals(run: Path, tmp_path: Path, damage, fragment: str, forced: bool) -> None:
    copy = _copy(run, tmp_path)
    damage(copy)
    assert_refused(invoke(["push", str(copy), "me/tiny-bert", "--dry-run"]), fragment)
    if forced:  # --force pushes it anyway
        assert push_run(copy, "me/tiny-bert", force=True, dry_run=True)["files"]
    else:
        assert_refused(invoke(["push", str(copy), "me/x", "--dry-run", "--force"]), fragment)


@pytest.mark.hostile
@pytest.mark.parametrize("repo_id", ["me/bad name", "a/b/c", "me/-x", "me/x..y", ""])
def test_a_bad_repo_id_is_one_sentence(run: Path, repo_id: str) -> None:
    assert_refused(invoke(["push", str(run), repo_id, "--dry-run"]), "is not a repository id")


@pytest.mark.hostile
def test_a_link_inside_hf_is_refused(run: Path, tmp_path: Path) -> None:
    copy = _copy(run, tmp_path)
    (copy / "hf" / "secret").symlink_to("/etc/hostname")
    assert_refused(invoke(["push", str(copy), "me/x", "--dry-run"]), "is a link")


@pytest.mark.hostile
def test_onnx_without_an_onnx_file_is_refused(run: Path, tmp_path: Path) -> None:
    copy = _copy(run, tmp_path)
    (copy / "model.onnx").unlink()
    assert_refused(invoke(["push", str(copy), "me/x", "--onnx", "--dry-run"]), "no model.onnx")
