# The ResNet chapter's MXNet cells in the d2l 1.0 edition's forms (the one d2l.ai prints), written
# for d2lres's tests and bench: the reader's own Residual (a Gluon Block), ResNet(d2l.Classifier)
# grown with add_to_class, ResNet18, the layer summary, ResNeXt's block, and the training cell.
# Only the import names d2lres (first, as the chapter's first cell: MXNet needs its numpy shim).
from d2lres import mxnet as d2l  # isort: skip
from mxnet import init, npx
from mxnet.gluon import nn

npx.set_np()


class Residual(nn.Block):
    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()

    def forward(self, X):
        Y = npx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return npx.relu(Y + X)


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
        if i == 0 and not first_block:
            blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(Residual(num_channels))
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


class ResNeXtBlock(nn.Block):
    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1, **kwargs):
        super().__init__(**kwargs)
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.Conv2D(bot_channels, kernel_size=1, padding=0, strides=1)
        self.conv2 = nn.Conv2D(bot_channels, kernel_size=3, padding=1, strides=strides,
                               groups=bot_channels // groups)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1, padding=0, strides=1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm(), nn.BatchNorm(), nn.BatchNorm()
        if use_1x1conv:
            self.conv4 = nn.Conv2D(num_channels, kernel_size=1, strides=strides)
            self.bn4 = nn.BatchNorm()
        else:
            self.conv4 = None

    def forward(self, X):
        Y = npx.relu(self.bn1(self.conv1(X)))
        Y = npx.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        return npx.relu(Y + X)


if __name__ == "__main__":
    blk = Residual(3)
    blk.initialize()
    X = d2l.randn(4, 3, 6, 6)
    print(blk(X).shape)
    blk = Residual(6, use_1x1conv=True, strides=2)
    blk.initialize()
    print(blk(X).shape)
    ResNet18().layer_summary((1, 1, 96, 96))

    model = ResNet18(lr=0.01)
    trainer = d2l.Trainer(max_epochs=10, num_gpus=1)
    data = d2l.FashionMNIST(batch_size=128, resize=(96, 96))
    trainer.fit(model, data)

    blk = ResNeXtBlock(32, 16, 1)
    blk.initialize()
    X = d2l.randn(4, 32, 96, 96)
    print(blk(X).shape)
