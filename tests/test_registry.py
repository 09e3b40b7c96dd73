import pytest

from compress.data import DATASETS
from compress.errors import InputError
from compress.models import MODEL_SOURCES
from compress.pruning.criteria import IMPORTANCE
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


def _shapes():
    from pydantic import BaseModel

    from compress.registry import SourceRegistry

    class Shape(BaseModel):
        source: str
        side: int | None = None
        radius: int | None = None
        color: str = "red"

    checked = []
    shapes = SourceRegistry("shape source", section="shape", common=frozenset({"source", "color"}))

    @shapes.register("square")
    class Square:
        accepts = frozenset({"side"})
        required = frozenset({"side"})

        def check(self, spec) -> None:
            checked.append(spec.side)
            if spec.side > 9:
                raise InputError("squares stop at 9")

    return shapes, Shape, checked


def test_source_registry_checks_a_section_against_its_entry() -> None:
    shapes, Shape, checked = _shapes()
    shapes.check_spec(Shape(source="square", side=2, color="blue"))  # a common key
    shapes.check_spec(Shape(source="square", side=3, radius=None))  # a default counts as unset
    assert checked == [2, 3]
    with pytest.raises(InputError, match=r"^shape.radius is not used by shape source 'square'; "
                                         r"it accepts: color, side, source$"):
        shapes.check_spec(Shape(source="square", side=2, radius=1))
    with pytest.raises(InputError, match=r"^shape source 'square' needs shape.side$"):
        shapes.check_spec(Shape(source="square"))
    with pytest.raises(InputError, match="squares stop at 9"):
        shapes.check_spec(Shape(source="square", side=10))
    with pytest.raises(InputError, match=r"unknown shape source 'circle'; available: square"):
        shapes.check_spec(Shape(source="circle"))


@pytest.mark.parametrize("registry, name", [(r, n) for r in (MODEL_SOURCES, DATASETS)
                                            for n in r.names()])
def test_every_source_declares_its_keys_in_its_own_class(registry, name: str) -> None:
    cls = registry.get(name)
    assert isinstance(cls.accepts, frozenset) and isinstance(cls.required, frozenset)
    assert cls.required <= cls.accepts | registry.common
    assert registry.section in ("model", "data")


def test_sources_are_checked_by_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from compress.data import check_data_spec
    from compress.models import check_model_spec
    from compress.recipe.sources import DataSpec, ModelSpec

    calls = []
    for registry in (MODEL_SOURCES, DATASETS):
        monkeypatch.setattr(registry, "check_spec", lambda spec: calls.append(spec.source))
    check_model_spec(ModelSpec(source="cifar_resnet", name="resnet20"))
    check_data_spec(DataSpec(source="digits"))
    assert calls == ["cifar_resnet", "digits"]
