"""The framework-free loop's parts: the data-parallel split, progress and plots. The loop itself
is ``d2lres.training`` (its public path)."""
