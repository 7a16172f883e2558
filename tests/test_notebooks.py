"""The chapter notebooks: ``#@save`` cells equal the library, the generated notebooks are up to
date, and each notebook runs top to bottom in a real Jupyter kernel (fast mode) with the chapter's
outputs, once per framework, from a folder outside the checkout:

* default set: in a fresh venv per framework that has a kernel and no d2lres; the notebook's first
  cell installs the built wheel's extra (``D2LRES_PIP``), then does nothing when run again, and the
  command line runs in that venv (``summary``, ``data``, ``train``, ``check``);
* current set (numpy 2, the hosted notebooks' stack): in its own environment, which has d2lres, so
  the first cell does nothing."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy
import pytest

from book import chapter
from d2lres import checks, spec
from d2lres.host import backends
from helpers import COMMAND_TIMEOUT, outside_env, real_data_dir, shared

pytestmark = pytest.mark.framework

#: The #@save drift check reads every backend's library source, so it needs every framework.
EVERY_BACKEND = pytest.mark.skipif(backends.available() != list(backends.BACKENDS),
                                   reason="the #@save check needs every backend; this set lacks one")

ROOT = Path(__file__).resolve().parent.parent
#: The current set (numpy 2, Python 3.13): the hosted notebooks' stack; its own environment runs them.
CURRENT_SET = int(numpy.__version__.split(".")[0]) >= 2
SET = "current" if CURRENT_SET else "all"


@EVERY_BACKEND
def test_check_passes_on_the_real_source():
    proc = subprocess.run([sys.executable, "-m", "book.chapter", "check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{2 * len(chapter.FRAMEWORKS)} #@save cells match the library" in proc.stdout
    assert f"{len(chapter.FRAMEWORKS)} notebooks up to date" in proc.stdout
    assert proc.stdout.count("ok: 1 #@save cells match the library") == 2  # the 1.0 edition, both languages


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
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source == chapter.install_cell(framework)
    compile(first.source, "install cell", "exec")
    extra = chapter.FRAMEWORKS[framework].rsplit(".", 1)[1]
    assert f'"d2lres[{extra}]"' in first.source and "D2LRES_PIP" in first.source
    # nothing refers to the checkout: no sys.path edits, no relative or absolute paths into it
    text = "\n".join(c.source for c in nb.cells)
    assert all(s not in text for s in ("sys.path", "../", "./", str(ROOT), "notebooks/", "PYTHONPATH"))



@pytest.mark.parametrize("framework", list(chapter.FRAMEWORKS))
def test_the_1_0_notebooks_are_up_to_date_and_import_d2lres_as_d2l(framework):
    """The 1.0 edition's notebooks (both languages): what their source generates, the book's cells
    with d2lres imported as ``d2l``, ResNeXt's block, PyTorch's Residual the library's own."""
    codes = []
    for lang, (_, folder) in chapter.LANGUAGES.items():
        source = chapter.edition_source(lang, "1.0")
        path = chapter.notebook_path(folder, framework, "resnet-1.0.ipynb")
        assert path.read_text() == chapter.build_notebook(source.read_text(), framework, chapter.source_name(source))
        import nbformat
        codes.append([c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"])
    assert codes[0] == codes[1]
    code = "\n".join(codes[0])
    name = "tensorflow" if framework == "tensorflow" else chapter.FRAMEWORKS[framework].split(".")[1]
    assert f"from d2lres import {name} as d2l" in code
    assert not [line for line in code.split("\n") if line.startswith(("from d2l import", "import d2l"))]
    assert "#@tab" not in code and code.split("\n").count("#@save") == (framework == "pytorch")
    assert "class ResNet(d2l.Classifier)" in code and "blk = ResNeXtBlock(32, 16, 1)" in code
    assert codes[0][0] == chapter.install_cell(framework)


# --------------------------------------------------------------------------- execution outside

#: Runs in the notebook's own environment (a fresh venv's Python): executes a notebook with that
#: environment's kernel and writes it back with its outputs.
EXECUTE = """
import sys, nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": "."}}).execute()
nbformat.write(nb, sys.argv[2])
"""
KERNEL_PACKAGES = ("pip", "ipython<9.16", "ipykernel", "nbclient", "nbformat")


@pytest.fixture(scope="session")
def kernel_packages() -> Path:
    """The site-packages of a venv with pip and a Jupyter kernel (no d2lres, no framework),
    installed once per test run and copied into each fresh venv."""
    def install(venv: Path) -> Path:
        env = outside_env()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=COMMAND_TIMEOUT)
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c",
                               str(ROOT / "constraints" / f"{SET}.txt"), *KERNEL_PACKAGES],
                              capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return next(venv.glob("lib/python3*/site-packages"))
    return shared("kernel-venv", install)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"
                   and o.name == "stdout") + "".join(
        o.get("data", {}).get("text/plain", "") for o in cell.outputs
        if o.output_type in ("execute_result", "display_data"))


def _cell(nb, needle: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(cells) == 1, f"expected one code cell containing {needle!r}"
    return cells[0]


def _seconds(cell) -> float:
    from datetime import datetime
    times = cell.metadata["execution"]
    return (datetime.fromisoformat(times["shell.execute_reply"].replace("Z", "+00:00"))
            - datetime.fromisoformat(times["iopub.execute_input"].replace("Z", "+00:00"))).total_seconds()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _run(argv, env, cwd, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, argv)), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    assert not check or proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _execute(python, notebook: Path, out: Path, env, cwd):
    """``notebook`` executed by ``python``'s kernel in ``cwd``; the notebook with its outputs."""
    import nbformat
    script = cwd / "execute.py"
    script.write_text(EXECUTE)
    _run([python, script, notebook, out], env, cwd)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return nb


def _code(path: Path) -> list[str]:
    import nbformat
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _first_cell_again(python, framework: str, env, work: Path):
    """The Japanese notebook, whose code cells must be the English notebook's, reduced to its first
    code cell and executed by ``python``'s kernel: that cell, with its outputs."""
    import nbformat
    en, ja = (chapter.notebook_path(chapter.LANGUAGES[lang][1], framework) for lang in ("en", "ja"))
    assert _code(ja) == _code(en)
    nb = nbformat.read(ja, as_version=4)
    nb.cells = [next(c for c in nb.cells if c.cell_type == "code")]
    nbformat.write(nb, work / "ja-first.ipynb")
    return _execute(python, work / "ja-first.ipynb", work / "ja-first-out.ipynb", env, work).cells[0]


def _check_chapter_outputs(nb, framework):
    blocks = _text(_cell(nb, "Residual(3)")) + _text(_cell(nb, "Residual(6, use_1x1conv=True, strides=2)"))
    if framework in ("tensorflow", "jax"):  # NHWC
        assert "Residual(3): (4, 6, 6, 3)" in blocks and "strides=2): (4, 3, 3, 6)" in blocks
    else:
        assert "Residual(3): (4, 3, 6, 6)" in blocks and "strides=2): (4, 6, 3, 3)" in blocks
    walk = _text(_cell(nb, "res.shape_walk(net, (1, 224, 224))")).splitlines()
    assert walk == [f"{name:<13} output shape: {shape}" for name, shape, _ in spec.walk((1, 224, 224))]
    counts = _text(_cell(nb, "res.count_parameters(net)"))
    assert "trainable parameters: 11,178,378" in counts and "BatchNorm running statistics: 7,808" in counts
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


def _outside(tmp_path) -> tuple[Path, dict]:
    """A working folder outside the checkout and a reader's environment there: its own HOME and
    caches, no PYTHONPATH, the real data set, fast mode."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = outside_env(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
                      MPLCONFIGDIR=str(home / ".matplotlib"), KERAS_HOME=str(home / ".keras"),
                      MXNET_HOME=str(home / ".mxnet"), JUPYTER_PLATFORM_DIRS="1",
                      D2LRES_DATA_DIR=real_data_dir(), D2LRES_FAST="1")
    return work, env


def _report(framework: str, **facts) -> None:
    print(f"\n{framework}: " + json.dumps(facts, indent=1))


#: The frameworks whose wheel extra is installed in a fresh venv here. TensorFlow's and JAX's
#: notebooks run outside the checkout on the current set (test_notebook_runs_on_the_hosted_stack)
#: and in the book's build; their fresh venvs (3-4 min each) are left out of CI for its budget.
FRESH_VENV_FRAMEWORKS = ("pytorch", "mxnet")


@pytest.mark.slow  # a framework installed into a fresh venv: make test runs it, make test-fast does not
@pytest.mark.skipif(CURRENT_SET, reason="the current set runs the notebooks in its own environment")
@pytest.mark.parametrize("framework", FRESH_VENV_FRAMEWORKS)
def test_notebook_installs_the_wheel_in_a_fresh_venv_and_the_cli_runs_there(framework, dist, kernel_packages,
                                                                          tmp_path):
    """One fresh venv per framework, outside the checkout: pip and a kernel, no d2lres. The
    notebook's first cell installs ``<wheel>[<extra>]`` (with the set's constraints; no bytecode
    compiled ahead, PIP_NO_COMPILE), the whole notebook runs; the Japanese notebook's first cell
    (its code cells are the English ones) then does nothing in that venv; then the command line
    there, ``check`` with a saved reference where the venv has no PyTorch."""
    backend = chapter.FRAMEWORKS[framework].rsplit(".", 1)[1]
    work, env = _outside(tmp_path)
    env.update(PIP_CONSTRAINT=str(ROOT / "constraints" / f"{SET}.txt"), D2LRES_PIP=str(dist["wheel"]),
               PIP_NO_COMPILE="1")
    venv = tmp_path / "venv"
    tic = time.perf_counter()
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env, work)
    shutil.copytree(kernel_packages, next(venv.glob("lib/python3*/site-packages")), symlinks=True,
                    dirs_exist_ok=True)
    python, bin_ = venv / "bin" / "python", venv / "bin"
    kernel_s, kernel_bytes = time.perf_counter() - tic, _size(venv)
    has_d2lres = _run([python, "-c", "import importlib.util as u; print(u.find_spec('d2lres'))"], env, work).stdout
    assert has_d2lres == "None\n"

    tic = time.perf_counter()
    nb = _execute(python, chapter.notebook_path(chapter.NOTEBOOK_DIR, framework), work / "out.ipynb", env, work)
    notebook_s = time.perf_counter() - tic
    install = nb.cells[next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")]
    assert f"installing d2lres[{backend}] @ file://{dist['wheel']}" in _text(install)
    assert "Successfully installed" in _text(install) and "d2lres-" in _text(install)
    _check_chapter_outputs(nb, framework)
    installed_bytes = _size(venv) - kernel_bytes

    # The Japanese notebook has the English one's code cells (so it runs as the English one did);
    # run again in this venv, where d2lres is now installed, its first cell prints and installs nothing.
    tic = time.perf_counter()
    ja_first = _first_cell_again(python, framework, env, work)
    ja_s = time.perf_counter() - tic
    assert ja_first.source == install.source and ja_first.outputs == []
    assert _size(venv) - kernel_bytes == installed_bytes

    # the command line in the reader's venv
    d2lres = bin_ / "d2lres"
    summary = _run([d2lres, "summary", "--backend", backend], env, work).stdout
    assert re.search(r"^total +11,178,378 +7,808 +\(= spec\)$", summary, re.M), summary
    fetched = _run([d2lres, "data"], env, work).stdout
    assert f"Fashion-MNIST in {real_data_dir()} (served by: cache)" in fetched
    trained = _run([d2lres, "train", "--backend", backend, "--limit", 512, "--epochs", 1, "--resize", 32,
                    "--batch-size", 64, "--no-progress", "--out", work / "run"], env, work).stdout
    assert f"ResNet-18 in {backend}: test accuracy" in trained
    assert json.loads((work / "run" / "metrics.json").read_text())["backend"] == backend
    check = _run([d2lres, "check", "--input", "1x32x32"], env, work, check=backend == "torch")
    if backend == "torch":
        assert "| torch | yes | 11,178,378 + 7,808 | yes |" in check.stdout and "Result: PASS." in check.stdout
    else:  # the float64 reference is PyTorch's: the error names the extra, or a reference file written with it
        assert check.returncode == 2 and "pip install 'd2lres[torch]'" in check.stderr, check.stderr
        checks.cross_backend_checks([], input_shape=(1, 32, 32), save_to=work / "reference.npz")
        check = _run([d2lres, "check", "--input", "1x32x32", "--reference", work / "reference.npz"], env, work)
        assert f"| {backend} | yes | 11,178,378 + 7,808 | yes |" in check.stdout and "Result: PASS." in check.stdout
        assert f"read from {work / 'reference.npz'}" in check.stdout
    other = next(b for b in backends.BACKENDS if b != backend)
    missing = _run([python, "-c", f"import d2lres.{other}"], env, work, check=False)
    assert missing.returncode == 1 and f"pip install 'd2lres[{backends.BACKENDS[other][2]}]'" in missing.stderr
    assert "ModuleNotFoundError" not in missing.stderr
    _report(framework, kernel_venv_s=round(kernel_s, 1), kernel_venv_mb=round(kernel_bytes / 1e6),
            install_cell_s=round(_seconds(install), 1), install_mb=round(installed_bytes / 1e6),
            notebook_s=round(notebook_s, 1), ja_first_cell_s=round(ja_s, 1), summary=summary.splitlines()[-3:],
            data=fetched.splitlines()[0],
            train=trained.strip().splitlines()[-1], import_other=missing.stderr.strip().splitlines()[-1],
            check=[line for line in check.stdout.splitlines() if line.startswith(f"| {backend} | ")] + [
                check.stdout.strip()[-13:]])


#: The notebooks the current set runs: the frameworks that no fresh venv runs, and PyTorch, the
#: hosted notebooks' first framework. English only: a Japanese notebook's code cells are its English
#: notebook's (asserted here; the sources' cells: tests/test_chapter_ja.py), so it runs as that one does.
HOSTED = [("pytorch", "en"), ("tensorflow", "en"), ("jax", "en")]


@pytest.mark.skipif(not CURRENT_SET, reason="the default set runs the notebooks in fresh venvs")
@pytest.mark.parametrize("framework, language", HOSTED)
def test_notebook_runs_on_the_hosted_stack(framework, language, tmp_path):
    """The current set (the hosted notebooks' stack) runs the notebook from a folder outside the
    checkout in its own environment, which has d2lres: the first cell does nothing."""
    work, env = _outside(tmp_path)
    env.pop("D2LRES_PIP", None)
    assert _code(chapter.notebook_path(chapter.LANGUAGES["ja"][1], framework)) == _code(
        chapter.notebook_path(chapter.LANGUAGES[language][1], framework))
    tic = time.perf_counter()
    nb = _execute(sys.executable, chapter.notebook_path(chapter.LANGUAGES[language][1], framework),
                  work / "out.ipynb", env, work)
    assert next(c for c in nb.cells if c.cell_type == "code").outputs == []
    _check_chapter_outputs(nb, framework)
    _report(f"{framework} ({language})", python=sys.version.split()[0], numpy=numpy.__version__,
            notebook_s=round(time.perf_counter() - tic, 1))


@pytest.mark.skipif(CURRENT_SET, reason="make lab opens the notebooks in the default set")
def test_make_lab_serves_the_notebooks():
    """``make lab`` starts JupyterLab on the notebooks: its API on localhost lists them and their
    kernel; asked to shut down, it stops."""
    if shutil.which("make") is None:
        pytest.skip("no make here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token, venv = "d2lres-lab-test", Path(sys.prefix)
    base = f"http://127.0.0.1:{port}"
    # -o: the environment is the one running these tests; make must not rebuild it
    proc = subprocess.Popen(["make", "-C", str(ROOT), "-o", f"{venv}/.installed-all", "lab", f"VENV={venv}",
                             f"LAB_OPTIONS=--no-browser --allow-root --ip=127.0.0.1 --port={port} "
                             f"--IdentityProvider.token={token}"],
                            env=outside_env(JUPYTER_PLATFORM_DIRS="1"), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def get(path):
        request = urllib.request.Request(base + path, headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                root = get("/api/contents")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
                time.sleep(1)
        assert {c["name"] for c in root["content"]} >= set(chapter.FRAMEWORKS)
        for framework in chapter.FRAMEWORKS:
            nb = get(f"/api/contents/{framework}/resnet.ipynb?content=0")
            assert nb["type"] == "notebook" and nb["path"] == f"{framework}/resnet.ipynb"
        assert "python3" in get("/api/kernelspecs")["kernelspecs"]
        with urllib.request.urlopen(urllib.request.Request(base + "/api/shutdown", method="POST", headers={
                "Authorization": f"token {token}"}), timeout=10) as response:
            assert response.status == 200
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, out[-3000:]
        assert "jupyter lab --notebook-dir=notebooks" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
