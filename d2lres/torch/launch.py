"""``torchrun`` (``python -m d2lres.torch.launch ARGS`` = ``python -m torch.distributed.run ARGS``)
that ends on SIGINT or SIGTERM as d2lres does: it forwards the signal to its workers, waits for
them to write their checkpoint and exits with 128 + the signal, without torchrun's traceback."""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

if __name__ == "__main__":
    try:
        main()
    except SignalException as err:
        sys.exit(128 + int(err.sigval))
