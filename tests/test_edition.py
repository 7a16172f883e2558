"""The 1.0 edition of the chapter (the one d2l.ai prints) on d2lres: d2l 1.0.3's names with its
signatures (read from the installed ``d2l`` package's source, which does not import here for
PyTorch: it needs torchvision), a chapter-style script in the edition's forms, and d2lres's
``Trainer(max_epochs).fit`` against the loop written as d2l 1.0.3's ``fit_epoch`` on the same
model, weights and batches."""
import contextlib
import io
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

from d2lres import checks
from d2lres.host import backends
from helpers import check_d2l_names, interrupting

pytestmark = pytest.mark.framework

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from d2lres import torch as d2l  # noqa: E402


@pytest.mark.parametrize("framework", ["torch", "mxnet"])
def test_the_names_have_d2l_1_0_3s_signatures(framework):
    mod = backends.load(framework) if framework in backends.available() else pytest.skip(f"no {framework} here")
    compared = check_d2l_names(mod, framework, ("Module", "Classifier", "DataModule", "FashionMNIST", "Trainer",
                                                "HyperParameters", "ProgressBoard"),
                               ("add_to_class", "init_cnn", "cpu", "show_images") if framework == "torch"
                               else ("add_to_class", "cpu", "show_images"))
    assert compared >= 25


def test_trainer_is_d2lress_with_a_network_and_d2ls_with_a_number_of_epochs():
    from d2lres.loop.edition import EditionTrainer
    net = d2l.resnet18(num_classes=10, in_channels=1)
    assert type(d2l.Trainer(net)) is d2l.Trainer
    for made in (d2l.Trainer(3), d2l.Trainer(max_epochs=3, num_gpus=1)):
        assert isinstance(made, EditionTrainer) and made.max_epochs == 3 and made.hparams["max_epochs"] == 3
    with pytest.raises(ValueError, match="gradient_clip_val must be a finite number >= 0"):
        d2l.Trainer(max_epochs=1, gradient_clip_val=-1)
    with pytest.raises(TypeError, match="must be a d2l Module.*train_ch6"):
        d2l.Trainer(1).fit(nn.Linear(2, 2), None)

    class OwnLoss(d2l.Classifier):
        def loss(self, Y_hat, Y):
            return (Y_hat ** 2).mean()
    with pytest.raises(TypeError, match="OwnLoss defines its own loss: derive it from d2l.Classifier"):
        d2l.Trainer(1).fit(OwnLoss(), None)
    assert d2l.Trainer(1, gradient_clip_val=0.5).gradient_clip_val == 0.5  # its step clips (test_gradient_clipping)


# --- the chapter in the 1.0 edition's forms (tests/book/edition_<framework>.py) ---------------------

BOOK = Path(__file__).parent / "book"
FRAMEWORKS = {"pytorch": "torch", "mxnet": "mxnet", "tensorflow": "tf", "jax": "jax"}
#: What the scripts print before training: the two Residual blocks, then the layer summary.
SHAPES = {"pytorch": ["torch.Size([4, 3, 6, 6])", "torch.Size([4, 6, 3, 3])", "torch.Size([1, 64, 24, 24])",
                      "torch.Size([1, 64, 24, 24])", "torch.Size([1, 128, 12, 12])", "torch.Size([1, 256, 6, 6])",
                      "torch.Size([1, 512, 3, 3])", "torch.Size([1, 10])", "torch.Size([4, 32, 96, 96])"],
          "mxnet": ["(4, 3, 6, 6)", "(4, 6, 3, 3)", "(1, 64, 24, 24)", "(1, 64, 24, 24)", "(1, 128, 12, 12)",
                    "(1, 256, 6, 6)", "(1, 512, 3, 3)", "(1, 512, 1, 1)", "(1, 10)", "(4, 32, 96, 96)"],
          "tensorflow": ["(4, 6, 6, 3)", "(4, 3, 3, 6)", "(1, 24, 24, 64)", "(1, 24, 24, 64)", "(1, 12, 12, 128)",
                         "(1, 6, 6, 256)", "(1, 3, 3, 512)", "(1, 10)", "(4, 96, 96, 32)"],
          "jax": ["(4, 6, 6, 3)", "(4, 3, 3, 6)", "(1, 24, 24, 64)", "(1, 24, 24, 64)", "(1, 12, 12, 128)",
                  "(1, 6, 6, 256)", "(1, 3, 3, 512)", "(1, 10)", "(4, 96, 96, 32)"]}


@pytest.mark.parametrize("framework", [f for f, b in FRAMEWORKS.items() if b in backends.available()])
def test_the_chapter_in_the_1_0_form_runs_on_d2lres(framework, real_data, tmp_path, monkeypatch, capsys):
    """The chapter's cells, lowered to one epoch on 256 images (2 batches) at 28x28 (the data set's own)."""
    mod = backends.load(FRAMEWORKS[framework])
    edition, data = type(mod.Trainer(1)), mod.FashionMNIST
    trainers, datas = [], []

    def one_epoch(max_epochs, **options):
        trainers.append(edition(1, **options))
        return trainers[-1]

    def small(batch_size=64, resize=(28, 28)):
        datas.append(data(batch_size, (28, 28), limit=256, data_dir=real_data))
        return datas[-1]
    monkeypatch.setattr(mod, "Trainer", one_epoch)
    monkeypatch.setattr(mod, "FashionMNIST", small)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(BOOK / f"edition_{framework}.py"), run_name="__main__")
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n--- {framework}, 1.0 edition\n{out}")
    shapes = [line.split("\t")[1].strip() if "output shape:" in line else line.strip() for line in out.splitlines()
              if "output shape:" in line or line.startswith(("torch.Size", "("))]
    assert shapes == SHAPES[framework]
    assert re.search(r"^epoch 1/1: train_loss \d\.\d{3}, val_loss \d\.\d{3}, val_acc \d\.\d{3}$", out, re.M), out
    board = Path(out.split("the board: ")[1].split()[0])
    assert (tmp_path / board).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (trainer,) = trainers
    assert list(trainer.model.board.data) == ["train_loss", "val_loss", "val_acc"]
    assert [x for x, _ in trainer.model.board.data["train_loss"]] == [0.0, 0.5]  # a point per half epoch
    assert trainer.history["epochs"][0]["epoch"] == 1
    if framework == "tensorflow":  # BatchNorm trained in training mode; d2l's loss usable (Keras 3 hid it)
        model, (X, y) = trainer.model, next(iter(datas[0].val_dataloader()))
        stem_bn = model.net.layers[0].layers[1]
        assert float(np.abs(stem_bn.moving_mean.numpy()).max()) > 0
        assert 0 < float(model.loss(model(X), y)) < 10 and 0 <= float(model.accuracy(model(X), y)) <= 1


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


Interrupted = interrupting(d2l.FashionMNIST)


def test_an_interrupted_fit_resumes_exactly_from_its_checkpoint(real_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name, stop_at in (("whole", None), ("resumed", 7)):
        data = Interrupted(batch_size=16, limit=64, data_dir=real_data)  # 4 batches per epoch
        data.stop_at = stop_at
        torch.manual_seed(0)
        model = SmallNet(lr=0.1)
        options = {"checkpoint_dir": tmp_path / name, "checkpoint_every": 2}
        with contextlib.redirect_stdout(io.StringIO()):
            if stop_at is not None:
                with pytest.raises(KeyboardInterrupt):  # at epoch 2, step 3: the checkpoint after step 2
                    d2l.Trainer(max_epochs=3, **options).fit(model, data)
                data.stop_at, model = None, SmallNet(lr=0.1)
                d2l.Trainer(max_epochs=3, resume=True, **options).fit(model, data)
            else:
                d2l.Trainer(max_epochs=3, **options).fit(model, data)
        runs[name] = ({k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, model.board.data)
    (weights, board), (ref_weights, ref_board) = runs["resumed"], runs["whole"]
    differ = [k for k in weights if not np.array_equal(weights[k], ref_weights[k])]
    assert differ == [k for k in weights if k.endswith("num_batches_tracked")]  # not a weight: not checkpointed
    assert board == ref_board
    with pytest.raises(ValueError, match="resume=True.*checkpoint_dir"):
        d2l.Trainer(max_epochs=1, resume=True)


def test_a_1_0_classifier_trains_in_the_0_17_train_ch6(real_data, capsys):
    """Mixing the editions: a 1.0 ``Classifier`` is an ``nn.Module``, so ``train_ch6`` trains it."""
    data = d2l.FashionMNIST(batch_size=16, limit=32, data_dir=real_data)
    torch.manual_seed(0)
    history = d2l.train_ch6(SmallNet(), data.train_dataloader(), data.val_dataloader(), 1, 0.1, plot=False,
                            progress=False)
    assert np.isfinite(history["epochs"][0]["train_loss"]) and "training on cpu" in capsys.readouterr().out


def test_d2lres_options_of_the_1_0_trainer_take_effect(real_data, tmp_path, monkeypatch):
    """``precision`` reaches d2lres's step; ``board_path=None`` saves no board."""
    monkeypatch.chdir(tmp_path)
    data = d2l.FashionMNIST(batch_size=16, limit=32, data_dir=real_data)
    trainer = d2l.Trainer(max_epochs=1, precision="bf16", board_path=None)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        trainer.fit(SmallNet(), data)
    assert trainer.step_trainer.precision == "bf16" and np.isfinite(trainer.history["epochs"][0]["train_loss"])
    assert "the board:" not in out.getvalue() and not (tmp_path / "runs").exists()
