# The ResNet chapter's JAX cells in the d2l 1.0 edition's forms (the one d2l.ai prints), written for
# d2lres's tests: the reader's own linen Residual, ResNet(d2l.Classifier) as a linen dataclass grown
# with add_to_class, ResNet18, the layer summary, ResNeXt's block, and the training cell.
# Only the import names d2lres.
import jax
from flax import linen as nn
from jax import numpy as jnp

from d2lres import jax as d2l


class Residual(nn.Module):
    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    def setup(self):
        self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same", strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same")
        if self.use_1x1conv:
            self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm(not self.training)
        self.bn2 = nn.BatchNorm(not self.training)

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return nn.relu(Y)


class ResNet(d2l.Classifier):
    arch: tuple
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = self.create_net()

    def b1(self):
        return nn.Sequential([nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding="same"),
                              nn.BatchNorm(not self.training), nn.relu,
                              lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="same")])


@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(num_channels, use_1x1conv=True, strides=(2, 2), training=self.training))
        else:
            blk.append(Residual(num_channels, training=self.training))
    return nn.Sequential(blk)


@d2l.add_to_class(ResNet)
def create_net(self):
    net = nn.Sequential([self.b1()])
    for i, b in enumerate(self.arch):
        net.layers.extend([self.block(*b, first_block=(i == 0))])
    net.layers.extend([nn.Sequential([
        lambda x: nn.avg_pool(x, window_shape=x.shape[1:3], strides=x.shape[1:3], padding="valid"),
        lambda x: x.reshape((x.shape[0], -1)),
        nn.Dense(self.num_classes)])])
    return net


class ResNet18(ResNet):
    arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
    lr: float = 0.1
    num_classes: int = 10


class ResNeXtBlock(nn.Module):
    num_channels: int
    groups: int
    bot_mul: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    def setup(self):
        bot_channels = int(round(self.num_channels * self.bot_mul))
        self.conv1 = nn.Conv(bot_channels, kernel_size=(1, 1), strides=(1, 1))
        self.conv2 = nn.Conv(bot_channels, kernel_size=(3, 3), strides=self.strides, padding="same",
                             feature_group_count=bot_channels // self.groups)
        self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=(1, 1))
        self.bn1 = nn.BatchNorm(not self.training)
        self.bn2 = nn.BatchNorm(not self.training)
        self.bn3 = nn.BatchNorm(not self.training)
        if self.use_1x1conv:
            self.conv4 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides)
            self.bn4 = nn.BatchNorm(not self.training)
        else:
            self.conv4 = None

    def __call__(self, X):
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        return nn.relu(Y + X)


if __name__ == "__main__":
    blk = Residual(3)
    X = jax.random.normal(d2l.get_key(), (4, 6, 6, 3))
    print(blk.init_with_output(d2l.get_key(), X)[0].shape)
    blk = Residual(6, use_1x1conv=True, strides=(2, 2))
    print(blk.init_with_output(d2l.get_key(), X)[0].shape)
    ResNet18(training=False).layer_summary((1, 96, 96, 1))

    model = ResNet18(lr=0.01)
    trainer = d2l.Trainer(max_epochs=10, num_gpus=1)
    data = d2l.FashionMNIST(batch_size=128, resize=(96, 96))
    trainer.fit(model, data)

    blk = ResNeXtBlock(32, 16, 1)
    X = jnp.zeros((4, 96, 96, 32))
    print(blk.init_with_output(d2l.get_key(), X)[0].shape)
