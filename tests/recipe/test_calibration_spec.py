"""The recipe's calibration section: defaults, refusals naming the YAML path, and the samples
it picks from the data."""

from __future__ import annotations

import pytest
import torch

from compress.data import build_data
from compress.data.calibration import calibration_batches
from compress.errors import InputError
from compress.recipe.calibration import CalibrationSpec
from compress.recipe.load import parse_recipe
from compress.recipe.sources import DataSpec
from tests.recipe.test_recipe import _with


def _parse(**changes):
    return parse_recipe(_with(**changes))


def test_defaults_are_the_papers() -> None:
    c = _parse().calibration
    assert (c.samples, c.seq_len, c.batch_size, c.split, c.seed) == (128, None, 8, "train", None)


@pytest.mark.parametrize("changes, fragment", [
    ({"calibration__rows": 4}, "unknown key 'calibration.rows'; allowed keys here: samples"),
    ({"calibration__samples": 0}, "'calibration.samples': Input should be greater than 0"),
    ({"calibration__batch_size": -1}, "'calibration.batch_size': Input should be greater"),
    ({"calibration__split": "test"}, "'calibration.split': Input should be 'train' or 'eval'"),
    ({"calibration__seq_len": 1}, "'calibration.seq_len': Input should be greater than 1"),
    ({"calibration__seq_len": 4096}, "calibration.seq_len (4096) exceeds data.max_length (128)"),
    ({"calibration__seed": -3}, "'calibration.seed': Input should be greater than or equal"),
    ({"finetune__max_tokens": 1000}, "finetune.max_tokens counts the tokens of text_lm data; "
                                     "data.source"),
])
def test_bad_keys_are_refused_by_path(changes, fragment) -> None:
    with pytest.raises(InputError) as err:
        _parse(**changes)
    assert fragment in str(err.value)


def test_samples_are_seeded_and_cover_the_request() -> None:
    bundle = build_data(DataSpec(source="digits"))
    spec = CalibrationSpec(samples=10, batch_size=4)
    first = calibration_batches(bundle, spec, seed=0)
    assert [len(b) for b in first] == [4, 4, 2]
    again = calibration_batches(bundle, spec, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = calibration_batches(bundle, spec, seed=1)
    assert not torch.equal(first[0], other[0])
    fixed = spec.model_copy(update={"seed": 5})
    assert torch.equal(calibration_batches(bundle, fixed, seed=0)[0],
                       calibration_batches(bundle, fixed, seed=9)[0])


def test_too_many_samples_and_seq_len_on_images_are_refused() -> None:
    bundle = build_data(DataSpec(source="digits", eval_subset=50), train=False)
    with pytest.raises(InputError, match="calibration.samples is 51 but the eval split holds "
                                         "only 50 samples"):
        calibration_batches(bundle, CalibrationSpec(samples=51, split="eval"), seed=0)
    with pytest.raises(InputError, match="loads no training data"):
        calibration_batches(bundle, CalibrationSpec(samples=5), seed=0)
    with pytest.raises(InputError, match="seq_len applies to token data"):
        calibration_batches(bundle, CalibrationSpec(samples=5, seq_len=4, split="eval"), seed=0)
