"""ResNeXt in the family (issue 35): the spec's grouped convolutions and ResNeXt entries against
torchvision's published counts, d2l 1.0's ``ResNeXtBlock`` (its ``groups`` is the width of a group)
in every backend, the full cross-backend checks of ``resnext18`` and ``resnext50_32x4d`` (eval,
train mode, one SGD step, against the float64 reference within the derived bound) at the floor
of 64x64 with batch 4, the two ResNeXt-101s by their counts and one forward pass in every
backend, and torchvision's state_dict layout of grouped kernels (a key list written down
independently of d2lres, as tests/test_variants.py does for ResNet)."""
import numpy as np
import pytest

from d2lres import checks, spec
from d2lres import weights as neutral
from d2lres.host import backends
from helpers import forward, full_check, torchvision_state_dict_shapes

pytestmark = pytest.mark.framework

BACKENDS = backends.available()
#: torchvision's published parameter counts (3 input channels, 1000 classes).
PUBLISHED = {"resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272}
TOLERANCE = checks.FAMILY_TOLERANCES["eval_logits"]


# --- the spec --------------------------------------------------------------------------------

def test_published_counts_in_spec():
    for name, count in PUBLISHED.items():
        arch = spec.get_arch(name)
        assert (arch.name, arch.flavour, arch.version) == (name, "torchvision", 1)
        assert spec.param_counts(1000, 3, arch)["total"][0] == count
    # torchvision's resnext50_32x4d: 4.23 GMAC ("4.23 GFLOPS") at 224
    assert spec.forward_macs((3, 224, 224), 1000, spec.get_arch("resnext50_32x4d")) == pytest.approx(4.23e9, rel=1e-3)


def test_resnext18_is_the_chapters_stages_with_d2ls_block():
    arch = spec.get_arch("resnext18")
    assert (arch.flavour, str(arch)) == ("chapter", "ResNeXt-18")
    net = spec.resnet_spec(arch)
    assert net["b1"][0] == spec.Conv("b1.conv", 1, 64, 7, 2, 3, True)
    firsts = [net[f"b{k}"][0] for k in (2, 3, 4, 5)]
    assert [(len(net[f"b{k}"]), b.out_channels) for k, b in zip((2, 3, 4, 5), firsts)] == \
        [(2, 64), (2, 128), (2, 256), (2, 512)]
    assert [(b.kind, b.width, b.groups, b.strides, b.projection) for b in firsts] == \
        [("resnext", 64, 4, 1, False), ("resnext", 128, 8, 2, True), ("resnext", 256, 16, 2, True),
         ("resnext", 512, 32, 2, True)]
    b3 = firsts[1]
    assert b3.main_path() == ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"]
    assert b3.shortcut_path() == ["conv4", "bn4"]
    conv2 = b3.main()[3]
    assert (conv2.groups, conv2.stride, conv2.bias) == (8, 2, True)
    params = spec.parameters(arch=arch)
    assert params["b3.0.conv2.weight"].shape == (128, 16, 3, 3)  # in // groups input channels per output
    assert params["b3.0.conv4.bias"].shape == (128,) and params["b3.0.bn4.running_var"].shape == (128,)
    # b3 at 96x96 (input 64x24x24, output 128x12x12): each grouped 3x3 output reads its group's 16 channels
    b3 = (24 * 24 * 64 * 128 + 144 * 128 * 16 * 9 + 144 * 128 * 128 + 144 * 64 * 128  # block 0, with conv4
          + 144 * 128 * 128 + 144 * 128 * 16 * 9 + 144 * 128 * 128)
    assert {r[0]: r[1:] for r in spec.walk((1, 96, 96), 10, arch)}["b3"] == ((128, 12, 12), b3)


def test_names_refusals_and_the_job_form():
    from d2lres.core.description import arch_from_job, arch_job
    assert spec.get_arch("ResNeXt50_32x4d") == spec.Arch(50, 1, "torchvision", 32, 4)
    assert spec.get_arch("resnext50_32x4d", flavour="chapter").flavour == "chapter"
    assert str(spec.get_arch("resnext101_64x4d")) == "ResNeXt-101 64x4d (torchvision)"
    with pytest.raises(ValueError, match="resnext18 has version 1 only"):
        spec.get_arch("resnext18", 2)
    with pytest.raises(ValueError, match="known: resnet18, .*, resnext18, resnext50_32x4d"):
        spec.get_arch("resnext50_8x4d")
    for arch in spec.resnext_archs() + [spec.Arch(50, 2)]:
        assert arch_from_job(arch_job(arch)) == arch


# --- d2l 1.0's block ---------------------------------------------------------------------------

def test_resnext_block(mod, block_output):
    """The chapter's example (``ResNeXtBlock(32, 16, 1)``: 2 groups of 16 channels), a projecting
    block, and a ``bot_channels`` that ``groups`` does not divide refused."""
    block = mod.ResNeXtBlock(32, 16, 1)
    assert (block.spec.kind, block.spec.width, block.spec.groups) == ("resnext", 32, 2)
    assert block_output(mod, block, (2, 32, 6, 6)) == (2, 32, 6, 6)
    assert block_output(mod, mod.ResNeXtBlock(64, 8, 0.5, use_1x1conv=True, strides=2), (2, 16, 6, 6)) == (2, 64, 3, 3)
    with pytest.raises(ValueError, match=r"48 bottleneck channels .* not a positive multiple of groups=32, the width "
                                         r"of each group"):
        mod.ResNeXtBlock(48, 32, 1)
    with pytest.raises(TypeError, match="use_1x1conv must be True or False"):
        mod.ResNeXtBlock(64, 16, 1, 2)


# --- the same function in every backend -------------------------------------------------------

@pytest.mark.parametrize("name", ["resnext18", "resnext50_32x4d"])
def test_full_check(name):
    """Eval and train-mode logits, the loss, one SGD step and the running statistics of every
    backend within the derived bound of the float64 reference, every pair within twice that, at
    64x64 with batch 4 (b5 2x2: TensorFlow's matmul and JAX's patch convolution run the grouped
    3x3 there group by group); resnext50_32x4d on 3 channels, as tests/test_variants.py's ResNet-50."""
    arch = spec.get_arch(name)
    result = full_check(arch, input_shape=(3 if arch.flavour == "torchvision" else 1, 64, 64), step_size=64)
    assert result["ok"], checks.format_checks(result)
    assert str(arch) in checks.format_checks(result)


@pytest.mark.slow  # two 85M-parameter networks in every backend: the default set only (the 50 is checked in both)
@pytest.mark.parametrize("name", ["resnext101_32x8d", "resnext101_64x4d"])
def test_resnext101_counts_and_one_forward_pass(name):
    """torchvision's published count and the spec's names in every backend; the same random weights
    give the same eval logits for one 3x32x32 image."""
    arch = spec.get_arch(name)
    w = neutral.init_weights(seed=5, num_classes=1000, in_channels=3, arch=arch)
    X = np.random.default_rng(6).random((1, 3, 32, 32), dtype=np.float32)
    expected = {k: p.shape for k, p in spec.parameters(1000, 3, arch).items()}
    logits = {}
    for b in BACKENDS:
        mod = backends.load(b)
        net = mod.resnet(name, 1, 1000, 3, "torchvision")
        assert mod.count_parameters(net)[0] == PUBLISHED[name], b
        assert {k: tuple(v.shape) for k, v in mod.get_weights(net).items()} == expected, b
        mod.set_weights(net, w)
        logits[b] = forward(mod, net, X)
        del net
    ref = logits.pop(BACKENDS[0])
    for b, y in logits.items():
        np.testing.assert_allclose(y, ref, rtol=0, atol=TOLERANCE * max(1.0, np.abs(ref).max()), err_msg=b)


# --- torchvision's state_dict -----------------------------------------------------------------




@pytest.mark.parametrize("name,depth,groups,width", [("resnext50_32x4d", 50, 32, 4), ("resnext101_32x8d", 101, 32, 8),
                                                     ("resnext101_64x4d", 101, 64, 4)])
def test_torchvision_keys_map_onto_the_spec(name, depth, groups, width):
    shapes = torchvision_state_dict_shapes(depth, groups, width)
    trainable = sum(int(np.prod(s)) for k, s in shapes.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == PUBLISHED[name]  # the independent key list is torchvision's
    arch = spec.get_arch(name)
    keys = neutral.torchvision_keys(arch)
    assert sorted(keys.values()) == sorted(k for k in shapes if not k.endswith("num_batches_tracked"))
    expected = spec.parameters(1000, 3, arch)
    assert all(shapes[tv] == expected[n].shape for n, tv in keys.items())
    assert neutral.torchvision_arch({k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}) == arch


def test_torchvision_state_dict_loads(tmp_path):
    """A torchvision-format resnext50_32x4d state_dict (torch tensors) loads in PyTorch, through
    the neutral weights file gives the same weights, and goes back to the same dict. The name alone
    gives torchvision's flavour, as ``--arch`` does."""
    import torch
    rng = np.random.default_rng(0)
    sd = {k: torch.tensor(100) if k.endswith("num_batches_tracked") else
          torch.from_numpy(rng.uniform(0.5, 1.5, s).astype(np.float32))
          for k, s in torchvision_state_dict_shapes(50, 32, 4).items()}
    torch_mod = backends.load("torch")
    net = torch_mod.resnet("resnext50_32x4d", num_classes=1000, in_channels=3)
    assert net.arch == spec.get_arch("resnext50_32x4d", flavour="torchvision")
    torch_mod.load_torchvision_state_dict(net, sd)
    assert np.array_equal(net.state_dict()["b2.0.conv2.weight"].numpy(), sd["layer1.0.conv2.weight"].numpy())
    path = neutral.torchvision_to_npz(sd, tmp_path / "tv.npz")
    other = torch_mod.resnet("resnext50_32x4d", flavour="torchvision", num_classes=1000, in_channels=3)
    torch_mod.load_weights(other, path)
    back = neutral.to_torchvision(torch_mod.get_weights(other), "resnext50_32x4d")
    assert back.keys() == {k for k in sd if not k.endswith("num_batches_tracked")}
    for k in back:
        np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)


# --- the speed paths against each framework's plain grouped layer -------------------------------

#: (side, channels, groups, stride): outputs above the patch limits (block-diagonal dense kernel), at it (patches).
GROUPED = [(10, 16, 4, 1), (9, 32, 8, 2), (2, 256, 32, 1)]


def _relative(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.skipif("tf" not in BACKENDS, reason="TensorFlow not installed")
@pytest.mark.parametrize("side,channels,groups,stride", GROUPED)
def test_tf_grouped_paths_are_keras_grouped_convolution(side, channels, groups, stride):
    """``kernels.Conv2D`` with groups (the block-diagonal dense kernel, or the matmul per group at
    2x2 outputs) against Keras's own grouped ``Conv2D``: outputs and both gradients."""
    import keras
    import tensorflow as tf

    from d2lres.tf.kernels import Conv2D
    mine = Conv2D(channels, 3, stride, 1, groups=groups, in_channels=channels)
    mine.bias.assign(np.random.default_rng(1).random(channels, np.float32))
    plain = keras.layers.Conv2D(channels, 3, stride, padding="valid", groups=groups)
    plain.build((None, side + 2, side + 2, channels))
    plain.set_weights(mine.get_weights())
    X = tf.constant(np.random.default_rng(0).random((2, side, side, channels), np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(X)
        y, y0 = mine(X), plain(tf.pad(X, [[0, 0], [1, 1], [1, 1], [0, 0]]))
        loss, loss0 = tf.reduce_sum(y ** 2), tf.reduce_sum(y0 ** 2)
    assert mine.conv_path == ("matmul" if side == 2 else "conv")
    assert _relative(y, y0) < 1e-6
    assert _relative(tape.gradient(loss, mine.kernel), tape.gradient(loss0, plain.kernel)) < 1e-5
    assert _relative(tape.gradient(loss, X), tape.gradient(loss0, X)) < 1e-5


@pytest.mark.parametrize("side,channels,groups,stride", GROUPED)
def test_jax_grouped_paths_are_xlas_grouped_convolution(side, channels, groups, stride):
    """``kernels.Conv`` with ``feature_group_count`` (the block-diagonal dense kernel, or patches
    per group at outputs of at most 4 pixels) against XLA's grouped convolution: outputs and the
    kernel's gradient."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax import lax

    from d2lres.jax.model import conv
    layer = conv(channels, channels, 3, stride, 1, True, groups)
    layer.bias[...] = jnp.asarray(np.random.default_rng(1).random(channels, np.float32))
    X = jnp.asarray(np.random.default_rng(0).random((2, side, side, channels), np.float32))

    def plain(W):
        return lax.conv_general_dilated(X, W, (stride, stride), ((1, 1), (1, 1)), feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST) + layer.bias[...]
    assert _relative(layer(X), plain(layer.kernel[...])) < 1e-6
    grad = nnx.grad(lambda m: (m(X) ** 2).sum())(layer).kernel[...]
    assert _relative(grad, jax.grad(lambda W: (plain(W) ** 2).sum())(layer.kernel[...])) < 1e-5


def test_cli_summary_takes_a_resnext_in_its_flavour():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "d2lres", "summary", "--backend", "torch", "--arch", "resnext50_32x4d",
                          "--input", "3x64x64", "--classes", "1000"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ResNeXt-50 32x4d (torchvision) in torch" in out.stdout and "25,028,904" in out.stdout
