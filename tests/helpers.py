"""What the tests share besides fixtures (those are in conftest.py): every pair of backends, one way
to call any backend's models on a numpy batch (:func:`forward`), the command line's runs
(:func:`d2lres_cli`, :func:`run_metrics`, :func:`run_weights`, :func:`wait_all`), a local HTTP
mirror (:func:`serve_directory`), a speed kernel held to the plain path
(:func:`assert_kernel_is_the_plain_function`), and what several test files compute alike, once per
test run (:func:`shared`, :func:`full_check`). Under pytest-xdist each worker is a process of its
own, so what several tests need is computed by whichever worker asks first.

Importing this module imports no framework or matplotlib: conftest imports it before it moves
``HOME`` and the framework caches, which those read at import."""
import ast
import contextlib
import functools
import http.server
import importlib
import importlib.util
import inspect
import itertools
import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from d2lres import spec
from d2lres.host import backends

#: The variable naming this test run's folder (:func:`test_root`).
TEST_ROOT = "D2LRES_TEST_ROOT"

#: Seconds any one command of a test may take (two shared cores can be slow).
COMMAND_TIMEOUT = 600

def test_root() -> Path:
    """This test run's own folder (conftest's ``pytest_configure`` makes it, with ``home/`` and
    ``shared/`` in it, and removes it when the run ends); pytest-xdist's workers inherit it."""
    return Path(os.environ[TEST_ROOT])


def real_data_dir() -> str:
    """The real data set's folder, resolved from the user's ``HOME`` before the run moved it."""
    return os.environ["D2LRES_DATA_DIR"]


def shared(name: str, compute: Callable[[Path], object]):
    """``compute(folder)`` once per test run, whichever worker asks first: under a lock, in a
    folder of its own, its result pickled beside it; a worker that asks later waits for the lock
    and reads the result. A failed computation leaves no result (the next one to ask retries)."""
    root = test_root() / "shared"
    folder, result = root / name, root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if not result.exists():
            folder.mkdir(exist_ok=True)
            value = compute(folder)
            result.with_suffix(".tmp").write_bytes(pickle.dumps(value))
            result.with_suffix(".tmp").replace(result)
        return pickle.loads(result.read_bytes())


def d2lres_cli(*args) -> subprocess.CompletedProcess:
    """``python -m d2lres ARGS``, its output captured; it must succeed."""
    out = subprocess.run([sys.executable, "-m", "d2lres", *map(str, args)], capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    return out


def wait_all(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    """``(stdout, stderr)`` of processes started together (the rest killed if one outlives the
    timeout); every one must succeed."""
    try:
        outs = [p.communicate(timeout=COMMAND_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err[-4000:] for _, err in outs]
    return outs


#: The command line's small run (tests/test_faults.py, tests/test_parallel_*.py): 28x28 images,
#: batch 4, 24 real images, 2 epochs, a checkpoint every 2 steps.
SMALL_RUN = ["--resize", "28", "--epochs", "2", "--no-progress", "--lr", "0.01", "--batch-size", "4", "--momentum",
             "0.9", "--schedule", "constant", "--limit", "24", "--checkpoint-every", "2"]


def one_and_two_devices(run: list, data_dir, tmp_path_factory) -> tuple[Path, Path, str]:
    """The run ``d2lres *run`` on one device and on ``--devices 2``: both folders, and what the
    two-device command printed."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    d2lres_cli(*run, "--data-dir", data_dir, "--out", one)
    printed = d2lres_cli(*run, "--data-dir", data_dir, "--out", two, "--devices", 2).stdout
    return one, two, printed


def run_metrics(folder) -> dict:
    """A run folder's ``metrics.json``."""
    return json.loads((Path(folder) / "metrics.json").read_text())


def run_weights(folder) -> dict[str, np.ndarray]:
    """A run folder's ``weights.npz``."""
    with np.load(Path(folder) / "weights.npz") as data:
        return {k: data[k] for k in data.files if k != "__format__"}  # d2lres.weights.FORMAT_KEY


def full_check(arch=None, input_shape=(1, 96, 96), step_size: int = 96, batch_size: int = 4) -> dict:
    """``checks.cross_backend_checks`` of ``arch`` (default: the chapter's ResNet-18) at the CLI's
    defaults, computed once per test run (tests/test_parity.py's ResNet-18 is also
    tests/test_variants.py's). Read it, do not change it."""
    from d2lres import checks
    arch = spec.get_arch(arch)
    name = f"full-check-{arch.name}-v{arch.version}-{arch.flavour}-{'x'.join(map(str, input_shape))}-{step_size}-" \
           f"{batch_size}"
    return shared(name, lambda _: checks.cross_backend_checks(input_shape=tuple(input_shape), step_size=step_size,
                                                              batch_size=batch_size, arch=arch))


def assert_kernel_is_the_plain_function(backend: str, monkeypatch, kernels, rule: str) -> None:
    """``backend``'s ResNet-18 at 40x40 (stage 5 at 2x2 outputs) through ``checks.run_all`` with its
    speed kernel, then with ``kernels.<rule>`` set to 0 (the kernel never taken): the two within
    the cross-backend checks' tolerances."""
    from d2lres import checks
    kwargs = dict(input_shape=(1, 40, 40), step_size=40)
    fast = checks.run_all({backend: (backend, {})}, **kwargs)[backend]
    monkeypatch.setattr(kernels, rule, 0)
    plain = checks.run_all({backend: (backend, {})}, **kwargs)[backend]
    diff = checks.differences(plain, fast)
    assert all(diff[k] <= tol for k, tol in checks.TOLERANCES.items()), diff


#: Every pair of backends, named as ``checks.cross_backend_checks`` names them ("torch-tf", ...).
PAIRS = [f"{a}-{b}" for a, b in itertools.combinations(backends.available(), 2)]


@dataclass(frozen=True)
class Calling:
    """How the tests call one backend's models on a numpy batch held in NCHW.

    ``array``: the dotted name of the function that makes the framework's array from numpy;
    ``channels_last``: its models take NHWC (4-D inputs are transposed, outputs transposed back);
    ``call_options``: keyword arguments of an inference-mode call; ``eval``: call ``net.eval()``
    first; ``init``: the method a freshly built block needs before its first call."""
    array: str
    channels_last: bool = False
    call_options: tuple[tuple[str, object], ...] = ()
    eval: bool = False
    init: str | None = None


#: One line per backend.
CALLING = {
    "torch": Calling("torch.from_numpy", eval=True),
    "tf": Calling("numpy.asarray", channels_last=True, call_options=(("training", False),)),
    "mxnet": Calling("mxnet.numpy.array", init="initialize"),
    "jax": Calling("jax.numpy.asarray", channels_last=True, eval=True),
}


def backend_name(mod) -> str:
    """``"torch"`` for ``d2lres.torch``."""
    return mod.__name__.rsplit(".", 1)[1]


def as_input(mod, x: np.ndarray):
    """A numpy batch (NCHW when 4-D) as the framework array ``mod``'s models take."""
    how = CALLING[backend_name(mod)]
    module, _, function = how.array.rpartition(".")
    if how.channels_last and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    return getattr(importlib.import_module(module), function)(x)


def forward(mod, net, x: np.ndarray, *, fresh: bool = False) -> np.ndarray:
    """Inference-mode output of ``net`` (a network or block of ``mod``) for the numpy batch ``x``
    (NCHW), as numpy (NCHW when 4-D). ``fresh``: ``net`` was just built and never called."""
    how = CALLING[backend_name(mod)]
    if fresh and how.init:
        getattr(net, how.init)()
    if how.eval:
        net.eval()
    out = net(as_input(mod, x), **dict(how.call_options))
    for method in ("detach", "asnumpy"):  # PyTorch: off the autograd graph; MXNet: to numpy
        out = getattr(out, method)() if hasattr(out, method) else out
    out = np.asarray(out)
    return out.transpose(0, 3, 1, 2) if how.channels_last and out.ndim == 4 else out


def outside_env(**extra) -> dict[str, str]:
    """The environment of a process outside the checkout: no PYTHONPATH (the user's pip cache is
    already the run's ``PIP_CACHE_DIR``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLBACKEND")}
    return {**env, **extra}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging each request."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_directory(directory, handler: type = QuietHandler):
    """A local HTTP mirror of ``directory`` (``handler`` serves it) for the duration of the block;
    yields its URL."""
    handler = functools.partial(handler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


# --- d2l 1.0.3's signatures, read from the installed package's source (tests/test_edition*.py) --

def d2l_source(framework: str):
    """The ``ast`` of ``d2l/<framework>.py`` of the installed ``d2l`` package (without importing it)."""
    path = Path(importlib.util.find_spec("d2l").submodule_search_locations[0]) / f"{framework}.py"
    return ast.parse(path.read_text(), str(path))


def d2l_signature(fn) -> list[tuple[str, object]]:
    """``(name, default)`` of each positional parameter of an ``ast.FunctionDef`` (``...``: none)."""
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    defaults = [_default(ast.unparse(d)) for d in fn.args.defaults]
    return list(zip(params, [...] * (len(params) - len(defaults)) + defaults))


def _default(source: str):
    """A default's value: d2l's literals and ``slice(0, None)`` evaluated; any other expression
    (JAX's ``key=d2l.get_key()``, evaluated once at d2l's import) kept as its source text."""
    try:
        return eval(source)
    except NameError:
        return source


def our_signature(obj) -> list[tuple[str, object]]:
    """``(name, default)`` of each positional parameter of a function (``...``: none)."""
    return [(p.name, ... if p.default is p.empty else p.default) for p in inspect.signature(obj).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_d2l_names(mod, framework: str, classes, functions, defaults: dict | None = None) -> int:
    """Assert that ``mod`` has d2l 1.0.3's ``classes`` (every method d2l defines, the last definition
    of each: the one Python keeps; ``Trainer`` is the class ``mod.Trainer(1)`` builds) and
    ``functions`` with d2l's positional signatures, and each tensor alias d2l assigns after its last
    class; ``defaults`` maps a d2l default's source text to d2lres's documented replacement;
    returns how many methods were compared."""
    tree = d2l_source(framework)
    defined = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    functions_ = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    compared = 0
    for name in classes:
        methods = {node.name: node for node in defined[name].body if isinstance(node, ast.FunctionDef)}
        ours = type(mod.Trainer(1)) if name == "Trainer" else getattr(mod, name)
        for method, node in methods.items():
            expected = [(p, (defaults or {}).get(d, d) if isinstance(d, str) else d) for p, d in d2l_signature(node)]
            assert our_signature(getattr(ours, method)) == expected, (name, method)
            compared += 1
    for name in functions:
        assert our_signature(getattr(mod, name)) == d2l_signature(functions_[name]), name
    last_class = max(n.lineno for n in tree.body if isinstance(n, ast.ClassDef))
    aliases = [t.id for n in tree.body if isinstance(n, ast.Assign) and n.lineno > last_class for t in n.targets
               if isinstance(t, ast.Name)]
    assert aliases and [a for a in aliases if not hasattr(mod, a)] == []
    return compared


def torchvision_state_dict_shapes(depth: int, groups: int = 1, width_per_group: int = 64, num_classes: int = 1000,
                                  in_channels: int = 3) -> dict:
    """Key -> shape of torchvision's ``resnet<depth>()`` (or, with ``groups`` and
    ``width_per_group``, ``resnext<depth>_<groups>x<width_per_group>d()``) ``state_dict()``, written
    down independently of d2lres (torchvision's ``models/resnet.py``: ``_make_layer``, ``BasicBlock``,
    ``Bottleneck`` with ``width = int(planes * (base_width / 64.)) * groups`` and
    ``conv3x3(width, width, stride, groups)``)."""
    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    bottleneck, expansion = depth >= 50, 4 if depth >= 50 else 1
    keys = {}

    def bn(prefix, c):
        keys.update({f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")})
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (64, in_channels, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for s, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), 1):
        stride = 1 if s == 1 else 2
        width = int(planes * (width_per_group / 64.0)) * groups
        for i in range(blocks):
            p = f"layer{s}.{i}"
            if bottleneck:
                keys[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
                bn(f"{p}.bn1", width)
                keys[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
                bn(f"{p}.bn2", width)
                keys[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                keys[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            if i == 0 and (stride != 1 or inplanes != planes * expansion):
                keys[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    keys["fc.weight"] = (num_classes, 512 * expansion)
    keys["fc.bias"] = (num_classes,)
    return keys


def interrupting(data_class: type) -> type:
    """A subclass of a d2l 1.0 ``FashionMNIST`` whose training loader raises ``KeyboardInterrupt``
    (Ctrl-C in a notebook) when it is asked for batch ``stop_at`` (counted over the whole run)."""

    class Interrupted(data_class):
        stop_at = None

        def get_dataloader(self, train):
            batches = super().get_dataloader(train)
            if not train or self.stop_at is None:
                return batches
            outer = self

            class Loader:
                def __len__(self):
                    return len(batches)

                def set_epoch(self, epoch):
                    batches.set_epoch(epoch)

                def __iter__(self):
                    for batch in batches:
                        outer.served = getattr(outer, "served", 0) + 1
                        if outer.served == outer.stop_at:
                            raise KeyboardInterrupt
                        yield batch
            return Loader()
    return Interrupted
