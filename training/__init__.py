"""Training application: typed run config, k-fold experiment stages, one fold body, one epoch loop,
task objects per task kind (tasks/: classification, survival), survival losses and metrics, early
stopping, results, grid and tables."""
