"""The ResNet chapter as notebooks: one source, a generated notebook per framework, and ``#@save``.

``notebooks/resnet.md`` is the chapter in d2l's tab style: markdown with ```` ```{.python .input} ````
code cells whose first line names their tab (``#@tab pytorch``, ``#@tab tensorflow``,
``#@tab mxnet``, ``#@tab jax``, ``#@tab all``), and markdown passages inside ``:begin_tab:X`` /
``:end_tab:``. ``build`` writes ``notebooks/<framework>/resnet.ipynb`` for each framework (its own cells plus the
``all`` cells, without outputs) through jupytext's markdown reader; the
source's MyST section labels (``(sec-resnet)=`` lines, for the book site) are left out of them.

**Two editions.** ``notebooks/resnet.md`` is the chapter's 0.17 edition (ja.d2l.ai's, d2lres's
own API as ``res``); ``notebooks/resnet-1.0.md`` is its 1.0 edition (d2l.ai's: the book's cells with
``from d2lres import <framework> as d2l``). Each source gives its own notebooks, named after it
(``<framework>/resnet-1.0.ipynb``); everything below holds for both.

**Two languages.** ``notebooks/ja/resnet.md`` is the chapter in Japanese: the same structure, its
prose in Japanese, its code cells those of the English source, byte for byte and in the same
order. ``build`` writes its notebooks to ``notebooks/ja/<framework>/resnet.ipynb``; ``check``
holds its ``#@save`` cells to the library as well and names every code cell that differs from the
English source's; ``sync`` rewrites both sources.

**One source of truth: the library code.** A code cell marked ``#@save`` holds chapter-level
definitions (``Residual``, ``resnet_block``) of its framework's backend (``d2lres.torch``,
``d2lres.tf``, ``d2lres.mxnet``, ``d2lres.jax``); its text must equal ``inspect.getsource`` of those objects,
joined by one blank line. Edit the library, never the cell: ``sync`` copies the library's source
back into the chapter's ``#@save`` cells (and rebuilds the notebooks); ``check`` exits non-zero
naming every ``#@save`` cell that differs from the library and every notebook that differs from
what ``build`` would write.

    python -m book.chapter build   [--source notebooks/resnet.md --out notebooks]  (default: both languages)
    python -m book.chapter check   [--source ...] [--out ...]
    python -m book.chapter sync    [--source ...] [--out ...]

The notebooks read ``D2LRES_FAST=1`` to train on a few hundred images for one short epoch.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from d2lres.util import files

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "notebooks" / "resnet.md"
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOK_NAME = "resnet.ipynb"
#: language -> (its chapter source of the 0.17 edition, the folder of its ``<framework>/resnet.ipynb``)
LANGUAGES = {"en": (SOURCE, NOTEBOOK_DIR), "ja": (NOTEBOOK_DIR / "ja" / "resnet.md", NOTEBOOK_DIR / "ja")}
#: edition -> the name of its source (``<name>.md``) and notebooks (``<framework>/<name>.ipynb``)
EDITIONS = {"0.17": "resnet", "1.0": "resnet-1.0"}


def edition_source(lang: str, edition: str) -> Path:
    """The chapter source of ``edition`` in ``lang``."""
    return LANGUAGES[lang][1] / f"{EDITIONS[edition]}.md"

#: tab name -> the backend package whose objects the tab's ``#@save`` cells define
FRAMEWORKS = {"pytorch": "d2lres.torch", "tensorflow": "d2lres.tf", "mxnet": "d2lres.mxnet",
              "jax": "d2lres.jax"}

_FENCE = re.compile(r"^```\{\.python \.input[^}\n]*\}[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_TAB_LINE = re.compile(r"^#@tab[ \t]+(.+?)[ \t]*$")
_DEFINITION = re.compile(r"^(?:async[ \t]+def|def|class)[ \t]+([A-Za-z_]\w*)", re.M)
_MD_TAB = re.compile(r"^:begin_tab:`?([\w, ]+?)`?[ \t]*\n(.*?)^:end_tab:[ \t]*\n?", re.M | re.S)
_TARGET = re.compile(r"^\([\w-]+\)=[ \t]*\n", re.M)  # a MyST section label: the book site's, not a notebook's


@dataclass
class CodeCell:
    """A code cell of the source: its span in the text, tabs, markers and code."""
    start: int          # offset of the cell body (after the opening fence line)
    end: int            # offset of the closing fence
    line: int           # 1-based line of the opening fence
    tabs: tuple[str, ...]
    save: bool
    header: str         # the marker lines (``#@tab``, ``#@save``) as written
    code: str           # the body without the marker lines, without trailing newlines


def parse_code_cells(text: str) -> list[CodeCell]:
    """The source's ``{.python .input}`` cells, in order."""
    cells = []
    for m in _FENCE.finditer(text):
        lines = m.group(1).split("\n")
        tabs, save, n = ("all",), False, 0
        while n < len(lines):
            tab = _TAB_LINE.match(lines[n])
            if tab:
                tabs = tuple(t.strip() for t in tab.group(1).split(","))
            elif lines[n].strip() == "#@save":
                save = True
            else:
                break
            n += 1
        cells.append(CodeCell(m.start(1), m.end(1), text.count("\n", 0, m.start()) + 1, tabs, save,
                              "".join(line + "\n" for line in lines[:n]),
                              "\n".join(lines[n:]).rstrip("\n")))
    return cells


# --------------------------------------------------------------------------- #@save

def defined_names(code: str) -> list[str]:
    """Top-level classes and functions a cell defines, in order."""
    return _DEFINITION.findall(code)


def library_object(framework: str, name: str):
    """The object ``name`` of ``framework``'s backend (package, then its ``model`` module)."""
    package = importlib.import_module(FRAMEWORKS[framework])
    if hasattr(package, name):
        return getattr(package, name)
    return getattr(importlib.import_module(FRAMEWORKS[framework] + ".model"), name)


def library_code(framework: str, names: list[str]) -> str:
    """What a ``#@save`` cell defining ``names`` must read: their library source."""
    return "\n\n".join(inspect.getsource(library_object(framework, name)).rstrip("\n")
                       for name in names)


def save_cell_problems(text: str, source: Path) -> list[str]:
    """One message per ``#@save`` cell that is not its library objects' source."""
    problems = []
    for cell in parse_code_cells(text):
        if not cell.save:
            continue
        where = f"{source}:{cell.line}: #@save cell [{', '.join(cell.tabs)}]"
        if len(cell.tabs) != 1 or cell.tabs[0] not in FRAMEWORKS:
            problems.append(f"{where} must name exactly one framework tab ({', '.join(FRAMEWORKS)})")
            continue
        names = defined_names(cell.code)
        if not names:
            problems.append(f"{where} defines no class or function")
            continue
        framework, label = cell.tabs[0], f"{FRAMEWORKS[cell.tabs[0]]}.{'/'.join(names)}"
        try:
            want = library_code(framework, names)
        except (AttributeError, ImportError) as err:
            problems.append(f"{where} defines {', '.join(names)}, not found in the library ({err})")
            continue
        if cell.code != want:
            diff = difflib.unified_diff(want.split("\n"), cell.code.split("\n"),
                                        f"library {label}", f"cell at line {cell.line}", lineterm="", n=1)
            problems.append(f"{where} `{', '.join(names)}` differs from {label} (inspect.getsource):\n"
                            + "\n".join("    " + line for line in diff))
    return problems


def sync_text(text: str) -> tuple[str, list[str]]:
    """``text`` with every ``#@save`` cell replaced by its library source; the cells changed."""
    changed, pieces, pos = [], [], 0
    for cell in parse_code_cells(text):
        if not cell.save or len(cell.tabs) != 1 or cell.tabs[0] not in FRAMEWORKS:
            continue
        names = defined_names(cell.code)
        if not names:
            continue
        want = library_code(cell.tabs[0], names)
        if want != cell.code:
            changed.append(f"line {cell.line} [{cell.tabs[0]}] {', '.join(names)}")
            pieces += [text[pos:cell.start], cell.header, want, "\n"]
            pos = cell.end
    return "".join(pieces) + text[pos:], changed


# --------------------------------------------------------------------------- notebooks

def framework_markdown(text: str, framework: str) -> str:
    """The source as ``framework`` sees it: its code cells (marker lines dropped, ``#@save``
    kept) as plain ```` ```python ```` blocks, other tabs' cells and markdown passages removed."""
    pieces, pos = [], 0
    for m, cell in zip(_FENCE.finditer(text), parse_code_cells(text)):
        pieces.append(text[pos:m.start()])
        if "all" in cell.tabs or framework in cell.tabs:
            pieces.append("```python\n" + ("#@save\n" if cell.save else "") + cell.code + "\n```")
        pos = m.end()
    pieces.append(text[pos:])
    out = "".join(pieces)
    out = _MD_TAB.sub(lambda m: m.group(2) if framework in [t.strip() for t in m.group(1).split(",")]
                      or m.group(1).strip() == "all" else "", out)
    return re.sub(r"\n{4,}", "\n\n\n", _TARGET.sub("", out))


#: The environment variable the notebooks' first cell installs d2lres from (a pip requirement).
INSTALL_VARIABLE = "D2LRES_PIP"


def install_cell(framework: str) -> str:
    """The notebooks' first code cell: install ``d2lres[<extra>]`` for ``framework`` where d2lres is
    missing (a fresh Jupyter or a hosted notebook), from ``$D2LRES_PIP``; nothing where it is there."""
    extra = FRAMEWORKS[framework].rsplit(".", 1)[1]
    return f'''# Installs d2lres for this notebook's framework if it is missing; does nothing where it is installed.
# d2lres is not on a package index yet: set {INSTALL_VARIABLE} to where pip finds it -- the path of a
# wheel built from the repository (`python -m build`) or the repository's URL as git+https://... --
# before you start Jupyter, or write it in place of the empty string below.
import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys

if importlib.util.find_spec("d2lres") is None:
    source = os.environ.get("{INSTALL_VARIABLE}", "")
    if source and "://" not in source:  # a wheel or a source folder
        path = pathlib.Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{INSTALL_VARIABLE} names {{path}}, which does not exist; build the wheel "
                                    "(python -m build) and set {INSTALL_VARIABLE} to its path, or to the "
                                    "repository's git+https:// URL")
        source = path.resolve().as_uri()
    requirement = f"d2lres[{extra}] @ {{source}}" if source else "d2lres[{extra}]"
    print(f"installing {{requirement}}")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", requirement], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(*pip.stdout.splitlines()[-3:], sep="\\n")
    if pip.returncode:
        raise RuntimeError(f"pip could not install {{requirement}}; set {INSTALL_VARIABLE} to a d2lres wheel's "
                           "path or the repository's git+https:// URL and run this cell again")
    importlib.invalidate_caches()'''


def build_notebook(text: str, framework: str, generated_from: str = "notebooks/resnet.md") -> str:
    """The ``.ipynb`` text of the chapter for ``framework`` (no outputs, stable cell ids), its
    first code cell :func:`install_cell`."""
    import jupytext
    import nbformat

    nb = jupytext.reads(framework_markdown(text, framework), fmt="md")
    for i, cell in enumerate(nb.cells):
        cell.id = f"{framework}-{i:02d}"
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    first_code = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    nb.cells.insert(first_code, nbformat.v4.new_code_cell(install_cell(framework), id=f"{framework}-install"))
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                  "language": "python"},
                   "language_info": {"name": "python"},
                   "d2lres": {"framework": framework, "generated_from": generated_from,
                              "regenerate": "python -m book.chapter build"}}
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nbformat.writes(nb) + "\n"


def notebook_path(out: Path, framework: str, name: str = NOTEBOOK_NAME) -> Path:
    return Path(out) / framework / name


def notebook_name(source: Path) -> str:
    """The notebooks' file name of a source: its own name (``resnet-1.0.md`` -> ``resnet-1.0.ipynb``)."""
    return Path(source).stem + ".ipynb"


def source_name(source: Path) -> str:
    """The source's name in the checkout, as the notebooks record it: the Japanese one when it
    lies in a folder ``ja`` (as ``notebooks/ja/resnet.md`` does, or a copy of it), else the English."""
    lang = "ja" if Path(source).resolve().parent.name == "ja" else "en"
    return (LANGUAGES[lang][1] / Path(source).name).relative_to(ROOT).as_posix()


def build(source: Path = SOURCE, out: Path = NOTEBOOK_DIR) -> list[Path]:
    """Write the notebooks (one per framework); returns those whose text changed."""
    text, written, name = Path(source).read_text(), [], notebook_name(source)
    for framework in FRAMEWORKS:
        path, nb = notebook_path(out, framework, name), build_notebook(text, framework, source_name(source))
        if not path.exists() or path.read_text() != nb:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.atomic_write_text(path, nb)
            written.append(path)
    return written


def notebook_problems(text: str, out: Path, generated_from: str = "notebooks/resnet.md") -> list[str]:
    problems = []
    for framework in FRAMEWORKS:
        path = notebook_path(out, framework, notebook_name(generated_from))
        if not path.exists():
            problems.append(f"{path}: missing (run `python -m book.chapter build`)")
        elif path.read_text() != build_notebook(text, framework, generated_from):
            problems.append(f"{path}: differs from what the source generates "
                            f"(run `python -m book.chapter build`)")
    return problems


def same_code_problems(text: str, source: Path, reference: Path) -> list[str]:
    """One message per code cell of ``text`` that is not the ``reference`` source's cell at the
    same position (tabs, markers and code, byte for byte), and for a differing cell count."""
    mine, theirs = parse_code_cells(text), parse_code_cells(Path(reference).read_text())
    problems = [f"{source}:{a.line}: code cell {i + 1} [{', '.join(a.tabs)}] differs from {reference}:{b.line}"
                for i, (a, b) in enumerate(zip(mine, theirs))
                if (a.header, a.code) != (b.header, b.code)]
    if len(mine) != len(theirs):
        problems.append(f"{source}: {len(mine)} code cells, {reference} has {len(theirs)}")
    return problems


def check(source: Path = SOURCE, out: Path = NOTEBOOK_DIR, reference: Path | None = None) -> list[str]:
    """Every disagreement: ``#@save`` cells vs the library, notebooks vs the source, and (for a
    translation, ``reference`` its English source) code cells vs the reference's."""
    text = Path(source).read_text()
    same = same_code_problems(text, Path(source), reference) if reference else []
    return save_cell_problems(text, Path(source)) + same + notebook_problems(text, out, source_name(source))


def sync(source: Path = SOURCE, out: Path = NOTEBOOK_DIR) -> tuple[list[str], list[Path]]:
    """Rewrite the source's ``#@save`` cells from the library, then rebuild the notebooks."""
    text, changed = sync_text(Path(source).read_text())
    if changed:
        files.atomic_write_text(source, text)
    return changed, build(source, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book.chapter", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "check", "sync"])
    parser.add_argument("--source", type=Path, help="one chapter source (default: every edition's in every "
                        "language: " + ", ".join(str(edition_source(lang, ed).relative_to(ROOT))
                                                 for lang in LANGUAGES for ed in EDITIONS) + ")")
    parser.add_argument("--out", type=Path, help="where its <framework>/<name>.ipynb live")
    args = parser.parse_args(argv)
    if args.source is None and args.out is None:
        status = 0
        for edition in EDITIONS:
            for lang, (_, out) in LANGUAGES.items():
                source, english = edition_source(lang, edition), edition_source("en", edition)
                if not source.exists():
                    print(f"{lang} {edition}: no {source.relative_to(ROOT)}; skipped")
                    continue
                print(f"[{lang}, {edition} edition]")
                status = max(status, _one(args.command, source, out, english if source != english else None))
        return status
    if args.source is None or args.out is None:
        parser.error("--source and --out go together")
    return _one(args.command, args.source, args.out, None)


def _one(command: str, source: Path, out: Path, reference: Path | None) -> int:
    """``command`` on one source and its notebooks (``reference``: the English source it translates)."""
    if command == "build":
        written = build(source, out)
        for path in written:
            print(f"wrote {path}")
        print(f"{len(FRAMEWORKS)} notebooks up to date ({len(written)} rewritten)")
        return 0
    if command == "sync":
        changed, written = sync(source, out)
        for cell in changed:
            print(f"synced #@save cell at {cell} from the library")
        for path in written:
            print(f"wrote {path}")
        print(f"{source}: #@save cells match the library ({len(changed)} rewritten)")
        return 0
    problems = check(source, out, reference)
    if problems:
        for problem in problems:
            print(problem)
        print(f"\n{len(problems)} problem(s). The library is the source of truth: "
              f"`python -m book.chapter sync` rewrites the #@save cells from it and rebuilds "
              f"the notebooks.", file=sys.stderr)
        return 1
    saved = sum(cell.save for cell in parse_code_cells(Path(source).read_text()))
    same = f", its code cells are {reference.name}'s" if reference else ""
    print(f"ok: {saved} #@save cells match the library{same}; {len(FRAMEWORKS)} notebooks up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
