# The ResNet chapter's TensorFlow cells in the d2l 1.0 edition's forms (the one d2l.ai prints), written
# for d2lres's tests and bench: the reader's own Residual (a Keras model), ResNet(d2l.Classifier) grown
# with add_to_class, ResNet18, the layer summary, ResNeXt's block, and the training cell inside
# `with d2l.try_gpu():`. Only the import names d2lres, and one line takes Keras 3's form (marked).
import tensorflow as tf

from d2lres import tensorflow as d2l


class Residual(tf.keras.Model):
    def __init__(self, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = tf.keras.layers.Conv2D(num_channels, padding="same", kernel_size=3, strides=strides)
        self.conv2 = tf.keras.layers.Conv2D(num_channels, kernel_size=3, padding="same")
        self.conv3 = None
        if use_1x1conv:
            self.conv3 = tf.keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides)
        self.bn1 = tf.keras.layers.BatchNormalization()
        self.bn2 = tf.keras.layers.BatchNormalization()

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return tf.keras.activations.relu(Y)


class ResNeXtBlock(tf.keras.Model):
    def __init__(self, num_channels, groups, bot_mul, use_1x1conv=False, strides=1):
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = tf.keras.layers.Conv2D(bot_channels, 1, strides=1)
        self.conv2 = tf.keras.layers.Conv2D(bot_channels, 3, strides=strides, padding="same",
                                            groups=bot_channels // groups)
        self.conv3 = tf.keras.layers.Conv2D(num_channels, 1, strides=1)
        self.bn1, self.bn2, self.bn3 = (tf.keras.layers.BatchNormalization() for _ in range(3))
        self.conv4 = tf.keras.layers.Conv2D(num_channels, 1, strides=strides) if use_1x1conv else None
        self.bn4 = tf.keras.layers.BatchNormalization() if use_1x1conv else None

    def call(self, X):
        Y = tf.keras.activations.relu(self.bn1(self.conv1(X)))
        Y = tf.keras.activations.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4:
            X = self.bn4(self.conv4(X))
        return tf.keras.activations.relu(Y + X)


class ResNet(d2l.Classifier):
    def b1(self):
        return tf.keras.models.Sequential([
            tf.keras.layers.Conv2D(64, kernel_size=7, strides=2, padding="same"),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Activation("relu"),
            tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding="same")])


@d2l.add_to_class(ResNet)
def block(self, num_residuals, num_channels, first_block=False):
    blk = tf.keras.models.Sequential()
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
    self.net = tf.keras.models.Sequential([self.b1()])  # the book: Sequential(self.b1()), Keras 2 only
    for i, b in enumerate(arch):
        self.net.add(self.block(*b, first_block=(i == 0)))
    self.net.add(tf.keras.models.Sequential([
        tf.keras.layers.GlobalAvgPool2D(),
        tf.keras.layers.Dense(units=num_classes)]))


class ResNet18(ResNet):
    def __init__(self, lr=0.1, num_classes=10):
        super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes)


if __name__ == "__main__":
    blk = Residual(3)
    X = d2l.normal((4, 6, 6, 3))
    print(blk(X).shape)
    blk = Residual(6, use_1x1conv=True, strides=2)
    print(blk(X).shape)
    ResNet18().layer_summary((1, 96, 96, 1))

    trainer = d2l.Trainer(max_epochs=10)
    data = d2l.FashionMNIST(batch_size=128, resize=(96, 96))
    with d2l.try_gpu():
        model = ResNet18(lr=0.01)
        trainer.fit(model, data)

    blk = ResNeXtBlock(32, 16, 1)
    X = d2l.normal((4, 96, 96, 32))
    print(blk(X).shape)
