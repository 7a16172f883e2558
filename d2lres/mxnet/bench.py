"""What ``d2lres bench`` needs from MXNet: a float32 matmul, and the chapter's way as the
baseline: a non-hybridized Gluon network trained by ``train_ch6``'s loop (``gluon.Trainer``
'sgd'), fed by d2l's ``load_data_fashion_mnist`` (per-sample ``Resize`` + ``ToTensor`` in a
4-worker DataLoader), with MXNet's default threads."""
from __future__ import annotations

import numpy as onp
from mxnet import autograd, gluon, np
from mxnet.gluon.data.vision import transforms

from .train import to_arrays

#: ``d2l.get_dataloader_workers()``
CHAPTER_WORKERS = 4


def matmul(n: int, precision: str = "float32"):
    """A callable doing one ``n x n`` float32 matmul (MXNet trains in float32 only)."""
    a, b = np.random.uniform(size=(n, n)), np.random.uniform(size=(n, n))
    return lambda: (a @ b).wait_to_read()


class ChapterWay:
    """``gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': lr})``, softmax
    cross-entropy, loss and accuracy read back every batch."""

    def __init__(self, net: gluon.Block, lr: float):
        self.net, self.loss = net, gluon.loss.SoftmaxCrossEntropyLoss()
        self.trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})

    def loader(self, images: onp.ndarray, labels: onp.ndarray, batch_size: int, size: int):
        dataset = gluon.data.ArrayDataset(np.array(images[..., None], dtype="uint8"), labels.astype(onp.int32))
        trans = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
        return gluon.data.DataLoader(dataset.transform_first(trans), batch_size, shuffle=True,
                                     num_workers=CHAPTER_WORKERS)

    inputs = staticmethod(to_arrays)

    def step(self, X, y) -> None:
        with autograd.record():
            y_hat = self.net(X)
            loss = self.loss(y_hat, y)
        loss.backward()
        self.trainer.step(X.shape[0])
        float(loss.sum()), float((y_hat.argmax(axis=1).astype(y.dtype) == y).sum())

    def predict(self, X) -> None:
        self.net(X).argmax(axis=1).asnumpy()
