"""Norms over pruned channels are proven against the norm restricted to the kept channels."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CheckFailed
from compress.measure.counts import count_macs_params
from compress.pruning.norms import restricted_norms
from compress.pruning.planning import solve_ratio_for_macs
from compress.pruning.structured import StructuredPruner
from compress.recipe.pruning import PruningSpec


class LayerNorm2d(nn.LayerNorm):
    """Channels-last LayerNorm on NCHW, as torchvision's ConvNeXt writes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """timm-style: a free per-channel scale on channels-last activations."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(0.5 + torch.rand(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """ConvNeXt block: depthwise conv, channels-last LayerNorm, pointwise MLP, layer scales."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = LayerScale(c)
        self.layer_scale = nn.Parameter(0.5 + torch.rand(c, 1, 1))  # torchvision's CNBlock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma(self.pw2(F.gelu(self.pw1(y)))).permute(0, 3, 1, 2)
        return x + self.layer_scale * y


class ConvNeXtish(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 4, stride=4), LayerNorm2d(c))
        self.b1, self.b2 = Block(c), Block(c)
        self.down = nn.Sequential(LayerNorm2d(c), nn.Conv2d(c, 2 * c, 2, stride=2))
        self.b3 = Block(2 * c)
        self.head_norm, self.head = nn.LayerNorm(2 * c), nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b3(self.down(self.b2(self.b1(self.stem(x)))))
        return self.head(self.head_norm(x.mean((2, 3))))


class GroupRMS(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.gn2 = nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.fc1, self.rms, self.fc2 = nn.Linear(32, 24), nn.RMSNorm(24), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn2(self.c2(F.relu(self.gn1(self.c1(x))))))
        return self.fc2(self.rms(F.gelu(self.fc1(x.mean((2, 3))))))


def _seeded(model: nn.Module) -> nn.Module:
    """Norm scales and shifts away from 1 and 0, so a wrong channel shows in the output."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def _probe() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _step(model: nn.Module, spec: PruningSpec, ratio: float = 0.5) -> float:
    with warnings.catch_warnings():  # torch-pruning warns about the free parameters it found
        warnings.simplefilter("ignore")
        pruner = StructuredPruner(model, _probe()[:1], spec)
    return pruner.step_(ratio, _probe()).max_abs_diff


def test_convnext_block_with_channels_last_norms_and_layer_scales_is_proven() -> None:
    torch.manual_seed(0)
    model = _seeded(ConvNeXtish())
    diff = _step(model, PruningSpec(ratio=0.5))
    assert diff < 1e-5
    for block, width in ((model.b1, 8), (model.b3, 16)):  # the residual streams were pruned
        assert block.dw.out_channels == width and block.norm.normalized_shape == (width,)
        assert block.layer_scale.shape == (width, 1, 1) and block.gamma.gamma.shape == (width,)
    assert model.stem[1].normalized_shape == (8,) and model.head_norm.weight.shape == (16,)
    assert model(_probe()).shape == (4, 10)


def test_the_zeroed_model_alone_differs_so_the_restriction_is_what_proves_it() -> None:
    ln = _seeded(nn.Sequential(nn.LayerNorm(6)))[0]
    x = torch.randn(3, 6) * torch.tensor([1.0, 1, 1, 1, 0, 0])  # channels 4, 5 zeroed
    with torch.no_grad():
        ln.weight[4:] = 0
        ln.bias[4:] = 0
        plain = ln(x)
        with restricted_norms({ln: [4, 5]}, {ln: "ln"}):
            restricted = ln(x)
        kept = F.layer_norm(x[:, :4], (4,), ln.weight[:4], ln.bias[:4], ln.eps)
    assert torch.allclose(restricted[:, :4], kept, atol=1e-6) and not restricted[:, 4:].any()
    assert not torch.allclose(plain[:, :4], kept, atol=1e-3)


@pytest.mark.parametrize("round_to", [1, 8, "auto"])
def test_group_norm_and_rms_norm_are_pruned_per_group_and_proven(round_to: int | str) -> None:
    torch.manual_seed(0)
    model = _seeded(GroupRMS())
    assert _step(model, PruningSpec(ratio=0.5, round_to=round_to)) < 1e-5
    # round_to 8 (the default with convolutions) rounds the whole width, not each group's
    assert (model.gn1.num_channels, model.gn1.num_groups, model.gn2.num_channels) == (8, 4, 16)
    assert model.c1.out_channels == 8 and model.c2.in_channels == 8
    rms = 12 if round_to == 1 else 8  # 24 channels, half kept, rounded down to 8
    assert model.rms.normalized_shape == (rms,) and model.rms.weight.shape == (rms,)


def test_grouped_convolutions_round_their_whole_width() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, groups=4), nn.ReLU(), nn.Conv2d(32, 16, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    assert _step(model, PruningSpec(ratio=0.5, round_to=8)) < 1e-5
    assert model[3].out_channels == 16 and model[3].groups == 4


class ConcatNorm(nn.Module):
    """One LayerNorm over two concatenated branches: two groups each prune part of it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)
        self.norm, self.out = nn.LayerNorm(32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(torch.cat([F.gelu(self.a(x)), F.gelu(self.b(x))], -1)))


def test_a_norm_pruned_in_parts_by_several_groups_is_proven() -> None:
    torch.manual_seed(0)
    model = _seeded(ConcatNorm())
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    record = StructuredPruner(model, x[:1], PruningSpec(ratio=0.5)).step_(0.5, x)
    assert record.groups == 2 and record.max_abs_diff < 1e-5
    assert model.norm.normalized_shape == (16,) and model.out.in_features == 16


def test_a_group_norm_losing_unequal_channels_per_group_is_refused() -> None:
    gn = nn.GroupNorm(2, 8)
    with pytest.raises(CheckFailed, match=r"GroupNorm 'gn' would keep \[2, 4\] channels.* "
                                          r"add 'conv' to pruning.ignored$"):
        with restricted_norms({gn: [0, 1]}, {gn: "gn"}, {gn: "conv"}):
            pass


def test_a_norm_in_an_unknown_layout_is_refused_in_one_sentence() -> None:
    class Odd(nn.LayerNorm):  # normalises something that is not its input's channels
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    norm = Odd(4)
    with pytest.raises(CheckFailed, match="layout compress cannot restrict"):
        with restricted_norms({norm: [3]}, {norm: "norm"}), torch.no_grad():
            norm(torch.randn(2, 4))


class HomeMadeRMSNorm(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Mlp(nn.Module):
    def __init__(self, middle: str) -> None:
        super().__init__()
        self.middle = middle
        self.fc1, self.norm, self.fc2 = nn.Linear(8, 32), HomeMadeRMSNorm(32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(self.norm(h) if self.middle == "norm" else h.softmax(-1))


@pytest.mark.parametrize(("middle", "cause"), [
    ("norm", "HomeMadeRMSNorm 'norm' normalises over the pruned channels"),
    ("softmax", "SoftmaxBackward0 over a dimension of 32"),
])
def test_a_failed_proof_names_the_real_cause(middle: str, cause: str) -> None:
    torch.manual_seed(0)
    model = Mlp(middle).eval()
    x = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = StructuredPruner(model, x[:1], PruningSpec(ratio=0.5))
    with pytest.raises(CheckFailed) as err:
        pruner.step_(0.5, x)
    message = str(err.value)
    assert cause in message and "add 'fc1' to pruning.ignored" in message
    assert "wired its channels wrongly" not in message and "\n" not in message
    model = Mlp(middle).eval()  # the advice works: ignored, the group is left alone
    pruner = StructuredPruner(model, x[:1], PruningSpec(ratio=0.5, ignored=["fc1"]))
    assert pruner.step_(0.5, x).max_abs_diff == 0.0 and model.fc1.out_features == 32


def _torchvision(name: str, px: int) -> tuple[nn.Module, torch.Tensor]:
    """Random init with a fixed seed; BatchNorm statistics recalibrated on random images."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batch
    if bns:
        with torch.no_grad():
            model.train()(torch.randn(16, 3, px, px, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(4, 3, px, px, generator=torch.Generator().manual_seed(1))
    return model.eval(), x


def prune_to_half_the_macs(name: str, px: int) -> tuple[float, float]:
    """(fraction of MACs removed, proof's max |diff| relative to the output scale)."""
    model, x = _torchvision(name, px)
    scale = model(x).abs().max().item()
    assert scale > 0.1, "outputs must not be tiny, or any tolerance passes"
    base = count_macs_params(model, x[:1])[0]
    spec = PruningSpec(target={"macs": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ratio, _ = solve_ratio_for_macs(model, x[:1], spec, 0.5)
        pruner = StructuredPruner(model, x[:1], spec, cumulative_ratios=[ratio])
    record = pruner.step_(ratio, x)
    assert model(x).shape == (4, 10)
    return 1 - count_macs_params(model, x[:1])[0] / base, record.max_abs_diff / max(1.0, scale)


@pytest.mark.slow
def test_torchvision_convnext_tiny_prunes_to_half_the_macs_proven() -> None:
    removed, rel_diff = prune_to_half_the_macs("convnext_tiny", 32)
    assert removed >= 0.5 - 0.01 and rel_diff < 1e-4
