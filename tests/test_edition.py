"""The 1.0 edition of the chapter (the one d2l.ai prints) on d2lres: d2l 1.0.3's names with its
signatures (read from the installed ``d2l`` package's source, which does not import here for
PyTorch: it needs torchvision), a chapter-style script in the edition's forms, and d2lres's
``Trainer(max_epochs).fit`` against the loop written as d2l 1.0.3's ``fit_epoch`` on the same
model, weights and batches."""
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from conftest import check_d2l_names
from d2lres import checks

pytestmark = pytest.mark.framework

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from d2lres import torch as d2l  # noqa: E402


def test_the_torch_names_have_d2l_1_0_3s_signatures():
    compared = check_d2l_names(d2l, "torch", ("Module", "Classifier", "DataModule", "FashionMNIST", "Trainer",
                                              "HyperParameters", "ProgressBoard"),
                               ("add_to_class", "init_cnn", "cpu", "show_images"))
    assert compared >= 25


def test_trainer_is_d2lress_with_a_network_and_d2ls_with_a_number_of_epochs():
    from d2lres.loop.edition import EditionTrainer
    net = d2l.resnet18(num_classes=10, in_channels=1)
    assert type(d2l.Trainer(net)) is d2l.Trainer
    for made in (d2l.Trainer(3), d2l.Trainer(max_epochs=3, num_gpus=1)):
        assert isinstance(made, EditionTrainer) and made.max_epochs == 3 and made.hparams["max_epochs"] == 3
    with pytest.raises(ValueError, match="does not clip gradients yet"):
        d2l.Trainer(max_epochs=1, gradient_clip_val=1)
    with pytest.raises(TypeError, match="must be a d2l Module.*train_ch6"):
        d2l.Trainer(1).fit(nn.Linear(2, 2), None)


# --- a chapter in the 1.0 edition's forms, written by the team -----------------------------------

class Residual(nn.Module):
    """The reader's block, in the edition's form (lazy layers)."""

    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1, self.bn2 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()

    def forward(self, X):
        Y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(X)))))
        return F.relu(Y + (self.conv3(X) if self.conv3 else X))


class ResNeXtBlock(nn.Module):
    """The edition's last block: the 3x3 convolution in groups of ``groups`` channels."""

    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1):
        super().__init__()
        bot = int(round(num_channels * bot_mul))
        self.conv1 = nn.LazyConv2d(bot, kernel_size=1)
        self.conv2 = nn.LazyConv2d(bot, kernel_size=3, stride=strides, padding=1, groups=bot // groups)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1)
        self.bn1, self.bn2, self.bn3 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()
        self.conv4 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn4 = nn.LazyBatchNorm2d() if use_1x1conv else None

    def forward(self, X):
        Y = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(X))))))
        Y = self.bn3(self.conv3(Y))
        return F.relu(Y + (self.bn4(self.conv4(X)) if self.conv4 else X))


class ResNet(d2l.Classifier):
    def b1(self):
        return nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.LazyBatchNorm2d(), nn.ReLU(),
                             nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    return nn.Sequential(*[Residual(num_channels, use_1x1conv=True, strides=2) if i == 0 and not first_block
                           else Residual(num_channels) for i in range(num_residuals)])


@d2l.add_to_class(ResNet)
def __init__(self, arch, lr=0.1, num_classes=10):
    super(ResNet, self).__init__()
    self.save_hyperparameters()
    self.net = nn.Sequential(self.b1())
    for i, b in enumerate(arch):
        self.net.add_module(f"b{i + 2}", self.block(*b, first_block=(i == 0)))
    self.net.add_module("last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)))
    self.net.apply(d2l.init_cnn)


class ResNet18(ResNet):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes)


def test_the_chapter_in_the_1_0_form_runs_on_d2lres(real_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ResNet18().layer_summary((1, 1, 96, 96))
    blk = ResNeXtBlock(32, 16, 1)
    X = torch.randn(4, 32, 96, 96)
    assert blk(X).shape == (4, 32, 96, 96) and blk.conv2.groups == 2
    torch.manual_seed(0)
    model = ResNet18(lr=0.01)
    trainer = d2l.Trainer(max_epochs=1, num_gpus=1)
    data = d2l.FashionMNIST(batch_size=32, resize=(28, 28), limit=128, data_dir=real_data)
    model.apply_init([next(iter(data.get_dataloader(True)))[0]], d2l.init_cnn)
    trainer.fit(model, data)
    out = capsys.readouterr().out
    shapes = [line.split("\t")[1].strip() for line in out.splitlines() if "output shape:" in line]
    assert shapes == ["torch.Size([1, 64, 24, 24])", "torch.Size([1, 64, 24, 24])", "torch.Size([1, 128, 12, 12])",
                      "torch.Size([1, 256, 6, 6])", "torch.Size([1, 512, 3, 3])", "torch.Size([1, 10])"]
    assert "epoch 1/1: train_loss " in out and ", val_loss " in out and ", val_acc " in out
    board = Path(out.split("the board: ")[1].split()[0])
    assert (tmp_path / board).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(model.board.data) == ["train_loss", "val_loss", "val_acc"]
    assert [x for x, _ in model.board.data["train_loss"]] == [0.125, 0.625]  # steps 0, 1 and 2, 3 at step / 4
    stem_bn = model.net[0][1]  # trained in training mode: the steps moved its running statistics
    assert stem_bn.num_batches_tracked.item() == 4 + 1 and float(stem_bn.running_mean.abs().max()) > 0


# --- d2lres's fit against the loop written as d2l 1.0.3's fit_epoch ---------------------------

class SmallNet(d2l.Classifier):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(16, num_classes))


class BookTrainer:
    """d2l 1.0.3's ``Trainer.fit`` and ``fit_epoch`` for PyTorch, as the book writes them."""

    def __init__(self, max_epochs):
        self.max_epochs = max_epochs

    def fit(self, model, data):
        self.train_dataloader, self.val_dataloader = data.train_dataloader(), data.val_dataloader()
        self.num_train_batches, self.num_val_batches = len(self.train_dataloader), len(self.val_dataloader)
        model.trainer, model.board.xlim, self.model = self, [0, self.max_epochs], model
        self.optim = model.configure_optimizers()
        self.epoch = self.train_batch_idx = self.val_batch_idx = 0
        for self.epoch in range(self.max_epochs):  # noqa: B020 (the book writes it so)
            self.fit_epoch()

    def fit_epoch(self):
        self.model.train()
        for batch in self.train_dataloader:
            loss = self.model.training_step(batch)
            self.optim.zero_grad()
            with torch.no_grad():
                loss.backward()
                self.optim.step()
            self.train_batch_idx += 1
        self.model.eval()
        for batch in self.val_dataloader:
            with torch.no_grad():
                self.model.validation_step(batch)
            self.val_batch_idx += 1


def test_fit_equals_the_loop_written_as_d2ls_fit_epoch(real_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = d2l.FashionMNIST(batch_size=16, limit=64, data_dir=real_data)
    runs = {}
    for name, trainer in (("d2lres", d2l.Trainer(max_epochs=2)), ("book", BookTrainer(2))):
        torch.manual_seed(0)
        model = SmallNet(lr=0.1)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(model, data)
        runs[name] = ({k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, model.board.data)
    (weights, board), (ref_weights, ref_board) = runs["d2lres"], runs["book"]
    distance = max(float(np.abs(weights[k].astype(np.float64) - ref_weights[k]).max()) for k in weights)
    with capsys.disabled():
        print(f"\ntorch Trainer.fit vs d2l's fit_epoch, weights after 2 epochs: max distance {distance:.2e}")
    assert distance <= checks.TOLERANCES["step_weights"]
    assert list(board) == list(ref_board) == ["train_loss", "val_loss", "val_acc"]
    for key in board:
        (xs, ys), (ref_xs, ref_ys) = zip(*board[key]), zip(*ref_board[key])
        assert xs == ref_xs, key
        np.testing.assert_allclose(ys, ref_ys, rtol=0, atol=1e-4, err_msg=key)
