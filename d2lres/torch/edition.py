"""d2l 1.0's names for PyTorch, the edition d2l.ai prints (``from d2lres import torch as d2l``):
``Module``, ``Classifier``, ``DataModule``, ``FashionMNIST``, ``init_cnn``, d2l's tensor aliases,
and the ``Trainer(max_epochs, ...)`` front end of d2lres's loop (``d2lres.loop.edition``). They
follow d2l 1.0.3's signatures and behaviour; docs/book-code.md says where d2lres differs."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserTypeError, UserValueError
from ..loop import edition
from ..loop.edition import EditionTrainer, HyperParameters, ProgressBoard, add_to_class, show_images  # noqa: F401
from .train import Trainer as StepTrainer
from .train import to_tensors, try_gpu

#: What ``d2lres.torch`` exports from here (its ``Trainer`` is reached through the contract's
#: ``Trainer``, which builds this one when called as d2l 1.0's ``Trainer(max_epochs, ...)``).
NAMES = ("HyperParameters", "ProgressBoard", "add_to_class", "Module", "Classifier", "DataModule", "FashionMNIST",
         "init_cnn", "cpu", "show_images", "nn_Module", "ones_like", "ones", "zeros_like", "zeros", "tensor",
         "arange", "meshgrid", "sin", "sinh", "cos", "cosh", "tanh", "linspace", "exp", "log", "normal", "rand",
         "randn", "matmul", "int32", "int64", "float32", "concat", "stack", "abs", "eye", "sigmoid", "batch_matmul",
         "numpy", "size", "reshape", "to", "reduce_sum", "argmax", "astype", "transpose", "reduce_mean",
         "expand_dims", "swapaxes", "repeat")

# d2l 1.0's tensor aliases for PyTorch, one line each (d2l/torch.py).
nn_Module = nn.Module
ones_like = torch.ones_like
ones = torch.ones
zeros_like = torch.zeros_like
zeros = torch.zeros
tensor = torch.tensor
arange = torch.arange
meshgrid = torch.meshgrid
sin = torch.sin
sinh = torch.sinh
cos = torch.cos
cosh = torch.cosh
tanh = torch.tanh
linspace = torch.linspace
exp = torch.exp
log = torch.log
normal = torch.normal
rand = torch.rand
randn = torch.randn
matmul = torch.matmul
int32 = torch.int32
int64 = torch.int64
float32 = torch.float32
concat = torch.cat
stack = torch.stack
abs = torch.abs
eye = torch.eye
sigmoid = torch.sigmoid
batch_matmul = torch.bmm
numpy = lambda x, *args, **kwargs: x.detach().numpy(*args, **kwargs)  # noqa: E731
size = lambda x, *args, **kwargs: x.numel(*args, **kwargs)  # noqa: E731
reshape = lambda x, *args, **kwargs: x.reshape(*args, **kwargs)  # noqa: E731
to = lambda x, *args, **kwargs: x.to(*args, **kwargs)  # noqa: E731
reduce_sum = lambda x, *args, **kwargs: x.sum(*args, **kwargs)  # noqa: E731
argmax = lambda x, *args, **kwargs: x.argmax(*args, **kwargs)  # noqa: E731
astype = lambda x, *args, **kwargs: x.type(*args, **kwargs)  # noqa: E731
transpose = lambda x, *args, **kwargs: x.t(*args, **kwargs)  # noqa: E731
reduce_mean = lambda x, *args, **kwargs: x.mean(*args, **kwargs)  # noqa: E731
expand_dims = lambda x, *args, **kwargs: x.unsqueeze(*args, **kwargs)  # noqa: E731
swapaxes = lambda x, *args, **kwargs: x.swapaxes(*args, **kwargs)  # noqa: E731
repeat = lambda x, *args, **kwargs: x.repeat(*args, **kwargs)  # noqa: E731


def cpu():
    """The CPU device."""
    return torch.device("cpu")


def init_cnn(module):
    """d2l's initialisation of a CNN: Xavier uniform on the weight of every ``nn.Linear`` and
    ``nn.Conv2d`` (exact types: lazy layers are built by a first batch, ``Module.apply_init``)."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


class Module(edition.ModuleBase, nn.Module):
    """d2l 1.0's base of models: ``self.net`` (or ``forward``), its loss, its SGD, its board."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def apply_init(self, inputs, init=None):
        """Run ``inputs`` through (building lazy layers), then ``self.net.apply(init)``."""
        self.forward(*inputs)
        if init is not None:
            self.net.apply(init)


class Classifier(edition.ClassifierBase, Module):
    """d2l 1.0's classifier: cross-entropy, accuracy, the validation points, ``layer_summary``."""

    def accuracy(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        compare = (Y_hat.argmax(axis=1).type(Y.dtype) == Y.reshape(-1)).type(torch.float32)
        return compare.mean() if averaged else compare

    def loss(self, Y_hat, Y, averaged=True):
        return F.cross_entropy(Y_hat.reshape((-1, Y_hat.shape[-1])), Y.reshape((-1,)),
                               reduction="mean" if averaged else "none")

    def layer_summary(self, X_shape):
        """Each layer of ``self.net`` and its output's shape, for a random batch of ``X_shape``."""
        X = torch.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)


class DataModule(edition.DataModule):
    """d2l 1.0's base of data."""

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        """A ``DataLoader`` over ``tensors[indices]`` in batches of ``self.batch_size``, shuffled for training."""
        dataset = torch.utils.data.TensorDataset(*(a[indices] for a in tensors))
        return torch.utils.data.DataLoader(dataset, self.batch_size, shuffle=train)


class FashionMNIST(edition.FashionMNIST, DataModule):
    """d2l 1.0's Fashion-MNIST (``d2lres.loop.edition.FashionMNIST``): ``X`` ``(batch, 1, side, side)`` tensors."""

    convert = staticmethod(to_tensors)


class Trainer(EditionTrainer):
    """d2l 1.0's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)`` on d2lres's loop:
    ``num_gpus`` > 0 trains on the first GPU there is (the CPU where there is none, as d2l)."""

    classifier = Classifier

    def clip_gradients(self, grad_clip_val, model):
        """d2l's clipping: every gradient of ``model`` scaled so that their joint norm is at most ``grad_clip_val``."""
        params = [p for p in model.parameters() if p.requires_grad]
        norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
        if norm > grad_clip_val:
            for param in params:
                param.grad[:] *= grad_clip_val / norm

    def _step_trainer(self, model, optimizer):
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
            raise UserValueError("Trainer.fit: the model's lazy layers have no weights yet: build them first, as the "
                                 "chapter does, with model.apply_init([next(iter(data.get_dataloader(True)))[0]], "
                                 "d2l.init_cnn)")
        if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
            raise UserTypeError(f"Trainer.fit: d2lres trains with SGD (torch.optim.SGD with one parameter group), "
                                f"and configure_optimizers gave a {type(optimizer).__name__}")
        group = optimizer.param_groups[0]
        if group.get("nesterov") or group.get("dampening"):
            raise UserValueError("Trainer.fit: d2lres's SGD has no Nesterov momentum or dampening")
        device = try_gpu() if self.num_gpus else torch.device("cpu")
        trainer = StepTrainer(model, group["momentum"], group["weight_decay"], device=device, precision=self.precision,
                              gradient_clip_val=self.gradient_clip_val)
        return trainer, group["lr"]
