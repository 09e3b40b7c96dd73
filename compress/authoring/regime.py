"""Choosing a pruning regime for a target, as Janusz et al., "One Shot vs. Iterative" (arXiv
2508.13836) found: one-shot below ~80 %, hybrid between ~80 % and ~90 %, iterative above.

Example:
    >>> choose_regime(0.5).kind, choose_regime(0.95).kind
    ('one-shot', 'iterative')
    >>> looks_like_transformer("google/vit-base-patch16-224")
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import InputError

__all__ = ["ARCHITECTURES", "TRANSFORMER_MARKERS", "ONE_SHOT_BELOW", "ITERATIVE_ABOVE", "FIRST_STEP_SHARE", "Regime", "choose_regime", "looks_like_transformer"]


ARCHITECTURES = ("cnn", "transformer")


TRANSFORMER_MARKERS = ("vit", "bert", "swin", "deit", "llama", "gpt")


ONE_SHOT_BELOW = 0.8     # the paper: one-shot is as good as iterative below ~80 %


ITERATIVE_ABOVE = 0.9    # ... and iterative wins above ~90 %; hybrid in between


FIRST_STEP_SHARE = 0.7   # hybrid's first step: 60-80 % of the target, the middle of it


_PAPER = 'Janusz et al., "One Shot vs. Iterative" (arXiv 2508.13836)'


@dataclass(frozen=True)
class Regime:
    """A schedule choice and the sentence that justifies it."""

    kind: str
    reason: str
    first_step: float | None = None
    step_rate: float | None = None


def _step_rate(target: float) -> float:
    # The paper's geometric step: ~10 % of what is left below an 80 % target, ~2 % above.
    return 0.1 if target < ONE_SHOT_BELOW else 0.02


def choose_regime(target: float, transformer: bool = False) -> Regime:
    """The paper's regime for a cumulative ``target`` (a fraction of MACs or channels).

    Below 0.8 one-shot; 0.8 to 0.9 hybrid (first step 0.7 x target, then geometric steps);
    above 0.9 iterative geometric; transformers always iterative.

    Example:
        >>> choose_regime(0.5).kind, choose_regime(0.5, transformer=True).step_rate
        ('one-shot', 0.1)
    """
    pct = f"{target * 100:g} %"
    if transformer:
        return Regime("iterative", f"the model is a transformer, and large structured cuts "
                      f"to attention heads and MLP widths are hard to recover from: this "
                      f"starter treats transformers conservatively and prunes them in small "
                      f"geometric steps at any target ({pct} here), each followed by a "
                      f"patience-based fine-tune.", step_rate=_step_rate(target))
    if target < ONE_SHOT_BELOW:
        return Regime("one-shot", f"the target ({pct}) is below ~80 %, where {_PAPER} find "
                      f"one-shot pruning as accurate as iterative pruning at a fraction of the "
                      f"cost: one prune, one fine-tune.")
    if target <= ITERATIVE_ABOVE:
        return Regime("hybrid", f"the target ({pct}) is between ~80 % and ~90 %: {_PAPER} find "
                      f"one-shot losing accuracy above ~80 % and a hybrid doing best across "
                      f"rates: one big step to ~70 % of the target, then small geometric steps "
                      f"with patience-based fine-tuning.",
                      first_step=round(FIRST_STEP_SHARE * target, 4), step_rate=_step_rate(target))
    return Regime("iterative", f"the target ({pct}) is above ~90 %, where {_PAPER} find "
                  f"iterative pruning ahead of one-shot: small steps let fine-tuning recover "
                  f"between them.", step_rate=_step_rate(target))


def looks_like_transformer(name: str, architecture_hint: str | None = None) -> bool:
    """``architecture_hint`` (cnn, transformer) when given, else: does ``name`` look like one?

    A guess from the name alone (``vit_b_16``, ``bert_base``); compare
    :func:`compress.pruning.transformer.is_transformer`, which looks at a built model.

    Example:
        >>> looks_like_transformer("vit_b_16"), looks_like_transformer("vit_b_16", "cnn")
        (True, False)
    """
    if architecture_hint is not None:
        if architecture_hint not in ARCHITECTURES:
            raise InputError(f"unknown architecture {architecture_hint!r}; allowed: "
                             f"{', '.join(ARCHITECTURES)}")
        return architecture_hint == "transformer"
    return any(marker in name.lower() for marker in TRANSFORMER_MARKERS)
