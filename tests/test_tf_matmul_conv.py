"""TensorFlow's matmul convolutions (``d2lres.tf.kernels.Conv2D.uses_matmul``: small images with
many channels; tap by tap for a dense kernel, im2col for a grouped one) are the same function as
TF's own convolution: single layers (output and gradients) and ResNet-18 at 40x40, where stage 5
(2x2) takes them, within the cross-backend checks' tolerances; and at 40x40 TF still agrees with
PyTorch."""
import numpy as np
import pytest

from d2lres import checks
from d2lres.host import backends
from helpers import assert_kernel_is_the_plain_function

pytestmark = pytest.mark.framework

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
kernels = pytest.importorskip("d2lres.tf.kernels")


@pytest.mark.parametrize("filters, kernel, stride, padding, side, channels", [
    (512, 3, 1, 1, 2, 512),   # stage 5 at 40x40: 'same' padding
    (512, 3, 2, 1, 3, 256),   # its strided first convolution
    (512, 1, 2, 0, 3, 256),   # the 1x1 shortcut
    (64, 7, 2, 3, 9, 3),      # the stem's shape (odd size, explicit padding)
    (16, 3, 2, 1, 6, 8),      # an even size at stride 2
    (8, 3, 1, 1, 1, 4),       # a 1x1 output: only the centre tap meets the input
    (8, 1, 2, 1, 1, 4),       # every output on padding: the bias alone
])
def test_matmul_path_equals_tf_convolution(filters, kernel, stride, padding, side, channels):
    rng = np.random.default_rng(0)
    layer = kernels.Conv2D(filters, kernel, stride, padding, in_channels=channels)
    layer.bias.assign(rng.standard_normal(filters).astype(np.float32))
    X = tf.constant(rng.random((4, side, side, channels), dtype=np.float32))
    results = []
    for run in (lambda: keras.layers.Conv2D.call(layer, kernels.pad(X, layer.explicit_padding)),
                lambda: layer._taps(X)):
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = run()
            loss = tf.reduce_sum(Y * Y)
        results.append([Y.numpy(), *[g.numpy() for g in tape.gradient(loss, [X, layer.kernel, layer.bias])]])
    (plain, *plain_grads), (matmul, *matmul_grads) = results
    assert plain.shape == matmul.shape
    tol = checks.TOLERANCES["eval_logits"]
    np.testing.assert_allclose(matmul, plain, atol=tol * max(1.0, np.abs(plain).max()), rtol=0)
    for a, b in zip(matmul_grads, plain_grads):
        np.testing.assert_allclose(a, b, atol=tol * max(1.0, np.abs(b).max()), rtol=0)


def test_rule_takes_stage5_at_40_pixels_only():
    import d2lres.tf as res
    net = res.resnet18()
    used = {}
    for side in (40, 96):
        net(tf.zeros((1, side, side, 1)))
        used[side] = [f"{stage.name}.{i}.{a}" for stage in net for i, blk in enumerate(stage.layers)
                      for a in ("conv1", "conv2", "conv3")
                      if getattr(getattr(blk, a, None), "conv_path", "") == "matmul"]
    assert used == {40: ["b5.0.conv1", "b5.0.conv2", "b5.0.conv3", "b5.1.conv1", "b5.1.conv2"], 96: []}


def test_resnet18_at_40_pixels_same_function_with_and_without_matmul(monkeypatch):
    assert_kernel_is_the_plain_function("tf", monkeypatch, kernels, "MATMUL_MAX_SIDE")


@pytest.mark.skipif("torch" not in backends.available(), reason="needs PyTorch")
def test_resnet18_at_40_pixels_equals_torch():
    runs = checks.run_all({"torch": ("torch", {}), "tf": ("tf", {})}, input_shape=(1, 40, 40), step_size=40)
    diff = checks.differences(runs["torch"], runs["tf"])
    assert all(diff[k] <= tol for k, tol in checks.TOLERANCES.items()), diff
