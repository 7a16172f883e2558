"""Messages that help, the same in every backend (issue 26): devices that do not exist, device
strings, non-networks and non-shapes. Things are constructed, nothing is trained."""
from __future__ import annotations

import pytest

from d2lres import backends, devices

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
