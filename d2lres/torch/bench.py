"""What ``d2lres bench`` needs from PyTorch: a float32 matmul, and the chapter's way as the
baseline: an eager ``nn.Module`` trained by ``train_ch6``'s loop, fed by d2l's
``load_data_fashion_mnist`` (per-sample ``Resize`` + ``ToTensor`` in a 4-worker DataLoader)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from .train import to_tensors

#: ``d2l.get_dataloader_workers()``
CHAPTER_WORKERS = 4


def matmul(n: int, precision: str = "float32"):
    """A callable doing one ``n x n`` matmul in ``precision`` (float32, or bfloat16 for bf16)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    return lambda: a @ b


class _ResizedImages(torch.utils.data.Dataset):
    """torchvision's ``Compose([Resize(size), ToTensor()])`` on PIL images, one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int):
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i]).resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image, np.float32) / 255)[None], int(self.labels[i])


class ChapterWay:
    """``train_ch6``'s loop: eager module, ``nn.CrossEntropyLoss``, ``torch.optim.SGD(lr)``,
    and the loss and accuracy read back every batch."""

    def __init__(self, net: nn.Module, lr: float):
        self.net, self.loss = net, nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(net.parameters(), lr=lr)

    def loader(self, images: np.ndarray, labels: np.ndarray, batch_size: int, size: int):
        return torch.utils.data.DataLoader(_ResizedImages(images, labels, size), batch_size, shuffle=True,
                                           num_workers=CHAPTER_WORKERS)

    inputs = staticmethod(to_tensors)

    def step(self, X, y) -> None:
        self.net.train()
        self.optimizer.zero_grad()
        y_hat = self.net(X)
        loss = self.loss(y_hat, y)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            float(loss * X.shape[0]), float((y_hat.argmax(axis=1) == y).sum())

    def predict(self, X) -> None:
        self.net.eval()
        with torch.no_grad():
            self.net(X).argmax(axis=1).numpy()
