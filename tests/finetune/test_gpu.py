"""compress.finetune.gpu: autocast dtype, gradient scaler, channels-last layout, cuDNN autotuning,
torch.compile. The CUDA branches are decided by ``device.type`` alone, so they are exercised
here with CPU tensors; what really runs on a GPU is benchmarks/gpu_smoke.py's job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compress.errors import InputError
from compress.finetune.finetune import finetune_
from compress.finetune.gpu import (
    amp_dtype,
    autocast,
    channels_last_,
    compiled,
    cuda_settings,
    grad_scaler,
)
from compress.recipe.stages import FinetuneSpec
from tests.conftest import ROOT, tiny_cnn, tiny_recipe
from tests.finetune.test_finetune import image_loader, same_state, state

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("amp", ["auto", "off"])
def test_the_cpu_trains_in_fp32_without_a_scaler(amp: str) -> None:
    spec = FinetuneSpec(amp=amp)
    assert amp_dtype(CPU, spec) is None
    assert not grad_scaler(CPU, spec).is_enabled()
    with autocast(CPU, spec):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_forcing_a_half_precision_off_cuda_is_bad_input(amp: str) -> None:
    with pytest.raises(InputError, match=f"finetune.amp: {amp} needs a CUDA device"):
        amp_dtype(CPU, FinetuneSpec(amp=amp))


@pytest.mark.parametrize(("amp", "bf16_supported", "expected"), [
    ("auto", True, torch.bfloat16), ("auto", False, torch.float16),
    ("bf16", False, torch.bfloat16), ("fp16", True, torch.float16), ("off", True, None)])
def test_cuda_dtype_follows_the_recipe_and_the_gpu(monkeypatch: pytest.MonkeyPatch, amp: str,
                                                   bf16_supported: bool,
                                                   expected: torch.dtype | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert amp_dtype(CUDA, FinetuneSpec(amp=amp)) == expected


def test_only_fp16_gets_a_gradient_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    # Constructing an enabled scaler needs no GPU; only scaling a CUDA tensor would.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    enabled = {amp: grad_scaler(CUDA, FinetuneSpec(amp=amp)).is_enabled()
               for amp in ("auto", "bf16", "fp16", "off")}
    assert enabled == {"auto": False, "bf16": False, "fp16": True, "off": False}


def _layouts(model: nn.Module) -> set[bool]:
    return {p.is_contiguous(memory_format=torch.channels_last)
            for p in model.parameters() if p.dim() == 4}


def test_channels_last_only_on_cuda_and_undone_afterwards() -> None:
    model = tiny_cnn()
    before = state(model)
    undo = channels_last_(model, CPU, FinetuneSpec())
    assert _layouts(model) == {False}  # the CPU: untouched
    undo()
    undo = channels_last_(model, CUDA, FinetuneSpec())  # decided by device.type only
    assert _layouts(model) == {True}
    assert same_state(state(model), before)  # a layout, not a value change
    undo()
    assert all(p.is_contiguous() for p in model.parameters())
    assert same_state(state(model), before)


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(4, 4)), tiny_cnn()],
                         ids=["no-conv", "conv"])
def test_channels_last_can_be_turned_off_and_skips_models_without_convs(model: nn.Module
                                                                        ) -> None:
    off = FinetuneSpec(channels_last=False)
    channels_last_(model, CUDA, off)
    assert all(p.is_contiguous() for p in model.parameters())
    if not any(p.dim() == 4 for p in model.parameters()):
        channels_last_(model, CUDA, FinetuneSpec())
        assert all(p.is_contiguous() for p in model.parameters())


def test_cudnn_benchmark_is_on_for_a_cuda_run_only_and_restored() -> None:
    previous = torch.backends.cudnn.benchmark
    with cuda_settings(CPU):
        assert torch.backends.cudnn.benchmark == previous
    torch.backends.cudnn.benchmark = False
    try:
        with cuda_settings(CUDA):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = previous


def test_compile_is_off_by_default_and_shares_the_parameters() -> None:
    model = tiny_cnn()
    assert compiled(model, FinetuneSpec()) is model
    net = compiled(model, FinetuneSpec(compile=True))
    assert net is not model
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}


def _finetune_with_compile(monkeypatch: pytest.MonkeyPatch, backend: str | None) -> None:
    """A compiled fine-tune trains the model itself, as the eager one does."""
    calls: list[nn.Module] = []
    real = torch.compile

    def spy(module: nn.Module, **kw: object) -> nn.Module:
        calls.append(module)
        return real(module, **kw) if backend is None else real(module, backend=backend, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    spec = dict(epochs=1, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0,
                lr_schedule="constant")
    eager, fast = tiny_cnn(), tiny_cnn()
    stats_e = finetune_(eager, image_loader(), FinetuneSpec(**spec), CPU)
    stats_c = finetune_(fast, image_loader(), FinetuneSpec(**spec, compile=True), CPU)
    assert calls == [fast]  # compiled once per fine-tune, the model itself
    assert stats_c.steps == stats_e.steps == 4
    assert not same_state(state(fast), state(tiny_cnn()))  # trained in place
    for k, v in state(eager).items():
        torch.testing.assert_close(state(fast)[k], v, rtol=1e-4, atol=1e-5)


def test_compiled_fine_tune_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    _finetune_with_compile(monkeypatch, "eager")  # dynamo's tracing, no C++ build


@pytest.mark.slow
def test_compiled_fine_tune_matches_eager_with_inductor(monkeypatch: pytest.MonkeyPatch) -> None:
    _finetune_with_compile(monkeypatch, None)  # the default backend: about a minute on 2 cores


def test_gpu_smoke_script_exits_cleanly_without_a_gpu() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_report_device_is_checked_like_the_run_device(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from compress.recipe.load import parse_recipe
    from compress.recipe.stages import ReportSpec
    from compress.run.pipeline import run_recipe

    assert ReportSpec().device == "cpu"  # latency stays on the CPU unless asked
    assert ReportSpec(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValidationError, match="device must be one of auto, cpu, cuda, cuda:N"):
        ReportSpec(device="gpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: report.device: cuda is valid here")
    recipe = parse_recipe(tiny_recipe(tmp_path, report={"device": "cuda"}), base_dir=tmp_path)
    with pytest.raises(InputError, match="torch sees no CUDA GPU"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any output
