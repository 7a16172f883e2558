"""``train_ch6`` fed the chapter's way, from each framework's own data loader: the same data in
the same order gives the same training as d2lres's own batches."""
import numpy as np
import pytest

from d2lres import data, training
from d2lres.host import backends
from test_training import toy_data

pytestmark = pytest.mark.framework


def framework_loader(backend, X, y, batch_size):
    """The framework's ordinary loader over NCHW ``X`` (NHWC for the channels-last backends)."""
    if backend == "torch":
        import torch
        dataset = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if backend == "tf":
        import tensorflow as tf
        return tf.data.Dataset.from_tensor_slices((X.transpose(0, 2, 3, 1), y.astype(np.int32))).batch(batch_size)
    if backend == "mxnet":
        from mxnet import gluon
        return gluon.data.DataLoader(gluon.data.ArrayDataset(X, y.astype(np.int32)), batch_size=batch_size,
                                     shuffle=False)
    if backend == "jax":  # JAX has no loader of its own; the book iterates numpy batches
        Xh = X.transpose(0, 2, 3, 1)
        return [(Xh[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    raise AssertionError(f"no loader for {backend}")


@pytest.mark.parametrize("backend", backends.available())
def test_train_ch6_takes_the_frameworks_loader(backend):
    mod = backends.load(backend)
    X, y = toy_data(n=48, size=32)
    results = {}
    for kind in ("framework", "d2lres"):
        net = mod.resnet18()
        mod.init_weights(net, 0)
        if kind == "framework":
            train_iter = test_iter = framework_loader(backend, X, y, 16)
        else:
            convert = mod.Trainer(mod.resnet18()).convert
            train_iter = test_iter = data.ArrayBatches(X, y, 16, shuffle=False, convert=convert)
        history = mod.train_ch6(net, train_iter, test_iter, 1, 0.01, mod.try_gpu(), progress=False, plot=False,
                                verbose=False)
        results[kind] = (history, mod.get_weights(net))
    (h_fw, w_fw), (h_own, w_own) = results["framework"], results["d2lres"]
    assert h_fw["epochs"][0]["test_acc"] == pytest.approx(h_own["epochs"][0]["test_acc"])
    assert h_fw["first_step_loss"] == pytest.approx(h_own["first_step_loss"], abs=1e-5)
    for name in w_own:
        np.testing.assert_allclose(w_fw[name], w_own[name], atol=1e-5, err_msg=name)


def test_a_loader_without_length_is_refused_clearly():
    with pytest.raises(ValueError, match="number of batches"):
        training.num_batches(iter([]))
