"""compress.finetune.finetune and compress.finetune.patience: budgets, early stopping, restoring,
distillation,
divergence (rollback, one restart at a lower learning rate, then CheckFailed)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.errors import CheckFailed, InputError
from compress.finetune.finetune import distillation_loss, finetune_
from compress.finetune.patience import Patience
from compress.finetune.trainloop import build_optimizer
from compress.measure.evaluate import evaluate
from compress.recipe.stages import FinetuneSpec
from tests.conftest import tiny_cnn

CPU = torch.device("cpu")
NAN = float("nan")


def image_loader(n: int = 64, batch: int = 16, seed: int = 0) -> DataLoader:
    """Random 3x8x8 images with 4 classes, in a fixed order (tiny_cnn's input)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def scripted(values: list[float], key: str = "accuracy"
             ) -> tuple[Callable[[nn.Module], dict[str, float]], list[dict[str, torch.Tensor]]]:
    """A validate_fn returning ``values`` in turn, plus the weights it saw at each call."""
    seen: list[dict[str, torch.Tensor]] = []

    def validate(model: nn.Module) -> dict[str, float]:
        if len(seen) == len(values):
            pytest.fail(f"evaluated more than the {len(values)} scripted times")
        seen.append(state(model))
        return {key: values[len(seen) - 1]}

    return validate, seen


def spec(**kw: Any) -> FinetuneSpec:
    """Plain SGD at a constant, large LR so every step visibly moves the weights."""
    return FinetuneSpec(**{"lr": 0.1, "weight_decay": 0.0, "lr_schedule": "constant", **kw})


# ---- the stopping rule ---------------------------------------------------------------------

def test_patience_stops_when_and_only_when_the_metric_stalls() -> None:
    p = Patience(3, mode="max")
    improved, stop = [], []
    for v in (10, 11, 11, 10.5, 12, 12, 11, 11):
        improved.append(p.update(v))
        stop.append(p.should_stop)
    assert improved == [True, True, False, False, True, False, False, False]
    assert stop == [False] * 7 + [True]  # two stale evaluations, then a new best reset it
    assert (p.best, p.best_index, p.history[-1]) == (12, 4, 11)


@pytest.mark.parametrize("patience", [1, 2, 4])
def test_patience_counts_exactly_patience_stale_evaluations(patience: int) -> None:
    p = Patience(patience, mode="min")
    values = [3.0, 2.0, 1.0] + [1.0] * patience
    stops = [(p.update(v), p.should_stop)[1] for v in values]
    assert stops == [False] * (len(values) - 1) + [True]


def test_min_delta_must_be_exceeded_in_both_directions() -> None:
    up = Patience(2, mode="max", min_delta=0.5)
    assert [up.update(v) for v in (50.0, 50.5, 50.3)] == [True, False, False]
    assert up.should_stop and up.best == 50.0
    assert up.update(51.01) and not up.should_stop  # a real gain resets the count
    down = Patience(2, mode="min", min_delta=0.1)
    assert [down.update(v) for v in (1.0, 0.95, 0.85, 0.9, 0.8)] == [True, False, True,
                                                                        False, False]
    assert down.should_stop and (down.best, down.best_index) == (0.85, 2)


def test_nan_never_improves() -> None:
    p = Patience(2, mode="min")
    assert not p.update(NAN) and p.best is None and p.best_index is None
    assert p.update(1.0) and not p.update(NAN) and not p.update(NAN) and p.should_stop


def test_patience_lists_repeat_their_last_value() -> None:
    s = FinetuneSpec(patience=[200, 10])
    assert [s.patience_for(i) for i in (1, 2, 3, 7)] == [200, 10, 10, 10]
    assert FinetuneSpec(patience=5).patience_for(9) == 5 and FinetuneSpec().patience_for(1) is None


# ---- patience-based fine-tuning ------------------------------------------------------------

def test_stops_at_the_right_evaluation_and_restores_its_weights() -> None:
    model = tiny_cnn()
    validate, seen = scripted([50, 60, 70, 65, 70])  # 70 again is no improvement
    stats = finetune_(model, image_loader(), spec(patience=2, eval_every=2, max_epochs=10),
                      CPU, validate_fn=validate)
    assert stats.evaluations == [50, 60, 70, 65, 70] and len(seen) == 5
    assert (stats.best, stats.best_evaluation) == (70, 2)
    assert stats.stopped_early and stats.restored
    assert (stats.steps, stats.epochs, stats.samples) == (8, 2.0, 128)  # evaluations at 2,4,6,8
    assert not same_state(seen[2], seen[4])  # training moved on after the best...
    assert same_state(state(model), seen[2])  # ...and the best weights (BN buffers too) are back
    assert not model.training


def test_untrained_model_is_evaluation_zero_and_can_win() -> None:
    model = tiny_cnn()
    pruned = state(model)
    validate, seen = scripted([80, 70, 75, 79.5], key="accuracy")
    stats = finetune_(model, image_loader(), spec(patience=3), CPU, validate_fn=validate)
    assert stats.best_evaluation == 0 and stats.restored and stats.steps == 12  # once per epoch
    assert same_state(seen[0], pruned) and same_state(state(model), pruned)


def test_val_loss_is_minimised_with_min_delta() -> None:
    model = tiny_cnn()
    validate, seen = scripted([2.0, 1.5, 1.45, 1.2, 1.19, 1.25], key="loss")
    s = spec(patience=2, monitor="val_loss", min_delta=0.1, eval_every=1)
    stats = finetune_(model, image_loader(), s, CPU, validate_fn=validate)
    assert stats.evaluations == [2.0, 1.5, 1.45, 1.2, 1.19, 1.25]
    assert (stats.best_evaluation, stats.steps) == (3, 5)
    assert same_state(state(model), seen[3])


def test_budget_end_is_always_evaluated_and_a_last_best_is_kept() -> None:
    model = tiny_cnn()
    validate, _ = scripted([1.0, 2.0, 3.0, 4.0])
    stats = finetune_(model, image_loader(), spec(patience=5, max_epochs=2, eval_every=3),
                      CPU, validate_fn=validate)
    # 8 steps in the budget: evaluations before training and after steps 3, 6 and 8.
    assert stats.evaluations == [1.0, 2.0, 3.0, 4.0] and stats.steps == 8
    assert not stats.stopped_early and not stats.restored and stats.best_evaluation == 3


def test_max_steps_caps_the_patience_budget() -> None:
    validate, _ = scripted([1.0, 2.0, 3.0, 4.0])
    stats = finetune_(tiny_cnn(), image_loader(), spec(patience=3, eval_every=2, max_steps=5),
                      CPU, validate_fn=validate)
    assert stats.steps == 5 and stats.epochs == 1.25 and len(stats.evaluations) == 4


@pytest.mark.parametrize(("step", "evaluations"), [(1, 4), (2, 2), (5, 2)])
def test_each_pruning_step_gets_its_own_patience(step: int, evaluations: int) -> None:
    validate, _ = scripted([50.0] * 6)
    stats = finetune_(tiny_cnn(), image_loader(n=16), spec(patience=[3, 1]), CPU, step=step,
                      validate_fn=validate)
    assert len(stats.evaluations) == evaluations and stats.stopped_early


def test_default_validation_evaluates_val_loader_and_needs_one() -> None:
    model, val = tiny_cnn(), image_loader(n=24, seed=1)
    before = evaluate(model, val, CPU)["accuracy"]
    stats = finetune_(model, image_loader(), spec(patience=1, max_epochs=3), CPU, val_loader=val)
    assert stats.evaluations[0] == before and 2 <= len(stats.evaluations) <= 4
    assert stats.best == max(stats.evaluations)
    with pytest.raises(InputError, match="data.val_subset"):
        finetune_(model, image_loader(), spec(patience=1), CPU)


# ---- fixed budget ----------------------------------------------------------------------------

def test_fixed_budget_counts_epochs_and_steps_and_ignores_validation() -> None:
    def never(_: nn.Module) -> dict[str, float]:
        raise AssertionError("a fixed budget does not validate")

    loader = image_loader(n=70)  # 5 batches, the last one of 6 samples
    stats = finetune_(tiny_cnn(), loader, spec(epochs=2), CPU, validate_fn=never,
                      val_loader=loader)
    assert (stats.steps, stats.epochs, stats.samples) == (10, 2.0, 140)
    assert stats.evaluations == [] and stats.best is None and stats.best_evaluation is None
    assert not stats.stopped_early and not stats.restored and stats.final_loss is not None
    capped = finetune_(tiny_cnn(), loader, spec(epochs=2, max_steps=7), CPU)
    assert (capped.steps, capped.epochs, capped.samples) == (7, 1.4, 70 + 32)
    model = tiny_cnn()
    before = state(model)
    none = finetune_(model, loader, spec(epochs=0), CPU)
    assert (none.steps, none.samples, none.final_loss) == (0, 0, None)
    assert same_state(state(model), before)


def test_max_tokens_caps_a_language_models_budget_in_whole_steps() -> None:
    from compress.data.text import TokenRows

    torch.manual_seed(0)
    blocks = torch.randint(0, 11, (40, 8))
    loader = DataLoader(TokenRows(blocks, blocks), batch_size=4)  # 32 tokens a step
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 11))
    stats = finetune_(model, loader, spec(epochs=3, max_tokens=100), CPU)
    assert (stats.steps, stats.samples) == (4, 128)  # ceil(100 / 32) steps, their tokens
    capped = finetune_(model, loader, spec(epochs=3, max_tokens=10_000, max_steps=3), CPU)
    assert capped.steps == 3  # the smaller budget wins
    with pytest.raises(InputError, match="one target per sample: use finetune.max_steps"):
        finetune_(tiny_cnn(), image_loader(), spec(max_tokens=100), CPU)


def test_every_call_starts_a_fresh_optimizer_and_schedule() -> None:
    s = FinetuneSpec(max_steps=2, lr=0.05, momentum=0.9)  # momentum and cosine: both stateful
    twice = tiny_cnn()
    finetune_(twice, image_loader(), s, CPU)
    once = copy.deepcopy(twice)
    finetune_(twice, image_loader(), s, CPU)
    finetune_(once, image_loader(), s, CPU)
    assert same_state(state(twice), state(once))  # no momentum or LR carried between calls


# ---- distillation ----------------------------------------------------------------------------

def test_distillation_loss_matches_a_hand_computation() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    alpha, temp = 0.3, 2.0

    def softmax(row: list[float], scale: float = 1.0) -> list[float]:
        e = [math.exp(v / scale) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(row)[c]) for row, c in zip(s.tolist(), y.tolist())) / 2
    kl = sum(pt * math.log(pt / ps)
             for rs, rt in zip(s.tolist(), t.tolist())
             for ps, pt in zip(softmax(rs, temp), softmax(rt, temp))) / 2  # batchmean
    expected = (1 - alpha) * ce + alpha * temp ** 2 * kl
    got = distillation_loss(s, t, y, alpha=alpha, temperature=temp)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_language_model_distillation_averages_over_scored_next_tokens() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[1, 3:] = -100  # padding: its positions are not scored
    temp = 2.0
    kls = []
    for b in range(2):
        for pos in range(4):  # position t predicts token t + 1
            if y[b, pos + 1] == -100:
                continue
            ps = torch.softmax(s[b, pos] / temp, -1).tolist()
            pt = torch.softmax(t[b, pos] / temp, -1).tolist()
            kls.append(sum(q * math.log(q / p) for p, q in zip(ps, pt)))
    assert len(kls) == 6
    expected = temp ** 2 * sum(kls) / len(kls)
    got = distillation_loss(s, t, y, alpha=1.0, temperature=temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the same tokens in a longer padded batch: the same loss (a mean, not a sum over tokens)
    longer_s = torch.cat([s, torch.randn(2, 3, 7)], 1)
    longer_t = torch.cat([t, torch.randn(2, 3, 7)], 1)
    longer_y = torch.cat([y, torch.full((2, 3), -100)], 1)
    longer_y[1, 3:] = -100
    assert distillation_loss(longer_s, longer_t, longer_y, alpha=1.0,
                             temperature=temp).item() == pytest.approx(expected, rel=1e-5)


def test_finetune_trains_on_the_distillation_loss_and_never_moves_the_teacher() -> None:
    torch.manual_seed(1)
    teacher = tiny_cnn().train()  # train mode on purpose: BN buffers would move if used so
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    frozen = state(teacher)
    model, loader = tiny_cnn(), image_loader(n=16)
    x, y = next(iter(loader))
    with torch.no_grad():  # on copies: the loop's modes are student train, teacher eval
        expected = distillation_loss(copy.deepcopy(model).train()(x),
                                     copy.deepcopy(teacher).eval()(x), y,
                                     alpha=0.7, temperature=3.0)
    s = spec(max_steps=1, distill={"alpha": 0.7, "temperature": 3.0})
    stats = finetune_(model, loader, s, CPU, teacher=teacher)
    assert stats.final_loss == pytest.approx(expected.item(), rel=1e-6)
    assert same_state(state(teacher), frozen) and teacher.training  # mode given back
    assert all(p.grad is None for p in teacher.parameters())


def test_alpha_zero_is_plain_cross_entropy() -> None:
    teacher = tiny_cnn(width=8)
    plain, distilled = tiny_cnn(), tiny_cnn()
    finetune_(plain, image_loader(), spec(max_steps=4), CPU)
    finetune_(distilled, image_loader(), spec(max_steps=4, distill={"alpha": 0.0}), CPU,
              teacher=teacher)
    assert same_state(state(plain), state(distilled))


def test_distill_needs_a_teacher_and_a_teacher_alone_is_ignored() -> None:
    with pytest.raises(InputError, match="finetune.distill needs a teacher"):
        finetune_(tiny_cnn(), image_loader(), spec(distill={"alpha": 0.5}), CPU)

    class Unused(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the teacher must not run without finetune.distill")

    plain, with_teacher = tiny_cnn(), tiny_cnn()
    finetune_(plain, image_loader(), spec(max_steps=2), CPU)
    finetune_(with_teacher, image_loader(), spec(max_steps=2), CPU, teacher=Unused())
    assert same_state(state(plain), state(with_teacher))


# ---- divergence ------------------------------------------------------------------------------

class Faulty(nn.Module):
    """tiny_cnn whose training forward passes number ``nan_at`` (1-based; ``"all"``: every one)
    return NaN logits. ``seen`` holds the inner weights each training pass started from."""

    def __init__(self, nan_at: set[int] | str = frozenset()) -> None:
        super().__init__()
        self.net, self.nan_at = tiny_cnn(), nan_at
        self.seen: list[dict[str, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.net(x)
        self.seen.append(state(self.net))  # before the pass moves the BatchNorm statistics
        out = self.net(x)
        if self.nan_at == "all" or len(self.seen) in self.nan_at:
            return out * NAN
        return out


def test_nan_loss_rolls_back_to_the_start_and_restarts_once_at_a_lower_lr(
        caplog: pytest.LogCaptureFixture) -> None:
    model = Faulty(nan_at={5})  # 4 optimizer steps done, the 5th loss is NaN
    start = state(model.net)
    s = spec(epochs=3, lr_schedule="cosine", momentum=0.9)  # 12 steps; both stateful
    with caplog.at_level(logging.WARNING, logger="compress.finetune.finetune"):
        stats = finetune_(model, image_loader(), s, CPU, step=3)
    assert same_state(model.seen[5], start)  # the restart began exactly at the start weights
    assert (stats.divergences, stats.steps, stats.samples) == (1, 12, 12 * 16)
    assert stats.lr_final == pytest.approx(0.01) and math.isfinite(stats.final_loss)
    assert "loss became nan at optimizer step 5" in caplog.text
    assert "restarting the remaining 8 steps at learning rate 0.01" in caplog.text
    # The restart == a fresh fine-tune of the remaining 8 steps at lr * 0.1 from the start:
    # a new optimizer (no momentum) and a cosine schedule over those 8 steps only.
    reference = tiny_cnn()
    finetune_(reference, image_loader(), spec(epochs=3, max_steps=8, lr=0.01,
                                              lr_schedule="cosine", momentum=0.9), CPU)
    assert same_state(state(model.net), state(reference))


def test_a_second_divergence_fails_naming_the_step_and_the_lr() -> None:
    model = Faulty(nan_at="all")
    start = state(model.net)
    message = (r"fine-tuning after pruning step 2 diverged twice \(loss became nan at optimizer "
               r"step 1, again at step 1 after lowering the learning rate to 0\.01\); lower "
               r"finetune\.lr or set finetune\.grad_clip")
    with pytest.raises(CheckFailed, match=message):
        finetune_(model, image_loader(), spec(epochs=2), CPU, step=2)
    assert same_state(state(model.net), start)  # rolled back before failing
    assert len(model.seen) == 2


def test_non_finite_weights_after_the_last_step_roll_back() -> None:
    model = tiny_cnn()
    start = state(model)
    backward = []

    def poison(grad: torch.Tensor) -> torch.Tensor:  # a finite loss, a NaN gradient at step 4
        backward.append(1)
        return grad * NAN if len(backward) == 4 else grad

    model.head.weight.register_hook(poison)
    stats = finetune_(model, image_loader(), spec(max_steps=4), CPU)
    assert stats.divergences == 1 and stats.steps == 4  # nothing left to restart with
    assert same_state(state(model), start)


def test_nan_loss_with_patience_rolls_back_to_the_best_evaluation() -> None:
    model = Faulty(nan_at={6})
    validate, seen = scripted([50, 60, 55, 58, 65])
    s = spec(patience=3, eval_every=2, max_epochs=2)  # 8 steps: evaluations at 2, 4, then
    stats = finetune_(model, image_loader(), s, CPU, validate_fn=validate)  # NaN at 6
    assert [k.removeprefix("net.") for k in seen[1]] == list(model.seen[6])
    assert all(torch.equal(seen[1]["net." + k], v) for k, v in model.seen[6].items())
    assert stats.evaluations == [50, 60, 55, 58, 65] and stats.best_evaluation == 4
    assert (stats.divergences, stats.steps, stats.restored) == (1, 8, False)
    assert stats.lr_final == pytest.approx(0.01)


def test_accuracy_collapse_rolls_back_and_patience_starts_over() -> None:
    model = Faulty()
    validate, seen = scripted([80, 85, 40, 82, 84])  # 40 < 80 - 30 at evaluation 2
    s = spec(patience=2, eval_every=2, max_epochs=3)  # 12 steps
    stats = finetune_(model, image_loader(), s, CPU, validate_fn=validate)
    assert all(torch.equal(seen[1]["net." + k], v) for k, v in model.seen[4].items())
    assert stats.divergences == 1 and stats.lr_final == pytest.approx(0.01)
    # Two stale evaluations after the restart stop it; 40 does not count against the patience
    # (with it, 82 would have been the second stale one).
    assert stats.evaluations == [80, 85, 40, 82, 84] and stats.steps == 8
    assert stats.stopped_early and stats.restored and stats.best_evaluation == 1
    assert all(torch.equal(seen[1][k], v) for k, v in state(model).items())


@pytest.mark.parametrize(("values", "reason"), [
    ([1.0, 0.9, 12.0, 0.8], "val_loss rose to 12, more than 10x evaluation 0's 1"),
    ([1.0, NAN, 0.8, 0.7], "val_loss became nan"),
])
def test_val_loss_collapse_is_a_rise_or_a_non_number(values: list[float], reason: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    validate, _ = scripted(values, key="loss")
    s = spec(patience=5, monitor="val_loss", eval_every=4, max_epochs=len(values) - 1)
    with caplog.at_level(logging.WARNING, logger="compress.finetune.finetune"):
        stats = finetune_(Faulty(), image_loader(), s, CPU, validate_fn=validate)
    assert stats.divergences == 1 and stats.evaluations == values and reason in caplog.text


def test_collapsing_twice_fails() -> None:
    validate, _ = scripted([80.0, 45.0, 10.0], key="accuracy")
    s = spec(patience=5, eval_every=2, max_epochs=3, collapse_drop=20.0)
    message = (r"diverged twice \(val_accuracy fell to 45\.00, 35\.00 points below evaluation "
               r"0's 80\.00 at optimizer step 2, val_accuracy fell to 10\.00.* at step 2 after "
               r"lowering the learning rate to 0\.01\)")
    with pytest.raises(CheckFailed, match=message):
        finetune_(Faulty(), image_loader(), s, CPU, validate_fn=validate)


def test_small_drops_are_not_a_collapse_and_a_broken_start_has_nothing_to_lose() -> None:
    validate, _ = scripted([80.0, 50.5, 60.0], key="accuracy")  # 29.5 points below: allowed
    stats = finetune_(Faulty(), image_loader(), spec(patience=5, max_epochs=2), CPU,
                      validate_fn=validate)
    assert stats.divergences == 0 and stats.best_evaluation == 0 and stats.restored
    validate, _ = scripted([NAN, NAN, 2.0], key="loss")  # the pruned model was already NaN
    stats = finetune_(Faulty(), image_loader(), spec(patience=5, max_epochs=2,
                                                     monitor="val_loss"), CPU,
                      validate_fn=validate)
    assert stats.divergences == 0 and stats.best_evaluation == 2


def test_without_divergence_training_is_a_plain_loop() -> None:
    s = FinetuneSpec(epochs=2, max_steps=6, lr=0.05)  # cosine, momentum, weight decay: defaults
    model, reference = tiny_cnn(), tiny_cnn()
    stats = finetune_(model, image_loader(), s, CPU)
    assert stats.divergences == 0 and stats.lr_final == 0.05
    optimizer = build_optimizer(reference, s)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, 6) / 6)))
    reference.train()
    batches = [b for _ in range(2) for b in image_loader()][:6]
    for x, y in batches:
        loss = nn.functional.cross_entropy(reference(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert same_state(state(model), state(reference))
    assert stats.final_loss == loss.item()


@pytest.mark.parametrize("bad", [{"divergence_lr_factor": 1.0}, {"divergence_lr_factor": 0.0},
                                 {"collapse_drop": 0.0}, {"collapse_factor": 1.0}])
def test_divergence_settings_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        FinetuneSpec(**bad)
    assert FinetuneSpec(divergence_lr_factor=0.5, collapse_drop=5, collapse_factor=2)
