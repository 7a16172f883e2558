"""Memory follows the work (issue 26): only the images used are resized, large allocations are
estimated first and refused with the figure; the batch-of-one rule measures the smallest BatchNorm
input at the image size. Framework-free except one tiny torch run at each edge of that rule."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from d2lres import run
from d2lres.data import FashionMNIST
from d2lres.util import memory

pytestmark = pytest.mark.framework


def small_data() -> FashionMNIST:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 50, dtype=np.uint8)
    return FashionMNIST(images, labels, images[:20], labels[:20])


def test_only_the_images_used_are_resized_and_the_rest_is_refused_first(monkeypatch):
    data = small_data()
    X, y = data.split(True, 96, limit=8)
    assert X.shape == (8, 1, 96, 96) and y.shape == (8,)
    np.testing.assert_array_equal(X, data.split(True, 96)[0][:8])
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    with pytest.raises(memory.MemoryNeeded, match=r"50 training images at 96x96 \(float32\) needs about 2 MiB, "
                                                  r"and this machine has 1 MiB available; use fewer images"):
        small_data().split(True, 96, limit=None)


def test_a_batch_too_large_for_memory_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    with pytest.raises(memory.MemoryNeeded, match="training a batch of 32 images of 5000x5000 .* needs about"):
        run.check_batches(64, 32, 5000, None)


@pytest.mark.parametrize("images, batch, side, refused", [
    (1, 1, 32, True),    # b5's BatchNorm sees 1x1 at 32 px: one value per channel
    (1, 1, 33, False),   # 2x2 at 33 px: four values, it trains
    (1, 1, 64, False), (1, 1, 96, False),
    (5, 4, 28, True),    # the last batch: one 28-px image
    (6, 4, 28, False),
])
def test_batch_of_one_rule_measures_the_smallest_batchnorm_input(images, batch, side, refused):
    if refused:
        with pytest.raises(run.RunError, match="a single value per channel"):
            run.check_batches(images, batch, side, None)
    else:
        run.check_batches(images, batch, side, None)


@pytest.mark.parametrize("side, status", [(33, 0), (32, 2)])
def test_one_image_trains_or_is_refused_at_the_edge(real_data, tmp_path, side, status):
    out = subprocess.run([sys.executable, "-m", "d2lres", "train", "--backend", "torch", "--limit", "1",
                          "--batch-size", "1", "--resize", str(side), "--epochs", "1", "--no-progress",
                          "--data-dir", str(real_data), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == status, out.stderr[-2000:]
    if status:
        assert "gives BatchNorm layer b5" in out.stderr and "Traceback" not in out.stderr
