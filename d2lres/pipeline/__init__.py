"""The pipeline: every backend trained from the same weights and compared (``compare``). One run
and its job are ``d2lres.run``, the checks ``d2lres.checks`` and ``d2lres.parallel``: the pipeline's
modules at their public paths."""
