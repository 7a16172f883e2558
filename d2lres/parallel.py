"""``d2lres.parallel``: data parallel. It is the module ``d2lres.runs.parallel`` itself (one
object, not a copy), under the path that notebooks, documents and users' code name."""
import sys

from .runs import parallel

if __name__ == "__main__":
    sys.exit(parallel.main())
sys.modules[__name__] = parallel
