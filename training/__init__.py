"""Training application: typed run config, k-fold experiment, training loop, early stopping, evaluation, results."""
