"""What importing d2lres sets up in the process, all listed here.

A framework reads some settings only when it loads, so the d2lres package that loads it makes
them first; that is all an import changes in the environment, and a value the user set is kept.
:data:`IMPORT_ENVIRONMENT` lists the variables per module, with :data:`WHY`;
:data:`IMPORT_ACTIONS` says what an import does besides. ``tests/test_layout.py`` checks that
importing each module changes the environment by exactly its list (and ``d2lres``'s, which
every backend imports first).

What a run needs of the process beyond that is set up where a run starts, by :func:`configure`
(``d2lres.run.train``, which the command line and the jobs call, and the data-parallel checks'
job): TensorFlow's multi-worker strategy or logical CPUs, JAX's processes joined as one. The rest
(data-parallel ranks, the instruction-set hold, a job's settings) is passed to the processes
d2lres starts (``d2lres.util.jobs``), an environment laid over another by :func:`overlay`, which
merges ``XLA_FLAGS`` flag by flag (:func:`with_xla_flags`).
"""
from __future__ import annotations

import importlib
import os

#: The value "as many as the cores this process may run on" (``threads.available_cores``).
CORES = "cores"

IMPORT_ENVIRONMENT = {
    "d2lres": {"OMP_WAIT_POLICY": "PASSIVE"},
    "d2lres.tf": {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"},
    "d2lres.mxnet": {"OMP_NUM_THREADS": CORES, "MXNET_OMP_MAX_THREADS": CORES},
    "d2lres.jax": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
}

WHY = {
    "OMP_WAIT_POLICY": "idle OpenMP threads sleep instead of spinning, so training degrades gracefully when "
                       "another program takes a core (d2lres.host.threads)",
    "TF_CPP_MIN_LOG_LEVEL": "no INFO lines from TensorFlow's runtime at import",
    "KERAS_BACKEND": "Keras 3 on TensorFlow, whatever another library chose before",
    "OMP_NUM_THREADS": "importing MXNet sets the shared OpenMP runtime to one thread, which halves PyTorch's "
                       "speed on two cores; unless the user set it, every core (d2lres.host.threads)",
    "MXNET_OMP_MAX_THREADS": "MXNet's operators use every core, not fewer",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "JAX does not reserve 75% of a GPU that another framework shares",
}

IMPORT_ACTIONS = {
    "d2lres.torch": "gives PyTorch every core again if MXNet, imported first, took them (unless the user set "
                    "OMP_NUM_THREADS)",
    "d2lres.mxnet": "puts back the numpy names MXNet 1.9.1 refers to (numpy.bool, ...: d2lres.host.mxnet_compat), "
                    "switches Gluon to NumPy mode (npx.set_np: d2lres's blocks, loaders and Trainer are written in "
                    "MXNet's NumPy interface, as the book's MXNet code is after its own npx.set_np(), and a Gluon "
                    "block runs in one mode only), and gives PyTorch its cores back as d2lres.torch does",
}

#: What the command line sets before any framework loads, in its process and the ones it starts (a
#: value the user set is kept): without ``--verbose``, TensorFlow's runtime keeps its INFO lines to
#: itself (as ``d2lres.tf``'s import does); with it, TensorFlow prints them all (level 0), which
#: ``d2lres.tf``'s import then keeps.
LOG_ENVIRONMENT = {False: {"TF_CPP_MIN_LOG_LEVEL": "2"}, True: {"TF_CPP_MIN_LOG_LEVEL": "0"}}

#: What :func:`configure` does per backend, before the backend computes anything.
RUN_SETUP = {
    "tf": "with TF_CONFIG set, enters TensorFlow's MultiWorkerMirroredStrategy (it must exist before the runtime "
          "starts; it waits for every worker); with D2LRES_REPLICAS > 1 on a machine without a GPU, splits the CPU "
          "into that many logical devices (d2lres.tf.parallel.prepare)",
    "jax": "with JAX_COORDINATOR_ADDRESS set, joins the other processes of the run (d2lres.jax.distributed.initialize, "
           "before any computation)",
}


def configure(backend: str) -> None:
    """Set this process up for a run of ``backend`` (its canonical name) as :data:`RUN_SETUP` says
    (imports the framework; nothing for a backend not listed). Call it before the backend computes
    anything; a second call does nothing more."""
    if backend == "tf":
        importlib.import_module("d2lres.tf.parallel").prepare()
    elif backend == "jax":
        importlib.import_module("d2lres.jax.distributed").initialize()


def prepare(module: str, cores: int | None = None) -> None:
    """Set ``module``'s :data:`IMPORT_ENVIRONMENT` variables that the user has not set
    (:data:`CORES` as ``cores``)."""
    for key, value in IMPORT_ENVIRONMENT[module].items():
        os.environ.setdefault(key, str(cores) if value == CORES else value)


def log_lines(verbose: bool) -> None:
    """Set :data:`LOG_ENVIRONMENT`'s variables for ``verbose`` that the user has not set."""
    for key, value in LOG_ENVIRONMENT[bool(verbose)].items():
        os.environ.setdefault(key, value)


def with_xla_flags(current: str, *flags: str) -> str:
    """``XLA_FLAGS`` ``current`` with each of ``flags`` (``--name=value``) set, a flag of the same
    name replaced and the others kept in their order."""
    names = {f.partition("=")[0] for f in flags}
    return " ".join([*(f for f in current.split() if f.partition("=")[0] not in names), *flags])


def overlay(base, top) -> dict[str, str]:
    """The environment ``base`` with ``top``'s variables over it, ``XLA_FLAGS`` merged flag by flag
    (:func:`with_xla_flags`): a process started for a device count keeps it when held to AVX2."""
    env = {**base, **top}
    if "XLA_FLAGS" in base and "XLA_FLAGS" in top:
        env["XLA_FLAGS"] = with_xla_flags(base["XLA_FLAGS"], *top["XLA_FLAGS"].split())
    return env
