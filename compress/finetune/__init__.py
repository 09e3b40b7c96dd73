"""Fine-tuning after each pruning step: the budget and patience, the training loop, divergence
roll-back, mid-fine-tune checkpoints, AMP and channels-last on GPU, multi-process training,
and training a missing classification head before the baseline.
"""
