"""`hf/README.md`, the model card: front matter carried over from the base model's card, the
report's measured figures (and "not measured" for the rest), the recipe; and `id2label` from the
data's class names in a folder stock transformers reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compress.report.card import base_card_front_matter, card_metadata, front_matter
from tests.hf_models import tiny_text_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_text_run(tmp_path_factory.mktemp("card"))


def test_stock_reload_names_the_labels_from_the_data(run: Path) -> None:
    import transformers

    stock = transformers.AutoModelForSequenceClassification.from_pretrained(run / "hf")
    assert stock.config.id2label == {0: "negative", 1: "positive"}
    assert stock.config.label2id == {"negative": 0, "positive": 1}


def test_model_card_front_matter_carries_the_base_models_license_and_tags(run: Path) -> None:
    card = (run / "hf" / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "mit" and meta["language"] == "en"
    assert meta["tags"] == ["sentence-similarity", "tiny", "compress", "pruned"]
    assert meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # a local folder is no Hub id


def test_model_card_body_holds_only_measured_figures(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    card = (run / "hf" / "README.md").read_text(encoding="utf-8")
    b, c = report["baseline"], report["compressed"]
    assert f"| {b['accuracy']:.2f} % | {c['accuracy']:.2f} % |" in card
    assert "| latency | not measured | not measured |" in card  # report.latency: false
    assert "- FFN neurons per block: 64 → 32" in card  # the widths before and after
    assert "- attention heads per block: 4 → 4" in card
    assert "Labels: 0 = `negative`, 1 = `positive`." in card
    recipe = yaml.safe_load(card.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert recipe == report["recipe"]
    assert "`mit`, carried over from the base model's card" in card


@pytest.mark.parametrize("card, expected", [
    ("---\nlicense: apache-2.0\n---\n", {"license": "apache-2.0"}),
    ("# no front matter\n", {}),
    ("---\nlicense: [unclosed\n---\n", {}),          # not YAML: ignored, not an error
    ("---\n- a list\n---\n", {}),                     # not a mapping
    ("---\nlicense: mit\n", {}),                      # never closed
    ("---\na: &a [x]\nb: &b [*a, *a]\nc: &c [*b, *b]\n---\n", {"a": ["x"], "b": [["x"], ["x"]],
                                                               "c": [[["x"], ["x"]]] * 2}),
])
def test_front_matter_is_read_safely(tmp_path: Path, card: str, expected: dict) -> None:
    (tmp_path / "README.md").write_text(card, encoding="utf-8")
    assert base_card_front_matter(tmp_path) == expected


def test_front_matter_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nlicense: mit\n" + "x: y\n" * 40_000 + "---\n")
    assert base_card_front_matter(tmp_path) == {}  # cut at 64 KiB: never closed


@pytest.mark.parametrize("name, base, expected", [
    ("org/bert", {}, "org/bert"),
    ("pkg:get_path", {"base_model": "org/base"}, "org/base"),
    ("./local", {}, None),
])
def test_base_model_is_a_hub_id_or_absent(name: str, base: dict, expected: str | None) -> None:
    meta = card_metadata({"recipe": {"model": {"name": name}}}, base)
    assert meta.get("base_model") == expected
