"""Data-parallel training (issue 14): the split of a global batch, and per backend one step on 2
replicas against the single-device step on the same global batch, from the same weights
(``d2lres.parallel.check_step``, in a subprocess set up for 2 CPU replicas, bounded by a timeout).

With synchronized BatchNorm the 2-replica step is the 1-device step within ``d2lres.checks``'
tolerances (loss, weights, running statistics). Without it, it is what
``d2lres.parallel.emulate_unsynchronized`` says (the per-shard single-device steps, averaged)
within the same tolerances, and measurably not the 1-device step."""
import numpy as np
import pytest

from d2lres import parallel
from d2lres.host import backends

TIMEOUT = 420


def test_shards_cover_the_batch_contiguously():
    for n, replicas in [(4, 2), (5, 2), (7, 3), (128, 2), (3, 3)]:
        slices = parallel.shard_slices(n, replicas)
        assert [s.start for s in slices] == [0, *[s.stop for s in slices[:-1]]] and slices[-1].stop == n
        sizes = parallel.shard_sizes(n, replicas)
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        assert sizes == [len(a) for a in np.array_split(np.arange(n), replicas)]


def test_loss_weights_give_the_global_mean():
    """DDP averages per-replica gradients; with these factors on the per-replica mean losses the
    average is the global batch's mean loss, even for uneven shards."""
    rng = np.random.default_rng(0)
    for n, replicas in [(4, 2), (5, 2), (7, 3)]:
        losses = rng.random(n)
        parts = [losses[s].mean() for s in parallel.shard_slices(n, replicas)]
        averaged = np.mean([w * p for w, p in zip(parallel.loss_weights(n, replicas), parts)])
        assert averaged == pytest.approx(losses.mean(), rel=1e-12)


def test_split_and_refusals():
    X, y = np.arange(10).reshape(5, 2), np.arange(5)
    shards = parallel.split((X, y), 2)
    assert [s[1].tolist() for s in shards] == [[0, 1, 2], [3, 4]]
    with pytest.raises(parallel.ParallelError, match="cannot be split over 3 replicas"):
        parallel.shard_sizes(2, 3)
    with pytest.raises(parallel.ParallelError):
        parallel.shard_sizes(4, 0)
    assert parallel.bn_batch_size(5, 2, sync_bn=True) == 5 and parallel.bn_batch_size(5, 2, False, 1) == 2


def test_emulation_of_unsynchronized_steps_is_linear_in_the_shards():
    """A plain SGD step of a linear model: averaging the per-shard steps is the step on the mean
    of the per-shard gradients (the emulation the unsynchronized checks compare with)."""
    rng = np.random.default_rng(1)
    X, y = rng.random((6, 3)).astype(np.float32), rng.random(6).astype(np.float32)

    def step(w, Xs, ys, lr):
        r = Xs @ w["w"] - ys
        return {"step_loss": float((r ** 2).mean()), "after_step": {"w": w["w"] - lr * 2 * Xs.T @ r / len(ys)}}
    w = {"w": rng.random(3).astype(np.float32)}
    out = parallel.emulate_unsynchronized(step, w, X, y, 0.1, 2)
    parts = [step(w, X[s], y[s], 0.1) for s in parallel.shard_slices(6, 2)]
    np.testing.assert_allclose(out["after_step"]["w"], (parts[0]["after_step"]["w"] + parts[1]["after_step"]["w"]) / 2,
                               rtol=1e-6)
    assert out["step_loss"] == pytest.approx(step(w, X, y, 0.1)["step_loss"], rel=1e-6)  # MSE of even shards


def test_environment_for_jax_replicas():
    env = parallel.environment("jax", 2, {"XLA_FLAGS": "--xla_cpu_foo --xla_force_host_platform_device_count=8"})
    assert env["XLA_FLAGS"] == "--xla_cpu_foo --xla_force_host_platform_device_count=2"
    assert "XLA_FLAGS" not in parallel.environment("torch", 2, {})


def _need(backend):
    if backend not in backends.available():
        pytest.skip(f"{backend} is not available in this set")


_CHECKS: dict = {}


def _check(backend: str, sync_bn: bool) -> dict:
    """The backend's checks, once a session: both BatchNorm modes in one process
    (``parallel.run_checks``; MXNet's unsynchronized only); the agreement test reuses them."""
    if (backend, sync_bn) not in _CHECKS:
        modes = (False,) if backend == "mxnet" else (True, False)
        for mode, result in zip(modes, parallel.run_checks(backend, 2, modes, timeout=2 * TIMEOUT)):
            _CHECKS[backend, mode] = result
    return _CHECKS[backend, sync_bn]


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.parametrize("backend", ["torch", "jax", "tf", "mxnet"])
def test_two_replicas_with_synchronized_batchnorm_equal_one_device(backend):
    _need(backend)
    if backend == "mxnet":  # the limitation, as it is: contrib.SyncBatchNorm hangs over cpu(0), cpu(1)
        with pytest.raises(RuntimeError, match="synchronized BatchNorm over CPU contexts is not available"):
            parallel.run_check(backend, 2, sync_bn=True, timeout=TIMEOUT)
        return
    result = _check(backend, True)
    print(parallel.format_results([result]))
    assert result["ok"], result["differences"]


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.parametrize("backend", ["torch", "jax", "tf", "mxnet"])
def test_two_replicas_without_synchronized_batchnorm_are_the_per_shard_steps(backend):
    """Unsynchronized: equal to the emulation (per-shard single-device steps, averaged) within the
    tolerances, and far outside them from the 1-device step (the shards' own BatchNorm statistics
    change the loss, the gradients and the running statistics)."""
    _need(backend)
    result = _check(backend, False)
    print(parallel.format_results([result]))
    assert result["ok"], result["differences"]
    tol = result["tolerances"]
    assert all(result["unsync_vs_single"][q] > tol[q] for q in parallel.STEP_QUANTITIES), \
        result["unsync_vs_single"]


@pytest.mark.slow
@pytest.mark.serial
def test_the_data_parallel_steps_of_every_backend_agree():
    """Not only each engine against its own single-device step: the data-parallel steps of every
    pair of backends against each other, in each BatchNorm mode (MXNet: per replica only)."""
    results = [_check(b, sync) for sync in (True, False) for b in backends.available()
               if not (b == "mxnet" and sync)]
    rows = parallel.agreement(results)
    print(parallel.format_agreement(rows))
    n, synced = len(backends.available()), len([b for b in backends.available() if b != "mxnet"])
    assert len(rows) == synced * (synced - 1) // 2 + n * (n - 1) // 2
    assert all(r["ok"] for r in rows), parallel.format_agreement(rows)


@pytest.mark.skipif("mxnet" not in backends.available(), reason="MXNet is not in this set")
def test_devices_the_process_was_not_set_up_for_are_refused(real_data, tmp_path):
    """An accepted --devices takes effect or is refused: a process set up for one replica (no
    launcher) does not train on one device when asked for two."""
    from d2lres import run
    from d2lres.core.presets import preset
    config = preset("quick").with_overrides(resize=28, batch_size=4)
    with pytest.raises(run.RunError, match=r"--devices 2: this process was set up for 1 replica"):
        run.train("mxnet", config, tmp_path, data_dir=real_data, limit=8, devices=2, sync_bn=False, progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_no_sync_bn_on_one_device_is_refused(tmp_path):
    """An accepted option takes effect or is refused: per-device BatchNorm means nothing on one device."""
    from d2lres import cli
    from d2lres.core.presets import preset
    from d2lres.run import RunError, train
    with pytest.raises(RunError, match="--no-sync-bn is for data-parallel runs"):
        train("torch", preset("quick"), tmp_path, sync_bn=False)
    assert not any(tmp_path.iterdir())
    assert cli.main(["train", "--backend", "torch", "--no-sync-bn", "--out", str(tmp_path / "run")]) == 2
