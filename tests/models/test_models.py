from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compress.errors import InputError
from compress.models import MODEL_SOURCES, build_model
from compress.models.checkpoint import load_checkpoint_, read_state_dict
from compress.models.cifar_resnet import ChannelMapShortcut, cifar_resnet
from compress.recipe.sources import ModelSpec
from tests.conftest import ROOT, shared_path

TINY_SPECS = {
    "torchvision": {"name": "resnet18", "num_classes": 3},
    "cifar_resnet": {"name": "resnet20", "num_classes": 10},
    "python": {"factory": str(ROOT / "examples/quickstart/digits_cnn.py") + ":digits_cnn",
               "kwargs": {"width": 8}},
}


# huggingface models load from folders; tests/models/test_huggingface.py builds, prunes and
# reloads them.
@pytest.mark.parametrize("source", [n for n in MODEL_SOURCES.names() if n != "huggingface"])
def test_every_source_builds_and_loads_its_own_checkpoint(source: str, tmp_path: Path) -> None:
    spec = ModelSpec(source=source, **TINY_SPECS[source])
    model = build_model(spec).eval()
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    again = build_model(spec.model_copy(update={"checkpoint": str(ckpt)})).eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_pt_checkpoint_with_module_prefix(tmp_path: Path) -> None:
    model = cifar_resnet("resnet20")
    path = tmp_path / "m.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    state = read_state_dict(path)
    assert set(state) == set(model.state_dict())


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(InputError, match="was refused"):
        read_state_dict(path)
    assert not marker.exists()


def test_checkpoint_of_other_architecture(tmp_path: Path) -> None:
    path = tmp_path / "r20.safetensors"
    save_file(cifar_resnet("resnet20").state_dict(), str(path))
    spec = ModelSpec(source="cifar_resnet", name="resnet32", checkpoint=str(path))
    with pytest.raises(InputError, match="does not fit the model: .*missing keys"):
        build_model(spec)


def test_wrong_class_count(tmp_path: Path) -> None:
    path = tmp_path / "r20.safetensors"
    save_file(cifar_resnet("resnet20").state_dict(), str(path))
    spec = ModelSpec(source="cifar_resnet", name="resnet20", num_classes=100, checkpoint=str(path))
    with pytest.raises(InputError, match="shape mismatches .*linear.weight"):
        build_model(spec)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file(cifar_resnet("resnet20").state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:1000])
    spec = ModelSpec(source="cifar_resnet", name="resnet20", checkpoint=str(path))
    with pytest.raises(InputError, match="not a readable safetensors file"):
        build_model(spec)


@pytest.mark.parametrize("spec, fragment", [
    ({"source": "torchvision", "name": "resnet9000"}, "unknown torchvision model 'resnet9000'"),
    ({"source": "cifar_resnet", "name": "resnet21"}, "unknown cifar_resnet name 'resnet21'"),
    ({"source": "cifar_resnet"}, "needs model.name"),
    ({"source": "cifar_resnet", "name": "resnet20", "factory": "a:b"}, "model.factory is not used"),
    ({"source": "python", "factory": "no_such_module_xyz:f"}, "cannot import 'no_such_module_xyz'"),
    ({"source": "python", "factory": "missing.py:f"}, "does not exist"),
    ({"source": "python", "factory": "collections:OrderedDict"}, "not a torch.nn.Module"),
    ({"source": "python", "factory": "bad"}, "must look like 'package.module:function'"),
    ({"source": "cifar_resnet", "name": "resnet20", "checkpoint": "/nope.th"}, "does not exist"),
])
def test_bad_model_specs(spec: dict, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        build_model(ModelSpec(**spec))


@pytest.mark.parametrize("name", ["resnet20", "resnet32"])
def test_shared_cifar_checkpoints_load_strictly(name: str) -> None:
    folder = shared_path("models", "resnet-cifar10")
    files = sorted(folder.glob(f"{name}-*.th"))
    if not files:
        pytest.skip(f"{name} checkpoint absent from {folder}")
    model = build_model(ModelSpec(source="cifar_resnet", name=name, checkpoint=str(files[0])))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_channel_map_shortcut_is_option_a() -> None:
    sc = ChannelMapShortcut(in_channels=4, pad=2)
    x = torch.randn(2, 4, 8, 8)
    y = sc(x)
    assert y.shape == (2, 8, 4, 4)
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :2]) == 0 and torch.count_nonzero(y[:, 6:]) == 0


def test_channel_map_shortcut_general_map_matches_gather() -> None:
    sc = ChannelMapShortcut(in_channels=4, pad=2)
    sc.prune_in_channels_([1])       # input 1 gone: its output slot becomes zero
    sc.prune_out_channels_([0, 7])   # two padding slots gone
    assert sc.in_channels == 3 and sc.index_map == [-1, 0, -1, 1, 2, -1]
    x = torch.randn(1, 3, 4, 4)
    y = sc(x)
    assert torch.equal(y[:, 1], x[:, 0, ::2, ::2]) and torch.equal(y[:, 4], x[:, 2, ::2, ::2])
    assert torch.count_nonzero(y[:, [0, 2, 5]]) == 0


def test_build_model_can_skip_a_check_already_made(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = []
    monkeypatch.setattr(MODEL_SOURCES, "check_spec", lambda spec: checked.append(spec.source))
    spec = ModelSpec(source="cifar_resnet", name="resnet20")
    build_model(spec)
    assert checked == ["cifar_resnet"]
    build_model(spec, check=False)  # e.g. after compress.run.preflight.check_recipe
    assert checked == ["cifar_resnet"]


def test_starter_defaults_of_channel_pruned_sources_live_in_one_place() -> None:
    from compress.models.base import CHANNEL_STARTER, ChannelPrunedSource

    channel = [n for n in MODEL_SOURCES.names()
               if issubclass(MODEL_SOURCES.get(n), ChannelPrunedSource)]
    assert channel == ["cifar_resnet", "python", "torchvision"]
    for name in channel:
        differs = {k for k, v in MODEL_SOURCES.get(name).starter_defaults.items()
                   if CHANNEL_STARTER.get(k) != v}
        assert differs <= {"imagenet_input"}, name  # torchvision's models expect 224 px


def test_safetensors_checkpoint_loads_into_a_versioned_torchvision_model(tmp_path: Path) -> None:
    # MNASNet's _load_from_state_dict refuses a state without module versions, which is what
    # a safetensors file holds: the model's own versions are supplied.
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mnasnet0_5(num_classes=3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "m.safetensors")
    fresh = torchvision.models.mnasnet0_5(num_classes=3)
    load_checkpoint_(fresh, tmp_path / "m.safetensors")
    assert torch.equal(fresh.classifier[1].weight, net.classifier[1].weight)
