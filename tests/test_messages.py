"""Messages that help, the same in every backend (issue 26): devices that do not exist, device
strings, non-networks and non-shapes. Things are constructed, nothing is trained."""
from __future__ import annotations

import pytest

from d2lres.host import backends, devices

BACKENDS = backends.available()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    mod = backends.load(request.param)
    return request.param, mod, mod.resnet18()


def test_device_rule_without_a_framework():
    assert devices.parse("cpu") == devices.parse("/CPU:0") == ("cpu", 0)
    assert devices.parse("gpu") == devices.parse("cuda:0") == devices.parse("/device:GPU:0") == ("gpu", 0)
    assert devices.parse("/job:worker/replica:0/task:0/device:GPU:3") == ("gpu", 3)
    with pytest.raises(devices.DeviceError, match="not understood"):
        devices.parse("tpu")
    with pytest.raises(devices.DeviceError, match="torch sees 2 GPU.s., gpu:0 to gpu:1"):
        devices.resolve("cuda:7", "torch", 2, lambda kind, i: None)


@pytest.mark.parametrize("device", ["gpu:3", "/GPU:3", "cuda:7", "cpu:1", "tpu"])
def test_a_device_that_does_not_exist_is_refused_in_every_backend(backend, device):
    name, mod, net = backend
    if device[-1] in "37" and devices.describe(mod.try_gpu(), name).startswith("gpu"):
        pytest.skip("this machine has GPUs")
    with pytest.raises(ValueError, match=f"device {device!r} (does not exist|is not understood)"):
        mod.Trainer(net, device=device)


def test_cpu_is_accepted_and_reported_in_one_spelling(backend):
    name, mod, net = backend
    for device in ("cpu", "/CPU:0", "cpu:0"):
        trainer = mod.Trainer(net, device=device)
        assert devices.describe(trainer.device, name).startswith(f"cpu ({name}: ")


def test_non_networks_and_non_shapes_are_refused_alike(backend):
    import numpy as np
    name, mod, net = backend
    for call in (lambda: mod.count_parameters(None), lambda: mod.shape_walk(None, (1, 28, 28))):
        with pytest.raises(ValueError, match=f"needs a network of the {name} backend, e.g. d2lres.{name}.resnet18"):
            call()
    for shape in (("1", "28", "28"), (1, 28.5, 28), (1, 28), "1x28x28"):
        with pytest.raises(ValueError, match=r"an input shape is three integers \(channels, height, width\)"):
            mod.shape_walk(net, shape)
    assert mod.shape_walk(net, (np.int64(1), 28, 28))[-1][1] == (10,)


def test_a_training_step_takes_numpy_batches_in_every_backend(backend):
    import numpy as np
    name, mod, net = backend
    trainer = mod.Trainer(net, device="cpu")
    X = np.random.default_rng(0).random((2, 1, 28, 28), np.float32)
    if name in ("tf", "jax"):  # channels-last backends
        X = X.transpose(0, 2, 3, 1).copy()
    with pytest.raises(ValueError, match=r"integer images \(uint8\) are not accepted"):
        trainer.step((X * 255).astype(np.uint8), np.array([1, 2]), 0.01)
    if name in ("torch", "mxnet"):  # the two that took only their own arrays (TF's and JAX's took numpy ones)
        loss, correct = trainer.step(X, np.array([1, 2]), 0.01)
        assert np.isfinite(loss) and 0 <= correct <= 2


def run_cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "d2lres", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


TINY = ["train", "--backend", "torch", "--limit", "64", "--epochs", "1", "--resize", "28", "--batch-size", "32",
        "--no-progress"]


def test_a_diverging_run_does_not_claim_a_checkpoint(real_data, tmp_path):
    out = run_cli(*TINY, "--lr", "1e30", "--data-dir", real_data, "--out", tmp_path / "run")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "No checkpoint was written before this" in out.stderr and "is kept" not in out.stderr


def test_init_with_a_checkpoint_says_what_it_is(real_data, tmp_path):
    import json

    import numpy as np
    np.savez(tmp_path / "checkpoint.npz", **{"weights.b1.conv.weight": np.zeros(3, np.float32),
                                            "progress": np.array(json.dumps({"epoch": 0}))})
    out = run_cli(*TINY, "--init", tmp_path / "checkpoint.npz", "--data-dir", real_data, "--out", tmp_path / "run")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is a d2lres checkpoint" in out.stderr and "--resume" in out.stderr and "missing" not in out.stderr
