"""``d2lres.run``: one training run; python -m d2lres.run JOB runs a job. It is the module
``d2lres.runs.run`` itself (one object, not a copy), under the path that notebooks, documents
and users' code name."""
import sys

from .runs import run

if __name__ == "__main__":
    sys.exit(run.main())
sys.modules[__name__] = run
