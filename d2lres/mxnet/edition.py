"""d2l 1.0's names for MXNet, the edition d2l.ai prints (``from d2lres import mxnet as d2l``):
``Module``, ``Classifier``, ``DataModule``, ``FashionMNIST``, d2l's tensor aliases, and the
``Trainer(max_epochs, ...)`` front end of d2lres's loop (``d2lres.loop.edition``). They follow
d2l 1.0.3's signatures and behaviour; docs/book-code.md says where d2lres differs."""
from __future__ import annotations

import math

import mxnet as mx
from mxnet import autograd, gluon, np, npx
from mxnet.gluon import nn

from ..errors import UserTypeError
from ..loop import edition
from ..loop.edition import EditionTrainer, HyperParameters, ProgressBoard, add_to_class, show_images  # noqa: F401
from .train import Trainer as StepTrainer
from .train import to_arrays, try_gpu

#: What ``d2lres.mxnet`` exports from here (its ``Trainer`` is reached through the contract's
#: ``Trainer``, which builds this one when called as d2l 1.0's ``Trainer(max_epochs, ...)``).
NAMES = ("HyperParameters", "ProgressBoard", "add_to_class", "Module", "Classifier", "DataModule", "FashionMNIST",
         "cpu", "show_images", "size", "transpose", "nn_Module", "sigmoid", "batch_matmul", "ones_like", "ones",
         "zeros_like", "zeros", "arange", "meshgrid", "sin", "sinh", "cos", "cosh", "tanh", "linspace", "exp", "log",
         "tensor", "normal", "randn", "expand_dims", "rand", "matmul", "int32", "int64", "float32", "concat", "stack",
         "abs", "eye", "numpy", "reshape", "to", "reduce_sum", "argmax", "astype", "reduce_mean", "swapaxes",
         "repeat")

# d2l 1.0's tensor aliases for MXNet, one line each (d2l/mxnet.py).
size = lambda a: a.size  # noqa: E731
transpose = lambda a: a.T  # noqa: E731
nn_Module = nn.Block
sigmoid = npx.sigmoid
batch_matmul = npx.batch_dot
ones_like = np.ones_like
ones = np.ones
zeros_like = np.zeros_like
zeros = np.zeros
arange = np.arange
meshgrid = np.meshgrid
sin = np.sin
sinh = np.sinh
cos = np.cos
cosh = np.cosh
tanh = np.tanh
linspace = np.linspace
exp = np.exp
log = np.log
tensor = np.array
normal = np.random.normal
randn = np.random.randn
expand_dims = np.expand_dims
rand = np.random.rand
matmul = np.dot
int32 = np.int32
int64 = np.int64
float32 = np.float32
concat = np.concatenate
stack = np.stack
abs = np.abs
eye = np.eye
numpy = lambda x, *args, **kwargs: x.asnumpy(*args, **kwargs)  # noqa: E731
reshape = lambda x, *args, **kwargs: x.reshape(*args, **kwargs)  # noqa: E731
to = lambda x, *args, **kwargs: x.as_in_context(*args, **kwargs)  # noqa: E731
reduce_sum = lambda x, *args, **kwargs: x.sum(*args, **kwargs)  # noqa: E731
argmax = lambda x, *args, **kwargs: x.argmax(*args, **kwargs)  # noqa: E731
astype = lambda x, *args, **kwargs: x.astype(*args, **kwargs)  # noqa: E731
reduce_mean = lambda x, *args, **kwargs: x.mean(*args, **kwargs)  # noqa: E731
swapaxes = lambda x, *args, **kwargs: x.swapaxes(*args, **kwargs)  # noqa: E731
repeat = lambda x, *args, **kwargs: x.repeat(*args, **kwargs)  # noqa: E731


def cpu():
    """The CPU context."""
    return npx.cpu()


class Module(edition.ModuleBase, nn.Block):
    """d2l 1.0's base of models: ``self.net`` (or :meth:`forward`), its loss, its optimizer, its board."""

    def configure_optimizers(self):
        params = self.parameters()
        if isinstance(params, list):
            raise UserTypeError("configure_optimizers: d2lres trains Gluon parameters (a model built from "
                                "Gluon layers), not a list of arrays")
        return gluon.Trainer(params, "sgd", {"learning_rate": self.lr})

    def get_scratch_params(self):
        """The ``mxnet.np`` arrays among the attributes (and those of sub-modules)."""
        params = []
        for attr in dir(self):
            a = getattr(self, attr)
            if isinstance(a, np.ndarray):
                params.append(a)
            if isinstance(a, Module):
                params.extend(a.get_scratch_params())
        return params

    def parameters(self):
        params = self.collect_params()
        return params if isinstance(params, gluon.parameter.ParameterDict) and len(
            params.keys()) else self.get_scratch_params()

    def set_scratch_params_device(self, device):
        """The arrays of :meth:`get_scratch_params` moved to ``device``, with gradients."""
        for attr in dir(self):
            a = getattr(self, attr)
            if isinstance(a, np.ndarray):
                with autograd.record():
                    setattr(self, attr, a.as_in_ctx(device))
                getattr(self, attr).attach_grad()
            if isinstance(a, Module):
                a.set_scratch_params_device(device)
            if isinstance(a, list):
                for elem in a:
                    elem.set_scratch_params_device(device)


class Classifier(edition.ClassifierBase, Module):
    """d2l 1.0's classifier: cross-entropy, accuracy, the validation points, ``layer_summary``."""

    def accuracy(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        compare = (Y_hat.argmax(axis=1).astype(Y.dtype) == Y.reshape(-1)).astype(np.float32)
        return compare.mean() if averaged else compare

    def loss(self, Y_hat, Y, averaged=True):
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(Y_hat.reshape((-1, Y_hat.shape[-1])), Y.reshape((-1,)))
        return loss.mean() if averaged else loss

    def layer_summary(self, X_shape):
        """Each layer of ``self.net`` and its output's shape, for a random batch of ``X_shape``."""
        X = np.random.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)


class DataModule(edition.DataModule):
    """d2l 1.0's base of data."""

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        """A Gluon ``DataLoader`` over ``tensors[indices]`` in batches of ``self.batch_size``, shuffled for training."""
        dataset = gluon.data.ArrayDataset(*(a[indices] for a in tensors))
        return gluon.data.DataLoader(dataset, self.batch_size, shuffle=train)


class FashionMNIST(edition.FashionMNIST, DataModule):
    """d2l 1.0's Fashion-MNIST (``d2lres.loop.edition.FashionMNIST``): ``X`` ``(batch, 1, side, side)`` arrays."""

    convert = staticmethod(to_arrays)


class Trainer(EditionTrainer):
    """d2l 1.0's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)`` on d2lres's loop:
    ``num_gpus`` > 0 trains on the first GPU there is (the CPU where there is none, as d2l)."""

    classifier = Classifier

    def clip_gradients(self, grad_clip_val, model):
        """d2l's clipping: every gradient of ``model`` scaled so that their joint norm is at most ``grad_clip_val``."""
        params = model.parameters()
        if not isinstance(params, list):
            params = [p.data() for p in params.values()]
        norm = math.sqrt(sum((p.grad ** 2).sum() for p in params))
        if norm > grad_clip_val:
            for param in params:
                param.grad[:] *= grad_clip_val / norm

    def _step_trainer(self, model, optimizer):
        sgd = getattr(optimizer, "_optimizer", None)
        if not isinstance(optimizer, gluon.Trainer) or type(sgd) is not mx.optimizer.SGD:
            raise UserTypeError(f"Trainer.fit: d2lres trains with SGD (gluon.Trainer(params, 'sgd', ...)), and "
                                f"configure_optimizers gave {type(optimizer).__name__} "
                                f"{type(sgd).__name__ if sgd is not None else ''}".rstrip())
        device = try_gpu() if self.num_gpus else mx.cpu()
        if any(p._deferred_init for p in model.collect_params().values()):  # Gluon's shapes from a first batch
            X, _ = next(iter(self.train_dataloader))
            model(X.as_in_ctx(mx.cpu()))
        trainer = StepTrainer(model, sgd.momentum, sgd.wd, device=device, precision=self.precision,
                              gradient_clip_val=self.gradient_clip_val)
        return trainer, optimizer.learning_rate
