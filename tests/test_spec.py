"""The framework-free spec reproduces the chapter's reference numbers (DESIGN.md)."""
import pytest

from d2lres import spec


def test_resnet18_shapes_at_224():
    shapes = [s for _, s, _ in spec.walk((1, 224, 224))]
    assert shapes == [(64, 112, 112), (64, 112, 112), (64, 112, 112), (64, 56, 56), (64, 56, 56),
                      (128, 28, 28), (256, 14, 14), (512, 7, 7), (512, 1, 1), (512,), (10,)]


def test_parameter_counts():
    counts = spec.param_counts()
    assert counts["total"] == (11_178_378, 7_808)
    assert {k: v[0] for k, v in counts.items() if k != "total"} == {
        "b1": 3_328, "b2": 148_224, "b3": 525_952, "b4": 2_100_480, "b5": 8_395_264, "head": 5_130}
    assert spec.param_counts(num_classes=1000, in_channels=3)["total"] == (11_692_520, 7_808)


def test_forward_macs_at_96():
    assert spec.forward_macs((1, 96, 96)) == pytest.approx(0.319e9, rel=2e-3)
    assert spec.training_flops((1, 96, 96)) == pytest.approx(1.9e9, rel=0.01)


def test_residual_cases():
    assert spec.residual_output_shape((3, 6, 6), 3) == (3, 6, 6)
    assert spec.residual_output_shape((3, 6, 6), 6, use_1x1conv=True, strides=2) == (6, 3, 3)
    with pytest.raises(ValueError, match="use_1x1conv=True"):
        spec.residual_output_shape((3, 6, 6), 6)


@pytest.mark.parametrize("shape, message", [((2, 96, 96), "expects 1 input channel"),
                                            ((1, 0, 96), "must be positive"),
                                            ((96, 96), "shape \\(channels, height, width\\)")])
def test_bad_input_is_named(shape, message):
    with pytest.raises(ValueError, match=message):
        spec.walk(shape) if len(shape) != 3 or shape[0] == 1 else spec.check_input(shape, 1)


def test_bad_configuration():
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        spec.resnet18_spec(num_classes=0)
