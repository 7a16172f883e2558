"""The package's shape, kept: no import circle among d2lres's modules, and one error hierarchy
(``d2lres.errors``) in which what the user can fix is told in one line and anything else is the
bug it is. Framework-free: reads the sources, imports no framework."""
from __future__ import annotations

import ast
import io
import os
from pathlib import Path

import pytest

import d2lres
from d2lres import errors
from d2lres.host import backends, process

PACKAGE = Path(d2lres.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the d2lres modules it imports, at the top or inside functions (either can close a
    circle), each ``from . import x`` resolved to the submodule ``x`` where there is one. A module's
    own packages, which Python imports first anyway, are left out."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[:None if is_package else -1]
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in found:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_d2lres_modules():
    graph = import_graph()
    assert {"d2lres.cli", "d2lres.torch.train", "d2lres.errors"} <= set(graph)  # the walk found the package
    assert "d2lres.run" in graph["d2lres.pipeline.compare"] and "d2lres.util.guard" in graph["d2lres.run"]
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_error_d2lres_defines_is_a_user_error_with_its_builtin_base():
    """The classes the API documents keep their builtin base, so user code that catches a
    ValueError (a shape, a file) or an ImportError (a missing framework) keeps working."""
    from d2lres import inputs, parallel, run, training, weights
    from d2lres.data import DataError
    from d2lres.host import backends, devices, mxnet_compat
    from d2lres.pipeline import compare
    from d2lres.util import files, jobs, memory
    bases = {inputs.InputError: ValueError, jobs.JobError: ValueError, compare.CompareError: ValueError,
             devices.DeviceError: ValueError,
             files.FolderError: ValueError, memory.MemoryNeeded: ValueError, run.RunError: ValueError,
             weights.WeightsFileError: ValueError, weights.MissingWeightsFile: FileNotFoundError,
             parallel.ParallelError: ValueError, training.TrainingError: RuntimeError, DataError: RuntimeError,
             backends.BackendUnavailable: ImportError, errors.UserValueError: ValueError,
             errors.UserTypeError: TypeError, mxnet_compat.IncompatibleNumpy: ImportError}
    for cls, base in bases.items():
        assert issubclass(cls, errors.UserError) and issubclass(cls, base), cls
    defined = {node.name for path, _ in _modules().values() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", "")).endswith(
                   ("Error", "Exception", "Unavailable", "Needed", "Numpy")) for b in node.bases)}
    # the base itself, and the signal that stops a command (a BaseException, as KeyboardInterrupt)
    assert defined - {c.__name__ for c in bases} == {"UserError", "Interrupted"}


def _builtin_raises() -> list[str]:
    """``raise ValueError(...)`` / ``raise TypeError(...)`` in d2lres that no enclosing ``try`` of
    the same function catches: a user's mistake raised as a builtin would be shown as a bug."""
    found = []
    for name, (path, _) in _modules().items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                    and getattr(node.exc.func, "id", None) in ("ValueError", "TypeError")):
                continue
            caught, up = False, node
            while up in parents and not isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                parent = parents[up]
                if isinstance(parent, ast.Try) and up in parent.body:
                    caught |= any(node.exc.func.id in ast.unparse(h.type or ast.Name("BaseException"))
                                  for h in parent.handlers)
                up = parent
            if not caught:
                found.append(f"{name}:{node.lineno}")
    return found


def test_what_the_user_can_fix_is_raised_as_a_user_error():
    assert _builtin_raises() == []


def test_report_errors_tells_the_user_in_one_line_and_lets_a_bug_through():
    from d2lres.inputs import InputError

    def fail(exc):
        raise exc

    stream = io.StringIO()
    assert errors.report_errors(fail, InputError("expected a 4-D batch"), stream=stream) == 2
    assert stream.getvalue() == "d2lres: error: expected a 4-D batch\n"
    stream = io.StringIO()
    assert errors.report_errors(fail, PermissionError(13, "Permission denied", "/r/x"), stream=stream) == 2
    assert stream.getvalue().startswith("d2lres: error: /r/x: Permission denied; check the path")
    for bug in (ValueError("a framework's own complaint"), KeyError("missing"), RuntimeError("bug")):
        with pytest.raises(type(bug)):
            errors.report_errors(fail, bug, stream=io.StringIO())


def test_developer_tools_are_scripts_with_a_main_guard():
    """Tools (the GPU check, the convolution micro-benchmark) live in scripts/, not in the package,
    and run nothing when imported (a framework's log level set before it loads apart)."""
    scripts = sorted((PACKAGE.parent / "scripts").iterdir()) + [PACKAGE.parent / "book" / "chapter.py"]
    assert scripts and not (PACKAGE / "tf" / "convbench.py").exists() and not (PACKAGE / "chapter.py").exists()
    for path in scripts:
        tree = ast.parse(path.read_text(), str(path))
        guards = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "__name__ == '__main__'"]
        assert len(guards) == 1, path
        top = [n for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
               and not ast.unparse(n.value.func) == "os.environ.setdefault"]
        assert not top, f"{path} calls {ast.unparse(top[0])} when imported"


#: The layers, bottom first. A unit -- a subpackage, or a module at the top level -- imports only
#: units of its own layer or of the layers below (at the top or inside a function), and no two units
#: import each other, directly or around a circle. The frameworks' backends are loaded by name
#: (``d2lres.host.backends.load``) by the layers above them, never imported by the ones below.
LAYERS = (
    ("errors", ("d2lres.errors",)),
    ("utilities", ("d2lres.util", "d2lres.host")),
    ("contract", ("d2lres.core", "d2lres.spec", "d2lres.inputs", "d2lres.weights")),
    ("data", ("d2lres.data",)),
    ("loop", ("d2lres.training", "d2lres.loop")),
    ("backends", ("d2lres.torch", "d2lres.tf", "d2lres.mxnet", "d2lres.jax")),
    ("pipeline", ("d2lres.run", "d2lres.pipeline", "d2lres.parallel", "d2lres.checks", "d2lres.perf")),
    ("command line", ("d2lres.cli", "d2lres.__main__")),
)
#: The package itself (``d2lres/__init__.py``): the OpenMP set-up before any framework, and
#: ``d2lres.tensorflow`` (d2l's name for ``d2lres.tf``, an attribute imported when asked for).
ROOT_IMPORTS = {"d2lres.host", "d2lres.tf"}
#: The public paths readers' code, the notebooks and the documents name (``python -m`` for those
#: with a command): each is the module itself, at the top level, in its layer.
PUBLIC_PATHS = {"d2lres.spec": "contract", "d2lres.inputs": "contract", "d2lres.weights": "contract",
                "d2lres.training": "loop", "d2lres.run": "pipeline", "d2lres.checks": "pipeline",
                "d2lres.parallel": "pipeline"}


def unit(module: str) -> str:
    """``d2lres.util.files`` -> ``d2lres.util``; a top-level module is its own unit."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """Unit -> the units it imports (from :func:`import_graph`)."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    return graph


def layer_report(graph: dict[str, set[str]] | None = None) -> str:
    """The layers, bottom first, each unit with the units it imports (``make`` nothing: for a reader
    and the closing notes; ``python -c 'import test_layout as t; print(t.layer_report())'`` in tests/)."""
    graph = package_graph() if graph is None else graph
    lines = [f"d2lres (the package) -> {', '.join(sorted(graph.get('d2lres', ())))}"]
    for i, (layer, units) in enumerate(LAYERS):
        lines.append(f"{i} {layer}")
        lines += [f"    {u} -> {', '.join(sorted(graph.get(u, ()))) or '(nothing)'}" for u in units]
    return "\n".join(lines)


def test_every_unit_of_the_package_has_its_layer():
    assigned = [u for _, units in LAYERS for u in units]
    assert len(assigned) == len(set(assigned))
    assert set(package_graph()) - {"d2lres"} == set(assigned)
    layer_of = {u: layer for layer, units in LAYERS for u in units}
    assert {path: layer_of[path] for path in PUBLIC_PATHS} == PUBLIC_PATHS


def test_layers_depend_in_one_direction_without_a_package_circle():
    graph = package_graph()
    rank = {u: i for i, (_, units) in enumerate(LAYERS) for u in units}
    upward = [f"{u} ({LAYERS[rank[u]][0]}) -> {t} ({LAYERS[rank[t]][0]})"
              for u, targets in graph.items() if u != "d2lres" for t in sorted(targets) if rank[t] > rank[u]]
    assert upward == [], layer_report(graph)
    assert circles({u: t for u, t in graph.items() if u != "d2lres"}) == [], layer_report(graph)
    assert graph["d2lres"] == ROOT_IMPORTS


def test_the_layer_rule_finds_an_upward_import():
    graph = {u: set() for _, units in LAYERS for u in units}
    graph["d2lres.util"] = {"d2lres.data"}  # e.g. the stamps reading the data's folder themselves
    rank = {u: i for i, (_, units) in enumerate(LAYERS) for u in units}
    assert [(u, t) for u, ts in graph.items() for t in ts if rank[t] > rank[u]] == [("d2lres.util", "d2lres.data")]


def test_no_module_has_a_second_name():
    """One name per module: no ``sys.modules`` entry set by d2lres, and each command's
    ``if __name__ == "__main__"`` written once, in the module ``python -m`` names."""
    swaps, guards = [], []
    for name, (path, _) in _modules().items():
        tree = ast.parse(path.read_text())
        swaps += [name for node in ast.walk(tree) if isinstance(node, ast.Subscript)
                  and ast.unparse(node.value) == "sys.modules" and isinstance(node.ctx, ast.Store)]
        guards += [name for node in tree.body if isinstance(node, ast.If)
                   and ast.unparse(node.test) == "__name__ == '__main__'"]
    assert swaps == []
    assert sorted(guards) == ["d2lres.checks", "d2lres.mxnet.launch", "d2lres.parallel", "d2lres.perf.bench",
                              "d2lres.perf.profile", "d2lres.run", "d2lres.spec", "d2lres.torch.launch"]


@pytest.mark.parametrize("public", sorted(PUBLIC_PATHS))
def test_a_public_path_is_its_module_itself(public):
    import importlib
    module = importlib.import_module(public)
    assert Path(module.__file__) == PACKAGE / (public.split(".")[1] + ".py")
    assert getattr(d2lres, public.split(".")[1]) is module


def test_d2lres_tensorflow_is_an_attribute_of_the_package_not_a_module():
    assert not (PACKAGE / "tensorflow.py").exists() and not (PACKAGE / "tensorflow").exists()
    assert "tensorflow" not in dir(d2lres) or d2lres.__dict__.get("tensorflow") is None
    with pytest.raises(AttributeError, match="no attribute 'tensorflo'"):
        d2lres.tensorflo  # noqa: B018


def test_python_m_on_a_public_path_runs_its_command():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "d2lres.spec"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "| resnet18" in done.stdout.lower(), done.stderr
    done = subprocess.run([sys.executable, "-m", "d2lres.run", "not json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "the job of d2lres.run is not" in done.stderr, done.stderr


def test_no_module_imports_another_modules_private_names():
    """What one module shares with another is public inside the package (no leading underscore)."""
    found = []
    for name, (path, _) in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("d2lres")):
                found += [f"{name}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert found == []


#: Each backend's framework imports, for the environment they change themselves.
FRAMEWORK_IMPORTS = {"d2lres.torch": "import torch", "d2lres.tf": "import tensorflow, keras",
                     "d2lres.mxnet": "import numpy; numpy.bool = bool; import mxnet",  # d2lres.host.mxnet_compat's fix
                     "d2lres.jax": "import jax, flax.nnx, optax"}
#: A user's own values, which an import keeps (KERAS_BACKEND has no other value d2lres.tf accepts).
USER_VALUES = {"OMP_WAIT_POLICY": "ACTIVE", "TF_CPP_MIN_LOG_LEVEL": "1", "OMP_NUM_THREADS": "1",
               "MXNET_OMP_MAX_THREADS": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
_ENV_AFTER = """
import json, os, sys
exec(sys.argv[1])
print(json.dumps(dict(os.environ)))
"""


def _environment_after(statement: str, **preset) -> dict:
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in {k for m in process.IMPORT_ENVIRONMENT.values() for k in m}}
    proc = subprocess.run([sys.executable, "-c", _ENV_AFTER, statement], env={**env, **preset},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["d2lres", *[f"d2lres.{b}" for b in backends.available()]])
def test_importing_changes_the_environment_by_exactly_the_documented_list(module):
    """``d2lres.host.process`` lists what each import sets (beside what the framework itself sets); a
    value the user set is kept."""
    from d2lres.host.threads import available_cores
    baseline = _environment_after(FRAMEWORK_IMPORTS.get(module, "pass"))
    after = _environment_after(f"import {module}")
    expected = {k: str(available_cores()) if v == process.CORES else v
                for m in {"d2lres", module} for k, v in process.IMPORT_ENVIRONMENT.get(m, {}).items()}
    assert {k: v for k, v in after.items() if baseline.get(k) != v} == expected
    assert set(baseline) - set(after) == set()
    assert all(k in process.WHY for k in expected)
    mine = {k: USER_VALUES[k] for k in expected if k in USER_VALUES}
    kept = _environment_after(f"import {module}", **mine)
    assert {k: kept[k] for k in mine} == mine


def test_no_source_of_the_package_is_ignored_by_git():
    """A pattern meant for outputs (``runs/``) once hid new modules of ``d2lres/runs/`` from git,
    so a clean clone lacked them."""
    import shutil
    import subprocess
    root = PACKAGE.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "d2lres", "book",
                              "tests", "scripts"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert [p for p in ignored if "__pycache__" not in p and not p.endswith(".pyc")] == []


def test_test_files_take_their_helpers_from_helpers_and_never_import_conftest():
    """conftest.py holds fixtures and the run's environment; what tests share as code is in
    tests/helpers.py, so a test file never imports conftest (pytest loads it once, as a plugin)."""
    tests = PACKAGE.parent / "tests"
    if not tests.is_dir():
        pytest.skip("no tests folder beside the package")
    importers = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "conftest" in names:
                importers.append(path.name)
    assert importers == []


def test_no_tracked_file_is_a_link():
    """A worktree's link to the environment (``.venv``) was once committed; checked out, it
    replaced the environment folder with a link to itself."""
    import shutil
    import subprocess
    root = PACKAGE.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    staged = subprocess.run(["git", "ls-files", "--stage"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert [line.split("\t", 1)[1] for line in staged if line.startswith("120000")] == []
