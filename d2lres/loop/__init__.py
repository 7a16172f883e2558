"""The framework-free loop and what surrounds it: the loop itself (``engine``), its callbacks
(``callbacks``: progress, expected time, checkpoints, signals, curves, d2l's lines), the checkpoint
file (``checkpoints``), the trainer base the backends build on (``trainer``), the data-parallel
split, progress across backends and plots. Its front ends ``fit`` and ``train_ch6`` are
``d2lres.training`` (its public path)."""
