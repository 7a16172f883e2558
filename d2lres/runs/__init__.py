"""Runs: the training loop, one run's folder and job, comparing backends, data parallel,
progress, atomic files, signals, plots and the stamps reports carry."""
