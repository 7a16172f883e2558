"""Training primitives of the TensorFlow backend for the shared loop in ``d2lres.training``
(the step compiled with ``tf.function``), and d2l's ``try_gpu`` / ``load_data_fashion_mnist``
/ ``train_ch6``."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .. import data, inputs, training
from ..core import compat
from ..core import precision as precisions
from ..errors import UserValueError
from ..host import devices
from ..loop.trainer import TrainerBase, clip_value
from .model import device_name, device_scope
from .weights import from_canonical, get_weights, set_weights, to_canonical, variables


class Device(str):
    """A TensorFlow device string (``"/GPU:0"``, ``"/CPU:0"``: what ``device=`` takes and the
    contract's ``try_gpu()`` returns) that is also d2l's ``tf.device`` context: ``with
    d2l.try_gpu():`` places what is built and run inside on it, as in the book's TensorFlow cells."""

    def __enter__(self):
        scope = tf.device(str(self))
        self.__dict__.setdefault("_scopes", []).append(scope)
        return scope.__enter__()

    def __exit__(self, *exc):
        return self.__dict__["_scopes"].pop().__exit__(*exc)


def try_gpu(i: int = 0) -> Device:
    """GPU ``i`` if TensorFlow sees one (CUDA; a Mac's GPU only through the tensorflow-metal
    plug-in), else the CPU: a device string for ``tf.device`` that is also a context manager
    (:class:`Device`: ``with d2l.try_gpu():``, as d2l's ``tf.device`` object). ``device=`` takes
    both this and d2l's ``tf.device`` object."""
    return Device(f"/GPU:{i}" if len(tf.config.list_physical_devices("GPU")) > i else "/CPU:0")


def try_all_gpus() -> list[Device]:
    """Every GPU's device string (each a :class:`Device`), or ``["/CPU:0"]`` if there is none."""
    return [Device(f"/GPU:{i}") for i in range(len(tf.config.list_physical_devices("GPU")))] or [Device("/CPU:0")]


def to_tensors(X: np.ndarray, y: np.ndarray, device=None):
    with device_scope(device):
        return tf.constant(np.ascontiguousarray(X.transpose(0, 2, 3, 1))), tf.constant(y.astype(np.int32))


def load_data_fashion_mnist(batch_size: int, resize: int | None = None, *, data_dir=None, seed: int = 0,
                            limit: int | None = None, device=None):
    """``(train_iter, test_iter)`` of ``(X, y)`` tensors on ``device``, X in NHWC, values in [0, 1]."""
    return data.load_batches(batch_size, resize, lambda X, y: to_tensors(X, y, device),
                             data_dir=data_dir, seed=seed, limit=limit)


def as_batch(X, y=None):
    """A batch from d2lres's batches or a ``tf.data.Dataset`` (or numpy) as float32 NHWC images
    and int32 labels."""
    X = tf.convert_to_tensor(X)
    X = X if X.dtype == tf.float32 else tf.cast(X, tf.float32)
    if y is None:
        return X
    y = tf.convert_to_tensor(y)
    return X, (y if y.dtype == tf.int32 else tf.cast(y, tf.int32))


#: The Keras dtype policy of each ``precision``: ``mixed_bfloat16`` keeps the variables float32 and
#: computes in bfloat16 (Keras casts a layer's floating inputs to it and, inside its ``call``, its
#: autocast variables: the kernels and biases, not BatchNorm's, which Keras makes ``autocast=False``).
POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16"}


def set_precision(net, precision: str = "float32") -> None:
    """Put the Keras dtype policy of ``precision`` (:data:`POLICIES`) on every layer of ``net``, the
    network itself and d2lres's own layers included (``_flatten_layers``). Keras 3 reads a layer's
    ``dtype_policy`` at every call (the input cast, the autocast scope of its variables), so this
    works on a network already built: its variables are not touched (float32). Functions traced
    before it keep the policy they were traced with. A layer with a non-floating or quantized
    policy (a lookup, an int8 layer) keeps its own."""
    policy = keras.DTypePolicy(POLICIES[precisions.check(precision)])
    for layer in net._flatten_layers(include_self=True, recursive=True):
        own = layer.dtype_policy
        if own.quantization_mode is None and keras.backend.is_float_dtype(own.variable_dtype) \
                and own.name != policy.name:
            layer.dtype_policy = policy


def as_float32(logits):
    """The logits in float32 (the bf16 policy's Dense layer gives bfloat16): for the loss, the
    argmax and what ``predict`` / ``forward`` return."""
    return logits if logits.dtype == tf.float32 else tf.cast(logits, tf.float32)


def check_bf16_devices(devices_) -> None:
    """bf16 on TensorFlow devices (strings): refused on a GPU of compute capability below 8.0
    (``tf.config.experimental.get_device_details``; unknown, as on a Mac's GPU: allowed), warned
    once on a CPU where bfloat16 is emulated (TensorFlow has no public check of its own), refused on
    a CPU with bfloat16 units while oneDNN is held to AVX2 (:func:`precisions.refuse_held_bf16`)."""
    gpus = tf.config.list_physical_devices("GPU")
    cpu = False
    for name in devices_:
        spec = tf.DeviceSpec.from_string(name)
        if (spec.device_type or "CPU").upper() != "GPU":
            cpu = True
            continue
        index = spec.device_index or 0
        details = tf.config.experimental.get_device_details(gpus[index]) if index < len(gpus) else {}
        capability = details.get("compute_capability")
        precisions.refuse_gpu("tf", name, capability is None or tuple(capability) >= (8, 0))
    if cpu:
        precisions.refuse_held_bf16("tf")
        precisions.warn_if_emulated("tf", None)


class Trainer(TrainerBase):
    """SGD with momentum and weight decay in PyTorch's form (``v = m v + g + wd w``, ``w -= lr v``)
    and cross-entropy, on a d2lres network or any Keras model mapping an NHWC batch to logits
    (``d2lres.loop.trainer``; a model not yet built is built by its first batch).

    ``compile``: the step and the prediction each run as one ``tf.function`` (None: on, faster
    than eager; XLA is not offered: slower on CPU and beyond the checks' tolerances).
    ``channels_last``: TensorFlow's CPU convolutions are NHWC only, so None and True are accepted
    and False is refused.

    ``precision="bf16"`` is Keras's ``mixed_bfloat16`` dtype policy, put on every layer of the
    network (built or not) when the trainer is made (:func:`set_precision`; ``"float32"`` puts the
    float32 policy back): the convolutions and the Dense layer compute in bfloat16 from float32
    variables, BatchNorm runs TensorFlow's fused kernel, which computes in float32 on its bfloat16
    input and keeps its statistics float32, and the logits are cast to float32 for the loss,
    ``predict`` and ``forward``; d2lres's ``Conv2D`` and ``Dense`` add their bias so that its
    gradient is summed in float32 (``kernels.add_bias``; a Keras layer of another network sums it in
    bfloat16 on CPU). The weights and the momentum buffers stay float32. The policy is the
    network's: a trainer puts its own back before each call if another trainer changed it."""

    backend = "tf"
    edition = "d2lres.tf.edition"  # Trainer(max_epochs, ...): d2l 1.0's, d2lres.loop.edition

    def __init__(self, net, momentum: float = 0.0, weight_decay: float = 0.0, *, device=None,
                 compile: bool | None = None, channels_last: bool | None = None, precision: str = "float32",
                 gradient_clip_val: float = 0.0):
        self.precision = precisions.check(precision)
        self.gradient_clip_val = clip_value(gradient_clip_val)
        if channels_last is False:
            raise UserValueError("channels_last=False cannot be honoured: d2lres.tf runs NHWC (channels last) only; "
                                 "leave channels_last None or True")
        if compile not in (None, True, False):
            raise UserValueError(f"compile must be None, True or False (tf.function or eager), got {compile!r}")
        self.net = net
        self.device = try_gpu() if device is None else devices.resolve(
            device_name(device), "tf", len(tf.config.list_physical_devices("GPU")),
            lambda kind, i: f"/{kind.upper()}:{i}")
        if self.precision == "bf16":
            check_bf16_devices(self._precision_devices())
        self.momentum, self.weight_decay = momentum, weight_decay
        self.compile = compile is not False
        with tf.device(self.device):
            self.lr = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self._policy = POLICIES[self.precision]
        set_precision(net, self.precision)  # before anything is traced
        self._weights = None
        if net.weights:
            self._collect()
        wrap = (lambda f: tf.function(f, reduce_retracing=True)) if self.compile else (lambda f: f)
        self._step, self._predict = wrap(self._step_impl), wrap(lambda X: as_float32(net(X, training=False)))

    def _precision_devices(self) -> list[str]:
        """The devices bf16 is checked on (:func:`check_bf16_devices`)."""
        return [self.device]

    def _own_policy(self) -> None:
        """The trainer's dtype policy on the network again if another trainer put its own there
        (before anything runs or is traced)."""
        if self.net.dtype_policy.name != self._policy:
            set_precision(self.net, self.precision)

    def _collect(self, X=None) -> None:
        """The trainable variables and momentum buffers; a network without variables yet is
        built by an inference-mode call on ``X`` (the first batch) first."""
        if not self.net.weights:
            with tf.device(self.device):
                self.net(X[:1], training=False)
            set_precision(self.net, self.precision)  # any layer its build made
        # Keras 3 variables are not tf.Variables (no .ref()): keep the trainable ones in order,
        # with their names, and update the tf.Variables behind them (``.value``).
        kinds = {id(var): (name, kind) for name, var, kind in _variables(self.net)}
        self._weights = [v.value for v in self.net.trainable_variables]
        self._slots = [kinds[id(v)] for v in self.net.trainable_variables]
        with tf.device(self.device):
            self.buffers = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False) for w in self._weights] \
                if self.momentum else []

    def convert(self, X: np.ndarray, y: np.ndarray):
        return to_tensors(X, y, self.device)

    def _step_impl(self, X, y):
        with tf.GradientTape() as tape:
            logits = as_float32(self.net(X, training=True))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, self._weights)
        if self.gradient_clip_val:  # d2l's clipping: min(1, gradient_clip_val / the gradients' joint norm)
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads]))
            scale = tf.minimum(1.0, self.gradient_clip_val / norm)
            grads = [g * tf.cast(scale, g.dtype) for g in grads]
        self._update(grads)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=y.dtype), y), tf.int32))
        return loss, correct

    def _update(self, grads) -> None:
        """The SGD update of every weight from its gradient (inside the step's function). With
        momentum, a plain variable takes TensorFlow's fused kernel (``ResourceApplyMomentum``: the
        same arithmetic, one op instead of four); a distribution strategy's mirrored variable takes
        the ops one by one, which the strategy applies to every replica."""
        for i, (w, g) in enumerate(zip(self._weights, grads)):
            if self.weight_decay:
                g = g + self.weight_decay * w
            if self.momentum and not isinstance(w, tf.distribute.DistributedValues):
                tf.raw_ops.ResourceApplyMomentum(var=w.handle, accum=self.buffers[i].handle, lr=self.lr, grad=g,
                                                 momentum=tf.constant(self.momentum, w.dtype))
                continue
            if self.momentum:
                g = self.buffers[i].assign(self.momentum * self.buffers[i] + g)
            w.assign_sub(self.lr * g)

    def step(self, X, y, lr: float) -> tuple[float, int]:
        """One SGD step; returns the batch's mean loss and number of correct predictions."""
        X = self._check(X, training=True)
        self._own_policy()
        if self._weights is None:
            self._collect(as_batch(X))
        self.lr.assign(lr)

        def run():
            with tf.device(self.device):
                loss, correct = self._step(*as_batch(X, y))
            return float(loss), int(correct)
        return self._keep_statistics_finite(run)

    def predict(self, X) -> np.ndarray:
        """Eval-mode logits."""
        X = self._check(X, training=False)
        self._own_policy()
        if self._weights is None:
            self._collect(as_batch(X))
        with tf.device(self.device):
            return self._predict(as_batch(X)).numpy()

    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """Logits for a NCHW numpy batch (train mode uses and updates batch statistics)."""
        X = np.asarray(X)
        in_channels, num_classes, arch = compat.spec_of(self.net)
        inputs.check_batch(X.shape, X.dtype, in_channels, training=training, arch=arch, num_classes=num_classes or 10)
        self._own_policy()

        def run():
            with tf.device(self.device):
                X_ = tf.constant(np.ascontiguousarray(X.transpose(0, 2, 3, 1)))
                return as_float32(self.net(self._check(X_, training), training=training)).numpy()
        return self._keep_statistics_finite(run) if training else run()

    def _check(self, X, training: bool):
        """``X`` as a tensor, checked by ``d2lres.inputs``' rules for a NHWC batch."""
        X = tf.convert_to_tensor(X)
        self._check_batch(X.shape, X.dtype, training, lambda: tf.reduce_all(tf.math.is_finite(X)),
                          channels_last=True)
        return X

    def _statistics(self):
        return [(n, v) for n, v, _ in _variables(self.net)
                if n.endswith(("running_mean", "running_var", "moving_mean", "moving_variance"))]

    def _snapshot(self, stats):
        return [tf.identity(v.value) for v in stats]

    def _finite(self, stats):
        return tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in stats]).numpy().tolist()

    def _restore(self, stats, saved):
        for v, old in zip(stats, saved):
            v.assign(old)

    _neutral = (get_weights, set_weights)

    def _native_weights(self) -> dict[str, np.ndarray]:
        """Any network's variables by position and name."""
        return {name: v.numpy() for name, v, _ in _variables(self.net)}

    def _assign_native(self, weights) -> None:
        for name, v, _ in _variables(self.net):
            v.assign(np.asarray(weights[name]))

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Momentum buffers under ``momentum.<canonical name>``, in the canonical layout."""
        if self._weights is None:
            return {}
        return {f"momentum.{name}": to_canonical(buf.numpy(), kind)
                for (name, kind), buf in zip(self._slots, self.buffers)}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        if self._weights is None:
            raise UserValueError("this network has no variables yet (it is built by its first batch); "
                                 "call it once on a batch before loading an optimizer state")
        for (name, kind), buf in zip(self._slots, self.buffers):
            if f"momentum.{name}" in state:
                buf.assign(from_canonical(state[f"momentum.{name}"], kind))


def _variables(net):
    """``(name, Keras variable, kind)``: canonical for a d2lres network; for any other every
    variable as ``<position>.<name>`` (``kind`` "native": no layout change)."""
    if compat.is_d2lres_net(net):
        return list(variables(net))
    return [(f"{i}.{v.name}", v, "native") for i, v in enumerate(net.weights)]


def train_ch6(net, train_iter, test_iter, num_epochs: int, lr: float, device=None, *, precision: str = "float32",
              **fit_options):
    """d2l's ``train_ch6``: SGD at constant ``lr``, cross-entropy; prints d2l's lines
    (``training on``, loss and accuracies, examples/sec), draws the curves and returns the
    history. ``net``: a d2lres network, any Keras model mapping an NHWC batch to logits, or --
    as d2l's TensorFlow ``train_ch6(net_fn, ...)`` -- a function building one, called inside
    ``tf.distribute.OneDeviceStrategy(device).scope()``. ``device``: d2lres's device string or
    d2l's ``try_gpu()`` (a ``tf.device`` object). ``train_iter`` / ``test_iter``: d2lres's
    batches or a ``tf.data.Dataset`` of ``(X, y)`` batches (X NHWC, float; y integer labels);
    ``precision``: the ``Trainer``'s (``"bf16"``: Keras's ``mixed_bfloat16`` policy on the network);
    ``fit_options`` go to ``d2lres.training.fit``.

    Initialisation, as d2l: a network built by ``net_fn`` (or not built before its first batch)
    gets Keras's initialisers (Glorot uniform kernels, zero biases); a network object already
    built is trained from its weights as they are, and a d2lres network keeps its weights
    (d2lres's seeded scheme, ``init_weights``)."""
    precisions.check(precision)
    device = device_name(device) or try_gpu()
    if callable(net) and not isinstance(net, keras.layers.Layer):
        with tf.distribute.OneDeviceStrategy(device).scope():
            net = net()
    return training.train_ch6(net, lambda: Trainer(net, device=device, precision=precision), lambda: None, train_iter,
                          test_iter, num_epochs, lr, **fit_options)
