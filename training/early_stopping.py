"""Early stopping on validation loss, with the published (CLAM-style) rule.

Each epoch the validation loss is compared with the best so far. If it is not worse (ties count as an
improvement, as in the published code) the model is a new best: the caller saves a checkpoint and the
counter resets. Otherwise the counter grows; training stops once it reaches ``patience`` *and* the
epoch index (0-based) is past ``stop_epoch``. Published HiVE-MIL settings: patience 10; we use
stop_epoch 20, the value CLAM-derived few-shot pipelines pair with patience 10 (max_epochs is 50).
"""

from __future__ import annotations

import math


class EarlyStopping:
    """Track the best validation loss; ``step`` returns whether this epoch is a new best."""

    def __init__(self, patience: int = 10, stop_epoch: int = 20):
        self.patience = patience
        self.stop_epoch = stop_epoch
        self.best_loss = math.inf
        self.best_epoch = -1
        self.counter = 0
        self.should_stop = False

    def step(self, epoch: int, val_loss: float) -> bool:
        """Record epoch ``epoch``'s validation loss; True when it is the best so far."""
        if self.best_epoch < 0 or val_loss <= self.best_loss:
            self.best_loss = val_loss
            self.best_epoch = epoch
            self.counter = 0
            return True
        self.counter += 1
        if self.counter >= self.patience and epoch > self.stop_epoch:
            self.should_stop = True
        return False
