"""Cross-backend checks: the backends build the same network (shapes, parameter counts) and,
given the same weights through the neutral file, compute the same function (eval logits,
train-mode logits, one SGD step: loss, updated weights, BatchNorm running statistics).

The rule (tolerances from a principle, not fitted to one CPU). Every backend computes in float32;
the truth is the same network in float64 (d2lres.torch's net made ``.double()``, same weights,
same inputs made float64: ``REFERENCE``). How far a float32 result may lie from it depends on
float32 rounding through the depth *and* on how much this network at this input amplifies it:
in train mode BatchNorm divides by batch standard deviations of a few values per channel, and
across the family the train-mode logits' float32 error varies far more than
``sqrt(multiply-adds per output)`` or the depth (docs/same-function.md gives the figures).
So the amplification is measured, not guessed: the **float32 rounding model** (``ROUNDED``) is
the float64 network with every layer's output, and every gradient flowing back into it, rounded
to float32 -- one IEEE round-to-nearest per value per layer, the same on every CPU. Its distance
from the reference, ``e``, is the float32 error the network cannot avoid at this depth and
input. A real float32 kernel also rounds inside its sums (``K`` products per output), so it
lands a bounded factor further away:

    |backend - float64| <= C_q * max(e_q, u32),   u32 = 2**-24   (:func:`bounds`)

per quantity ``q`` (the floor: no float32 result is closer than one rounding of itself). ``C_q``
is ``SAFETY`` (3) times the largest ratio ``|PyTorch float32 - float64| / max(e, u32)`` measured
over all 20 variants at 64 and 96 px: PyTorch's own float32 error, not the backends' spread.
Between two backends the bound follows from the triangle inequality through the reference,
``|a - b| <= |a - r| + |r - b|``: twice :func:`bounds` (:func:`pair_bounds`). ``d2lres check``
shows each backend's distance from the reference, the rounding model's, the bound and the
smallest margin, then the pairs. Margins measured natively and with oneDNN/MKL held to AVX2:
docs/same-function.md.

The SGD step starts from weights whose BatchNorm shifts keep pre-activations off the ReLU kink
(:func:`test_weights`): a flipped ReLU mask is a discontinuity, which no rounding bound covers.

Mixed precision (``precision="bf16"``) has its own rule, derived the same way: the **bfloat16
rounding model** rounds the convolutions' and the dense layer's inputs and weights and every
layer's output (and incoming gradient) to bfloat16, BatchNorm computing in float64 between, as
the frameworks keep it in float32; the unit roundoff is ``2**-8`` and ``BF16_ERROR_CONSTANTS``
come from the backends' measured ratios. The updated weights and the running statistics are not
bounded in bf16 (:data:`BF16_UNBOUNDED` says why); they are shown.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import spec
from . import weights as neutral
from .core import precision as precisions
from .host import backends
from .util import files

#: The unit roundoff of float32: half the distance from 1 to the next float32.
U32 = 2.0 ** -24
#: The unit roundoff of each precision the checks bound (bfloat16 keeps 8 significand bits).
UNIT_ROUNDOFF = {"float32": U32, "bf16": 2.0 ** -8}
#: What the checks compare, in the order of the tables.
QUANTITIES = ("eval_logits", "train_logits", "step_loss", "step_weights", "bn_stats")
#: The float64 reference's label in :func:`run_all` / :func:`cross_backend_checks`.
REFERENCE = "float64"
#: The float32 rounding model's label: the reference with every layer's output and gradient rounded to float32.
ROUNDED = "float64-rounded"

#: ``C`` of the rule ``|backend - float64| <= C * max(rounding, U32)`` per quantity (module
#: docstring): SAFETY times the largest ``|PyTorch float32 - float64| / max(rounding, U32)`` over
#: all 20 variants at both sizes the checks run at (1x64x64 and 1x96x96, batch 4; measured with
#: ``python -m d2lres.checks --size 64|96``), rounded up. The ratios, the machine and why the
#: updated weights' is the largest: docs/same-function.md, "Where the constants come from".
SAFETY = 3.0
ERROR_CONSTANTS = {"eval_logits": 52.0, "train_logits": 57.0, "step_loss": 25.0, "step_weights": 460.0,
                   "bn_stats": 67.0}
#: ``C`` of the bf16 rule ``|backend in bf16 - float64| <= C * max(bf16 rounding model, 2^-8)``:
#: SAFETY times the largest ratio measured over the backends that train in bf16 (``python -m
#: d2lres.checks --precision bf16``; docs/same-function.md gives the ratios); None: not bounded.
BF16_ERROR_CONSTANTS = {"eval_logits": 7.0, "train_logits": 6.0, "step_loss": 4.0, "step_weights": None,
                        "bn_stats": None}
#: Why the step's updated weights and the running statistics have no bf16 bound.
BF16_UNBOUNDED = ("at bfloat16's resolution (2^-8) many more pre-activations lie within a rounding error of the "
                  "ReLU kink, and each one that flips moves a whole slice of a weight gradient (and of the batch "
                  "statistics behind it) by far more than any rounding bound; so in bf16 the logits and the loss "
                  "are bounded and the updated weights and running statistics are shown, not bounded")
CONSTANTS = {"float32": ERROR_CONSTANTS, "bf16": BF16_ERROR_CONSTANTS}
#: Plain path against an acceleration path of the same backend (tests of the switches) and the
#: bench's sanity check: ResNet-18, a fixed 1e-4, far above the differences seen (these compare float32
#: with float32 on one CPU, the same kernels mostly; docs/same-function.md gives them).
TOLERANCES = {q: 1e-4 for q in QUANTITIES}
#: Eval-mode logits of any variant between two backends without a reference (tests/test_variants.py):
#: relative to max(1, max |logit|); far above the differences seen and the rule's bound there
#: (docs/same-function.md gives both).
FAMILY_TOLERANCES = {q: 1e-3 for q in QUANTITIES}


def path_fan_in(arch=None, num_classes: int = 10, in_channels: int = 1) -> int:
    """Multiply-adds behind one output along the network's longest path: the sum, over the layers
    with weights on it (b1's convolution, every block's main path, the dense layer), of each
    one's fan-in (input channels x kernel area, or input features). (The rule ``c * U32 *
    sqrt(path_fan_in)`` was tried first: it misses the train-mode conditioning, see
    docs/same-function.md.)"""
    total = 0
    for stage in spec.resnet_spec(arch, num_classes, in_channels).values():
        for layer in stage:
            for p in layer.main() if isinstance(layer, spec.Block) else [layer]:
                if isinstance(p, spec.Conv):
                    total += p.in_channels * p.kernel ** 2
                elif isinstance(p, spec.Dense):
                    total += p.in_features
    return total


def bounds(rounding: dict[str, float], precision: str = "float32") -> dict[str, float | None]:
    """How far any backend's result in ``precision`` may lie from the float64 reference, per
    quantity, given that precision's rounding model's distance from it (``rounding``,
    :func:`differences`): ``C[q] * max(rounding[q], u)`` with :data:`CONSTANTS` and
    :data:`UNIT_ROUNDOFF`; None where the quantity is not bounded in that precision."""
    u, constants = UNIT_ROUNDOFF[precision], CONSTANTS[precision]
    return {q: None if constants[q] is None else constants[q] * max(rounding[q], u) for q in QUANTITIES}


def pair_bounds(bound: dict[str, float | None]) -> dict[str, float | None]:
    """What two backends may differ by: ``|a - b| <= |a - r| + |r - b|`` (the triangle inequality
    through the float64 reference ``r``), so twice :func:`bounds`."""
    return {q: None if b is None else 2 * b for q, b in bound.items()}


def within(distance: dict[str, float], bound: dict[str, float | None]) -> bool:
    """Every bounded quantity of ``distance`` within ``bound``."""
    return all(bound[q] is None or distance[q] <= bound[q] for q in QUANTITIES)


#: BatchNorm shift of the SGD-step check's weights (see ``test_weights``).
STEP_BN_SHIFT = 5.0


def test_weights(num_classes: int = 10, in_channels: int = 1, seed: int = 0,
                 bn_shift: float = 0.0, arch=None) -> dict[str, np.ndarray]:
    """Random weights with non-trivial BatchNorm parameters and running statistics.

    ``bn_shift`` is added to every BatchNorm shift. The SGD-step check uses ``STEP_BN_SHIFT``:
    float32 rounding flips the ReLU mask of any activation within a rounding error of zero, and one
    flipped mask moves a whole slice of a weight gradient far beyond any rounding bound
    (docs/same-function.md gives the sizes) -- a property of ReLU, not a difference between
    backends (seen with a shift of 0 in ResNet-18, and with 3 in ResNet-50 v2). Shifted by 5
    (over 3 standard deviations), practically no pre-activation lies near the kink. The forward
    checks keep the shift at 0, so they do test where the ReLUs are."""
    rng = np.random.default_rng(seed + 1)
    w = neutral.init_weights(num_classes, in_channels, seed, arch)
    for name, value in w.items():
        if ".bn" in name and name.endswith(".weight"):
            w[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif ".bn" in name and name.endswith(".bias"):
            w[name] = (bn_shift + rng.normal(0, 0.1, value.shape)).astype(np.float32)
        elif name.endswith("running_mean"):
            w[name] = rng.normal(0, 0.2, value.shape).astype(np.float32)
        elif name.endswith("running_var"):
            w[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith(".bias"):
            w[name] = rng.normal(0, 0.05, value.shape).astype(np.float32)
    return w


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _rounded(x, dtype):
    """``x`` (float64) rounded to ``dtype`` (IEEE round-to-nearest: the same on every CPU) and back,
    its gradient rounded the same way on the way back."""
    out = x.to(dtype).double()
    if out.requires_grad:
        out.register_hook(lambda grad: grad.to(dtype).double())
    return out


def _rounding_model(net, precision: str):
    """The float64 ``net`` made ``precision``'s rounding model (in place): every leaf layer's
    output rounded; in bf16 also the convolutions' and the dense layer's inputs and weights, the
    operands of their bfloat16 products (BatchNorm keeps float64 between its rounded input and
    output, as the frameworks keep it in float32). Returns a function that takes the weight
    rounding off again (the weights' names as before), for ``get_weights``."""
    import torch
    from torch.nn.utils import parametrize
    dtype = torch.float32 if precision == "float32" else torch.bfloat16

    class Rounded(torch.nn.Module):
        def forward(self, w):
            return _rounded(w, dtype)

    products = []
    for m in net.modules():
        if list(m.children()):
            continue
        m.register_forward_hook(lambda module, inputs, output: _rounded(output, dtype))
        if precision != "float32" and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_pre_hook(lambda module, inputs: (_rounded(inputs[0], dtype), *inputs[1:]))
            parametrize.register_parametrization(m, "weight", Rounded())
            products.append(m)

    def unround():
        for m in products:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    return unround


def _reference_run(weights_file: Path, step_file: Path, X: np.ndarray, Xs: np.ndarray, y: np.ndarray, lr: float,
                   input_shape, num_classes: int, arch=None, rounded: str | None = None) -> dict:
    """:func:`run_backend`'s quantities from the float64 reference: d2lres.torch's network in double
    precision (``.double()`` after loading the same float32 weights), the same inputs made float64,
    one plain SGD step (``w -= lr * grad``, as ``Trainer``'s default). ``rounded``: a precision,
    whose rounding model (:func:`_rounding_model`) it is instead."""
    import torch
    from torch.nn import functional as F
    mod = backends.load("torch")
    a = spec.get_arch(arch)
    unround = []

    def net_from(path):
        net = mod.resnet(a.name, a.version, num_classes=num_classes, in_channels=input_shape[0], flavour=a.flavour)
        mod.load_weights(net, path)
        net = net.double()
        if rounded:
            unround.append(_rounding_model(net, rounded))
        return net

    out = {}
    with torch.no_grad():
        out["eval_logits"] = net_from(weights_file).eval()(torch.from_numpy(X.astype(np.float64))).numpy()
        out["train_logits"] = net_from(weights_file).train()(torch.from_numpy(X.astype(np.float64))).numpy()
    net = net_from(step_file).train()
    loss = F.cross_entropy(net(torch.from_numpy(Xs.astype(np.float64))), torch.from_numpy(y.astype(np.int64)))
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= lr * p.grad
    if rounded:
        unround[-1]()
    out["step_loss"], out["after_step"] = float(loss.detach()), mod.get_weights(net)
    return out


def run_backend(name: str, weights_file: Path, step_file: Path, X: np.ndarray, Xs: np.ndarray, y: np.ndarray,
                lr: float, input_shape, num_classes: int, arch=None, options: dict | None = None) -> dict:
    """Everything one backend computes for the checks: forward passes from ``weights_file``, one
    SGD step from ``step_file``; ``options`` go to its ``Trainer`` (e.g. an acceleration switch).
    ``name`` :data:`REFERENCE` is the float64 reference, :data:`ROUNDED` the rounding model of
    ``options["precision"]`` (float32 if not given)."""
    if name in (REFERENCE, ROUNDED):
        rounded = (options or {}).get("precision", "float32") if name == ROUNDED else None
        return _reference_run(weights_file, step_file, X, Xs, y, lr, input_shape, num_classes, arch, rounded)
    mod = backends.load(name)
    a = spec.get_arch(arch)
    net = mod.resnet(a.name, a.version, num_classes=num_classes, in_channels=input_shape[0], flavour=a.flavour)
    mod.load_weights(net, weights_file)
    with warnings.catch_warnings():  # bf16 where it is emulated: slower, the same function
        warnings.simplefilter("ignore", precisions.SlowPrecisionWarning)
        trainer = mod.Trainer(net, device=mod.try_gpu(), **(options or {}))
    out = {"walk": mod.shape_walk(net, input_shape), "counts": mod.count_parameters(net),
           "eval_logits": trainer.forward(X, training=False)}
    mod.load_weights(net, weights_file)
    out["train_logits"] = trainer.forward(X, training=True)
    mod.load_weights(net, step_file)
    out["step_loss"], _ = trainer.step(*trainer.convert(Xs, y), lr)
    out["after_step"] = trainer.get_weights()
    return out


def check_inputs(input_shape=(1, 96, 96), step_size: int = 96, batch_size: int = 4, num_classes: int = 10,
                 seed: int = 0, arch=None) -> dict[str, np.ndarray | dict]:
    """The checks' inputs, all drawn from ``seed``: images ``X`` for the forward passes, ``Xs``
    and labels ``y`` for the SGD step, and the two weights (``weights``, ``step_weights``)."""
    rng = np.random.default_rng(seed)
    X = rng.random((batch_size, *input_shape), dtype=np.float32)
    Xs = rng.random((batch_size, input_shape[0], step_size, step_size), dtype=np.float32)
    y = rng.integers(0, num_classes, batch_size)
    return {"X": X, "Xs": Xs, "y": y, "weights": test_weights(num_classes, input_shape[0], seed, arch=arch),
            "step_weights": test_weights(num_classes, input_shape[0], seed, STEP_BN_SHIFT, arch)}


def run_all(runs: dict[str, tuple[str, dict]], input_shape=(1, 96, 96), step_size: int = 96, batch_size: int = 4,
            num_classes: int = 10, lr: float = 0.05, seed: int = 0, arch=None, inputs=None) -> dict[str, dict]:
    """:func:`run_backend` for each ``label: (backend, Trainer options)``, all from the same
    weights and inputs (``inputs``, else :func:`check_inputs` of these settings): forwards at
    ``input_shape``, the SGD step at ``step_size`` x ``step_size``. A backend named
    :data:`REFERENCE` is the float64 reference."""
    inputs = inputs or check_inputs(input_shape, step_size, batch_size, num_classes, seed, arch)
    with tempfile.TemporaryDirectory() as tmp:
        path = neutral.save_npz(Path(tmp) / "weights.npz", inputs["weights"])
        step_path = neutral.save_npz(Path(tmp) / "step.npz", inputs["step_weights"])
        out = {}
        for label, (name, options) in runs.items():
            out[label] = run_backend(name, path, step_path, inputs["X"], inputs["Xs"], inputs["y"], lr, input_shape,
                                     num_classes, arch, options)
            gc.collect()
        return out


# --------------------------------------------------------------------------- a saved reference

def _fingerprint(inputs: dict, lr: float) -> str:
    """SHA-256 of everything the reference is computed from (:func:`check_inputs` and ``lr``): a
    reference file answers only the checks that ask the same question."""
    digest = hashlib.sha256(repr(float(lr)).encode())
    for key in ("X", "Xs", "y", "weights", "step_weights"):
        arrays = inputs[key] if isinstance(inputs[key], dict) else {key: inputs[key]}
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            digest.update(f"{key}/{name}/{a.dtype.str}/{a.shape}".encode())
            digest.update(a.tobytes())
    return digest.hexdigest()


_FORWARD = ("eval_logits", "train_logits", "step_loss")
_STATISTICS = ("running_mean", "running_var")


def save_reference(path, ref: dict, rounding: dict, question: dict, step_weights: dict) -> Path:
    """Write the float64 reference run ``ref``, the rounding model's distance from it and the
    ``question`` they answer (settings, the inputs' fingerprint) to ``path`` (``.npz``, atomically),
    for :func:`load_reference`. The step's updated weights are stored as their change from
    ``step_weights`` in float32 (an error of 2^-24 of ``lr * gradient``, far below the bound),
    which halves the file; the running statistics, whose change is as large as they are, in float64."""
    arrays = {neutral.FORMAT_KEY: neutral.format_record("reference", question["arch"]),
              "question": np.array(json.dumps(question, sort_keys=True))}
    arrays.update({f"reference:{k}": np.asarray(ref[k], np.float64) for k in _FORWARD})
    arrays.update({f"change:{k}": (np.asarray(step_weights[k], np.float64) - v).astype(
        np.float64 if k.endswith(_STATISTICS) else np.float32) for k, v in ref["after_step"].items()})
    arrays.update({f"rounding:{q}": np.float64(rounding[q]) for q in QUANTITIES})
    return files.atomic_write(path, lambda f: neutral.write_npz(f, arrays))


def load_reference(path, question: dict, step_weights: dict) -> tuple[dict, dict]:
    """``(reference run, rounding model's distance)`` from a file of :func:`save_reference`,
    refused (``WeightsFileError``, naming the file and what differs) unless it answers ``question``."""
    fix = "write one where PyTorch is installed, with the same options: d2lres check --save-reference FILE"
    arrays = neutral.read_npz(path, what="reference file", fix=fix, kinds="fU", kind="reference")

    def error(problem):
        return neutral.WeightsFileError(f"reference file {path}: {problem}; {fix}")

    try:
        asked = json.loads(str(arrays.pop("question")[()]))
        if not isinstance(asked, dict):
            raise ValueError
    except (KeyError, ValueError, IndexError, RecursionError):
        raise error("its question record is missing or damaged") from None
    if asked != question:
        raise error("it answers other checks: " + ", ".join(
            f"{k} {asked.get(k)!r} (asked: {question[k]!r})" for k in question if asked.get(k) != question[k]))
    logits = (question["batch_size"], question["num_classes"])
    expected = {"reference:eval_logits": logits, "reference:train_logits": logits, "reference:step_loss": (),
                **{f"change:{k}": np.shape(w) for k, w in step_weights.items()},
                **{f"rounding:{q}": () for q in QUANTITIES}}
    if set(arrays) != set(expected):
        odd, missing = sorted(set(arrays) - set(expected)), sorted(set(expected) - set(arrays))
        raise error("its members are not the checks' results" + (f": no {', '.join(missing[:3])}" if missing else "")
                    + (f"; odd {', '.join(odd[:3])}" if odd else ""))
    for key, value in arrays.items():
        if value.dtype.kind != "f" or value.shape != expected[key] or not np.all(np.isfinite(value)):
            raise error(f"member {key!r} is not a finite result of the shape the checks compute")
    ref = {k: arrays[f"reference:{k}"] for k in _FORWARD}
    ref["step_loss"] = float(ref["step_loss"])
    ref["after_step"] = {k: np.asarray(w, np.float64) - arrays[f"change:{k}"] for k, w in step_weights.items()}
    return ref, {q: float(arrays[f"rounding:{q}"]) for q in QUANTITIES}


def differences(ra: dict, rb: dict, arch=None, scale: dict | None = None) -> dict[str, float]:
    """What the checks measure between two runs of :func:`run_backend` (compare with
    :func:`bounds` against the reference, :func:`tolerances` between two backends). Logits and
    loss: max |a - b| / max(1, max |value|); updated weights and running statistics: per tensor
    max |a - b| / max |value|, the largest. The values' magnitudes come from ``scale`` (a run;
    the float64 reference where there is one), else from ``ra``. (``arch`` is not used any more:
    one metric for every variant.)"""
    s = scale or ra

    def size(v) -> float:
        return float(np.max(np.abs(v)))

    stats = [k for k in ra["after_step"] if k.endswith(_STATISTICS)]
    trainable = [k for k in ra["after_step"] if k not in stats]

    def rel(keys) -> float:
        return max(_max_abs(ra["after_step"][k], rb["after_step"][k]) / max(size(s["after_step"][k]), 1e-12)
                   for k in keys)

    return {"eval_logits": _max_abs(ra["eval_logits"], rb["eval_logits"]) / max(1.0, size(s["eval_logits"])),
            "train_logits": _max_abs(ra["train_logits"], rb["train_logits"]) / max(1.0, size(s["train_logits"])),
            "step_loss": abs(ra["step_loss"] - rb["step_loss"]) / max(1.0, abs(s["step_loss"])),
            "step_weights": rel(trainable), "bn_stats": rel(stats)}


def cross_backend_checks(names=None, input_shape=(1, 96, 96), step_size: int = 96,
                         batch_size: int = 4, num_classes: int = 10, lr: float = 0.05, seed: int = 0,
                         arch=None, reference=None, save_to=None, precision: str = "float32") -> dict:
    """Run every backend in ``names``, the float64 reference and the float32 rounding model from the
    same weights files; compare each backend with the reference (within :func:`bounds`) and every
    pair (within :func:`pair_bounds`, which follows). The forward checks run at ``input_shape``, the
    SGD step at ``step_size`` x ``step_size``. ``arch``: any variant (``spec.get_arch``); left out,
    the chapter's ResNet-18. ``names``: default, every backend available (none: only the reference,
    e.g. to save it). ``reference``: a file of
    :func:`save_reference` to read the float64 runs from instead of computing them (no PyTorch
    needed); ``save_to``: write them there. ``precision``: every backend's ``Trainer`` precision,
    compared within that precision's bound (bf16: its own rounding model, ``BF16_ERROR_CONSTANTS``;
    a backend that refuses it is left out and named in ``refused``)."""
    precisions.check(precision)
    names = list(backends.available() if names is None else names)
    refused = {}
    if precision != "float32":
        for n in list(names):
            if n not in precisions.MIXED_BACKENDS:
                refused[n] = f"{n} refuses precision {precision!r}"
                names.remove(n)
    arch = spec.get_arch(arch)
    inputs = check_inputs(input_shape, step_size, batch_size, num_classes, seed, arch)
    question = {"arch": {"name": arch.name, "version": arch.version, "flavour": arch.flavour},
                "input_shape": list(input_shape), "step_size": step_size, "batch_size": batch_size,
                "num_classes": num_classes, "lr": lr, "seed": seed, "precision": precision,
                "inputs": _fingerprint(inputs, lr)}
    if not reference and "torch" not in backends.available():
        raise backends.BackendUnavailable(
            "the checks' float64 reference is d2lres.torch's network in double precision, and PyTorch is not "
            "installed; install it beside the backends to check: pip install 'd2lres[torch]' (or pass "
            "--reference FILE, written where it is installed by: d2lres check --save-reference FILE)")
    given = load_reference(reference, question, inputs["step_weights"]) if reference else None
    options = {"precision": precision}
    runs = run_all({**({} if given else {REFERENCE: (REFERENCE, {}), ROUNDED: (ROUNDED, options)}),
                    **{n: (n, options) for n in names}}, input_shape, step_size, batch_size, num_classes, lr, seed,
                   arch, inputs=inputs)
    if given:
        ref, rounding = given
    else:
        ref = runs.pop(REFERENCE)
        rounding = differences(ref, runs.pop(ROUNDED), scale=ref)
    if save_to:
        save_reference(save_to, ref, rounding, question, inputs["step_weights"])
    bound = bounds(rounding, precision)
    tol = pair_bounds(bound)
    expected_walk = [(n, s) for n, s, _ in spec.walk(tuple(input_shape), num_classes, arch)]
    expected_counts = spec.param_counts(num_classes, input_shape[0], arch)["total"]
    result = {"input_shape": tuple(input_shape), "step_size": step_size, "batch_size": batch_size,
              "arch": str(arch), "precision": precision, "refused": refused, "rounding": rounding,
              "bounds": bound, "tolerances": tol, "backends": {},
              "reference": {}, "pairs": {}, "reference_loss": ref["step_loss"],
              "reference_file": str(reference) if reference else None}
    for n, r in runs.items():
        result["backends"][n] = {"shapes_match_spec": r["walk"] == expected_walk,
                                 "counts": tuple(r["counts"]),
                                 "counts_match_spec": tuple(r["counts"]) == expected_counts,
                                 "step_loss": r["step_loss"]}
        result["reference"][n] = differences(ref, r, scale=ref)
    for a, b in itertools.combinations(names, 2):
        result["pairs"][f"{a}-{b}"] = differences(runs[a], runs[b], scale=ref)
    result["ok"] = all(v["shapes_match_spec"] and v["counts_match_spec"] for v in result["backends"].values()) \
        and all(within(d, bound) for d in result["reference"].values()) \
        and all(within(d, tol) for d in result["pairs"].values())
    return result


def margins(result: dict) -> dict[str, dict[str, float]]:
    """Backend -> quantity -> bound / distance from the float64 reference (inf: equal to it; None:
    not bounded)."""
    return {n: {q: _margin(result["bounds"][q], d[q]) for q in QUANTITIES} for n, d in result["reference"].items()}


def _margin(bound, distance):
    return None if bound is None else bound / distance if distance else float("inf")


def _shown(value) -> str:
    return "not bounded" if value is None else f"{value:.2e}"


_LABELS = {"eval_logits": "eval logits", "train_logits": "train-mode logits", "step_loss": "step loss",
           "step_weights": "updated weights", "bn_stats": "BN statistics"}


def format_checks(result: dict) -> str:
    """The checks as Markdown: per backend (shapes, counts, loss), its distance from the float64
    reference against the bound, then every pair against twice the bound."""
    bound, tol = result["bounds"], result["tolerances"]
    prec = result.get("precision", "float32")
    arch = result.get("arch", "ResNet-18")
    lines = [("" if arch == "ResNet-18" else f"{arch}. ") + ("" if prec == "float32" else f"Precision {prec}. ") +
             f"Input {'x'.join(map(str, result['input_shape']))}, batch {result['batch_size']}, random weights "
             f"with non-trivial BatchNorm statistics, transferred through the neutral .npz file. One SGD step "
             f"(lr 0.05, cross-entropy) at {result['step_size']}x{result['step_size']}, from weights whose "
             f"BatchNorm shifts keep pre-activations off the ReLU kink (see checks.test_weights). Reference: "
             f"the same network in float64 (d2lres.torch, .double())"
             + (f", read from {result['reference_file']}." if result.get("reference_file") else "."), "",
             "| backend | shapes = spec | trainable + BN statistics | = spec | first-step loss |",
             "|---|---|---|---|---|"]
    for n, v in result["backends"].items():
        t, s = v["counts"]
        lines.append(f"| {n} | {'yes' if v['shapes_match_spec'] else 'NO'} | {t:,} + {s:,} | "
                     f"{'yes' if v['counts_match_spec'] else 'NO'} | {v['step_loss']:.6f} |")
    lines.append(f"| {REFERENCE} reference | | | | {result['reference_loss']:.6f} |")
    header = " | ".join(_LABELS[q] for q in QUANTITIES)
    lines += ["", f"| distance from float64 | {header} |", "|---|---|---|---|---|---|"]
    for n, d in result["reference"].items():
        lines.append(f"| {n} | " + " | ".join(f"{d[q]:.2e}" for q in QUANTITIES) + " |")
    lines.append(f"| {prec} rounding model | " + " | ".join(f"{result['rounding'][q]:.2e}" for q in QUANTITIES) + " |")
    lines.append("| **bound** | " + " | ".join(f"**{_shown(bound[q])}**" for q in QUANTITIES) + " |")
    m = {q: min((_margin(bound[q], d[q]) for d in result["reference"].values()), default=None)
         if bound[q] is not None else None for q in QUANTITIES}
    lines.append("| smallest margin (bound / distance) | " + " | ".join(
        "" if m[q] is None else f"{m[q]:.1f}" for q in QUANTITIES) + " |")
    lines += ["", f"| pair | {header} |", "|---|---|---|---|---|---|"]
    for pair, d in result["pairs"].items():
        lines.append(f"| {pair} | " + " | ".join(f"{d[q]:.2e}" for q in QUANTITIES) + " |")
    lines.append("| **bound** (2x) | " + " | ".join(f"**{_shown(tol[q])}**" for q in QUANTITIES) + " |")
    u = "2^-24" if prec == "float32" else "2^-8"
    constants = CONSTANTS[prec]
    what = ("every layer's output and incoming gradient rounded to float32" if prec == "float32" else
            "the convolutions' and the dense layer's inputs and weights and every layer's output and incoming "
            "gradient rounded to bfloat16, BatchNorm computing in higher precision between")
    name = "ERROR_CONSTANTS" if prec == "float32" else "BF16_ERROR_CONSTANTS"
    lines += ["", "Logits and loss: max |difference| / max(1, max |value|); weights and statistics: per tensor "
              f"max |difference| / max |value|, the largest. Rounding model: the float64 network with {what}. "
              f"Bound from float64 = C * max(rounding model, {u}), C = "
              + ", ".join("-" if constants[q] is None else f"{constants[q]:g}" for q in QUANTITIES)
              + f" (checks.{name}); between two backends twice that."
              + ("" if prec == "float32" else f" Not bounded in {prec}: {BF16_UNBOUNDED}.")
              + "".join(f" {why}." for why in result.get("refused", {}).values())
              + f" Result: {'PASS' if result['ok'] else 'FAIL'}."]
    return "\n".join(lines)


def measure(archs=None, names=("torch",), input_shape=(1, 64, 64), step_size: int = 64, batch_size: int = 4,
            num_classes: int = 10, seed: int = 0, on_row=None, precision: str = "float32") -> list[dict]:
    """Per variant and backend: each quantity's distance from the float64 reference, the rounding
    model's of ``precision``, their ratio (what ``ERROR_CONSTANTS`` and ``BF16_ERROR_CONSTANTS``
    come from) and the margin (bound / distance)."""
    rows = []
    options = {"precision": precision}
    u = UNIT_ROUNDOFF[precision]
    for arch in archs if archs is not None else spec.all_archs():
        arch = spec.get_arch(arch)
        runs = run_all({REFERENCE: (REFERENCE, {}), ROUNDED: (ROUNDED, options), **{n: (n, options) for n in names}},
                       input_shape, step_size, batch_size, num_classes, 0.05, seed, arch)
        ref = runs.pop(REFERENCE)
        e = differences(ref, runs.pop(ROUNDED), scale=ref)
        bound = bounds(e, precision)
        for n, r in runs.items():
            d = differences(ref, r, scale=ref)
            rows.append({"arch": str(arch), "backend": n, "path_fan_in": path_fan_in(arch, num_classes, input_shape[0]),
                         "precision": precision, "distance": d, "rounding": e, "bound": bound,
                         "ratio": {q: d[q] / max(e[q], u) for q in QUANTITIES},
                         "margin": {q: _margin(bound[q], d[q]) for q in QUANTITIES}})
            if on_row:
                on_row(rows[-1])
        del runs, ref
        gc.collect()
    return rows


def main(argv=None) -> int:
    """``python -m d2lres.checks [--archs ...] [--backends ...] [--json FILE]``: the distances
    from the float64 reference and the margins (bound / distance) per variant, on this CPU."""
    from .host import isa
    p = argparse.ArgumentParser(prog="python -m d2lres.checks")
    p.add_argument("--archs", nargs="+", help="e.g. resnet18 resnet50-v2 resnet152-tv (default: all 20)")
    p.add_argument("--backends", nargs="+", default=["torch"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--precision", choices=precisions.PRECISIONS, default="float32")
    p.add_argument("--json")
    args = p.parse_args(argv)
    archs = None
    if args.archs:
        archs = []
        for a in args.archs:
            name, *rest = a.split("-")
            archs.append(spec.get_arch(name, 2 if "v2" in rest else 1, "torchvision" if "tv" in rest else "chapter"))
    print(f"CPU: {isa.describe()}; input 1x{args.size}x{args.size}, batch {args.batch}, {args.precision}")
    print("| variant | backend | " + " | ".join(f"{q}: distance / rounding model / margin" for q in QUANTITIES) + " |")

    def show(r):
        print(f"| {r['arch']} | {r['backend']} | " + " | ".join(
            f"{r['distance'][q]:.1e} / {r['rounding'][q]:.1e} / "
            + ("-" if r["margin"][q] is None else f"{r['margin'][q]:.1f}") + f" (ratio {r['ratio'][q]:.2f})"
            for q in QUANTITIES)
            + " |", flush=True)
    rows = measure(archs, args.backends, (1, args.size, args.size), args.size, args.batch, on_row=show,
                   precision=args.precision)
    cpu = isa.describe()
    if args.json:
        record = {"cpu": cpu, "size": args.size, "batch": args.batch, "rows": rows}
        files.atomic_write_text(args.json, json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
