"""Early stopping as the released training run does it (docs/method.md §8.2).

The monitored value is the validation **error** (1 - accuracy) by default; ``--es-metric loss`` watches
the validation loss (the full training objective, CE + lambda * HTCL for HiVE-MIL) instead. Lower is
better. The first epoch is the first best. Afterwards only a strictly lower value is an improvement: a
tie is *not* one, so the checkpoint kept is the first epoch that reached the lowest value, and a tie
counts towards patience. Training stops once the counter reaches ``patience`` at an epoch index
(0-based) past ``stop_epoch``. Released settings: patience 10, stop_epoch 0, so the earliest stop is at
epoch 10 (ten epochs without improvement after epoch 0).
"""

from __future__ import annotations

import math

ES_METRICS = ("error", "loss")


class EarlyStopping:
    """Track the best validation value; ``step`` returns whether this epoch is a new best."""

    def __init__(self, patience: int = 10, stop_epoch: int = 0):
        self.patience = patience
        self.stop_epoch = stop_epoch
        self.best_value = math.inf
        self.best_epoch = -1
        self.counter = 0
        self.should_stop = False

    def step(self, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s validation value (lower is better); True when it is a new best."""
        if self.best_epoch < 0 or value < self.best_value:
            self.best_value = value
            self.best_epoch = epoch
            self.counter = 0
            return True
        self.counter += 1
        if self.counter >= self.patience and epoch > self.stop_epoch:
            self.should_stop = True
        return False
