"""What only the JAX backend needs: its BatchNorm keeps PyTorch's running statistics (Flax's
momentum is the other way round and its running variance biased) and sums over the right axes,
its convolution's matmul path for tiny outputs is XLA's convolution, its max-pool gradient is
XLA's, optax SGD with momentum and weight decay is PyTorch's SGD over several steps with a
changing learning rate, and the layout options."""
import numpy as np
import pytest

pytest.importorskip("jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax import lax  # noqa: E402

from d2lres import checks, spec
from d2lres.host import backends  # noqa: E402

pytestmark = pytest.mark.framework


@pytest.fixture(scope="module")
def res():
    return backends.load("jax")


def test_batchnorm_running_statistics_are_pytorchs(res):
    from d2lres.jax.model import BatchNorm
    bn = BatchNorm(3)
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 5, 3)).astype(np.float32)
    y = np.asarray(bn(jnp.asarray(x)))  # train mode: batch statistics
    n = x.size // 3
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + spec.BN_EPS), atol=1e-5)
    m = spec.BN_MOMENTUM
    np.testing.assert_allclose(np.asarray(bn.mean[...]), m * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), (1 - m) + m * var * n / (n - 1), rtol=1e-5)
    bn.eval()
    before = np.asarray(bn.var[...]).copy()
    bn(jnp.asarray(x))
    assert np.array_equal(np.asarray(bn.var[...]), before)  # eval mode leaves them alone


@pytest.mark.parametrize("shape, dtype", [((8, 4, 4, 3), "float32"),   # 128 rows: dots of one block
                                          ((2, 40, 40, 5), "float32"),  # 3,200 rows: 25 blocks of 128
                                          ((3, 5, 5, 2), "float32"),    # 75 rows: XLA's reduction
                                          ((8, 4, 4, 3), "bfloat16")])  # not float32: XLA's reduction
def test_channel_sum_is_the_sum_over_every_axis_but_the_last(shape, dtype):
    from d2lres.jax.kernels import channel_sum
    x = np.random.default_rng(2).normal(1.0, 3.0, shape)
    got = np.asarray(channel_sum(jnp.asarray(x, dtype=dtype)), dtype=np.float64)
    want = np.asarray(jnp.asarray(x, dtype=dtype), dtype=np.float64).sum(axis=(0, 1, 2))
    eps = 2.0 ** -24 if dtype == "float32" else 2.0 ** -8
    assert got.shape == (shape[-1],)
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * eps * np.abs(x).sum(axis=(0, 1, 2)).max())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_add_bias_is_plus_with_its_gradients(dtype):
    """A float32 bias on a ``dtype`` output (bf16: the policy's bias stays float32), 512 rows: the
    bias's gradient takes channel_sum's blocked dots; the output's gradient comes back in ``dtype``."""
    from d2lres.jax.kernels import add_bias
    rng = np.random.default_rng(3)
    Y, bias = jnp.asarray(rng.normal(size=(2, 16, 16, 8)), dtype), jnp.asarray(rng.normal(size=8), "float32")
    G = jnp.asarray(rng.normal(size=(2, 16, 16, 8)), "float32")
    ours, vjp_ours = jax.vjp(add_bias, Y, bias)
    plain, vjp_plain = jax.vjp(lambda Y, b: Y + b, Y, bias)
    assert ours.dtype == plain.dtype == jnp.float32
    np.testing.assert_array_equal(ours, plain)
    for a, b in zip(vjp_ours(G), vjp_plain(G)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("size, stride, kernel, patches", [(2, 1, 3, True), (3, 2, 3, True), (1, 1, 3, True),
                                                           (3, 2, 1, True), (4, 2, 3, True), (5, 1, 3, False)])
def test_matmul_path_for_tiny_outputs_is_xlas_convolution(res, size, stride, kernel, patches):
    from d2lres.jax.kernels import PATCHES_MAX_PIXELS
    from d2lres.jax.model import conv
    layer = conv(8, 16, kernel, stride, kernel // 2)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 8)).astype(np.float32))
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    assert (out * out <= PATCHES_MAX_PIXELS) == patches

    def xla(x, kernel_, bias):
        p = layer.padding[0][0]
        return lax.conv_general_dilated(x, kernel_, (stride, stride), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST) + bias

    graphdef, state = nnx.split(layer)
    leaves, treedef = jax.tree.flatten(state)
    kernel_first = leaves[0].ndim == 4

    def ours(x, kernel_, bias):  # the layer as a function of its parameters (nnx's functional API)
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, [kernel_, bias] if kernel_first else [bias, kernel_]))(x)

    args = (x, layer.kernel[...], layer.bias[...])
    np.testing.assert_allclose(ours(*args), xla(*args), atol=1e-5)
    g_ours = jax.grad(lambda *a: (ours(*a) ** 2).sum(), argnums=(0, 1, 2))(*args)
    g_xla = jax.grad(lambda *a: (xla(*a) ** 2).sum(), argnums=(0, 1, 2))(*args)
    for a, b in zip(g_ours, g_xla):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("side, kernel, stride, padding", [(20, 3, 2, 1), (17, 3, 2, 1), (9, 3, 2, 1), (8, 2, 2, 0),
                                                        (7, 3, 1, 1), (9, 3, 3, 0), (11, 5, 2, 2), (6, 3, 2, 0)])
def test_max_pool_gradient_is_xlas(res, side, kernel, stride, padding):
    """The phase-wise gradient equals XLA's select_and_scatter exactly, ties included: ReLU zeros
    and small integers make many windows with several maxima, where the first one (row-major)
    must take the gradient; integer upstream gradients keep every sum exact."""
    from d2lres.jax.kernels import max_pool
    rng = np.random.default_rng(side)
    x = jnp.asarray(np.maximum(rng.integers(-3, 3, (2, side, side, 3)), 0).astype(np.float32))

    def xla(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, kernel, kernel, 1), (1, stride, stride, 1),
                                 ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    np.testing.assert_array_equal(max_pool(x, kernel, stride, padding), xla(x))
    g = jnp.asarray(rng.integers(-4, 5, xla(x).shape).astype(np.float32))
    ours = jax.grad(lambda x: (max_pool(x, kernel, stride, padding) * g).sum())(x)
    np.testing.assert_array_equal(ours, jax.grad(lambda x: (xla(x) * g).sum())(x))
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda x: (max_pool(x, kernel, stride, padding) * g).sum()))(x),
                                  ours)


def _conv_bias(name: str) -> bool:
    """Convolution biases in front of BatchNorm: BN cancels them, their gradients are rounding."""
    return ".conv" in name and name.endswith(".bias")


def test_sgd_with_momentum_and_weight_decay_is_pytorchs_over_steps():
    rng = np.random.default_rng(0)
    X, y = rng.random((8, 1, 64, 64), dtype=np.float32), rng.integers(0, 10, 8)
    w0 = checks.test_weights(bn_shift=checks.STEP_BN_SHIFT)
    runs = {}
    for name in ("torch", "jax"):
        mod = backends.load(name)
        net = mod.resnet18()
        mod.set_weights(net, w0)
        trainer = mod.Trainer(net, momentum=0.9, weight_decay=5e-4)
        Xb, yb = trainer.convert(X, y)
        losses = [trainer.step(Xb, yb, lr)[0] for lr in (0.001, 0.002, 0.0005)]
        runs[name] = losses, trainer.get_weights(), trainer.optimizer_state()
    (l_t, w_t, m_t), (l_j, w_j, m_j) = runs["torch"], runs["jax"]
    np.testing.assert_allclose(l_j, l_t, rtol=1e-5)
    assert sorted(m_j) == sorted(m_t)
    for ref, got, tol in ((w_t, w_j, checks.TOLERANCES["step_weights"]), (m_t, m_j, 1e-3)):
        for k in ref:  # measured: weights 8e-7, momentum 7e-5 relative
            if not _conv_bias(k.removeprefix("momentum.")):
                np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=tol * np.abs(ref[k]).max(), err_msg=k)


def test_layout_options(res):
    net = res.resnet18()
    with pytest.raises(ValueError, match="NHWC .* only; channels_last=False"):
        res.Trainer(net, channels_last=False)
    for option in (None, True):
        res.Trainer(net, channels_last=option)


def test_chapter_block_is_built_on_its_first_call(res):
    """The #@save cell's lazy layers become nnx layers on the first call, mode kept, no wrapper left:
    the graph and the function of a block built with in_channels (from shapes: its statistics
    untouched); a first call inside jax.jit is refused, and so are the 1.0 tab's tuple arguments."""
    from d2lres.jax.model import BatchNorm, Conv, Lazy, LazyConv
    blk = res.Residual(6, use_1x1conv=True, strides=2)
    assert isinstance(blk.conv1, Lazy) and isinstance(blk.bn1, Lazy)
    blk.eval()
    X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32))
    Y = blk(X)
    assert Y.shape == (2, 3, 3, 6) and blk.bn1.use_running_average
    assert type(blk.conv1) is Conv and type(blk.bn1) is BatchNorm and blk.conv1.kernel[...].shape == (3, 3, 3, 6)
    stage = res.resnet_block(6, 2, in_channels=3)
    eager = stage.layers[0]
    assert not any(isinstance(m, Lazy) for _, m in nnx.iter_graph(stage))
    for bn in (eager.bn1, eager.bn2, stage.layers[1].bn1):
        assert np.array_equal(bn.mean[...], np.zeros(6)) and np.array_equal(bn.var[...], np.ones(6))
    eager.eval()
    assert nnx.graphdef(eager) == nnx.graphdef(blk)
    nnx.update(eager, nnx.state(blk))
    np.testing.assert_array_equal(eager(X), Y)
    with pytest.raises(ValueError, match="first call, which must be eager"):
        jax.jit(lambda x: res.Residual(4)(x))(jnp.zeros((1, 4, 4, 4)))
    with pytest.raises(TypeError, match="kernel_size must be an integer >= 1, got \\(3, 3\\)"):
        LazyConv(6, kernel_size=(3, 3))
