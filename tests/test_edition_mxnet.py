"""The 1.0 edition's MXNet tab on d2lres (tests/test_edition.py has the signatures and the chapter's
script): d2lres's ``Trainer(max_epochs).fit`` against d2l 1.0.3's own ``Trainer.fit`` (``d2l.mxnet``
imports here, after d2lres's numpy shim) on the same model, weights and batches."""
import contextlib
import importlib
import io

import numpy as onp
import pytest

from d2lres import checks
from d2lres.host import backends

pytestmark = pytest.mark.framework

if "mxnet" not in backends.available():
    pytest.skip("d2lres.mxnet is not available on this set", allow_module_level=True)
d2l = backends.load("mxnet")  # the numpy shim before MXNet itself
from mxnet import init, npx  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

npx.set_np()


def _small_net(classifier):
    """A small Classifier of ``classifier`` (d2l's or d2lres's) with BatchNorm and a stride."""
    class SmallNet(classifier):
        def __init__(self, lr=0.1, num_classes=10):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential()
            self.net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
                         nn.Conv2D(16, 3, strides=2, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                         nn.GlobalAvgPool2D(), nn.Dense(num_classes))
            self.net.initialize(init.Xavier())
    return SmallNet(lr=0.1)


def test_fit_equals_d2l_1_0_3s_trainer_fit(real_data, tmp_path, monkeypatch, capsys):
    ref = importlib.import_module("d2l.mxnet")
    monkeypatch.chdir(tmp_path)
    data = d2l.FashionMNIST(batch_size=16, limit=64, data_dir=real_data)
    X = next(iter(data.get_dataloader(True)))[0]
    ours, book = _small_net(d2l.Classifier), _small_net(ref.Classifier)
    ours(X), book(X)  # Gluon's shapes
    for mine, theirs in zip(ours.collect_params().values(), book.collect_params().values()):
        theirs.set_data(mine.data())
    book.board.display = False  # d2l's figure outside a notebook is only its repr
    runs = {}
    for name, trainer, model in (("d2lres", d2l.Trainer(max_epochs=2), ours), ("d2l", ref.Trainer(max_epochs=2), book)):
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(model, data)
        runs[name] = ([p.data().asnumpy() for p in model.collect_params().values()], model.board.data)
    (weights, board), (ref_weights, ref_board) = runs["d2lres"], runs["d2l"]
    distance = max(float(onp.abs(a.astype(onp.float64) - b).max()) for a, b in zip(weights, ref_weights))
    with capsys.disabled():
        print(f"\nmxnet Trainer.fit vs d2l 1.0.3's, weights after 2 epochs: max distance {distance:.2e}")
    assert distance <= checks.TOLERANCES["step_weights"]
    assert list(board) == list(ref_board) == ["train_loss", "val_loss", "val_acc"]
    for key in board:
        (xs, ys), (ref_xs, ref_ys) = zip(*board[key]), zip(*[(p.x, p.y) for p in ref_board[key]])
        assert xs == ref_xs, key
        onp.testing.assert_allclose(ys, onp.asarray(ref_ys, dtype=float), rtol=0, atol=1e-4, err_msg=key)
