"""``Trainer(..., gradient_clip_val=c)`` clips as d2l does, in every backend: one SGD step from the
same weights with and without clipping moves every weight by the same direction, the clipped one
by ``min(1, c / |g|)`` of the other, where ``|g|`` (the gradients' joint norm) is read from the
unclipped step (``lr |g| = |w - w1|`` without momentum or weight decay)."""
import numpy as np
import pytest

from d2lres import checks
from d2lres.host import backends

pytestmark = pytest.mark.framework


@pytest.mark.parametrize("backend", backends.available())
def test_a_clipped_step_is_the_plain_step_scaled_to_the_norm(backend):
    mod = backends.load(backend)
    rng = np.random.default_rng(0)
    X, y = rng.random((4, 1, 32, 32), dtype=np.float32), rng.integers(0, 10, 4)
    start = checks.test_weights()

    def step(clip: float) -> dict[str, np.ndarray]:
        """How far one step at lr 1 moves each weight (not the BatchNorm statistics)."""
        net = mod.resnet18()
        mod.set_weights(net, start)
        # One step: not worth compiling, but in JAX, whose eager step is slower than its compilation
        trainer = mod.Trainer(net, gradient_clip_val=clip, compile=None if backend == "jax" else False)
        trainer.step(*trainer.convert(X, y), 1.0)
        after = mod.get_weights(net)
        return {k: after[k].astype(np.float64) - start[k] for k in start
                if not k.endswith(("running_mean", "running_var"))}
    plain = step(0.0)
    norm = float(np.sqrt(sum((d ** 2).sum() for d in plain.values())))  # lr 1, no momentum: |w - w1| = |g|
    clipped = step(norm / 2)  # half the gradients' norm: the clipped step is half as long
    worst = max(float(np.abs(clipped[k] - plain[k] / 2).max()) for k in plain)
    assert worst <= 1e-4 * max(float(np.abs(d).max()) for d in plain.values()), worst
    with pytest.raises(ValueError, match="gradient_clip_val must be a finite number >= 0"):
        mod.Trainer(mod.resnet18(), gradient_clip_val=-1)
