import pytest

from compress.data import DATASETS
from compress.errors import InputError
from compress.models import MODEL_SOURCES
from compress.criteria import IMPORTANCE
from compress.registry import Registry
from compress.schedules import SCHEDULES


def test_register_and_get() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1
    assert reg.names() == ["a", "b"]
    assert "a" in reg and len(reg) == 2


def test_unknown_name_lists_available() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("x")(1)
    reg.register("y")(2)
    with pytest.raises(InputError, match=r"unknown widget 'z'; available: x, y"):
        reg.get("z")


def test_duplicate_registration_is_a_bug() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("x")(1)
    with pytest.raises(AssertionError):
        reg.register("x")(2)


def test_project_registries_are_populated() -> None:
    assert {"torchvision", "cifar_resnet", "python"} <= set(MODEL_SOURCES.names())
    assert {"digits", "imagefolder", "torchvision"} <= set(DATASETS.names())
    assert {"l1", "l2", "taylor"} <= set(IMPORTANCE.names())
    assert "one-shot" in SCHEDULES
