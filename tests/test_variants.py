"""The ResNet family (issue 5): every variant of ``spec.ARCHS`` x version x flavour in every
backend -- shapes, parameter counts and canonical names equal the spec; the same weights give the
same outputs in every pair of backends; the torchvision flavour has torchvision's published counts
and loads a torchvision-format state_dict in all three backends.

Eval-mode logits between two backends (no reference): max |difference| / max(1, max |logit|) <=
1e-3 (``checks.FAMILY_TOLERANCES``); measured ~1e-6, and the rule's bound for them is at most
~4e-5 (``d2lres.checks``). Inputs are small (1x32x32, 3x32x32) so that the deep variants stay
fast: eval-mode forward only, except the full checks (train mode + one SGD step), which hold every
backend to the float64 reference within ``checks.bounds`` and every pair within twice that.
ResNet-101 and -152 are marked slow; the default run covers 18/34/50.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lres import checks, spec
from d2lres import weights as neutral
from d2lres.host import backends
from helpers import PAIRS, forward, full_check, torchvision_state_dict_shapes

pytestmark = pytest.mark.framework

BACKENDS = backends.available()
ARCHS = spec.all_archs()
IDS = [f"{a.name}-v{a.version}-{a.flavour}" for a in ARCHS]
TOLERANCE = checks.FAMILY_TOLERANCES["eval_logits"]  # relative, see the module docstring
#: torchvision's published parameter counts (3 input channels, 1000 classes).
PUBLISHED = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
ROOT = Path(__file__).resolve().parents[1]


def config(arch):
    """torchvision flavour, version 1: ImageNet's 3 channels / 1000 classes (the published counts);
    every other entry: the chapter's 1 channel / 10 classes."""
    return (1000, 3) if arch.flavour == "torchvision" and arch.version == 1 else (10, 1)


_RUNS: dict = {}


def run_variant(arch):
    """Build ``arch`` in every backend, read its walk, counts and weight names, load the same
    random weights and compute eval logits; kept per variant (small: the networks are dropped)."""
    if arch not in _RUNS:
        num_classes, in_channels = config(arch)
        shape = (in_channels, 32, 32)
        w = checks.test_weights(num_classes, in_channels, seed=1, arch=arch)
        X = np.random.default_rng(2).random((2, *shape), dtype=np.float32)
        out = {}
        for name in BACKENDS:
            mod = backends.load(name)
            net = mod.resnet(arch.depth, arch.version, num_classes, in_channels, arch.flavour)
            names = {k: tuple(v.shape) for k, v in mod.get_weights(net).items()}
            counts = mod.count_parameters(net)
            walk = mod.shape_walk(net, shape)
            mod.set_weights(net, w)
            out[name] = {"names": names, "counts": counts, "walk": walk, "logits": forward(mod, net, X),
                         "iterable": len(list(net))}
            del net
        _RUNS[arch] = out
    return _RUNS[arch]


#: Every variant up to ResNet-50 (each block, version and stem); ResNet-101 and -152, which repeat
#: ResNet-50's bottleneck blocks in longer stages, once each, across version and stem (slow: they
#: take several seconds per backend to build and run).
DEEP = ("resnet101-v2-chapter", "resnet152-v1-torchvision")
VARIANTS = [pytest.param(a, id=i, marks=[pytest.mark.slow] if a.depth > 50 else [])
            for a, i in zip(ARCHS, IDS) if a.depth <= 50 or i in DEEP]


@pytest.mark.parametrize("case", BACKENDS + PAIRS)
@pytest.mark.parametrize("arch", VARIANTS)
def test_variant(arch, case):
    """Per backend: shape walk, counts, canonical names and shapes equal the spec (and, for the
    torchvision flavour, the published counts). Per pair: the same weights give the same logits."""
    runs = run_variant(arch)
    if case in BACKENDS:
        num_classes, in_channels = config(arch)
        r = runs[case]
        assert r["walk"] == [(n, s) for n, s, _ in spec.walk((in_channels, 32, 32), num_classes, arch)]
        assert r["counts"] == spec.param_counts(num_classes, in_channels, arch)["total"]
        assert r["names"] == {k: p.shape for k, p in spec.parameters(num_classes, in_channels, arch).items()}
        assert r["iterable"] == len(spec.STAGE_NAMES)
        if arch.flavour == "torchvision" and arch.version == 1:
            assert r["counts"][0] == PUBLISHED[arch.depth]
    else:
        a, b = case.split("-")
        la, lb = runs[a]["logits"], runs[b]["logits"]
        np.testing.assert_allclose(lb, la, rtol=0, atol=TOLERANCE * max(1.0, np.abs(la).max()))


# --- the spec table ------------------------------------------------------------------------

def test_published_torchvision_counts_in_spec():
    for depth, count in PUBLISHED.items():
        arch = spec.get_arch(depth, 1, "torchvision")
        assert spec.param_counts(1000, 3, arch)["total"][0] == count


def test_resnet18_defaults_are_the_chapters():
    assert spec.get_arch(None) == spec.get_arch("resnet18") == spec.Arch(18, 1, "chapter")
    assert spec.parameters() == spec.parameters(arch="resnet18")
    assert spec.param_counts()["total"] == (11_178_378, 7_808)


def test_resnet50_shapes_and_macs():
    shapes = [s for _, s, _ in spec.walk((3, 224, 224), 1000, spec.get_arch(50, 1, "torchvision"))]
    assert shapes[4:8] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    # torchvision's resnet50: 4.09 GMAC ("4.1 GFLOPS") at 224
    tv50 = spec.get_arch(50, 1, "torchvision")
    assert spec.forward_macs((3, 224, 224), 1000, tv50) == pytest.approx(4.09e9, rel=1e-3)


@pytest.mark.parametrize("name", ["resnet42", "vgg16", 20, "resnet"])
def test_unknown_arch_lists_the_known_ones(name):
    with pytest.raises(ValueError, match="known: resnet18, resnet34, resnet50, resnet101, resnet152"):
        spec.get_arch(name)


def test_bad_version_and_flavour():
    with pytest.raises(ValueError, match="unknown version 3"):
        spec.get_arch(50, 3)
    with pytest.raises(ValueError, match="unknown flavour 'timm'; known: chapter, torchvision"):
        spec.get_arch(50, 1, "timm")


def test_variants_doc_is_current():
    assert (ROOT / "docs" / "variants.md").read_text() == spec.variants_markdown(), \
        "regenerate with: python -m d2lres.spec > docs/variants.md"


# --- the blocks ----------------------------------------------------------------------------

def test_new_blocks(mod, block_output):
    assert block_output(mod, mod.Bottleneck(256, use_1x1conv=True, strides=2), (2, 64, 8, 8)) == (2, 256, 4, 4)
    assert block_output(mod, mod.Bottleneck(64), (2, 64, 8, 8)) == (2, 64, 8, 8)
    assert block_output(mod, mod.PreActResidual(6, use_1x1conv=True, strides=2), (2, 3, 6, 6)) == (2, 6, 3, 3)
    assert block_output(mod, mod.PreActResidual(3), (2, 3, 6, 6)) == (2, 3, 6, 6)
    assert block_output(mod, mod.PreActBottleneck(128, use_1x1conv=True, stride_on_3x3=True, bias=False),
                        (2, 64, 8, 8)) == (2, 128, 8, 8)
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        block_output(mod, mod.Bottleneck(256), (2, 64, 8, 8))


def test_factories(mod):
    for depth in spec.ARCHS:
        assert callable(getattr(mod, f"resnet{depth}"))
    net = mod.resnet34(version=2)
    assert net.arch == spec.Arch(34, 2)
    assert mod.count_parameters(net) == spec.param_counts(arch=spec.Arch(34, 2))["total"]
    with pytest.raises(ValueError, match="known: resnet18"):
        mod.resnet(42)


def test_seeded_init_and_round_trip(mod, tmp_path):
    arch = spec.Arch(50, 2, "torchvision")
    net = mod.resnet(50, 2, flavour="torchvision")
    mod.init_weights(net, seed=4)
    expected = neutral.init_weights(seed=4, arch=arch)
    w = mod.get_weights(net)
    for k, v in expected.items():
        np.testing.assert_array_equal(w[k], v, err_msg=k)
    mod.save_weights(net, tmp_path / "w.npz")
    with pytest.raises(ValueError, match="ResNet-18"):
        mod.load_weights(mod.resnet18(), tmp_path / "w.npz")


# --- torchvision's state_dict --------------------------------------------------------------


def random_state_dict(depth: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in torchvision_state_dict_shapes(depth).items():
        if key.endswith("num_batches_tracked"):
            out[key] = np.array(100, np.int64)
        elif key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif key.endswith("running_mean") or (key.endswith("bias") and not key.startswith("fc")):
            out[key] = rng.normal(0, 0.1, shape).astype(np.float32)
        elif len(shape) == 1:
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            fan = (shape[0] + shape[1]) * int(np.prod(shape[2:]))
            out[key] = rng.uniform(-1, 1, shape).astype(np.float32) * np.float32(np.sqrt(6 / fan))
    return out


@pytest.mark.parametrize("depth", list(spec.ARCHS))
def test_torchvision_keys_map_onto_the_spec(depth):
    shapes = torchvision_state_dict_shapes(depth)
    trainable = sum(int(np.prod(s)) for k, s in shapes.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == PUBLISHED[depth]  # the independent key list is torchvision's
    arch = spec.get_arch(depth, 1, "torchvision")
    keys = neutral.torchvision_keys(arch)
    assert sorted(keys.values()) == sorted(k for k in shapes if not k.endswith("num_batches_tracked"))
    expected = spec.parameters(1000, 3, arch)
    assert all(shapes[tv] == expected[name].shape for name, tv in keys.items())
    assert neutral.torchvision_arch(shapes) == arch


def test_torchvision_state_dict_errors():
    sd = random_state_dict(18)
    del sd["layer3.0.downsample.1.running_var"]
    sd["layer1.0.extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="missing layer3.0.downsample.1.running_var; unexpected layer1.0.extra.weight"):
        neutral.from_torchvision(sd)
    with pytest.raises(ValueError, match="only the torchvision flavour of version 1"):
        neutral.torchvision_keys(spec.Arch(50, 2, "torchvision"))


@pytest.mark.parametrize("depth", [18, 50, pytest.param(152, marks=pytest.mark.slow)])
def test_torchvision_state_dict_loads_in_all_backends(depth, tmp_path):
    """torch: ``load_torchvision_state_dict`` (torch tensors, as torchvision's ``state_dict()``);
    the other backends: the same dict through the neutral weights file. Same outputs everywhere."""
    import torch
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(depth).items()}
    X = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    torch_mod = backends.load("torch")
    net = torch_mod.resnet(depth, flavour="torchvision", num_classes=1000, in_channels=3)
    torch_mod.load_torchvision_state_dict(net, sd)
    assert np.array_equal(net.state_dict()["b2.0.conv1.weight"].numpy(), sd["layer1.0.conv1.weight"].numpy())
    reference = forward(torch_mod, net, X)
    path = neutral.torchvision_to_npz(sd, tmp_path / "tv.npz")
    for name in [b for b in BACKENDS if b != "torch"]:
        mod = backends.load(name)
        other = mod.resnet(depth, flavour="torchvision", num_classes=1000, in_channels=3)
        mod.load_weights(other, path)
        logits = forward(mod, other, X)
        np.testing.assert_allclose(logits, reference, rtol=0, atol=TOLERANCE * max(1.0, np.abs(reference).max()),
                                   err_msg=name)
    back = neutral.to_torchvision(torch_mod.get_weights(net), depth)
    for k in back:
        np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)


# --- the command line and the full check ----------------------------------------------------

#: Train mode needs enough positions per BatchNorm channel: at 32x32 with batch 2, b5 and head.bn
#: see 2 values per channel and the normalisation turns float32 rounding into O(1) differences.
#: 64x64 with batch 4 gives b5 16 values per channel.
def test_full_check_resnet50_v2():
    """Train-mode logits and one SGD step too (``d2lres check --arch resnet50 --version 2``), at 64x64."""
    result = checks.cross_backend_checks(input_shape=(1, 64, 64), step_size=64, batch_size=4, arch=spec.Arch(50, 2))
    assert result["ok"], checks.format_checks(result)
    assert "ResNet-50 v2" in checks.format_checks(result)


#: The slow run's full checks: with test_full_check_resnet50_v2 above (bottleneck, v2, chapter's
#: stem), every pair of block kind (ResNet-18's basic, ResNet-50's bottleneck; ResNet-34, -101 and
#: -152 repeat them), version and stem is checked once.
FULL_CHECK_IDS = ("resnet18-v1-chapter", "resnet18-v2-torchvision", "resnet50-v1-torchvision")


@pytest.mark.slow
@pytest.mark.parametrize("arch", [pytest.param(a, id=i) for a, i in zip(ARCHS, IDS) if i in FULL_CHECK_IDS])
def test_full_check_every_variant(arch):
    """Each backend within the rule's bound of the float64 reference (``checks.bounds``), every pair
    within twice that, in train mode and after one SGD step. (With the fitted tolerances of before,
    ResNet-152 v1 torchvision failed on an AVX2-only CPU: train-mode logits tf-mxnet 3.4e-3 against
    3.04e-3; the derived bounds hold on both instruction sets.) ResNet-18 v1 chapter: test_parity's
    check at the CLI's defaults (1x96x96, batch 4). The others at 64x64, batch 4, the floor above
    (b5 sees 16 values per channel): their stage 5 is 2x2 there, so TensorFlow's matmul convolution
    and JAX's patch convolution run in the bottleneck and v2 blocks too (at 96x96 neither does). At
    32x32, where the loss is large, the step loss's derived bound failed for ResNet-50 v1 torchvision."""
    if arch == spec.get_arch(None):
        result = full_check(arch)
    else:
        result = full_check(arch, input_shape=(config(arch)[1], 64, 64), step_size=64)
    assert result["ok"], checks.format_checks(result)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "d2lres", *args], capture_output=True, text=True)


def test_cli_summary_any_variant():
    out = _cli("summary", "--backend", "torch", "--arch", "resnet50", "--version", "2", "--input", "1x64x64")
    assert out.returncode == 0, out.stderr
    assert "ResNet-50 v2 in torch" in out.stdout and "head.bn" in out.stdout and "(= spec)" in out.stdout


def test_cli_unknown_arch():
    out = _cli("check", "--arch", "resnet42")
    assert out.returncode == 2
    assert "unknown architecture 'resnet42'; known: resnet18, resnet34, resnet50, resnet101, resnet152" in out.stderr
