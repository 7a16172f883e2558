"""The 1.0 edition's MXNet tab on d2lres (tests/test_edition.py has the signatures): a chapter-style
script in the edition's forms, and d2lres's ``Trainer(max_epochs).fit`` against d2l 1.0.3's own
``Trainer.fit`` (``d2l.mxnet`` imports here, after d2lres's numpy shim) on the same model, weights
and batches."""
import contextlib
import importlib
import io
from pathlib import Path

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


class Residual(nn.Block):
    """The reader's block, in the edition's MXNet form."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
        self.bn1, self.bn2 = nn.BatchNorm(), nn.BatchNorm()

    def forward(self, X):
        Y = self.bn2(self.conv2(npx.relu(self.bn1(self.conv1(X)))))
        return npx.relu(Y + (self.conv3(X) if self.conv3 else X))


class ResNeXtBlock(nn.Block):
    """The edition's last block: the 3x3 convolution in groups of ``groups`` channels."""

    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        bot = int(round(num_channels * bot_mul))
        self.conv1 = nn.Conv2D(bot, kernel_size=1)
        self.conv2 = nn.Conv2D(bot, kernel_size=3, padding=1, strides=strides, groups=bot // groups)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm(), nn.BatchNorm(), nn.BatchNorm()
        self.conv4 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
        self.bn4 = nn.BatchNorm() if use_1x1conv else None

    def forward(self, X):
        Y = self.bn3(self.conv3(npx.relu(self.bn2(self.conv2(npx.relu(self.bn1(self.conv1(X))))))))
        return npx.relu(Y + (self.bn4(self.conv4(X)) if self.conv4 else X))


class ResNet(d2l.Classifier):
    def b1(self):
        net = nn.Sequential()
        net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3), nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        return net


@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = nn.Sequential()
    for i in range(num_residuals):
        blk.add(Residual(num_channels, use_1x1conv=True, strides=2) if i == 0 and not first_block
                else Residual(num_channels))
    return blk


@d2l.add_to_class(ResNet)
def __init__(self, arch, lr=0.1, num_classes=10):
    super(ResNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential()
    self.net.add(self.b1())
    for i, b in enumerate(arch):
        self.net.add(self.block(*b, first_block=(i == 0)))
    self.net.add(nn.GlobalAvgPool2D(), nn.Dense(num_classes))
    self.net.initialize(init.Xavier())


class ResNet18(ResNet):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes)


def test_the_chapter_in_the_1_0_form_runs_on_d2lres(real_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blk = Residual(6, use_1x1conv=True, strides=2)
    blk.initialize()
    assert blk(d2l.randn(4, 3, 6, 6)).shape == (4, 6, 3, 3)
    blk = ResNeXtBlock(32, 16, 1)
    blk.initialize()
    assert blk(d2l.randn(4, 32, 96, 96)).shape == (4, 32, 96, 96)
    ResNet18().layer_summary((1, 1, 96, 96))
    model = ResNet18(lr=0.01)
    trainer = d2l.Trainer(max_epochs=1, num_gpus=1)
    data = d2l.FashionMNIST(batch_size=32, resize=(28, 28), limit=128, data_dir=real_data)
    trainer.fit(model, data)
    out = capsys.readouterr().out
    shapes = [line.split("\t")[1].strip() for line in out.splitlines() if "output shape:" in line]
    assert shapes == ["(1, 64, 24, 24)", "(1, 64, 24, 24)", "(1, 128, 12, 12)", "(1, 256, 6, 6)", "(1, 512, 3, 3)",
                      "(1, 512, 1, 1)", "(1, 10)"]
    assert "epoch 1/1: train_loss " in out and ", val_loss " in out and ", val_acc " in out
    board = Path(out.split("the board: ")[1].split()[0])
    assert (tmp_path / board).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(model.board.data) == ["train_loss", "val_loss", "val_acc"]
    assert [x for x, _ in model.board.data["train_loss"]] == [0.125, 0.625]


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
