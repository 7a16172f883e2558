"""TensorFlow's speed kernel: ``Conv2D`` runs small images with many channels as matmuls (TF's CPU
convolution backward is very slow there): one per pair of kernel taps that meets the input
(``spec.conv_taps``: the padding's zeros are not multiplied), or im2col and one matmul per group
for a grouped kernel; besides PyTorch's symmetric padding. Also the padding helpers and the
bfloat16 bias add that ``model``'s layers share."""
from __future__ import annotations

import keras
import tensorflow as tf

from .. import spec


def pad(X: tf.Tensor, padding: int, value: float = 0.0) -> tf.Tensor:
    if not padding:
        return X
    return tf.pad(X, [[0, 0], [padding, padding], [padding, padding], [0, 0]], constant_values=value)


def padded(shape, padding: int) -> tuple:
    """An NHWC shape with ``padding`` added on both sides of height and width."""
    shape = tuple(shape)
    return (shape[0], *(None if s is None else s + 2 * padding for s in shape[1:3]), *shape[3:])


def add_bias(Y: tf.Tensor, bias) -> tf.Tensor:
    """``Y + bias`` in a layer computing in bfloat16 (``precision="bf16"``): a broadcast ``AddV2``,
    whose gradient is a ``Sum`` that accumulates in float32. Keras's ``ops.add`` would make it
    ``BiasAdd``, and TensorFlow's CPU ``BiasAddGrad`` sums a bfloat16 gradient in bfloat16, far
    from the exact gradient of a bias before a BatchNorm (0; docs/same-function.md gives the sizes)."""
    return tf.math.add(Y, tf.cast(tf.convert_to_tensor(bias), Y.dtype))


def taps_conv2d(X: tf.Tensor, kernel: tf.Tensor, stride: int, padding: int) -> tf.Tensor:
    """The zero-padded convolution of the unpadded NHWC ``X`` with the dense HWIO ``kernel`` (square,
    as the stride and padding), as a sum over the kernel taps that meet the input
    (``spec.conv_taps``) of ``input slice @ tap``, each tap's outputs padded to the whole output:
    the padding's zeros are not multiplied. The kernel is unstacked once, so its gradient is one stack."""
    k, _, c, o = kernel.shape
    h, w = X.shape[1], X.shape[2]
    ho, wo = spec.conv_out_size(h, k, stride, padding), spec.conv_out_size(w, k, stride, padding)
    taps = tf.unstack(tf.reshape(kernel, [k * k, c, o]))
    parts = []
    for a, i0, ni, r0 in spec.conv_taps(h, k, stride, padding):
        for b, j0, nj, c0 in spec.conv_taps(w, k, stride, padding):
            Xs = X[:, r0:r0 + (ni - 1) * stride + 1:stride, c0:c0 + (nj - 1) * stride + 1:stride, :]
            Z = tf.reshape(tf.reshape(Xs, [-1, c]) @ taps[a * k + b], [-1, ni, nj, o])
            if (ni, nj) != (ho, wo):
                Z = tf.pad(Z, [[0, 0], [i0, ho - i0 - ni], [j0, wo - j0 - nj], [0, 0]])
            parts.append(Z)
    return tf.add_n(parts)


#: The matmul path's rule (``Conv2D.uses_matmul``): outputs at most this many pixels on a side...
MATMUL_MAX_SIDE = 2
#: ... from at least this many input channels. Derived from single-convolution forward+backward
#: micro-benchmarks (``scripts/tf-convbench``, natively and with oneDNN held to AVX2): every such
#: layer of ResNet-18 at 40x40 (stage 5, 2x2) is faster as im2col + matmul; at 3x3 outputs the
#: stride-1 3x3 convolutions lose and the strided ones vary; at 128 channels or fewer and larger
#: images TF's own kernels win. The script prints the timings; docs/performance.md quotes some.
MATMUL_MIN_CHANNELS = 256


class Conv2D(keras.layers.Conv2D):
    """``Conv2D`` with PyTorch's symmetric zero padding; Glorot-uniform kernel, zero bias.
    At stride 1 an odd kernel's ``'same'`` padding is already symmetric and is used as is.
    ``in_channels`` builds it (its variables) now; left out, on the first call.

    Small images with many channels run as matmuls instead of TF's convolution, whose backward
    pass is very slow there on CPU (the same function within float32 rounding): one per pair of
    kernel taps that meets the input, skipping the taps that read only padding (``_taps``), or, for a
    grouped kernel (``groups`` > 1), im2col (``tf.image.extract_patches``) and one matmul per group;
    ``uses_matmul`` is the rule, ``conv_path`` says what the last call ran. A grouped convolution otherwise runs as TF's
    dense convolution with the block-diagonal kernel: Keras compiles a grouped one with XLA on a CPU,
    far slower there than the dense one with the groups' zeros (docs/performance.md); the zeros add
    exact zero products, the same function within float32 rounding."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: int = 0, *,
                 use_bias: bool = True, groups: int = 1, in_channels: int | None = None):
        same = strides == 1 and kernel_size % 2 == 1 and padding == kernel_size // 2
        super().__init__(filters, kernel_size, strides, padding="same" if same else "valid", groups=groups,
                         use_bias=use_bias)
        self.explicit_padding = 0 if same else padding
        self.conv_path = None  # "conv" or "matmul": what the last call ran
        if in_channels:
            self.build((None, None, None, in_channels))

    def build(self, input_shape):
        super().build(padded(input_shape, self.explicit_padding))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(padded(input_shape, self.explicit_padding))

    def uses_matmul(self, input_shape) -> bool:
        """Whether an NHWC input of ``input_shape`` (before padding) runs as im2col + matmul:
        output side <= ``MATMUL_MAX_SIDE`` and input channels >= ``MATMUL_MIN_CHANNELS``, with
        the spatial size known when the step is traced."""
        _, h, w, c = padded(input_shape, self.explicit_padding)
        if h is None or w is None or c is None:
            return False
        out = super().compute_output_shape((None, h, w, c))[1:3]  # the shape as padded
        return max(out) <= MATMUL_MAX_SIDE and c >= MATMUL_MIN_CHANNELS

    def call(self, X):
        self.conv_path = "matmul" if self.uses_matmul(X.shape) else "conv"
        if self.conv_path == "matmul" and self.groups == 1:
            return self._taps(X)
        X = pad(X, self.explicit_padding)
        if self.conv_path == "matmul":
            return self._matmul(X)
        if self.groups > 1:
            Y = self.convolution_op(X, self._block_diagonal(tf.convert_to_tensor(self.kernel)))
            if not self.use_bias:
                return Y
            return Y + self.bias if self.compute_dtype == "float32" else add_bias(Y, self.bias)
        if self.use_bias and self.compute_dtype != "float32":  # bf16: the bias's gradient summed in float32
            return add_bias(self.convolution_op(X, self.kernel), self.bias)
        return super().call(X)

    def _block_diagonal(self, kernel):
        """The grouped kernel (k, k, C/g, O) as the dense (k, k, C, O) with zeros outside its groups."""
        g, (kh, kw, c, o) = self.groups, kernel.shape
        eye = tf.reshape(tf.eye(g, dtype=kernel.dtype), [1, 1, g, 1, g, 1])  # input group, output group
        return tf.reshape(tf.reshape(kernel, [kh, kw, 1, c, g, o // g]) * eye, [kh, kw, g * c, o])

    def _taps(self, X):
        """``taps_conv2d`` of the unpadded ``X``, with the bias; TF's convolution where every
        output lies on padding (it keeps the gradients' zeros)."""
        (k, _), (s, _) = self.kernel_size, self.strides
        p = k // 2 if self.padding == "same" else self.explicit_padding
        if not (spec.conv_taps(X.shape[1], k, s, p) and spec.conv_taps(X.shape[2], k, s, p)):
            return super().call(pad(X, self.explicit_padding))
        Y = taps_conv2d(X, tf.convert_to_tensor(self.kernel), s, p)
        if not self.use_bias:
            return Y
        return Y + self.bias if self.compute_dtype == "float32" else add_bias(Y, self.bias)

    def _matmul(self, X):
        """The grouped convolution of the padded ``X`` as im2col and one matmul per group."""
        (k, _), (s, _) = self.kernel_size, self.strides
        if self.padding == "same":
            X = pad(X, k // 2)
        P = X[:, ::s, ::s, :] if k == 1 else \
            tf.image.extract_patches(X, [1, k, k, 1], [1, s, s, 1], [1, 1, 1, 1], "VALID")  # (kh, kw, c) order
        g = self.groups
        c = P.shape[-1] // (k * k * g)  # patches (.., k*k, g, C/g) with the kernel (k*k, C/g, g, O/g)
        Y = tf.einsum("nkgc,kcgo->ngo", tf.reshape(P, [-1, k * k, g, c]),
                      tf.reshape(tf.convert_to_tensor(self.kernel), [k * k, c, g, self.filters // g]))
        Y = tf.reshape(Y, [-1, self.filters])
        Y = tf.reshape(Y, tf.concat([tf.shape(P)[:3], [self.filters]], 0))
        if not self.use_bias:
            return Y
        return Y + self.bias if self.compute_dtype == "float32" else add_bias(Y, self.bias)

