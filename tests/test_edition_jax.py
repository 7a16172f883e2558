"""The 1.0 edition's JAX tab (the one d2l.ai prints) on d2lres (``from d2lres import jax as d2l``):
d2l 1.0.3's names with its signatures (read from the installed ``d2l`` package's source, which does
not import on today's stack), and, in place of d2l's own trainer, the proofs: the reader's linen
``ResNet18`` from the chapter is d2lres's ``nnx`` ``resnet18`` given the same weights (through the
neutral weights file), and one step of d2lres's linen ``Trainer`` is a hand-written optax step.
The chapter's script itself runs in tests/test_edition.py."""
import contextlib
import io
import runpy
from pathlib import Path

import numpy as np
import pytest

from d2lres import checks
from d2lres import weights as neutral
from helpers import check_d2l_names, interrupting

pytestmark = pytest.mark.framework

jax = pytest.importorskip("jax")
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from d2lres import jax as d2l  # noqa: E402

CHAPTER = runpy.run_path(str(Path(__file__).parent / "book" / "edition_jax.py"))  # its classes, not its cells


def test_the_jax_names_have_d2l_1_0_3s_signatures():
    compared = check_d2l_names(d2l, "jax", ("Module", "Classifier", "DataModule", "FashionMNIST", "Trainer",
                                            "HyperParameters", "ProgressBoard"),
                               ("add_to_class", "cpu", "gpu", "num_gpus", "try_gpu", "show_images"),
                               defaults={"d2l.get_key()": None})
    assert compared >= 25
    assert d2l.nn_Module is nn.Module and issubclass(d2l.Classifier, nn.Module)
    assert d2l.get_key().shape == (2,) and 0 <= d2l.get_seed() <= 10 ** 6
    assert type(d2l.Trainer(3)).__module__ == "d2lres.jax.edition"
    assert type(d2l.Trainer(d2l.resnet18(num_classes=10, in_channels=1))) is d2l.Trainer  # the contract's


class SmallNet(d2l.Classifier):
    """A small chapter-style linen classifier (BatchNorm with the ``training`` flag)."""
    lr: float = 0.1
    num_classes: int = 10
    training: bool = True

    def setup(self):
        self.net = nn.Sequential([nn.Conv(4, (3, 3), strides=(2, 2)), nn.BatchNorm(not self.training), nn.relu,
                                  lambda x: x.mean(axis=(1, 2)), nn.Dense(self.num_classes)])


def by_hand(model, X, y, key, clip=0.0):
    """d2l's initialisation on ``X`` and one optax step written out: SGD at ``model.lr`` on the
    cross-entropy in training mode, ``clip`` as ``optax.clip_by_global_norm``."""
    params_key, dropout_key = jax.random.split(key)
    variables = model.init({"params": params_key, "dropout": dropout_key}, X)
    tx = optax.chain(*([optax.clip_by_global_norm(clip)] if clip else []), optax.sgd(model.lr))

    def loss(params):
        logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, X,
                                      mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    change, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
    return optax.apply_updates(variables["params"], change), updates["batch_stats"], float(value)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_one_step_of_fit_is_a_hand_written_optax_step(real_data, tmp_path, monkeypatch, clip, capsys):
    monkeypatch.chdir(tmp_path)
    data = d2l.FashionMNIST(batch_size=16, limit=16, data_dir=real_data)  # one batch: one step
    key = jax.random.PRNGKey(3)
    trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=clip, board_path=None)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(SmallNet(), data, key=key)
    batches = data.get_dataloader(True)
    batches.set_epoch(0)
    (X, y), = batches  # the batch fit stepped on
    params, stats, loss = by_hand(SmallNet(), X, y, key, clip)
    state = trainer.step_trainer.state
    ours, theirs = jax.tree.leaves((state.params, state.batch_stats)), jax.tree.leaves((params, stats))
    distance = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ours, theirs))
    first = trainer.history["first_step_loss"]
    unclipped, _, _ = by_hand(SmallNet(), X, y, key)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(unclipped)))
    with capsys.disabled():
        print(f"\nlinen Trainer.fit step vs hand-written optax (clip {clip}): loss {first:.6f} vs {loss:.6f}, "
              f"weights and statistics max distance {distance:.1e}; clipping moved them {moved:.1e}")
    assert distance <= 1e-6 and abs(first - loss) <= 1e-6
    assert (moved > 1e-3) == bool(clip)  # the clip took effect (and 0 left the step alone)


def test_d2ls_own_steps_run_on_the_fitted_state(real_data, tmp_path, monkeypatch):
    """The reader's calls after ``fit``, as in d2l: ``trainer.state``, ``model.loss`` / ``accuracy``
    (eval mode, where d2l's last validation leaves ``model.training``), ``training_step``,
    ``validation_step``; and ``get_tensorloader``'s batches."""
    monkeypatch.chdir(tmp_path)
    data = d2l.FashionMNIST(batch_size=16, limit=16, data_dir=real_data)
    trainer, model = d2l.Trainer(max_epochs=1, board_path=None), SmallNet()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(model, data, key=jax.random.PRNGKey(0))
    X, y = next(iter(data.val_dataloader()))
    state, logits = trainer.state, trainer.step_trainer.predict(X)
    assert isinstance(state, d2l.edition.TrainState) and model.training is False
    loss, updates = model.loss(state.params, (X,), y, state)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    assert abs(float(loss) - float(expected)) <= 1e-5 and "batch_stats" in updates
    assert float(model.accuracy(state.params, (X,), y, state)) == float((logits.argmax(1) == y).mean())
    (step_loss, _), grads = model.training_step(state.params, (X, y), state)
    assert jax.tree.structure(grads) == jax.tree.structure(state.params) and float(step_loss) == float(loss)
    model.validation_step(state.params, (X, y), state)  # with training_step: a second point of each
    assert [len(model.board.data[k]) for k in ("train_loss", "val_loss", "val_acc")] == [2, 2, 2]

    class Pairs(d2l.DataModule):
        batch_size = 3
    loader = Pairs().get_tensorloader((np.arange(8), -np.arange(8)), train=True, indices=slice(1, None))
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[0]) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate([b[0] for b in batches])) == list(range(1, 8))
    assert all(np.array_equal(a, -b) for a, b in batches)


Interrupted = interrupting(d2l.FashionMNIST)


def test_an_interrupted_fit_resumes_exactly_with_its_board_and_dropout_key(real_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name, stop_at in (("whole", None), ("resumed", 6)):
        data = Interrupted(batch_size=16, limit=64, data_dir=real_data)  # 4 batches per epoch
        data.stop_at = stop_at
        options = {"checkpoint_dir": tmp_path / name, "checkpoint_every": 2, "board_path": None}
        key = jax.random.PRNGKey(0)
        model = SmallNet()
        with contextlib.redirect_stdout(io.StringIO()):
            if stop_at is not None:
                with pytest.raises(KeyboardInterrupt):  # at epoch 2, step 2: from the checkpoint after epoch 1
                    d2l.Trainer(max_epochs=2, **options).fit(model, data, key=key)
                data.stop_at, model = None, SmallNet()
                trainer = d2l.Trainer(max_epochs=2, resume=True, **options)
                trainer.fit(model, data, key=jax.random.PRNGKey(1))  # the checkpoint's key and weights win
            else:
                trainer = d2l.Trainer(max_epochs=2, **options)
                trainer.fit(model, data, key=key)
        runs[name] = (trainer.step_trainer.get_weights(), trainer.step_trainer.optimizer_state(), model.board.data)
    (weights, state, board), (ref_weights, ref_state, ref_board) = runs["resumed"], runs["whole"]
    assert weights.keys() == ref_weights.keys() and all(np.array_equal(weights[k], ref_weights[k]) for k in weights)
    assert state.keys() == ref_state.keys() and all(np.array_equal(state[k], ref_state[k]) for k in state)
    assert "momentum.dropout_rng" in state and board == ref_board


def test_what_the_linen_trainer_refuses(real_data):
    data = d2l.FashionMNIST(batch_size=16, limit=16, data_dir=real_data)

    class OwnLoss(SmallNet):
        def loss(self, params, X, Y, state, averaged=True):
            return 0.0
    with pytest.raises(TypeError, match="OwnLoss defines its own loss"):
        d2l.Trainer(1).fit(OwnLoss(), data)
    with pytest.raises(ValueError, match="precision='bf16' is not available for a linen model"):
        d2l.Trainer(1, precision="bf16", board_path=None).fit(SmallNet(), data)
    with pytest.raises(TypeError, match="must be a d2l Module"):
        d2l.Trainer(1).fit(d2l.resnet18(), data)


# --- the reader's linen ResNet18 is d2lres's nnx resnet18 -------------------------------------------

def chapter_paths() -> dict[str, str]:
    """d2lres's canonical layer names -> the layers' paths in the chapter's linen ``ResNet18``
    (``nn.Sequential`` names its layers ``layers_<i>``, the lambdas counted)."""
    paths = {"b1.conv": "net.layers_0.layers_0", "b1.bn": "net.layers_0.layers_1", "head.fc": "net.layers_5.layers_2"}
    for stage in range(4):
        for i in range(2):
            for layer in ("conv1", "bn1", "conv2", "bn2") + (("conv3",) if stage and not i else ()):
                paths[f"b{stage + 2}.{i}.{layer}"] = f"net.layers_{stage + 1}.layers_{i}.{layer}"
    return paths


def to_linen(weights: dict) -> dict:
    """Canonical weights (PyTorch layout) as the linen model's own: kernels HWIO / (in, out), BatchNorm
    ``scale`` and ``bias`` under ``params``, ``mean`` and ``var`` under ``batch_stats``."""
    out = {}
    for name, path in chapter_paths().items():
        if ".bn" in f".{name.split('.')[-1]}":
            for ours, group, theirs in (("weight", "params", "scale"), ("bias", "params", "bias"),
                                        ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")):
                out[f"{group}.{path}.{theirs}"] = weights[f"{name}.{ours}"]
        else:
            kind = "dense" if name == "head.fc" else "conv"
            out[f"params.{path}.kernel"] = neutral.to_channels_last(weights[f"{name}.weight"], kind)
            out[f"params.{path}.bias"] = weights[f"{name}.bias"]
    return out


@pytest.mark.slow  # six ResNet-18 functions compiled (three linen, three nnx)
def test_the_chapters_linen_resnet18_is_d2lress_nnx_resnet18(tmp_path, capsys):
    """At 33x33, where Flax's ``padding='same'`` pads every stride-2 layer evenly (33, 17, 9, 5, 3:
    all odd), the book's network is d2lres's function; at 96x96 it is not (docs/book-code.md)."""
    inputs = checks.check_inputs(input_shape=(1, 33, 33), step_size=33, batch_size=4)
    files = {k: neutral.save_npz(tmp_path / f"{k}.npz", inputs[k]) for k in ("weights", "step_weights")}
    X, Xs, y, lr = inputs["X"], inputs["Xs"], inputs["y"], 0.05
    nhwc = np.ascontiguousarray(Xs.transpose(0, 2, 3, 1))

    net = d2l.resnet18(num_classes=10, in_channels=1)
    d2l.load_weights(net, files["weights"])
    nnx_trainer = d2l.Trainer(net)
    nnx_out = {"eval_logits": nnx_trainer.forward(X, training=False)}
    d2l.load_weights(net, files["weights"])
    nnx_out["train_logits"] = nnx_trainer.forward(X, training=True)
    d2l.load_weights(net, files["step_weights"])
    nnx_out["step_loss"], _ = nnx_trainer.step(nhwc, y, lr)
    nnx_out["step_weights"] = nnx_trainer.get_weights()

    model = CHAPTER["ResNet18"](lr=lr)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 33, 33, 1), np.float32))
    variables = jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), shapes)  # set from the file below
    linen = d2l.edition.LinenTrainer(model, variables, model.configure_optimizers(), jax.random.PRNGKey(1))
    linen.set_weights(to_linen(neutral.load_npz(files["weights"])))
    linen_out = {"eval_logits": linen.forward(X, training=False), "train_logits": linen.forward(X, training=True)}
    linen.set_weights(to_linen(neutral.load_npz(files["step_weights"])))
    linen_out["step_loss"], _ = linen.step(nhwc, y, lr)
    stepped = to_linen(nnx_out["step_weights"])
    after = linen.get_weights()
    params = [k for k in after if k.startswith("params.")]  # Flax's running averages are its own (momentum 0.99)

    distances = {q: float(np.abs(np.asarray(nnx_out[q], np.float64) - linen_out[q]).max())
                 for q in ("eval_logits", "train_logits", "step_loss")}
    distances["step_weights"] = max(float(np.abs(stepped[k].astype(np.float64) - after[k]).max()) for k in params)
    with capsys.disabled():
        print("\nlinen ResNet18 (the chapter's) vs nnx resnet18 (d2lres), 33x33, batch 4, lr 0.05:")
        for q, d in distances.items():
            print(f"  {q:13s} max |linen - nnx| {d:.2e}  (bound {checks.TOLERANCES[q]:.0e})")
    assert set(params) == {k for k in stepped if k.startswith("params.")}
    assert all(d <= checks.TOLERANCES[q] for q, d in distances.items()), distances
