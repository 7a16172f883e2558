"""``d2lres.spec``: the framework-free network specification. It is the module ``d2lres.core.spec``
itself (one object, not a copy), under the path that notebooks, documents and users' code name."""
import sys

from .core import spec

if __name__ == "__main__":
    print(spec.variants_markdown(), end="")
sys.modules[__name__] = spec
